//! Flags + environment (`BATON_*`) + an optional TOML file -> one validated [`Config`].
//! Precedence: flag, then environment, then file, then default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use baton_security::TlsFiles;

use crate::raft::RaftTiming;
pub use crate::security::SecurityConfig;

#[derive(Parser, Debug)]
#[command(
    name = "batond",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BATON_COMMIT"), ")"),
    about = "Baton node: a fault-tolerant workflow orchestrator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Subcommands>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Subcommands {
    /// Start a local three-node cluster for trying Baton (data in ./.baton-dev).
    Dev(DevArgs),
    /// Seed an empty data dir from a backup (`baton cluster snapshot save FILE`) as one member of
    /// a new cluster. Run it for every member with the same --from and --initial-cluster, then
    /// start the nodes as usual. See docs/OPERATIONS.md.
    Restore(RestoreArgs),
    /// Disaster recovery when a majority is lost for good: rewrite this survivor's data dir into
    /// a single-voter cluster of this node (everything in its log is kept), then start it and add
    /// new nodes with `baton cluster add`. Stop the node first. See docs/OPERATIONS.md.
    Recover(RecoverArgs),
    /// Make a CA and the certificates a deployment needs (nodes, agents, clients) and a
    /// bootstrap admin token, in one folder; files already there are kept. See docs/SECURITY.md.
    Certs(CertsArgs),
    /// Print the JSON API's OpenAPI document (what `/api/v1/openapi.json` serves) and exit.
    Openapi,
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// The folder to write to (created if needed): `ca.pem` and `ca-key.pem`, `node-ID.pem` and
    /// `node-ID-key.pem` per node, a credentials folder `agent-NAME/` or `client-NAME/` (ca.pem,
    /// cert.pem, key.pem) per agent and client, and `bootstrap-token`.
    #[arg(long)]
    pub out: PathBuf,
    /// A node, `ID=HOST[,HOST...]`: its id and the names or addresses other parties dial it by
    /// (loopback names are always included). Repeat for each node.
    #[arg(long = "node", value_name = "ID=HOSTS")]
    pub nodes: Vec<String>,
    /// An agent's name (the `baton agent --name` it runs with; its certificate allows that name
    /// and `NAME.anything`, for a pool of agents sharing one certificate). Repeatable.
    #[arg(long = "agent", value_name = "NAME")]
    pub agents: Vec<String>,
    /// A client's name (a person or a program using the CLI or the API). Repeatable.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Also save a client context (as `batond dev` saves `dev`; `baton context list`) that
    /// reaches the nodes with a client's credentials folder: `NAME` when one --client is given,
    /// `NAME=CLIENT` to pick one. A folder without a token gets the bootstrap token, so the
    /// context works at once; give it a token of its own later (docs/SECURITY.md).
    #[arg(long, value_name = "NAME[=CLIENT]")]
    pub context: Option<String>,
    /// The context's endpoints, `HOST:PORT,...` [default: each --node's first host, port 7001].
    #[arg(long, value_name = "HOST:PORT,...", requires = "context")]
    pub endpoints: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The new node's data dir: must be empty or absent.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new node's id.
    #[arg(long)]
    pub node_id: u64,
    /// The new cluster's members, `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (as in `batond
    /// --initial-cluster`); the same on every member.
    #[arg(long)]
    pub initial_cluster: String,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The surviving node's data dir (kept as a copy beside it before the rewrite).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The surviving node's id (the one its data dir belongs to).
    #[arg(long)]
    pub node_id: u64,
    /// HOST:PORT where the other nodes will reach this node (its --listen, or a name for it).
    #[arg(long)]
    pub address: String,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the nodes keep their data.
    #[arg(long, default_value = ".baton-dev")]
    pub data_dir: PathBuf,
    /// gRPC port of node 1; nodes 2 and 3 take the next two.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Metrics port of node 1; nodes 2 and 3 take the next two, the agent the one after.
    #[arg(long, default_value_t = 9101)]
    pub metrics_base_port: u16,
    /// HTTPS (JSON API) port of node 1; nodes 2 and 3 take the next two.
    #[arg(long, default_value_t = 8441)]
    pub http_base_port: u16,
    /// Start from empty data folders.
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every node setting; each may also come from `BATON_<NAME>` or the config file.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    /// A TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "BATON_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's Raft id (at least 1, never reused within a cluster).
    #[arg(long, env = "BATON_NODE_ID")]
    pub node_id: Option<u64>,
    /// gRPC address for clients, agents and peers [default: 127.0.0.1:7001].
    #[arg(long, env = "BATON_LISTEN")]
    pub listen: Option<String>,
    /// Where this node keeps its Raft log and snapshots.
    #[arg(long, env = "BATON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The founding members, `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. Omit it on a node that will
    /// be added to a running cluster with `baton cluster add`.
    #[arg(long, env = "BATON_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Also serve `grpc.health.v1` alone on this address, in plaintext and without
    /// authentication: for probes that cannot present a certificate (Kubernetes gRPC probes,
    /// load balancers). It answers only health checks.
    #[arg(long, env = "BATON_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// Serve the JSON API (`/api/v1/`) on this address: HTTPS with the node's certificate and
    /// no client certificate asked for; callers present a bearer token (plaintext and open to
    /// all with --insecure). See docs/HTTP.md.
    #[arg(long, env = "BATON_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Raft heartbeat interval in ms [default: 75].
    #[arg(long, env = "BATON_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout in ms [default: 300].
    #[arg(long, env = "BATON_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout in ms [default: 600].
    #[arg(long, env = "BATON_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many applied entries [default: 20000].
    #[arg(long, env = "BATON_SNAPSHOT_EVERY_ENTRIES")]
    pub snapshot_every_entries: Option<u64>,
    /// Log entries kept behind a snapshot for slow followers [default: 2000].
    #[arg(long, env = "BATON_LOG_KEPT_BEHIND_SNAPSHOT")]
    pub log_kept_behind_snapshot: Option<u64>,
    /// Most commands (submits, reports, ...) the leader groups into one log entry while earlier
    /// entries are in flight; 1 turns grouping off: every command is written at once, in an entry
    /// of its own [default: 1024].
    #[arg(long, env = "BATON_MAX_COMMANDS_PER_ENTRY")]
    pub max_commands_per_entry: Option<usize>,
    /// Under load, how long (ms) a command may wait at most for others to share its log entry,
    /// while they keep arriving (it goes once none came for 2 ms). Fewer, larger entries cost the
    /// nodes far less CPU per workflow for a few ms of latency; 0 turns it off. A lone client is
    /// never held back [default: 5].
    #[arg(long, env = "BATON_ENTRY_LINGER_MS")]
    pub entry_linger_ms: Option<u64>,
    /// Close every gRPC connection (gracefully) this many seconds after it opened, so clients
    /// reconnect and a rotated CA or a revoked certificate reaches every connection within it
    /// (plus 30 s for streams to finish) [default: 1800].
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE_SECS")]
    pub max_connection_age_secs: Option<u64>,
    /// Free space (MiB) kept in reserve on the data dir's filesystem: below it, this node (as
    /// leader) refuses new workflows with RESOURCE_EXHAUSTED and hands leadership to a voter with
    /// room, until free space is back above the reserve plus a margin; 0 turns it off
    /// [default: 256].
    #[arg(long, env = "BATON_DISK_RESERVE_MB")]
    pub disk_reserve_mb: Option<u64>,
    /// How long a finished workflow stays in the cluster's state when its spec sets no
    /// `retention`, e.g. `7d`, `12h`; then it is purged (and archived, with --archive-dir)
    /// [default: 7d].
    #[arg(long, env = "BATON_RETENTION")]
    pub retention: Option<String>,
    /// How long a purged workflow's id and idempotency key are remembered after the purge: a
    /// submit retried with the key within it still gets the purged workflow's id, and `baton get`
    /// says when it was purged [default: 24h].
    #[arg(long, env = "BATON_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<String>,
    /// Write every workflow this node purges (spec, final state, attempts, history) to this
    /// folder as JSON lines before it leaves the state; a failed write stops the node rather than
    /// lose it. See docs/OPERATIONS.md, "Retention and archive".
    #[arg(long, env = "BATON_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Dial other members at different addresses than the membership lists,
    /// `MEMBER_ADDR=DIAL_ADDR,...` (testing: the chaos suite puts a proxy on every link).
    #[arg(long, env = "BATON_PEER_DIAL")]
    pub peer_dial: Option<String>,
    /// Serve plaintext gRPC with no authentication at all. Without it batond requires
    /// --tls-ca, --tls-cert and --tls-key (see docs/SECURITY.md).
    #[arg(long, env = "BATON_INSECURE")]
    #[serde(default)]
    pub insecure: bool,
    /// PEM bundle of the CA that every peer, agent and client certificate must chain to
    /// (re-read when it changes).
    #[arg(long, env = "BATON_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this node, with the URI SAN `spiffe://baton/node/ID`.
    #[arg(long, env = "BATON_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BATON_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A file holding the first admin token (`baton_ID_SECRET`, e.g. from `baton token
    /// generate`), recorded by the first leader while the cluster has no token.
    #[arg(long, env = "BATON_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
}

