//! A fault-injecting TCP proxy for one directed link (node i -> node j, or agent -> node). The
//! harness flips its mode at any time; the mode applies to live connections at the next chunk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u64 = 0;
/// Bytes are read and thrown away; new connections are accepted and starved. Looks like a
/// blackholed route: no reset, just silence, so only deadlines notice.
const BLACKHOLE: u64 = 1;
/// Connections are closed (reset) and new ones too: a link that fails fast.
const DROP: u64 = 2;
/// Above this value: pass with this many ms minus DELAY_BASE of delay per chunk.
const DELAY_BASE: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Drop,
    Delay(u64),
}

impl Mode {
    fn encode(self) -> u64 {
        match self {
            Mode::Pass => PASS,
            Mode::Blackhole => BLACKHOLE,
            Mode::Drop => DROP,
            Mode::Delay(ms) => DELAY_BASE + ms,
        }
    }
    fn decode(value: u64) -> Mode {
        match value {
            PASS => Mode::Pass,
            BLACKHOLE => Mode::Blackhole,
            DROP => Mode::Drop,
            ms => Mode::Delay(ms - DELAY_BASE),
        }
    }
}

/// One link. Dropping it stops its listener and every connection (they share the abort).
pub struct Proxy {
    pub addr: SocketAddr,
    /// The mode of bytes towards the target (and of new connections).
    towards: Arc<AtomicU64>,
    /// The mode of bytes coming back from the target.
    back: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let towards = Arc::new(AtomicU64::new(PASS));
        let back = Arc::new(AtomicU64::new(PASS));
        let shared = towards.clone();
        let shared_back = back.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mode = shared.clone();
                let back = shared_back.clone();
                connections.spawn(async move {
                    if Mode::decode(mode.load(Ordering::Relaxed)) == Mode::Drop {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    // Either direction ending ends both (dropping the halves closes them).
                    tokio::select! {
                        _ = pipe(in_read, out_write, mode) => {}
                        _ = pipe(out_read, in_write, back) => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Proxy {
            addr,
            towards,
            back,
            task,
        })
    }

    /// Both directions.
    pub fn set(&self, mode: Mode) {
        self.towards.store(mode.encode(), Ordering::Relaxed);
        self.back.store(mode.encode(), Ordering::Relaxed);
    }

    /// The mode of the bytes towards the target (and of new connections).
    pub fn mode(&self) -> Mode {
        Mode::decode(self.towards.load(Ordering::Relaxed))
    }

    /// `mode` for the bytes towards the target only; the way back is set to pass.
    pub fn set_uplink_only(&self, mode: Mode) {
        self.towards.store(mode.encode(), Ordering::Relaxed);
        self.back.store(Mode::Pass.encode(), Ordering::Relaxed);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match Mode::decode(mode.load(Ordering::Relaxed)) {
            Mode::Pass => {}
            Mode::Blackhole => continue,
            Mode::Drop => return,
            Mode::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_blackholes_and_drops() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = Proxy::start(target).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        proxy.set(Mode::Blackhole);
        conn.write_all(b"lost").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut got)).await;
        assert!(silent.is_err(), "a blackholed link must stay silent");

        proxy.set(Mode::Drop);
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut got))
            .await
            .expect("a dropped link closes")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn an_uplink_only_delay_leaves_the_way_back_alone() {
        // A target that greets first, then echoes: each direction is observed on its own.
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let proxy = Proxy::start(target).await.unwrap();
        // A minute: far longer than any wait below, so neither check depends on timing luck.
        proxy.set_uplink_only(Mode::Delay(60_000));
        let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut got))
            .await
            .expect("the way back passes")
            .unwrap();
        assert_eq!(&got, b"hello");
        conn.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut echo)).await;
        assert!(early.is_err(), "the uplink is held for its delay");
    }
}
