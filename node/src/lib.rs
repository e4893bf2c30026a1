//! batond: the Baton server. See ARCHITECTURE.md for the map; data flows
//! `api` -> `raft` (propose) -> `storage` (log, then apply) -> `state`.

//!
//! Without the default `server` feature only the pure core builds (`state`, `planning`, `sim`,
//! `limits`, `fuzzing`): what the fuzz targets and the simulation exercise, with no RocksDB to
//! compile.

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod dev;
pub mod faults;
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod http;
pub mod limits;
#[cfg(feature = "server")]
pub mod metrics;
pub mod planning;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod scheduler;
#[cfg(feature = "server")]
pub mod security;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
pub mod state;
#[cfg(feature = "server")]
pub mod storage;

#[cfg(feature = "server")]
/// Logging for binaries: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.
///
/// Lines are formatted on the logging thread and written by a writer thread, which writes all
/// the lines queued since its last write at once: at several thousand steps a second the
/// per-step lines (`workflow submitted`, `step assigned`, `report accepted`) cost one `write`
/// each on the leader's runtime threads otherwise, 7% of its CPU. The queue holds up to 128k
/// lines and then blocks the logger rather than drop lines. Keep the returned guard until exit:
/// dropping it writes what is queued. Lines queued when the process is killed are lost (some
/// milliseconds' worth at most). `None` if a logger was installed already.
pub fn init_tracing(
    format: config::LogFormat,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("batond-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder.json().try_init(),
    };
    installed.ok().map(|()| guard)
}
