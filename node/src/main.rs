//! `batond`: parse the configuration once, validate it, start the node, stop on SIGINT/SIGTERM.

use std::process::ExitCode;

use baton_node::config::{Cli, Subcommands};
use baton_node::server::Server;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Subcommands::Dev(args)) = cli.command {
        baton_node::init_tracing(Default::default());
        return match baton_node::dev::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("batond dev: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match cli.node.resolve() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("batond: {err}");
            return ExitCode::from(2);
        }
    };
    baton_node::init_tracing(config.log_format);
    if let Some(addr) = config.metrics_listen
        && let Err(err) = baton_node::metrics::install(addr)
    {
        eprintln!("batond: {err}");
        return ExitCode::FAILURE;
    }
    let server = match Server::start(&config, None).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("batond: {err}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_stop_signal().await;
    tracing::info!("stopping");
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
