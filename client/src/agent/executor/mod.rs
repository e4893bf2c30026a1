//! Executors: how each task type of a [`StepSpec`](baton_proto::v1::StepSpec) runs.
//!
//! `exec` (a process group, [`exec`]), `http` (one request, [`http`]), `noop`, `sleep`, and
//! `custom` (a [`Handler`](crate::agent::Handler) registered by the application). Every
//! executor watches the attempt's [`AttemptControl`] and returns soon after it fires; the
//! execution timeout is enforced by the runner through that same control, so executors have
//! one way of being stopped, not one per cause.

pub(crate) mod exec;
pub(crate) mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1::step_spec::Task;
use baton_proto::v1::{Assignment, ExecTask, HttpTask};

use crate::agent::handler::{AttemptControl, DynHandler, TaskContext};
use crate::agent::secrets::SecretSource;
use crate::agent::tail::{head_str, tail_str};
use crate::agent::template::{TemplateError, TemplateValues};

/// How long a stopped process group gets between SIGTERM and SIGKILL, and a stopped handler
/// between its cancellation and being abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The task types every agent runs, before custom ones.
pub const BUILTIN_TASK_TYPES: [&str; 4] = ["exec", "http", "noop", "sleep"];

/// How an attempt ended, as reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskResult {
    pub success: bool,
    pub output: String,
    pub error: String,
    pub exit_code: Option<i32>,
}

impl TaskResult {
    pub fn succeeded(output: String) -> TaskResult {
        TaskResult {
            success: true,
            output,
            ..TaskResult::default()
        }
    }

    pub fn failed(error: impl Into<String>) -> TaskResult {
        TaskResult {
            success: false,
            error: error.into(),
            ..TaskResult::default()
        }
    }

    /// Adds a line to the error, keeping the error within the output bound by dropping the
    /// oldest part of what was there (the line says why the attempt ended; it must survive).
    pub fn add_error_line(&mut self, line: &str) {
        let line = head_str(line, OUTPUT_BYTES_MAX / 4);
        let separator = if self.error.is_empty() || self.error.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let room = OUTPUT_BYTES_MAX - line.len() - separator.len();
        let kept = tail_str(&self.error, room).to_string();
        self.error = format!("{kept}{separator}{line}");
    }

    /// Both texts within [`OUTPUT_BYTES_MAX`]: the server refuses larger reports.
    pub fn bounded(mut self) -> TaskResult {
        if self.output.len() > OUTPUT_BYTES_MAX {
            self.output = tail_str(&self.output, OUTPUT_BYTES_MAX).to_string();
        }
        if self.error.len() > OUTPUT_BYTES_MAX {
            self.error = tail_str(&self.error, OUTPUT_BYTES_MAX).to_string();
        }
        self
    }
}

/// A task with its templates filled in, ready to run.
#[derive(Clone, Debug)]
pub(crate) enum PreparedTask {
    Exec(exec::ExecJob),
    Http(http::HttpJob),
    Noop,
    Sleep(Duration),
    Custom { task_type: String },
}

impl PreparedTask {
    /// Fills in `assignment`'s templates (argv, env values, url, headers, body). The step env
    /// (`BATON_*`) is added to exec's environment after the spec's own, so that a spec cannot
    /// shadow the fencing token by accident.
    pub fn prepare(
        assignment: &Assignment,
        step_env: &[(String, String)],
        secrets: &BTreeMap<String, String>,
    ) -> Result<PreparedTask, PrepareError> {
        let Some(spec) = &assignment.spec else {
            return Err(PrepareError::NoTask);
        };
        let values = TemplateValues {
            input: &assignment.workflow_input,
            steps: &assignment.inputs,
            secrets,
            namespace: &assignment.namespace,
        };
        match &spec.task {
            Some(Task::Exec(task)) => Ok(PreparedTask::Exec(prepare_exec(task, values, step_env)?)),
            Some(Task::Http(task)) => Ok(PreparedTask::Http(prepare_http(task, values)?)),
            Some(Task::Noop(_)) => Ok(PreparedTask::Noop),
            Some(Task::Sleep(task)) => {
                Ok(PreparedTask::Sleep(Duration::from_millis(task.duration_ms)))
            }
            Some(Task::Custom(task)) => Ok(PreparedTask::Custom {
                task_type: task.r#type.clone(),
            }),
            // The cluster never hands a wait step to an agent; a node that did is refused.
            Some(Task::Wait(_)) => Err(PrepareError::Wait),
            None => Err(PrepareError::NoTask),
        }
    }
}

/// Why an assignment could not be turned into something to run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("the assignment carries no task")]
    NoTask,
    #[error("a wait step waits for a signal (baton signal); no agent runs it")]
    Wait,
    #[error(transparent)]
    Template(#[from] TemplateError),
}

