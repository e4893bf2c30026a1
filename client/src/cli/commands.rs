//! What each `baton` command does: read and check input, make the calls, print the answer.
//!
//! Results go to stdout (one id, a table, or JSON); errors and hints go to stderr through
//! [`crate::cli::failure`], so `id=$(baton submit f.yaml)` captures only the id.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use baton_client::agent::Agent;
use baton_client::output::{self, NodeStatus};
use baton_client::proto::{
    EventKind, ListRequest, ReadConsistency, Workflow, WorkflowEvent, WorkflowSpec, WorkflowState,
};
use baton_client::{
    Client, ClientConfig, CredentialSources, Credentials, Endpoints, WatchUpdate, WorkflowWatch,
    new_idempotency_key,
};
use baton_proto::limits::{SPEC_TEXT_BYTES_MAX, SUBMIT_BATCH_BYTES_MAX, SUBMIT_BATCH_ITEMS_MAX};
use baton_proto::spec::{SpecFormat, parse_spec};
use baton_proto::validate::{validate_idempotency_key, validate_spec};
use futures::StreamExt;
use serde_json::Value;

use crate::cli::args::{
    AgentArgs, CancelArgs, Cli, ClusterCommand, Command, GetArgs, ListArgs, OutputFormat,
    SnapshotAction, SubmitArgs, TokenCommand, WatchArgs,
};
use crate::cli::failure::{CallKind, Failure, client_failure};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let credentials = CredentialSources {
        dir: cli.credentials.clone(),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        token_file: cli.token_file.clone(),
    };
    if let Command::Token(TokenCommand::Generate) = cli.command {
        let token = baton_security::token::generate()
            .map_err(|e| Failure::failed(format!("no randomness for a token: {e}")))?;
        println!("{}", token.text);
        return Ok(());
    }
    let credentials = credentials
        .load()
        .map_err(|error| Failure::usage(error.to_string()))?;
    let config = ClientConfig {
        call_timeout: cli.timeout,
        credentials,
        ..ClientConfig::default()
    };
    let agent_credentials = config.credentials.clone();
    let endpoints = cli.endpoints;
    let endpoints_for_agent = endpoints.clone();
    let bench_setup = (endpoints.clone(), config.clone());
    // Built on demand, so that submit checks its input first and bad input never waits on a node.
    let connect = move || {
        Client::with_config(endpoints, config)
            .map_err(|error| client_failure(error, CallKind::Read, None, None))
    };
    let out = Printer { format: cli.output };
    match cli.command {
        Command::Submit(args) => submit(connect, &out, args).await,
        Command::Get(args) => get(&connect()?, &out, args).await,
        Command::List(args) => list(&connect()?, &out, args).await,
        Command::Cancel(args) => cancel(&connect()?, &out, args).await,
        Command::Cluster(command) => cluster(&connect()?, &out, command).await,
        Command::Agents => agents(&connect()?, &out).await,
        Command::Watch(args) => watch(&connect()?, &out, args).await,
        Command::Agent(args) => agent(endpoints_for_agent, agent_credentials, args).await,
        Command::Token(command) => token(&connect()?, &out, command).await,
        Command::Bench(args) => {
            let (endpoints, config) = bench_setup;
            crate::cli::bench::run(endpoints, config, out.json(), args).await
        }
    }
}

/// Prints results in the chosen format.
struct Printer {
    format: OutputFormat,
}

impl Printer {
    fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints `json` in JSON mode, else `text`.
    fn print(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json() {
            let rendered =
                serde_json::to_string_pretty(&json()).context("encoding the answer as json")?;
            writeln!(stdout, "{rendered}").context("writing to stdout")?;
        } else {
            let rendered = text();
            stdout
                .write_all(rendered.as_bytes())
                .context("writing to stdout")?;
            if !rendered.is_empty() && !rendered.ends_with('\n') {
                stdout.write_all(b"\n").context("writing to stdout")?;
            }
        }
        stdout.flush().context("writing to stdout")
    }

