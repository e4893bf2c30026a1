//! The HTTP listener's connections: TLS with the node's certificate (no client certificate), or
//! plaintext under `--insecure`, at most [`HTTP_CONNECTIONS_MAX`] open at once. Over the limit,
//! new connections wait in the kernel's accept queue until one closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use baton_security::TlsSettings;
use baton_security::server::TlsConnection;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::HTTP_CONNECTIONS_MAX;

type Accepted = Pin<Box<dyn Stream<Item = Result<TlsConnection, io::Error>> + Send>>;

/// Where connections come from.
enum Source {
    Tls(Accepted),
    Plain(TcpListener),
}

/// An `axum::serve` listener over [`Source`], counting open connections.
pub struct Listener {
    source: Source,
    local: SocketAddr,
    open: Arc<Semaphore>,
}

impl Listener {
    /// `tls`: `None` under `--insecure`.
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsSettings>>) -> io::Result<Listener> {
        let local = listener.local_addr()?;
        let source = match tls {
            Some(tls) => Source::Tls(Box::pin(baton_security::server::incoming_web(
                listener, tls,
            ))),
            None => Source::Plain(listener),
        };
        Ok(Listener {
            source,
            local,
            open: Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX)),
        })
    }
}

/// Hands out connections; dropping one frees its place.
pub struct Counted<Io> {
    io: Io,
    _open: OwnedSemaphorePermit,
}

/// The two kinds of connection.
pub enum Connection {
    Tls(Box<TlsConnection>),
    Plain(TcpStream),
}

impl axum::serve::Listener for Listener {
    type Io = Counted<Connection>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let permit = self
            .open
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            let accepted = match &mut self.source {
                Source::Tls(incoming) => match incoming.next().await {
                    Some(Ok(connection)) => {
                        let remote = connection.peer().remote_addr.unwrap_or(self.local);
                        Ok((Connection::Tls(Box::new(connection)), remote))
                    }
                    Some(Err(error)) => Err(error),
                    // The accept loop ends only with the stream; never here.
                    None => std::future::pending().await,
                },
                Source::Plain(listener) => {
                    TcpListener::accept(listener).await.map(|(tcp, remote)| {
                        let _ = tcp.set_nodelay(true);
                        (Connection::Plain(tcp), remote)
                    })
                }
            };
            match accepted {
                Ok((io, remote)) => {
                    return (Counted { io, _open: permit }, remote);
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl AsyncRead for Counted<Connection> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Connection::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Counted<Connection> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Connection::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Connection::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Connection::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
        }
    }
}
