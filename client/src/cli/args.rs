//! The `baton` command line, as clap derive types: every command, flag and its help text.

use std::path::PathBuf;
use std::time::Duration;

use baton_client::proto::WorkflowState;
use baton_client::{ENDPOINTS_ENV, Endpoint, Endpoints};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// `0.1.0 (commit 0123456789ab)`: this build's version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BATON_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version = VERSION,
    about = "Submit, inspect and cancel Baton workflows, and administer the cluster",
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 bad usage or input, \
                  3 outcome unknown (the request may or may not have been applied)."
)]
pub struct Cli {
    /// Nodes to talk to, tried in order with failover: HOST:PORT or http://HOST:PORT,
    /// comma-separated. Without it (or BATON_ENDPOINTS): the context's, else 127.0.0.1:7001.
    #[arg(long, global = true, env = ENDPOINTS_ENV, value_name = "HOST:PORT,...")]
    pub endpoints: Option<Endpoints>,

    /// The named context to use (`baton context list`) instead of the current one. Flags and
    /// variables still beat what it says.
    #[arg(long, global = true, env = "BATON_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Deadline of each attempt of a call, e.g. 500ms, 10s, 1m (failover may make several).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Folder with `ca.pem`, `cert.pem`, `key.pem` and `token` (mutual TLS and bearer token);
    /// `batond dev` prints the one it made. Without credentials the client speaks plaintext.
    #[arg(long, global = true, env = "BATON_CREDENTIALS", value_name = "DIR")]
    pub credentials: Option<PathBuf>,

    /// PEM CA bundle the nodes' certificates chain to (beats the one in --credentials).
    #[arg(long, global = true, env = "BATON_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// PEM client (or, for `baton agent`, agent) certificate.
    #[arg(long, global = true, env = "BATON_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, global = true, env = "BATON_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// File holding the bearer token (`baton_ID_SECRET`).
    #[arg(long, global = true, env = "BATON_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// The namespace to act in: submits, lists, watches of every workflow, templates,
    /// schedules and triggers; `default` when not given. A workflow named by id is found in
    /// whatever namespace it is. `token create -n NS` (the flag itself, not the variable) makes
    /// a token for that namespace only.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "BATON_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,

    /// Whether --namespace was given on the command line (not only by BATON_NAMESPACE).
    #[arg(skip)]
    pub namespace_flag: bool,