    /// One result as one line: compact JSON (JSON lines) or `text`.
    fn print_json_line(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let line = if self.json() {
            serde_json::to_string(&json()).context("encoding the answer as json")?
        } else {
            text()
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")
    }

    /// One event as one line: compact JSON (JSON lines) or the text form.
    fn print_line(&self, event: &WorkflowEvent) -> anyhow::Result<()> {
        self.print_json_line(
            || output::event_json(event),
            || output::render_event_line(event),
        )
    }
}

// ---- workflows ----

async fn submit(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    args: SubmitArgs,
) -> anyhow::Result<()> {
    if args.files.len() > 1 {
        return submit_many(connect, out, args).await;
    }
    let file = &args.files[0];
    let (display_name, spec) = read_spec(file)?;
    // Our own key when none was given, so that an unknown outcome can name it for the retry.
    let key = match args.idempotency_key {
        Some(key) => {
            validate_idempotency_key(&key)
                .map_err(|error| Failure::usage(format!("--idempotency-key: {}", error.message)))?;
            key
        }
        None => new_idempotency_key(),
    };
    let client = connect()?;
    let response = client
        .submit(spec, Some(key.clone()))
        .await
        .map_err(|error| {
            let hint = format!(
                "the workflow may or may not have been submitted; run `baton submit {} \
             --idempotency-key {key}` again: it returns the first workflow if there is one",
                file.display()
            );
            client_failure(
                error,
                CallKind::Write,
                Some(&format!("workflow from {display_name}")),
                Some(hint),
            )
        })?;
    // The id first, so that a script has it even while it waits (and if the wait fails).
    out.print(
        || output::submit_json(&response),
        || response.workflow_id.to_string(),
    )?;
    if !args.wait {
        return Ok(());
    }
    wait_for_end(&client, response.workflow_id, response.log_index).await
}

/// Several files: all read and checked before anything is sent, then submitted in SubmitBatch
/// calls (each within the server's item and byte bounds, committed whole), file N with key
/// `BASE-N`, so that running the same command (same files, same order) with
/// `--idempotency-key BASE` after a failure part-way returns the workflows already made and
/// submits the rest. Each call's ids are printed as it answers.
async fn submit_many(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    args: SubmitArgs,
) -> anyhow::Result<()> {
    if args.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        return Err(Failure::usage("`-` (standard input) can be given once"));
    }
    let base = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => new_idempotency_key(),
    };
    let mut items = Vec::with_capacity(args.files.len());
    for (n, file) in args.files.iter().enumerate() {
        let (display_name, spec) = read_spec(file)?;
        let key = format!("{base}-{}", n + 1);
        validate_idempotency_key(&key).map_err(|error| {
            Failure::usage(format!(
                "--idempotency-key: {} (as {key}, the key of file {})",
                error.message,
                n + 1
            ))
        })?;
        let size = batch_item_bytes(&display_name, &spec, &key)?;
        items.push((display_name, spec, key, size));
    }
    let client = connect()?;
    let mut done: Vec<(u64, u64)> = Vec::with_capacity(items.len());
    // After a failure part-way, what was made stays made: say how to finish without repeats.
    let resume = |done: usize| {
        if done > 0 {
            eprintln!(
                "baton: {done} workflows were submitted before this error; to submit the rest \
                 without repeating them, run the same command (same files, same order) with \
                 --idempotency-key {base}"
            );
        }
    };
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let (mut names, mut batch, mut bytes) = (Vec::new(), Vec::new(), 0);
        // Each item fits a batch alone (`batch_item_bytes` checked it when read).
        while let Some(&(_, _, _, size)) = items.peek() {
            let full = batch.len() == SUBMIT_BATCH_ITEMS_MAX
                || (!batch.is_empty() && bytes + size > SUBMIT_BATCH_BYTES_MAX);
            if full {
                break;
            }
            let (name, spec, key, _) = items.next().expect("peeked");
            bytes += size;
            names.push(name);
            batch.push((spec, Some(key)));
        }
        let results = client.submit_batch(batch).await.map_err(|error| {
            resume(done.len());
            let hint = format!(
                "{} may or may not have been submitted; run the same `baton submit` again with \
                 `--idempotency-key {base}`: it returns the workflows already made",
                if done.is_empty() {
                    "the workflows".to_string()
                } else {
                    format!("the workflows after the first {}", done.len())
                }
            );
            client_failure(
                error,
                CallKind::Write,
                Some(&format!("workflows from {} and on", names[0])),
                Some(hint),
            )
        })?;
        if results.len() != names.len() {
            resume(done.len());
            return Err(Failure::unknown(
                format!(
                    "outcome unknown: the answer to {} workflows had {} results",
                    names.len(),
                    results.len()
                ),
                format!(
                    "whether they were submitted is unknown; run the same command (same files, \
                     same order) with --idempotency-key {base}: it returns those already made"
                ),
            ));
        }
        // The whole call is committed: every result is printed, refusals after.
        let mut refused = Vec::new();
        for (name, result) in names.iter().zip(results) {
            use baton_client::proto::submit_batch_result::Outcome;
            let response = match result.outcome {
                Some(Outcome::Submitted(response)) => response,
                Some(Outcome::Rejected(reason)) => {
                    refused.push(format!("{name}: refused: {reason}"));
                    continue;
                }
                None => {
                    refused.push(format!("{name}: the answer has no outcome"));
                    continue;
                }
            };
            out.print_json_line(
                || {
                    let mut json = output::submit_json(&response);
                    json["file"] = Value::from(name.as_str());
                    json
                },
                || format!("{}\t{name}", response.workflow_id),
            )?;
            done.push((response.workflow_id, response.log_index));
        }
        if !refused.is_empty() {
            resume(done.len());
            return Err(Failure::failed(refused.join("; ")));
        }
    }
    if !args.wait {
        return Ok(());
    }
    // Every workflow followed to its end, in order; the first that did not succeed decides.
    let mut first_failure = None;
    for (workflow_id, log_index) in done {
        if let Err(error) = wait_for_end(&client, workflow_id, log_index).await {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// What the server counts against a batch's bytes for one item (its encoded spec and its key).
/// A spec close to the spec limit cannot go with its key in any batch; it is refused here,
/// naming its file, before anything is sent.
fn batch_item_bytes(display_name: &str, spec: &WorkflowSpec, key: &str) -> anyhow::Result<usize> {
    let size = prost::Message::encoded_len(spec) + key.len();
    if size > SUBMIT_BATCH_BYTES_MAX {
        return Err(Failure::usage(format!(
            "{display_name}: {size} bytes with its key, more than the {SUBMIT_BATCH_BYTES_MAX} \
             a batch may carry; submit it alone"
        )));
    }
    Ok(size)
}

/// Follows a workflow from `from_index` until it ends, printing step events to stderr; Ok only
/// if it succeeded. After a reconnect, or when the watch fails, the workflow's state is read
/// with Get, since the stream may have missed nothing yet the end may be known already.
async fn wait_for_end(client: &Client, workflow_id: u64, from_index: u64) -> anyhow::Result<()> {
    let mut watch = WorkflowWatch::new(client.clone(), workflow_id, from_index);
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => {
                let finished = event.kind == EventKind::WorkflowFinished as i32;
                if !event.step.is_empty() || finished {
                    eprintln!("{}", output::render_event_line(&event));
                }
                if finished {
                    return outcome(workflow_id, event.workflow_state, &event.message);
                }
            }
            Ok(Some(WatchUpdate::Resumed { .. })) => {
                if let Some(done) = finished_state(client, workflow_id).await? {
                    return done;
                }
            }
            Ok(None) => {
                // The watch saw the end; only reachable if that event was not handled above.
                return finished_state(client, workflow_id)
                    .await?
                    .unwrap_or_else(|| {
                        Err(Failure::failed(format!(
                            "workflow {workflow_id}: the watch ended early"
                        )))
                    });
            }
            Err(error) => {
                if let Ok(Some(done)) = finished_state(client, workflow_id).await {
                    return done;
                }
                let hint = format!(
                    "the workflow was submitted; follow it with `baton watch {workflow_id}`"
                );
                let mut failure = client_failure(
                    error,
                    CallKind::Read,
                    Some(&format!("watching workflow {workflow_id}")),
                    None,
                );
                if let Some(failure) = failure.downcast_mut::<Failure>() {
                    failure.hint = Some(hint);
                }
                return Err(failure);
            }
        }
    }
}

