//! The agent runtime: runs the steps a Baton cluster assigns to this machine.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use baton_client::Endpoints;
//! use baton_client::agent::{Agent, TaskContext, TaskError};
//!
//! let agent = Agent::builder(Endpoints::parse("10.0.0.1:7001,10.0.0.2:7001")?)
//!     .name("worker-1")
//!     .label("zone", "eu")
//!     .slots(8)
//!     .handler("resize-image", |ctx: TaskContext| async move {
//!         // ctx.payload(), ctx.inputs(), ctx.attempt_id() (the fencing token) ...
//!         ctx.cancelled().await; // or race real work against it
//!         Ok::<_, TaskError>(String::new())
//!     })
//!     .build()?;
//! agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
//!
//! Code map: `runtime` is the event loop (sessions, attempts, reports); `lease` the pure
//! self-fencing rules; `executor/` how each task type runs; `template` the `BATON_*`
//! environment and `{{ ... }}` templates; `handler` the application's side (`Handler`,
//! `TaskContext`); `metrics` every metric the agent emits; `tail` and `backoff` small pieces
//! with their own tests.
//!
//! Architecture invariant: the agent never runs an attempt past the moment its lease could
//! have expired on the leader. Every path that loses the lease (an ack that omits it, a
//! deadline passing while cut off, a reconnect that does not re-attach it) kills the attempt's
//! whole process group and drops its result; only the cluster decides what happens next.

pub mod backoff;
pub mod executor;
mod handler;
pub mod lease;
pub mod metrics;
mod runtime;
pub mod secrets;
pub mod tail;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use executor::{STOP_GRACE, TaskResult};
pub use handler::{Handler, StopReason, TaskContext, TaskContextParts, TaskError};
pub use runtime::LEADER_METADATA_KEY;

use crate::client::ClientConfig;
use crate::endpoints::{Endpoint, Endpoints};
use handler::{DynHandler, Erased};

/// Why an agent could not be built.
///
/// ```text
/// AgentError
/// ├── InvalidConfig   a name, label, capacity or handler the cluster would refuse
/// └── HttpClient      the http executor's client could not be set up (TLS)
/// ```
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot set up the http client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// What the agent tells the cluster about itself, and how it connects.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Unique per agent in a cluster; shown by `baton agents` and in step records.
    pub name: String,
    /// Matched against steps' `constraints`.
    pub labels: BTreeMap<String, String>,
    /// Attempts run at once.
    pub slots: u32,
    pub cpu_millis: u32,
    pub memory_mb: u32,
    /// How long to wait for Registered after opening a session.
    pub register_timeout: Duration,
    pub connect_timeout: Duration,
    /// Reconnect backoff: doubles from `backoff_initial` to `backoff_max`, jittered.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// An agent certificate (`spiffe://baton/agent/NAME`) and an `agent` token, unless the
    /// cluster runs `--insecure`.
    pub credentials: crate::tls::Credentials,
    /// Member address -> address dialled instead, applied to the leader a follower names
    /// (testing: the chaos suite puts a proxy between each agent and each node).
    pub dial: HashMap<Endpoint, Endpoint>,
    /// Where `{{ secrets.NAME }}` finds its values (see [`secrets`]).
    pub secrets: secrets::SecretSource,
    /// The namespaces whose steps it takes (empty: every namespace's). An agent holding a
    /// namespace's secrets should serve it alone: a step can read what its agent can.
    pub namespaces: std::collections::BTreeSet<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: String::new(),
            labels: BTreeMap::new(),
            slots: 4,
            cpu_millis: 4000,
            memory_mb: 8192,
            register_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            credentials: Default::default(),
            dial: HashMap::new(),
            secrets: Default::default(),
            namespaces: Default::default(),
        }
    }
}

impl AgentConfig {
    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: self.connect_timeout,
            credentials: self.credentials.clone(),
            ..ClientConfig::default()
        }
    }

    fn validate(&self) -> Result<(), AgentError> {
        let invalid = |message: String| Err(AgentError::InvalidConfig(message));
        if self.name.is_empty()
            || self.name.len() > baton_proto::limits::NAME_LEN_MAX
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return invalid(format!(
                "name {:?}: 1..={} characters of [A-Za-z0-9._-]",
                self.name,
                baton_proto::limits::NAME_LEN_MAX
            ));
        }
        if self.slots == 0 {
            return invalid("slots must be at least 1".into());
        }
        if self.labels.len() > baton_proto::limits::LABELS_MAX {
            return invalid(format!(
                "{} labels, at most {}",
                self.labels.len(),
                baton_proto::limits::LABELS_MAX
            ));
        }
        if let Some(key) = self.labels.keys().find(|key| key.trim().is_empty()) {
            return invalid(format!("label key {key:?} is empty"));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid("backoff: 0 < initial <= max".into());
        }
        Ok(())
    }
}