/// An optional `IP:PORT` setting; the error names the flag.
fn optional_addr(flag: &str, text: Option<&str>) -> Result<Option<SocketAddr>, String> {
    text.map(|text| {
        text.parse()
            .map_err(|_| format!("{flag}: {text:?} is not IP:PORT"))
    })
    .transpose()
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Empty when the node joins an existing cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    /// `--http-listen`: the JSON API's address.
    pub http_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub timing: RaftTiming,
    /// Member address -> address actually dialled (`--peer-dial`); empty unless testing.
    pub peer_dial: BTreeMap<String, String>,
    /// `--max-connection-age-secs`.
    pub max_connection_age: std::time::Duration,
    /// `--disk-reserve-mb` in bytes; 0 when the reserve is off.
    pub disk_reserve_bytes: u64,
    pub lifecycle: Lifecycle,
    pub security: SecurityConfig,
}

/// How long finished work is kept, and where it goes when purged.
#[derive(Clone, Debug, PartialEq)]
pub struct Lifecycle {
    /// `--retention`.
    pub default_retention_ms: u64,
    /// `--idempotency-window`.
    pub idempotency_window_ms: u64,
    /// `--archive-dir`.
    pub archive_dir: Option<PathBuf>,
}

/// `--retention` when not given.
pub const RETENTION_DEFAULT_MS: u64 = 7 * 24 * 3_600_000;
/// `--idempotency-window` when not given.
pub const IDEMPOTENCY_WINDOW_DEFAULT_MS: u64 = 24 * 3_600_000;

