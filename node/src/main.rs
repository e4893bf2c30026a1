//! `batond`: parse the configuration once, validate it, start the node, stop on SIGINT/SIGTERM.

use std::process::ExitCode;

use baton_node::config::{Cli, Subcommands};
use baton_node::server::{Server, StartError};
use clap::Parser;

/// mimalloc instead of glibc's malloc: the leader allocates and frees small objects at a high rate
/// across threads (entries, events, gRPC messages), and glibc's malloc and free were 17% of its CPU
/// under load (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything else, subcommands included: a fault-injection variable in a build that
    // cannot honour it (or naming nothing) stops batond rather than being ignored.
    let broken = match baton_node::faults::chosen() {
        Ok(broken) => broken,
        Err(err) => {
            eprintln!("batond: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Subcommands::Dev(args)) = cli.command {
        let logs = baton_node::init_tracing(Default::default());
        let result = baton_node::dev::run(args).await;
        drop(logs);
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("batond dev: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Subcommands::Openapi) = &cli.command {
        let document = baton_node::http::openapi::document();
        return match serde_json::to_string_pretty(&document) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("batond openapi: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Subcommands::Certs(args)) = &cli.command {
        return match baton_node::certs::run(args) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("batond certs: {err}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Subcommands::Restore(args)) = &cli.command {
        let logs = baton_node::init_tracing(Default::default());
        let seeded = match baton_node::config::parse_initial_cluster(&args.initial_cluster) {
            Ok(members) => {
                baton_node::storage::seed::restore(
                    &args.from,
                    &args.data_dir,
                    args.node_id,
                    &members,
                )
                .await
            }
            Err(err) => Err(err),
        };
        drop(logs);
        return report_seeded("restore", seeded);
    }
    if let Some(Subcommands::Recover(args)) = &cli.command {
        let logs = baton_node::init_tracing(Default::default());
        let seeded = match baton_node::config::parse_initial_cluster(&format!(
            "{}={}",
            args.node_id, args.address
        )) {
            Ok(_) => {
                baton_node::storage::seed::recover(&args.data_dir, args.node_id, &args.address)
                    .await
            }
            Err(err) => Err(err.replace("--initial-cluster", "--address")),
        };
        drop(logs);
        return report_seeded("recover", seeded);
    }
    let config = match cli.node.resolve() {
        Ok(config) => config,
        Err(err) => return not_started(StartError::Config(err)),
    };
    // Dropped before a final error is printed, so the log lines before it come first.
    let logs = baton_node::init_tracing(config.log_format);
    if let Some(broken) = broken {
        tracing::warn!(
            broken = broken.name(),
            "FAULT INJECTION: this node is deliberately broken (chaos checker tests only)"
        );
    }
    if let Some(addr) = config.metrics_listen
        && let Err(err) = baton_node::metrics::install(addr)
    {
        drop(logs);
        return not_started(StartError::Metrics(err));
    }
    let server = match Server::start(&config, None).await {
        Ok(server) => server,
        Err(err) => {
            drop(logs);
            return not_started(err);
        }
    };
    let halted = tokio::select! {
        () = wait_for_stop_signal() => None,
        reason = server.halted() => Some(reason),
    };
    if let Some(reason) = halted {
        // Nothing to drain: the Raft core is gone or must not take part. A supervisor restarts
        // the process; the reason says whether that can help.
        server.shutdown().await;
        drop(logs);
        eprintln!("batond: stopping: {reason}");
        return ExitCode::FAILURE;
    }
    tracing::info!("stopping: draining first");
    server.drain().await;
    server.shutdown().await;
    tracing::info!("stopped");
    drop(logs);
    ExitCode::SUCCESS
}

/// Says why the node did not start, and exits accordingly.
fn not_started(err: StartError) -> ExitCode {
    eprintln!("batond: {err}");
    ExitCode::from(err.exit_code())
}

fn report_seeded(
    what: &str,
    seeded: Result<baton_node::storage::seed::Seeded, String>,
) -> ExitCode {
    match seeded {
        Ok(s) => {
            let members: Vec<String> = s
                .members
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect();
            println!(
                "{what}: data dir seeded at log index {} (term {}), state hash {}, members {}{}",
                s.index,
                s.term,
                s.state_hash,
                members.join(","),
                if what == "recover" {
                    format!(
                        ", {} log entries beyond the snapshot kept",
                        s.log_entries_applied
                    )
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("batond {what}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