    /// Format of the logs on stderr (an agent's, or a command's retries and failovers).
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Whether `--namespace` came from the command line (a global flag: given to any subcommand),
/// rather than from BATON_NAMESPACE.
pub fn namespace_on_command_line(matches: &clap::ArgMatches) -> bool {
    let mut at = Some(matches);
    while let Some(m) = at {
        if m.value_source("namespace") == Some(clap::parser::ValueSource::CommandLine) {
            return true;
        }
        at = m.subcommand().map(|(_, sub)| sub);
    }
    false
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// Stable JSON for scripts: lowercase enum names, times in ms since the epoch, ids as numbers.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields included (for log collectors).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit workflow specs (YAML, or JSON for a .json file) and print the new workflows' ids.
    Submit(SubmitArgs),
    /// Show one workflow and its steps.
    Get(GetArgs),
    /// List workflows, newest first.
    List(ListArgs),
    /// Cancel a workflow: pending steps never start, running ones are told to stop.
    Cancel(CancelArgs),
    /// Pause a running workflow: no new step starts; running steps finish.
    Pause(IdArgs),
    /// Resume a paused workflow.
    Resume(IdArgs),
    /// Run a finished workflow again from its failed, cancelled or timed-out steps (or from
    /// --from STEP), with new attempts; the other steps keep their results.
    Retry(RetryArgs),
    /// Answer a step that waits for a signal (a `wait` step, e.g. an approval): it succeeds
    /// with --data as its output, or fails with --reject. Needs the operator role.
    Signal(SignalArgs),
    /// Cluster status and administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Follow a workflow's events as they happen, until it ends.
    Watch(WatchArgs),
    /// Print one attempt of a step in full: how it ended, its captured output and error (the
    /// latest attempt unless --attempt names another).
    Logs(LogsArgs),
    /// Every event of a workflow since it was submitted: each attempt (agent, fencing token,
    /// times, outcome, bytes reported), retries, cancels and who asked. Kept until the workflow
    /// is purged.
    History(HistoryArgs),
    /// Read purged workflows from an archive folder (`batond --archive-dir`).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Templates: registered, versioned workflow specs to submit by name (`submit --template`)
    /// or to schedule (docs/SCHEDULES.md, "Templates").
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Schedules: workflows that start themselves, once per scheduled time (docs/SCHEDULES.md).
    /// Changes need the operator role.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Webhook triggers: a signed POST to a node's HTTP listener starts a run of a template
    /// (docs/SCHEDULES.md, "Webhook triggers"). Changes need the operator role.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Who changed what, newest first: submits, cancels, pauses, retries and signals of the
    /// workflows still held, and changes to tokens, namespaces, members, templates, schedules
    /// and triggers. In --namespace when given, else in every namespace the token may read.
    Audit(AuditArgs),
    /// List the agents known to the cluster and what they run.
    Agents,
    /// Run an agent on this machine: take steps from the cluster and run them, until
    /// SIGINT or SIGTERM (which stops the running steps first).
    Agent(AgentArgs),
    /// Namespaces: create, list, delete (changes need a cluster-wide admin token). Every
    /// workflow, template, schedule and trigger lives in one; `default` always exists.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Bearer tokens: create, list, revoke (admin role), or generate one offline.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Load a cluster with noop workflows and report throughput, latency and node resources
    /// (against --endpoints, or a throwaway local cluster with --start-cluster).
    Bench(crate::cli::bench::BenchArgs),
    /// Print a completion script for a shell, e.g. `baton completion bash >
    /// ~/.local/share/bash-completion/completions/baton`, or `source <(baton completion zsh)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print this build's version and the commit it was built from (`-o json` for scripts).
    Version,
    /// Named contexts (endpoints and a credentials folder) kept in the user's config folder;
    /// `batond dev` saves `dev`. The current one applies when no flag or variable says otherwise.
    #[command(subcommand)]
    Context(ContextCommand),
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only changes since then: a duration back from now (`1h`, `30m`, `7d`) or an RFC 3339
    /// time. Default: 24 hours.
    #[arg(long, value_name = "WHEN", default_value = "24h")]
    pub since: String,
    /// At most this many (1 to 10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Every namespace the token may read, whatever --namespace (or BATON_NAMESPACE) says.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts; `*` marks the current one.
    List,
    /// Make a context the current one.
    Use { name: String },
    /// Show a context (the current one without a name).
    Show { name: Option<String> },
    /// Add or replace a context.
    Set {
        name: String,
        /// HOST:PORT,... of the cluster's nodes.
        #[arg(long = "to", value_name = "HOST:PORT,...")]
        to: Endpoints,
        /// Its credentials folder (`ca.pem`, `cert.pem`, `key.pem`, `token`); none: plaintext.
        #[arg(long = "with-credentials", value_name = "DIR")]
        with_credentials: Option<PathBuf>,
    },
    /// Delete a context.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace: 1-63 of a-z 0-9 -, starting with a letter.
    Create {
        name: String,
        /// What it is for, shown by `namespace list`.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Change a namespace's description or quotas (those given; `default`'s too). 0 lifts a
    /// quota.
    Set {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List the namespaces the token may read: workflows, running, active steps, quotas.
    List,
    /// Delete an empty namespace (refused, naming what it holds, otherwise).
    Delete { name: String },
}

/// A namespace's quotas (docs/SECURITY.md, "Quotas"), each refusing what passes it with
/// RESOURCE_EXHAUSTED naming it, and its weight in fair scheduling.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// Running workflows at once.
    #[arg(long, value_name = "N")]
    pub max_running_workflows: Option<u64>,
    /// Ready plus running steps at once.
    #[arg(long, value_name = "N")]
    pub max_active_steps: Option<u64>,
    /// Submits per second, on average.
    #[arg(long, value_name = "N")]
    pub submits_per_second: Option<u32>,
    /// Submits at once after a quiet spell (default: the rate).
    #[arg(long, value_name = "N")]
    pub submit_burst: Option<u32>,
    /// Its share of the fleet when namespaces compete for agents (1 to 1000; default 1).
    #[arg(long, value_name = "N")]
    pub weight: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token in the cluster and print it (shown once; the cluster keeps its hash).
    /// With --namespace (or BATON_NAMESPACE), or --grant, the token acts only in those
    /// namespaces; without, everywhere.
    Create {
        /// A label for people, e.g. who holds it.
        #[arg(long)]
        name: String,
        /// admin, operator, submitter, reader or agent (agent tokens are cluster-wide).
        #[arg(long)]
        role: Option<String>,
        /// A role in one more namespace, NAMESPACE=ROLE; repeat for several.
        #[arg(long = "grant", value_parser = parse_label, value_name = "NAMESPACE=ROLE")]
        grants: Vec<(String, String)>,
    },
    /// List tokens (id, name, role, created, revoked); never their secrets.
    List,
    /// Revoke a token on every node (through the Raft log).
    Revoke {
        /// The token's id, as `baton token list` shows it.
        id: String,
    },
    /// Print a fresh random token without contacting any node, e.g. for
    /// `batond --bootstrap-token-file`.
    Generate,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The spec files; `-` reads standard input (as YAML). Several are all read and checked
    /// first (nothing is submitted if one is bad), then submitted in SubmitBatch calls of up to
    /// 256, each committed whole; one `ID<TAB>FILE` line (or JSON line) each. Nodes run with
    /// `--max-commands-per-entry 1` refuse batches: submit one file at a time there.
    #[arg(required_unless_present = "template", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Start a registered template (`baton template apply`) instead of files: its latest
    /// version, or NAME@VERSION. Its params are checked by the node.
    #[arg(long, value_name = "NAME[@VERSION]", conflicts_with = "files")]
    pub template: Option<String>,

    /// Deduplication key: submitting again with the same key returns the first workflow instead
    /// of creating another. Generated when absent (and printed if the outcome is unknown). With
    /// several files, file N (from 1) gets KEY-N, so a retry must name the same files in the
    /// same order.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// A value for a parameter the spec declares (`params:`); repeat for each. Checked before
    /// anything is sent: an undeclared name, a required parameter left out or a name given
    /// twice is a usage error naming it. With several files, each spec gets the same values.
    #[arg(short = 'p', long = "param", value_parser = parse_param, value_name = "NAME=VALUE")]
    pub params: Vec<(String, String)>,

    /// Follow the workflows until they end, printing step events to stderr; exit 0 only if all
    /// succeeded, 1 if one failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The workflow id.
    pub id: u64,

    /// Start at this Raft log index (e.g. a submit's log_index); 0 = from the beginning.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub from_index: u64,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The workflow id.
    pub id: u64,

    /// Read the answering node's state without a quorum round: faster, possibly behind.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Print one purged workflow's archive line: its final state with every attempt, its spec
    /// and its history (the JSON of `baton get -o json` and `baton history -o json`).
    Get {
        /// The workflow id.
        id: u64,
        /// The archive folder (a node's --archive-dir, or a copy of it).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// List the purged workflows in an archive folder, oldest purge first.
    List {
        /// The archive folder (a node's --archive-dir, or a copy of it).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Register a workflow spec file under its name: version 1, or a new version when it
    /// changed (an unchanged spec keeps its version).
    Apply { file: PathBuf },
    /// List the templates with their latest version.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Show a template's latest version, or NAME@VERSION, with its whole spec.
    Get {
        #[arg(value_name = "NAME[@VERSION]")]
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Forget a template; its runs keep its name and version.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule from a file (YAML, or JSON for a .json file; `-` reads stdin).
    Create {
        file: PathBuf,
        /// Replace the schedule of the same name: its counters and runs stay, its next time is
        /// computed anew.
        #[arg(long)]
        replace: bool,
    },
    /// List the schedules: next time, runs started, skipped and missed.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Show one schedule, its next times and its running runs.
    Get {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Pause a schedule: it starts nothing until resumed.
    Pause { name: String },
    /// Resume a schedule: it fires from its next time after now (the paused times are not run).
    Resume { name: String },
    /// Delete a schedule; its runs go on.
    Delete { name: String },
    /// Run a schedule now (its overlap policy applies).
    Trigger { name: String },
    /// Start a run for every past time of the schedule between --from and --to (RFC 3339, both
    /// included) that has none yet, at most 1000, whatever its overlap policy.
    Backfill {
        name: String,
        #[arg(long, value_name = "TIME")]
        from: String,
        #[arg(long, value_name = "TIME")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Create a trigger from a file (YAML, or JSON for a .json file; `-` reads stdin). Without
    /// --secret-file a secret is generated and printed once: give it to the sender.
    Create {
        file: PathBuf,
        /// A file holding the secret senders sign with (16 to 256 bytes; a trailing newline is
        /// dropped).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// Replace the trigger of the same name (and its secret).
        #[arg(long)]
        replace: bool,
    },
    /// List the triggers.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Show one trigger (never its secret).
    Get {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Delete a trigger; the runs it started go on, later deliveries get 404.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The workflow id.
    pub id: u64,

    /// The step's name.
    pub step: String,

    /// The attempt, by the id events show ("attempt 9"); without it, the latest. Earlier
    /// attempts keep the last 4 KiB of their output and error.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u64>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This agent's name, unique in the cluster: [A-Za-z0-9._-], up to 128 characters.
    #[arg(long)]
    pub name: String,

    /// Labels that steps' constraints match: KEY=VALUE, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_parser = parse_label, value_name = "KEY=VALUE,...")]
    pub labels: Vec<(String, String)>,

    /// Steps run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: u32,

    /// CPU this agent offers, in thousandths of a core.
    #[arg(long, default_value_t = 4000)]
    pub cpu_millis: u32,

    /// Memory this agent offers, in MiB.
    #[arg(long, default_value_t = 8192)]
    pub memory_mb: u32,

    /// Serve this agent's Prometheus metrics on this address (`/metrics`), e.g. 0.0.0.0:9200.
    #[arg(long, env = "BATON_AGENT_METRICS_LISTEN", value_name = "IP:PORT", value_parser = parse_socket_addr)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Dial other addresses than the members' own when a node names the leader,
    /// MEMBER_ADDR=DIAL_ADDR,... (testing: the chaos suite puts a proxy on every agent link).
    #[arg(long, env = "BATON_AGENT_DIAL", value_delimiter = ',', value_parser = parse_dial, value_name = "MEMBER=DIAL,...")]
    pub dial: Vec<(Endpoint, Endpoint)>,

    /// A folder of secrets, one file per secret named as the secret: what `{{ secrets.NAME }}`
    /// in a step resolves to (DIR/NAMESPACE/NAME for a namespace's step; DIR/NAME, else
    /// BATON_SECRET_NAME in the environment, for default's; read at each attempt). Values never
    /// reach the cluster and are masked in what steps print.
    #[arg(long, env = "BATON_AGENT_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Take only steps of these namespaces (comma-separated); by default, every namespace's.
    /// An agent holding a namespace's secrets should serve that namespace alone: its steps can
    /// read what the agent can.
    #[arg(
        long,
        env = "BATON_AGENT_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE,..."
    )]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The workflow id.
    pub id: u64,

    /// Read the answering node's state without a quorum round: faster, possibly behind.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only workflows in these states: running, succeeded, failed, cancelled, timed_out
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_state, value_name = "STATE,...")]
    pub state: Vec<WorkflowState>,

    /// Only workflows carrying this label; repeat for several (all must match).
    #[arg(long = "label", value_parser = parse_label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,

    /// Only workflows whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,

    /// Only the runs of this schedule.
    #[arg(long, value_name = "NAME")]
    pub schedule: Option<String>,

    /// Every namespace the token may read, instead of --namespace's.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Print at most this many workflows (the newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Read the answering node's state without a quorum round: faster, possibly behind.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The workflow id.
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The workflow id.
    pub id: u64,

    /// Rerun this step and every step after it (even if it succeeded), instead of the failed,
    /// cancelled and timed-out steps.
    #[arg(long, value_name = "STEP")]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The workflow id.
    pub id: u64,

    /// The waiting step's name.
    pub step: String,

    /// JSON that becomes the step's output (steps after it read it as
    /// `{{ steps.STEP.output }}`); with --reject, why.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,

    /// Fail the step (the approval is refused) instead of completing it.
    #[arg(long)]
    pub reject: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The workflow id.
    pub id: u64,

    /// Why, recorded on the workflow.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members, and the answering node's log indexes and state hash.
    Status {
        /// Ask every endpoint given and print one row per node, to compare state hashes.
        #[arg(long)]
        all: bool,
    },
    /// Add a started node (run with its --node-id and no --initial-cluster) as a voter.
    Add {
        /// The new node's id.
        node_id: u64,
        /// Its address, HOST:PORT, as the other nodes reach it.
        address: String,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        node_id: u64,
    },
    /// Hand leadership to a node (or to any up-to-date voter), e.g. before restarting the leader.
    TransferLeader {
        /// The node to become leader; omitted: any up-to-date voter.
        node_id: Option<u64>,
    },
    /// Without a subcommand: build a snapshot now on the answering node, which lets it purge
    /// its log. `snapshot save FILE`: write a backup.
    Snapshot {
        #[command(subcommand)]
        action: Option<SnapshotAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Write a consistent backup of the cluster's state (everything acknowledged before the
    /// call) to FILE, for `batond restore`. The whole transfer must fit in --timeout.
    Save {
        /// Where to write it (written to FILE.tmp, synced, then renamed).
        file: PathBuf,
    },
}

/// An `IP:PORT` listen address, with an error that says what is expected.
fn parse_socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not IP:PORT (e.g. 127.0.0.1:9200)"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let ms = baton_proto::spec::parse_duration_ms(text).map_err(|error| error.to_string())?;
    if ms == 0 {
        return Err("the timeout must be more than 0".to_string());
    }
    Ok(Duration::from_millis(ms))
}

fn parse_state(text: &str) -> Result<WorkflowState, String> {
    baton_client::output::parse_workflow_state(text).ok_or_else(|| {
        format!(
            "unknown workflow state {text:?}: use running, succeeded, failed, cancelled or timed_out"
        )
    })
}

fn parse_dial(text: &str) -> Result<(Endpoint, Endpoint), String> {
    let (member, dial) = text
        .split_once('=')
        .ok_or_else(|| format!("dial {text:?} must be MEMBER_ADDR=DIAL_ADDR"))?;
    let parse =
        |addr: &str| Endpoint::parse(addr.trim()).map_err(|e| format!("dial {text:?}: {e}"));
    Ok((parse(member)?, parse(dial)?))
}

/// `NAME=VALUE`; the value is kept as written (spaces and `=` included).
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("parameter {text:?} must be NAME=VALUE")),
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("label {text:?} must be KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// docs/OPERATIONS.md documents every global flag and every `baton agent` flag with its
    /// environment variable.
    #[test]
    fn global_and_agent_flags_are_in_the_operations_guide() {
        let doc = std::fs::read_to_string(
            std::path::PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../docs/OPERATIONS.md"),
        )
        .expect("docs/OPERATIONS.md");
        let command = Cli::command();
        let agent = command
            .get_subcommands()
            .find(|s| s.get_name() == "agent")
            .expect("agent subcommand");
        let mut missing = Vec::new();
        for arg in command.get_arguments().chain(agent.get_arguments()) {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            if !doc.contains(&format!("`--{long}")) {
                missing.push(format!("--{long}"));
            }
            if let Some(env) = arg.get_env()
                && !doc.contains(&format!("`{}`", env.to_string_lossy()))
            {
                missing.push(env.to_string_lossy().into_owned());
            }
        }
        assert!(missing.is_empty(), "not in docs/OPERATIONS.md: {missing:?}");
    }

    #[test]
    fn only_a_namespace_flag_counts_as_given_on_the_command_line() {
        use clap::CommandFactory;
        let given = |args: &[&str]| {
            let matches = Cli::command()
                .try_get_matches_from(std::iter::once("baton").chain(args.iter().copied()))
                .unwrap();
            namespace_on_command_line(&matches)
        };
        assert!(given(&["-n", "team-a", "token", "list"]));
        assert!(given(&[
            "token",
            "create",
            "--name",
            "x",
            "--namespace",
            "team-a"
        ]));
        assert!(!given(&["token", "list"]));
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied()))
    }

    #[test]
    fn agent_dial_pairs_parse_and_bad_ones_name_the_pair() {
        let cli = parse(&[
            "agent",
            "--name",
            "a1",
            "--dial",
            "127.0.0.1:7001=127.0.0.1:9001, 127.0.0.1:7002=127.0.0.1:9002",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent command")
        };
        let pairs: Vec<(String, String)> = args
            .dial
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("127.0.0.1:7001".into(), "127.0.0.1:9001".into()),
                ("127.0.0.1:7002".into(), "127.0.0.1:9002".into())
            ]
        );
        let err = parse(&["agent", "--name", "a1", "--dial", "127.0.0.1:7001"]).unwrap_err();
        assert!(err.to_string().contains("MEMBER_ADDR=DIAL_ADDR"), "{err}");
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = parse(&[
            "get",
            "42",
            "-o",
            "json",
            "--endpoints",
            "a:1,http://b:2",
            "--timeout",
            "1500ms",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.endpoints.unwrap().to_string(), "a:1,b:2");
        assert_eq!(cli.timeout, Duration::from_millis(1500));
        assert!(matches!(
            cli.command,
            Command::Get(GetArgs {
                id: 42,
                stale: false
            })
        ));
    }

    #[test]
    fn defaults_point_at_a_local_node() {
        // The env var would override the default; tests must not depend on the caller's shell.
        if std::env::var_os(ENDPOINTS_ENV).is_some() {
            return;
        }
        let cli = parse(&["agents"]).unwrap();
        assert!(
            cli.endpoints.is_none(),
            "the context or the local default decides"
        );
        assert_eq!(cli.output, OutputFormat::Table);
        assert_eq!(cli.timeout, Duration::from_secs(10));
    }

    #[test]
    fn list_filters_parse() {
        let cli = parse(&[
            "list",
            "--state",
            "running,failed",
            "--label",
            "team=it",
            "--label",
            "env=prod",
            "--name-prefix",
            "onboard",
            "--limit",
            "5",
        ])
        .unwrap();
        let Command::List(list) = cli.command else {
            panic!("not a list")
        };
        assert_eq!(list.state, [WorkflowState::Running, WorkflowState::Failed]);
        assert_eq!(
            list.labels,
            [("team".into(), "it".into()), ("env".into(), "prod".into())]
        );
        assert_eq!(list.name_prefix.as_deref(), Some("onboard"));
        assert_eq!(list.limit, Some(5));
    }

    #[test]
    fn submit_and_cluster_commands_parse() {
        let cli = parse(&["submit", "-", "--idempotency-key", "k1"]).unwrap();
        let Command::Submit(submit) = cli.command else {
            panic!("not a submit")
        };
        assert_eq!(submit.files, [PathBuf::from("-")]);
        assert_eq!(submit.idempotency_key.as_deref(), Some("k1"));

        let cli = parse(&["cluster", "add", "4", "10.0.0.4:7101"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Add { node_id: 4, .. })
        ));
        let cli = parse(&["cluster", "transfer-leader"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::TransferLeader { node_id: None })
        ));
        let cli = parse(&["cluster", "status", "--all"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Status { all: true })
        ));
    }

    #[test]
    fn agent_watch_and_wait_parse() {
        let cli = parse(&[
            "agent",
            "--name",
            "worker-1",
            "--labels",
            "zone=eu,tier=gpu",
            "--slots",
            "8",
        ])
        .unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!("not an agent")
        };
        assert_eq!(agent.name, "worker-1");
        assert_eq!(
            agent.labels,
            [("zone".into(), "eu".into()), ("tier".into(), "gpu".into())]
        );
        assert_eq!(
            (agent.slots, agent.cpu_millis, agent.memory_mb),
            (8, 4000, 8192)
        );

        let cli = parse(&["watch", "42", "--from-index", "7"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Watch(WatchArgs {
                id: 42,
                from_index: 7
            })
        ));
        let cli = parse(&["submit", "a.yaml", "b.json"]).unwrap();
        let Command::Submit(submit) = cli.command else {
            panic!("not a submit")
        };
        assert_eq!(
            submit.files,
            [PathBuf::from("a.yaml"), PathBuf::from("b.json")]
        );
        assert!(parse(&["submit"]).is_err(), "a file is required");
        let cli = parse(&["submit", "f.yaml", "--wait"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Submit(SubmitArgs { wait: true, .. })
        ));
        assert!(parse(&["agent"]).is_err(), "--name is required");
        assert!(parse(&["agent", "--name", "a", "--slots", "0"]).is_err());
    }

    #[test]
    fn agent_metrics_address_and_log_format_parse() {
        let cli = parse(&[
            "--log-format",
            "json",
            "agent",
            "--name",
            "a",
            "--metrics-listen",
            "127.0.0.1:9200",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Agent(agent) = cli.command else {
            panic!("not an agent")
        };
        assert_eq!(
            agent.metrics_listen,
            Some("127.0.0.1:9200".parse().unwrap())
        );
        let cli = parse(&["agent", "--name", "a"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);

        let error = parse(&["agent", "--name", "a", "--metrics-listen", "localhost"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("is not IP:PORT"), "{error}");
        assert!(parse(&["--log-format", "xml", "agents"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["get", "abc"][..],
            &["list", "--state", "done"],
            &["list", "--label", "team"],
            &["get", "1", "--endpoints", "nohost"],
            &["get", "1", "--timeout", "0s"],
            &["get", "1", "-o", "yaml"],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
