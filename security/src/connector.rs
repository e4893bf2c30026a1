//! The client side of mutual TLS for tonic: a connector (`Endpoint::connect_with_connector_lazy`)
//! that dials TCP and handshakes with the configuration current at dial time, so a rotated
//! certificate or CA is used from the next connection on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::TlsSettings;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials `http://HOST:PORT` URIs over TLS; the server's certificate must match HOST.
#[derive(Clone, Debug)]
pub struct TlsDialer {
    tls: Arc<TlsSettings>,
}

impl TlsDialer {
    pub fn new(tls: Arc<TlsSettings>) -> TlsDialer {
        TlsDialer { tls }
    }
}

impl tower_service::Service<Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.client_config();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| format!("{uri}: no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