/// Builds an [`Agent`]; see the module example.
pub struct AgentBuilder {
    endpoints: Endpoints,
    config: AgentConfig,
    handlers: HashMap<String, Arc<dyn DynHandler>>,
    error: Option<AgentError>,
}

impl AgentBuilder {
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.config
            .labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn slots(mut self, slots: u32) -> Self {
        self.config.slots = slots;
        self
    }

    pub fn cpu_millis(mut self, cpu_millis: u32) -> Self {
        self.config.cpu_millis = cpu_millis;
        self
    }

    pub fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.config.memory_mb = memory_mb;
        self
    }

    /// TLS and token for the cluster (see [`crate::tls`]).
    pub fn credentials(mut self, credentials: crate::tls::Credentials) -> Self {
        self.config.credentials = credentials;
        self
    }

    /// Dial `to` wherever the cluster names member address `from` (see [`AgentConfig::dial`]).
    pub fn dial(mut self, dial: impl IntoIterator<Item = (Endpoint, Endpoint)>) -> Self {
        self.config.dial.extend(dial);
        self
    }

    /// A folder of secrets, one file per secret (see [`secrets`]); without it, secrets come
    /// from `BATON_SECRET_*` variables only.
    pub fn secrets_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.secrets.dir = Some(dir.into());
        self
    }

    /// Takes only steps of these namespaces (the cluster places no other on it).
    pub fn namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.config.namespaces.extend(namespaces);
        self
    }

    /// Replaces the whole configuration (timeouts and backoff included).
    pub fn config(mut self, config: AgentConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs `custom` steps whose `type` is `task_type` with `handler`. Built-in type names
    /// and a type registered twice are refused at `build`.
    pub fn handler<H: Handler>(mut self, task_type: impl Into<String>, handler: H) -> Self {
        let task_type = task_type.into();
        if task_type.is_empty() || executor::BUILTIN_TASK_TYPES.contains(&task_type.as_str()) {
            self.error.get_or_insert(AgentError::InvalidConfig(format!(
                "custom task type {task_type:?} is empty or a built-in type"
            )));
        } else if self
            .handlers
            .insert(task_type.clone(), Arc::new(Erased(Arc::new(handler))))
            .is_some()
        {
            self.error.get_or_insert(AgentError::InvalidConfig(format!(
                "custom task type {task_type:?} registered twice"
            )));
        }
        self
    }

    pub fn build(self) -> Result<Agent, AgentError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.config.validate()?;
        let http = executor::http::new_client()?;
        let executors = executor::Executors::new(http, self.handlers)
            .with_secrets(self.config.secrets.clone())
            .serving(self.config.namespaces.clone());
        Ok(Agent {
            endpoints: self.endpoints,
            config: Arc::new(self.config),
            executors: Arc::new(executors),
        })
    }
}

/// A configured agent; [`Agent::run`] connects and runs assigned steps.
pub struct Agent {
    endpoints: Endpoints,
    config: Arc<AgentConfig>,
    executors: Arc<executor::Executors>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("endpoints", &self.endpoints.to_string())
            .field("config", &self.config)
            .field("task_types", &self.executors.task_types())
            .finish()
    }
}

impl Agent {
    pub fn builder(endpoints: Endpoints) -> AgentBuilder {
        AgentBuilder {
            endpoints,
            config: AgentConfig::default(),
            handlers: HashMap::new(),
            error: None,
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The task types this agent registers with: built-in ones, then the custom ones.
    pub fn task_types(&self) -> Vec<String> {
        self.executors.task_types()
    }

    /// Connects to the cluster (following the leader, reconnecting with backoff forever) and
    /// runs what it assigns, until `shutdown` completes. Then stops every running attempt
    /// (SIGTERM, SIGKILL after [`STOP_GRACE`]) and returns once they have ended.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        runtime::Runtime::new(self.config, self.endpoints, self.executors)
            .run(shutdown)
            .await
    }
}