/// The wait's result when the workflow has finished, from a Get; `None` while it runs.
async fn finished_state(
    client: &Client,
    workflow_id: u64,
) -> anyhow::Result<Option<anyhow::Result<()>>> {
    let workflow = client
        .get(workflow_id, ReadConsistency::Linearizable)
        .await
        .map_err(|error| {
            client_failure(
                error,
                CallKind::Read,
                Some(&format!("workflow {workflow_id}")),
                None,
            )
        })?;
    if workflow.state == WorkflowState::Running as i32
        || workflow.state == WorkflowState::Unspecified as i32
    {
        return Ok(None);
    }
    Ok(Some(outcome(workflow_id, workflow.state, &workflow.reason)))
}

fn outcome(workflow_id: u64, state: i32, reason: &str) -> anyhow::Result<()> {
    if state == WorkflowState::Succeeded as i32 {
        return Ok(());
    }
    let state = output::workflow_state_name(state);
    let reason = reason.trim();
    Err(Failure::failed(if reason.is_empty() {
        format!("workflow {workflow_id} {state}")
    } else {
        format!("workflow {workflow_id} {state}: {reason}")
    }))
}

async fn watch(client: &Client, out: &Printer, args: WatchArgs) -> anyhow::Result<()> {
    let mut watch = WorkflowWatch::new(client.clone(), args.id, args.from_index);
    loop {
        match watch.next().await {
            Ok(Some(WatchUpdate::Event(event))) => out.print_line(&event)?,
            Ok(Some(WatchUpdate::Resumed { from_index, reason })) => {
                eprintln!("watch resumed from log index {from_index} after: {reason}");
            }
            Ok(None) => return Ok(()),
            Err(error) if error.code() == Some(tonic::Code::NotFound) => {
                return Err(Failure::failed(format!("workflow {} not found", args.id)));
            }
            Err(error) => {
                return Err(client_failure(
                    error,
                    CallKind::Read,
                    Some(&format!("watching workflow {}", args.id)),
                    None,
                ));
            }
        }
    }
}

