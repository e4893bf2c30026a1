//! `baton agent` runs an agent in this process until SIGINT or SIGTERM; `baton agents` lists
//! the agents the cluster knows.

use baton_client::agent::Agent;
use baton_client::output;
use baton_client::{Client, Credentials, Endpoints};
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::AgentArgs;
use crate::cli::failure::{CallKind, Failure, client_failure};

/// `baton agent`: runs until SIGINT or SIGTERM, then stops its steps and returns.
pub(super) async fn agent(
    endpoints: Endpoints,
    credentials: Credentials,
    args: AgentArgs,
) -> anyhow::Result<()> {
    let mut builder = Agent::builder(endpoints)
        .credentials(credentials)
        .name(args.name)
        .labels(args.labels)
        .slots(args.slots)
        .cpu_millis(args.cpu_millis)
        .memory_mb(args.memory_mb)
        .dial(args.dial)
        .namespaces(args.namespaces);
    if let Some(dir) = args.secrets_dir {
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "--secrets-dir {}: not a folder",
                dir.display()
            )));
        }
        builder = builder.secrets_dir(dir);
    }
    let agent = builder.build().map_err(|error| match error {
        baton_client::agent::AgentError::InvalidConfig(_) => Failure::usage(error.to_string()),
        other => Failure::failed(other.to_string()),
    })?;
    // Its steps run as its user: none may read its memory or its environment (the secrets it
    // was given) through /proc.
    // SAFETY: prctl on this process, with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not make the agent non-dumpable: its steps may read its environment"
        );
    }
    if let Some(addr) = args.metrics_listen {
        baton_client::agent::metrics::install(addr).map_err(Failure::failed)?;
        tracing::info!(%addr, "serving agent metrics on /metrics");
    }
    tracing::info!(config = ?agent.config(), task_types = ?agent.task_types(), "agent starting");
    agent.run(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still works.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

pub(super) async fn agents(client: &Client, out: &Printer) -> anyhow::Result<()> {
    let response = client
        .list_agents()
        .await
        .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
    out.print(
        || Value::Array(response.agents.iter().map(output::agent_json).collect()),
        || output::render_agents(&response.agents),
    )
}