/// A duration flag (`7d`, `90s`), in the bounds a workflow's own `retention` has; the error
/// names the flag.
fn duration_flag(flag: &str, text: Option<&str>, default_ms: u64) -> Result<u64, String> {
    use baton_proto::limits::{RETENTION_MS_MAX, RETENTION_MS_MIN};
    use baton_proto::spec::{format_duration_ms, parse_duration_ms};
    let Some(text) = text else {
        return Ok(default_ms);
    };
    let ms = parse_duration_ms(text).map_err(|e| format!("{flag}: {e}"))?;
    if !(RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&ms) {
        return Err(format!(
            "{flag}: {text:?} is outside {}..={}",
            format_duration_ms(RETENTION_MS_MIN),
            format_duration_ms(RETENTION_MS_MAX)
        ));
    }
    Ok(ms)
}

impl NodeArgs {
    /// Fills what flags and environment left unset from the config file, then validates.
    pub fn resolve(mut self) -> Result<Config, String> {
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("config file {}: {e}", path.display()))?;
            let file: NodeArgs = toml::from_str(&text)
                .map_err(|e| format!("config file {}: {e}", path.display()))?;
            self.merge_from(file);
        }
        self.validate()
    }

    fn merge_from(&mut self, file: NodeArgs) {
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = file.$field; } )* };
        }
        fill!(
            node_id,
            listen,
            data_dir,
            initial_cluster,
            metrics_listen,
            health_listen,
            http_listen,
            log_format,
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_every_entries,
            log_kept_behind_snapshot,
            max_commands_per_entry,
            entry_linger_ms,
            max_connection_age_secs,
            disk_reserve_mb,
            retention,
            idempotency_window,
            archive_dir,
            peer_dial,
            tls_ca,
            tls_cert,
            tls_key,
            bootstrap_token_file
        );
        self.insecure |= file.insecure;
    }

    fn validate(self) -> Result<Config, String> {
        let security = self.security()?;
        let node_id = self
            .node_id
            .ok_or("--node-id is required (or BATON_NODE_ID, or node_id in the config file)")?;
        if node_id == 0 {
            return Err("--node-id: must be at least 1".into());
        }
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:7001".into());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| format!("--listen: {listen_text:?} is not IP:PORT"))?;
        let data_dir = self
            .data_dir
            .ok_or("--data-dir is required (or BATON_DATA_DIR, or data_dir in the config file)")?;
        let initial_cluster = match &self.initial_cluster {
            None => BTreeMap::new(),
            Some(text) => parse_initial_cluster(text)?,
        };
        if !initial_cluster.is_empty() && !initial_cluster.contains_key(&node_id) {
            let ids: Vec<String> = initial_cluster.keys().map(u64::to_string).collect();
            return Err(format!(
                "--node-id {node_id} is not in --initial-cluster (ids {})",
                ids.join(", ")
            ));
        }
        let metrics_listen = optional_addr("--metrics-listen", self.metrics_listen.as_deref())?;
        let health_listen = optional_addr("--health-listen", self.health_listen.as_deref())?;
        let http_listen = optional_addr("--http-listen", self.http_listen.as_deref())?;
        let defaults = RaftTiming::default();
        let timing = RaftTiming {
            heartbeat_ms: self.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .unwrap_or(defaults.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .unwrap_or(defaults.election_timeout_max_ms),
            snapshot_every_entries: self
                .snapshot_every_entries
                .unwrap_or(defaults.snapshot_every_entries),
            log_kept_behind_snapshot: self
                .log_kept_behind_snapshot
                .unwrap_or(defaults.log_kept_behind_snapshot),
            commands_per_entry_max: self
                .max_commands_per_entry
                .unwrap_or(defaults.commands_per_entry_max),
            entry_linger: self
                .entry_linger_ms
                .map_or(defaults.entry_linger, std::time::Duration::from_millis),
        };
        if timing.election_timeout_min_ms <= timing.heartbeat_ms * 2 {
            return Err(format!(
                "--election-timeout-min-ms ({}) must be more than twice --heartbeat-ms ({})",
                timing.election_timeout_min_ms, timing.heartbeat_ms
            ));
        }
        if timing.election_timeout_max_ms <= timing.election_timeout_min_ms {
            return Err(format!(
                "--election-timeout-max-ms ({}) must be more than --election-timeout-min-ms ({})",
                timing.election_timeout_max_ms, timing.election_timeout_min_ms
            ));
        }
        if timing.snapshot_every_entries == 0 {
            return Err("--snapshot-every-entries: must be at least 1".into());
        }
        if !(1..=crate::limits::COMMANDS_PER_ENTRY_MAX).contains(&timing.commands_per_entry_max) {
            return Err(format!(
                "--max-commands-per-entry ({}) must be between 1 and {}",
                timing.commands_per_entry_max,
                crate::limits::COMMANDS_PER_ENTRY_MAX
            ));
        }
        if timing.entry_linger > crate::limits::ENTRY_LINGER_MAX {
            return Err(format!(
                "--entry-linger-ms ({}) must be at most {}",
                timing.entry_linger.as_millis(),
                crate::limits::ENTRY_LINGER_MAX.as_millis()
            ));
        }
        let peer_dial = match &self.peer_dial {
            None => BTreeMap::new(),
            Some(text) => parse_peer_dial(text)?,
        };
        let max_connection_age = match self.max_connection_age_secs {
            None => crate::limits::CONNECTION_AGE_DEFAULT,
            Some(0) => return Err("--max-connection-age-secs: must be at least 1".into()),
            Some(secs) => std::time::Duration::from_secs(secs),
        };
        let disk_reserve_mb = self
            .disk_reserve_mb
            .unwrap_or(crate::limits::DISK_RESERVE_MB_DEFAULT);
        let disk_reserve_bytes = disk_reserve_mb
            .checked_mul(1024 * 1024)
            .ok_or_else(|| format!("--disk-reserve-mb ({disk_reserve_mb}) is too large"))?;
        let lifecycle = Lifecycle {
            default_retention_ms: duration_flag(
                "--retention",
                self.retention.as_deref(),
                RETENTION_DEFAULT_MS,
            )?,
            idempotency_window_ms: duration_flag(
                "--idempotency-window",
                self.idempotency_window.as_deref(),
                IDEMPOTENCY_WINDOW_DEFAULT_MS,
            )?,
            archive_dir: self.archive_dir,
        };
        Ok(Config {
            node_id,
            listen,
            data_dir,
            initial_cluster,
            metrics_listen,
            health_listen,
            http_listen,
            log_format: self.log_format.unwrap_or_default(),
            timing,
            peer_dial,
            max_connection_age,
            disk_reserve_bytes,
            lifecycle,
            security,
        })
    }

    /// Secure by default: TLS files are required unless `--insecure` says otherwise.
    fn security(&self) -> Result<SecurityConfig, String> {
        let tls_flags = [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--bootstrap-token-file", &self.bootstrap_token_file),
        ];
        if self.insecure {
            let given: Vec<&str> = tls_flags
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(flag, _)| *flag)
                .collect();
            if !given.is_empty() {
                return Err(format!(
                    "--insecure serves plaintext without authentication; it cannot be combined \
                     with {}",
                    given.join(", ")
                ));
            }
            return Ok(SecurityConfig::Insecure);
        }
        let missing: Vec<&str> = tls_flags[..3]
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(SecurityConfig::Secure {
                tls: TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
                bootstrap_token_file: self.bootstrap_token_file.clone(),
            }),
            _ => Err(format!(
                "batond serves mutual TLS only, and {} {} missing; give them (see \
                 docs/SECURITY.md; `batond dev` makes a local CA), or pass --insecure to serve \
                 plaintext with no authentication",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            )),
        }
    }
}