/// `baton agent`: runs until SIGINT or SIGTERM, then stops its steps and returns.
async fn agent(
    endpoints: Endpoints,
    credentials: Credentials,
    args: AgentArgs,
) -> anyhow::Result<()> {
    let agent = Agent::builder(endpoints)
        .credentials(credentials)
        .name(args.name)
        .labels(args.labels)
        .slots(args.slots)
        .cpu_millis(args.cpu_millis)
        .memory_mb(args.memory_mb)
        .dial(args.dial)
        .build()
        .map_err(|error| match error {
            baton_client::agent::AgentError::InvalidConfig(_) => Failure::usage(error.to_string()),
            other => Failure::failed(other.to_string()),
        })?;
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

/// Reads, parses and validates a spec file (`-`: stdin). Every problem is a usage error naming
/// the file, and the line and column or the field.
fn read_spec(path: &Path) -> anyhow::Result<(String, WorkflowSpec)> {
    let from_stdin = path.as_os_str() == "-";
    let display_name = if from_stdin {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let mut bytes = Vec::new();
    // One byte past the limit is enough for the parser to say "too large" without us reading
    // a runaway file or pipe to its end.
    let limit = (SPEC_TEXT_BYTES_MAX + 1) as u64;
    let read = if from_stdin {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|error| Failure::usage(format!("cannot read {display_name}: {error}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{display_name}: not utf-8 text")))?;
    let format = if from_stdin {
        SpecFormat::Yaml
    } else {
        SpecFormat::from_path(path)
    };
    let spec = parse_spec(&text, format)
        .map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    validate_spec(&spec).map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    Ok((display_name, spec))
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

async fn get(client: &Client, out: &Printer, args: GetArgs) -> anyhow::Result<()> {
    let workflow = client
        .get(args.id, consistency(args.stale))
        .await
        .map_err(|error| {
            if error.code() == Some(tonic::Code::NotFound) {
                Failure::failed(format!("workflow {} not found", args.id))
            } else {
                client_failure(
                    error,
                    CallKind::Read,
                    Some(&format!("workflow {}", args.id)),
                    None,
                )
            }
        })?;
    out.print(
        || output::workflow_json(&workflow),
        || output::render_workflow(&workflow),
    )
}

async fn list(client: &Client, out: &Printer, args: ListArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return out.print(
            || Value::Array(Vec::new()),
            || output::render_workflow_list(&[]),
        );
    }
    let request = ListRequest {
        states: args.state.iter().map(|state| *state as i32).collect(),
        name_prefix: args.name_prefix.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        // No bigger pages than asked for; otherwise the server's default.
        page_size: args.limit.map_or(0, |limit| limit.min(1000) as u32),
        page_token: String::new(),
        consistency: consistency(args.stale) as i32,
    };
    let mut stream = Box::pin(client.list_all(request));
    let mut workflows: Vec<Workflow> = Vec::new();
    while let Some(workflow) = stream.next().await {
        let workflow =
            workflow.map_err(|error| client_failure(error, CallKind::Read, None, None))?;
        workflows.push(workflow);
        if args.limit.is_some_and(|limit| workflows.len() >= limit) {
            break;
        }
    }
    out.print(
        || Value::Array(workflows.iter().map(output::workflow_json).collect()),
        || output::render_workflow_list(&workflows),
    )
}

async fn cancel(client: &Client, out: &Printer, args: CancelArgs) -> anyhow::Result<()> {
    let object = format!("workflow {}", args.id);
    let response = client.cancel(args.id, args.reason).await.map_err(|error| {
        if error.code() == Some(tonic::Code::NotFound) {
            return Failure::failed(format!("{object} not found"));
        }
        let hint = format!(
            "run `baton cancel {}` again (cancelling twice is harmless), or `baton get {}`",
            args.id, args.id
        );
        client_failure(error, CallKind::Write, Some(&object), Some(hint))
    })?;
    let state = output::workflow_state_name(response.state);
    out.print(
        || serde_json::json!({ "workflow_id": args.id, "state": state }),
        || {
            if response.state == WorkflowState::Cancelled as i32
                || response.state == WorkflowState::Running as i32
            {
                format!("{object}: {state}")
            } else {
                format!("{object} had already finished: {state}")
            }
        },
    )
}

// ---- cluster ----

async fn cluster(client: &Client, out: &Printer, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { all: false } => {
            let status = client
                .cluster_status()
                .await
                .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
            out.print(
                || output::cluster_status_json(&status),
                || output::render_cluster_status(&status),
            )
        }
        ClusterCommand::Status { all: true } => cluster_status_all(client, out).await,
        ClusterCommand::Add { node_id, address } => {
            let object = format!("node {node_id}");
            let response = client.add_member(node_id, address).await.map_err(|error| {
                let hint =
                    "check with `baton cluster status`, then repeat if the node is not a member";
                client_failure(
                    error,
                    CallKind::Write,
                    Some(&format!("cannot add {object}")),
                    Some(hint.into()),
                )
            })?;
            out.print(
                || output::members_json(&response.members),
                || output::render_members(&response.members),
            )
        }
        ClusterCommand::Remove { node_id } => {
            let object = format!("node {node_id}");
            let response = client.remove_member(node_id).await.map_err(|error| {
                let hint =
                    "check with `baton cluster status`, then repeat if the node is still a member";
                client_failure(
                    error,
                    CallKind::Write,
                    Some(&format!("cannot remove {object}")),
                    Some(hint.into()),
                )
            })?;
            out.print(
                || output::members_json(&response.members),
                || output::render_members(&response.members),
            )
        }
        ClusterCommand::TransferLeader { node_id } => {
            let response = client.transfer_leader(node_id).await.map_err(|error| {
                let hint = "see who leads now with `baton cluster status`";
                client_failure(
                    error,
                    CallKind::Write,
                    Some("cannot transfer leadership"),
                    Some(hint.into()),
                )
            })?;
            out.print(
                || serde_json::json!({ "leader_id": response.leader_id }),
                || format!("leader is now node {}", response.leader_id),
            )
        }
        ClusterCommand::Snapshot {
            action: Some(SnapshotAction::Save { file }),
        } => save_snapshot(client, out, &file).await,
        ClusterCommand::Snapshot { action: None } => {
            let response = client.trigger_snapshot().await.map_err(|error| {
                let hint = "see the snapshot index with `baton cluster status`";
                client_failure(
                    error,
                    CallKind::Write,
                    Some("cannot build a snapshot"),
                    Some(hint.into()),
                )
            })?;
            out.print(
                || serde_json::json!({ "snapshot_index": response.snapshot_index }),
                || format!("snapshot built at log index {}", response.snapshot_index),
            )
        }
    }
}

/// Fetches a backup, checks its SHA-256 trailer, and writes it crash-safely to `file`.
async fn save_snapshot(client: &Client, out: &Printer, file: &Path) -> anyhow::Result<()> {
    use sha2::Digest;
    let (info, bytes) = client.save_snapshot().await.map_err(|error| {
        client_failure(error, CallKind::Read, Some("cannot save a snapshot"), None)
    })?;
    let intact = bytes.len() > 32 && {
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        sha2::Sha256::digest(body).as_slice() == trailer
    };
    if !intact {
        return Err(Failure::failed(
            "the snapshot received does not match its SHA-256 trailer; nothing written",
        ));
    }
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
    out.print(
        || {
            serde_json::json!({
                "file": file.display().to_string(),
                "index": info.index,
                "term": info.term,
                "state_hash": info.state_hash,
                "cluster_id": info.cluster_id,
                "bytes": info.file_bytes,
                "node_id": info.node_id,
            })
        },
        || {
            format!(
                "saved {} bytes to {}: log index {} (term {}), state hash {}, cluster {}, from node {}",
                info.file_bytes,
                file.display(),
                info.index,
                info.term,
                info.state_hash,
                info.cluster_id,
                info.node_id
            )
        },
    )
}

/// Asks every endpoint at once; prints every answer, then fails if any node did not answer.
async fn cluster_status_all(client: &Client, out: &Printer) -> anyhow::Result<()> {
    let endpoints = client.endpoints().as_slice();
    let answers = futures::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| client.cluster_status_of(endpoint)),
    )
    .await;
    let nodes: Vec<NodeStatus<'_>> = endpoints
        .iter()
        .zip(&answers)
        .map(|(endpoint, answer)| {
            (
                endpoint.to_string(),
                answer.as_ref().map_err(|error| error.to_string()),
            )
        })
        .collect();
    out.print(
        || {
            Value::Array(
                nodes
                    .iter()
                    .map(|(endpoint, answer)| match answer {
                        Ok(status) => serde_json::json!({
                            "endpoint": endpoint,
                            "status": output::cluster_status_json(status),
                            "error": null,
                        }),
                        Err(error) => serde_json::json!({
                            "endpoint": endpoint,
                            "status": null,
                            "error": error,
                        }),
                    })
                    .collect(),
            )
        },
        || output::render_cluster_statuses(&nodes),
    )?;
    let silent = answers.iter().filter(|answer| answer.is_err()).count();
    if silent > 0 {
        return Err(Failure::failed(format!(
            "{silent} of {} nodes did not answer",
            answers.len()
        )));
    }
    Ok(())
}

