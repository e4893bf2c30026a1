//! batond: the Baton server. See ARCHITECTURE.md for the map; data flows
//! `api` -> `raft` (propose) -> `storage` (log, then apply) -> `state`.

pub mod api;
pub mod config;
pub mod dev;
pub mod limits;
pub mod metrics;
pub mod raft;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod state;
pub mod storage;

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
