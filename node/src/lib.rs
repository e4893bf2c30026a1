//! batond: the Baton server. See ARCHITECTURE.md for the map; data flows
//! `api` -> `raft` (propose) -> `storage` (log, then apply) -> `state`.

//!
//! Without the default `server` feature only the pure core builds (`state`, `limits`,
//! `fuzzing`): what the fuzz targets exercise, with no RocksDB to compile.

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
pub mod limits;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod scheduler;
#[cfg(feature = "server")]
pub mod security;
#[cfg(feature = "server")]
pub mod server;
pub mod state;
#[cfg(feature = "server")]
pub mod storage;

#[cfg(feature = "server")]
/// Logging for binaries: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.
pub fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder.json().try_init(),
    };
}