/// `baton token ...`.
async fn token(client: &Client, out: &Printer, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role } => {
            let created = client
                .create_token(&name, &role)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"id": created.id, "token": created.token}),
                || {
                    format!(
                        "id:    {}\ntoken: {}\n(shown once: store it now)",
                        created.id, created.token
                    )
                },
            )
        }
        TokenCommand::List => {
            let listed = client
                .list_tokens()
                .await
                .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
            out.print(
                || Value::Array(listed.tokens.iter().map(output::token_json).collect()),
                || output::render_tokens(&listed.tokens),
            )
        }
        TokenCommand::Revoke { id } => {
            let revoked = client
                .revoke_token(&id)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"id": id, "was_live": revoked.was_live}),
                || {
                    if revoked.was_live {
                        format!("token {id} revoked")
                    } else {
                        format!("token {id} was already revoked")
                    }
                },
            )
        }
        TokenCommand::Generate => unreachable!("handled before connecting"),
    }
}

async fn agents(client: &Client, out: &Printer) -> anyhow::Result<()> {
    let response = client
        .list_agents()
        .await
        .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
    out.print(
        || Value::Array(response.agents.iter().map(output::agent_json).collect()),
        || output::render_agents(&response.agents),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_too_large_for_any_batch_is_refused_by_name() {
        let mut spec = WorkflowSpec {
            name: "w".into(),
            ..Default::default()
        };
        assert!(batch_item_bytes("small.yaml", &spec, "k-1").is_ok());
        // Within a few bytes of the bound with its key fits; 17 bytes more do not.
        let key = "baton-0123456789abcdef-1";
        spec.input.insert("pad".into(), String::new());
        let base = prost::Message::encoded_len(&spec) + key.len();
        spec.input
            .insert("pad".into(), "x".repeat(SUBMIT_BATCH_BYTES_MAX - base - 8));
        let fits = prost::Message::encoded_len(&spec) + key.len();
        assert!(
            fits <= SUBMIT_BATCH_BYTES_MAX && fits > SUBMIT_BATCH_BYTES_MAX - 16,
            "{fits}"
        );
        assert_eq!(batch_item_bytes("edge.yaml", &spec, key).unwrap(), fits);
        spec.input.insert(
            "pad".into(),
            "x".repeat(SUBMIT_BATCH_BYTES_MAX - base - 8 + 17),
        );
        let error = batch_item_bytes("big.yaml", &spec, key).unwrap_err();
        assert!(error.to_string().starts_with("big.yaml: "), "{error}");
    }
}