fn prepare_exec(
    task: &ExecTask,
    values: TemplateValues<'_>,
    step_env: &[(String, String)],
) -> Result<exec::ExecJob, TemplateError> {
    let argv = task
        .command
        .iter()
        .enumerate()
        .map(|(index, arg)| values.render(&format!("exec.command[{index}]"), arg))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = task
        .env
        .iter()
        .map(|(key, value)| {
            Ok((
                key.clone(),
                values.render(&format!("exec.env.{key}"), value)?,
            ))
        })
        .collect::<Result<Vec<_>, TemplateError>>()?;
    env.extend(step_env.iter().cloned());
    Ok(exec::ExecJob {
        argv,
        env,
        working_dir: (!task.working_dir.is_empty()).then(|| task.working_dir.clone().into()),
    })
}

fn prepare_http(
    task: &HttpTask,
    values: TemplateValues<'_>,
) -> Result<http::HttpJob, TemplateError> {
    let headers = task
        .headers
        .iter()
        .map(|(name, value)| {
            Ok((
                name.clone(),
                values.render(&format!("http.headers.{name}"), value)?,
            ))
        })
        .collect::<Result<Vec<_>, TemplateError>>()?;
    Ok(http::HttpJob {
        method: task.method.clone(),
        url: values.render("http.url", &task.url)?,
        headers,
        body: values.render("http.body", &task.body)?,
        success_statuses: task.success_statuses.clone(),
    })
}

/// Runs prepared tasks: the shared HTTP client, the application's handlers, and where
/// secrets come from.
pub(crate) struct Executors {
    http: reqwest::Client,
    handlers: HashMap<String, Arc<dyn DynHandler>>,
    secrets: SecretSource,
    /// The namespaces the agent serves (empty: every one): no secret of another is resolved,
    /// whatever a node asks.
    namespaces: std::collections::BTreeSet<String>,
}

impl Executors {
    pub fn new(http: reqwest::Client, handlers: HashMap<String, Arc<dyn DynHandler>>) -> Executors {
        Executors {
            http,
            handlers,
            secrets: SecretSource::default(),
            namespaces: Default::default(),
        }
    }

    pub fn serving(mut self, namespaces: std::collections::BTreeSet<String>) -> Executors {
        self.namespaces = namespaces;
        self
    }

    pub fn with_secrets(mut self, secrets: SecretSource) -> Executors {
        self.secrets = secrets;
        self
    }

    /// The values of the secrets `assignment`'s task names (those its templates are filled
    /// from: an exec step's command and env, an http step's url, headers and body).
    pub fn secrets_of(&self, assignment: &Assignment) -> Result<BTreeMap<String, String>, String> {
        let texts: Vec<&str> = match assignment.spec.as_ref().and_then(|s| s.task.as_ref()) {
            Some(Task::Exec(task)) => task
                .command
                .iter()
                .chain(task.env.values())
                .map(String::as_str)
                .collect(),
            Some(Task::Http(task)) => [task.url.as_str(), task.body.as_str()]
                .into_iter()
                .chain(task.headers.values().map(String::as_str))
                .collect(),
            _ => Vec::new(),
        };
        let namespace = match assignment.namespace.as_str() {
            "" => "default",
            named => named,
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(namespace) {
            // Placed here by a node that ignores what this agent serves: none of the secrets.
            return Ok(BTreeMap::new());
        }
        self.secrets.resolve(&assignment.namespace, texts)
    }

    /// Built-in types, then the custom ones in name order (sent in Register).
    pub fn task_types(&self) -> Vec<String> {
        let mut custom: Vec<String> = self.handlers.keys().cloned().collect();
        custom.sort();
        BUILTIN_TASK_TYPES
            .iter()
            .map(|name| name.to_string())
            .chain(custom)
            .collect()
    }

    /// Runs `task` to its end, or until `control` stops it.
    pub async fn run(
        &self,
        task: PreparedTask,
        ctx: TaskContext,
        control: &AttemptControl,
    ) -> TaskResult {
        match task {
            PreparedTask::Exec(job) => exec::run(&job, control).await,
            PreparedTask::Http(job) => http::run(&self.http, &job, control).await,
            PreparedTask::Noop => TaskResult::succeeded(String::new()),
            PreparedTask::Sleep(duration) => {
                tokio::select! {
                    _ = tokio::time::sleep(duration) => TaskResult::succeeded(String::new()),
                    _ = control.stopped() => TaskResult::failed(""),
                }
            }
            PreparedTask::Custom { task_type } => {
                let Some(handler) = self.handlers.get(&task_type) else {
                    return TaskResult::failed(format!(
                        "no handler for custom task type {task_type:?} on this agent"
                    ));
                };
                let call = handler.call_boxed(ctx);
                // A handler that ignores its cancellation is abandoned (dropped) after the
                // grace period, so a stop never waits on application code forever.
                let abandon = async {
                    control.stopped().await;
                    tokio::time::sleep(STOP_GRACE).await;
                };
                tokio::select! {
                    result = call => match result {
                        Ok(output) => TaskResult::succeeded(output),
                        Err(error) => TaskResult {
                            success: false,
                            output: error.output().to_string(),
                            error: error.message().to_string(),
                            exit_code: None,
                        },
                    },
                    _ = abandon => TaskResult::failed(format!(
                        "handler for {task_type:?} did not return within {} ms of being stopped",
                        STOP_GRACE.as_millis()
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
