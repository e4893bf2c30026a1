//! The TLS accept loop a tonic server serves from (`serve_with_incoming`). Handshakes run
//! concurrently (a slow or silent client cannot hold up others) under a deadline; each accepted
//! connection carries the peer's verified identity, which tonic puts into every request's
//! extensions as [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::PeerIdentity;
use crate::tls::TlsSettings;

/// A handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for tonic to take them.
const ACCEPTED_QUEUE_MAX: usize = 128;
/// Handshakes in progress at once. More connections wait in the kernel's accept queue, so a
/// flood of silent connections costs a bounded number of tasks and descriptors.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// What a request knows about the connection it came on (a request extension).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// `None` when the certificate chains to the CA but carries no Baton identity.
    pub identity: Option<PeerIdentity>,
    pub remote_addr: Option<SocketAddr>,
}

/// One accepted, handshaken TLS connection.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConnection {
    /// Who is at the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and yields them once their TLS handshake (with the
/// configuration current at accept time) succeeded. Failed handshakes are logged at debug level
/// and dropped. The loop, and the listener, end when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsSettings>,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    incoming_with(listener, tls, TlsSettings::server_config)
}

/// [`incoming`] for the HTTPS listener: the node's certificate, no client certificate asked for
/// ([`TlsSettings::web_server_config`]); every connection's identity is `None`.
pub fn incoming_web(
    listener: TcpListener,
    tls: Arc<TlsSettings>,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    incoming_with(listener, tls, TlsSettings::web_server_config)
}

fn incoming_with(
    listener: TcpListener,
    tls: Arc<TlsSettings>,
    config: fn(&TlsSettings) -> Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPTED_QUEUE_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = accepted_tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config(&tls));
            let accepted_tx = accepted_tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%remote_addr, %error, "tls handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote_addr, "tls handshake timed out");
                            return;
                        }
                    };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| PeerIdentity::from_der(leaf));
                let info = PeerInfo {
                    identity,
                    remote_addr: Some(remote_addr),
                };
                let _ = accepted_tx.send(Ok(TlsConnection { stream, info })).await;
            });
        }
    });
    tokio_stream_from(accepted_rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