/// Parses `--peer-dial`: `MEMBER_HOST:PORT=DIAL_HOST:PORT,...`.
pub fn parse_peer_dial(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut dial = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (member, target) = item
            .split_once('=')
            .ok_or_else(|| format!("--peer-dial: {item:?} is not MEMBER_ADDR=DIAL_ADDR"))?;
        for addr in [member, target] {
            addr.parse::<SocketAddr>()
                .map_err(|_| format!("--peer-dial: {addr:?} is not IP:PORT"))?;
        }
        dial.insert(member.to_owned(), target.to_owned());
    }
    Ok(dial)
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.parse().ok().filter(|&id| id > 0).ok_or_else(|| {
            format!("--initial-cluster: {id:?} in {item:?} is not a node id (1 or more)")
        })?;
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(format!(
                "--initial-cluster: {addr:?} in {item:?} is not HOST:PORT"
            ));
        }
        if members.insert(id, addr.to_owned()).is_some() {
            return Err(format!("--initial-cluster: node id {id} appears twice"));
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster: no members given".into());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_dial_maps_member_addresses_and_names_bad_items() {
        let dial = parse_peer_dial("127.0.0.1:7001=127.0.0.1:9001, 127.0.0.1:7002=127.0.0.1:9002")
            .unwrap();
        assert_eq!(dial["127.0.0.1:7001"], "127.0.0.1:9001");
        assert_eq!(dial.len(), 2);
        assert!(parse_peer_dial("").unwrap().is_empty());
        let err = parse_peer_dial("127.0.0.1:7001").unwrap_err();
        assert!(err.contains("is not MEMBER_ADDR=DIAL_ADDR"), "{err}");
        let err = parse_peer_dial("127.0.0.1:7001=proxy:1").unwrap_err();
        assert!(err.contains("\"proxy:1\" is not IP:PORT"), "{err}");
    }

    fn args(list: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["batond", "--insecure"];
        argv.extend_from_slice(list);
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .node
            .resolve()
    }

    /// docs/OPERATIONS.md's configuration reference names every flag, environment variable and
    /// config-file key the clap definitions have, so the two cannot drift apart.
    #[test]
    fn every_setting_is_in_the_operations_guide() {
        use clap::CommandFactory;
        let doc = std::fs::read_to_string(
            std::path::PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../docs/OPERATIONS.md"),
        )
        .expect("docs/OPERATIONS.md");
        let mut missing = Vec::new();
        let command = Cli::command();
        let subcommands = command.get_subcommands().flat_map(|s| s.get_arguments());
        for arg in command.get_arguments().chain(subcommands) {
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
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let key = long.replace('-', "_");
            if !matches!(long, "config" | "help" | "version") && !doc.contains(&format!("`{key}`"))
            {
                missing.push(format!("file key {key}"));
            }
        }
        assert!(missing.is_empty(), "not in docs/OPERATIONS.md: {missing:?}");
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn a_full_command_line_resolves() {
        let config = args(&[
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:7002",
            "--data-dir",
            "/tmp/x",
            "--initial-cluster",
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        ])
        .unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.initial_cluster.len(), 3);
        assert_eq!(config.initial_cluster[&3], "127.0.0.1:7003");
        assert_eq!(config.disk_reserve_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn the_disk_reserve_comes_in_mib_and_zero_turns_it_off() {
        let base = ["--node-id", "1", "--data-dir", "/x"];
        let with = |extra: &[&str]| {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            args(&argv)
        };
        assert_eq!(
            with(&["--disk-reserve-mb", "16"])
                .unwrap()
                .disk_reserve_bytes,
            16 * 1024 * 1024
        );
        assert_eq!(
            with(&["--disk-reserve-mb", "0"])
                .unwrap()
                .disk_reserve_bytes,
            0
        );
        let err = with(&["--disk-reserve-mb", &u64::MAX.to_string()]).unwrap_err();
        assert!(
            err.contains("--disk-reserve-mb (18446744073709551615) is too large"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batond.toml");
        std::fs::write(&file, "disk_reserve_mb = 1024\n").unwrap();
        let config = with(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(config.disk_reserve_bytes, 1024 * 1024 * 1024);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--data-dir", "/x"], "--node-id is required"),
            (
                &["--node-id", "0", "--data-dir", "/x"],
                "--node-id: must be at least 1",
            ),
            (&["--node-id", "1"], "--data-dir is required"),
            (
                &["--node-id", "1", "--data-dir", "/x", "--listen", "nowhere"],
                "--listen: \"nowhere\"",
            ),
            (
                &[
                    "--node-id",
                    "4",
                    "--data-dir",
                    "/x",
                    "--initial-cluster",
                    "1=a:1,2=b:2",
                ],
                "--node-id 4 is not in --initial-cluster (ids 1, 2)",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "/x",
                    "--initial-cluster",
                    "1=a:1,1=b:2",
                ],
                "node id 1 appears twice",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "/x",
                    "--initial-cluster",
                    "1=a",
                ],
                "\"a\" in \"1=a\" is not HOST:PORT",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "/x",
                    "--max-commands-per-entry",
                    "0",
                ],
                "--max-commands-per-entry (0) must be between 1 and 65536",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "/x",
                    "--entry-linger-ms",
                    "101",
                ],
                "--entry-linger-ms (101) must be at most 100",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "/x",
                    "--heartbeat-ms",
                    "200",
                ],
                "must be more than twice --heartbeat-ms",
            ),
        ];
        for (argv, expected) in cases {
            let err = args(argv).expect_err(expected);
            assert!(err.contains(expected), "{argv:?}: {err}");
        }
    }

    #[test]
    fn plaintext_needs_insecure_and_the_error_names_the_missing_flags() {
        let parse = |list: &[&str]| {
            let mut argv = vec!["batond", "--node-id", "1", "--data-dir", "/x"];
            argv.extend_from_slice(list);
            Cli::try_parse_from(argv).unwrap().node.resolve()
        };
        let err = parse(&[]).unwrap_err();
        assert!(
            err.contains("--tls-ca, --tls-cert, --tls-key are missing")
                && err.contains("--insecure"),
            "{err}"
        );
        let err = parse(&["--tls-ca", "/ca.pem", "--tls-key", "/k.pem"]).unwrap_err();
        assert!(err.contains("--tls-cert is missing"), "{err}");
        let config = parse(&["--tls-ca", "/c", "--tls-cert", "/n", "--tls-key", "/k"]).unwrap();
        assert!(matches!(config.security, SecurityConfig::Secure { .. }));
        let err = parse(&["--insecure", "--tls-ca", "/c"]).unwrap_err();
        assert!(err.contains("cannot be combined with --tls-ca"), "{err}");
        assert!(matches!(
            parse(&["--insecure"]).unwrap().security,
            SecurityConfig::Insecure
        ));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batond.toml");
        std::fs::write(
            &file,
            "node_id = 3\ndata_dir = \"/from/file\"\nheartbeat_ms = 50\n",
        )
        .unwrap();
        let config = args(&[
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            "/from/flag",
        ])
        .unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.timing.heartbeat_ms, 50);

        std::fs::write(&file, "node_idd = 3\n").unwrap();
        let err = args(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("unknown field `node_idd`"), "{err}");
    }
}
