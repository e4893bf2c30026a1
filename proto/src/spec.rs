//! Parses a workflow spec from YAML or JSON text into [`v1::WorkflowSpec`], with errors that
//! name the line, column and path of the problem.
//!
//! The text mirrors the proto field by field, with three conveniences: durations are written
//! for humans (`timeout: 5m` fills `timeout_ms`), `when` is `success|failure|always`, and the
//! task is the one key among `exec`, `http`, `noop`, `sleep` and `custom`. Unknown keys are
//! errors, so a typo never silently drops a setting. Parsing checks shapes and types only;
//! [`crate::validate::validate_spec`] checks the rules and limits.
//!
//! ```yaml
//! name: build-test-deploy
//! steps:
//!   - name: build
//!     exec: {command: [sh, -c, "make"]}
//!     timeout: 10m
//!   - name: deploy
//!     depends_on: [build]
//!     http: {method: POST, url: "https://deploy.example/api/releases"}
//!     retry: {max_attempts: 3, backoff: {initial: 1s, multiplier: 2, max: 30s}}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::limits::SPEC_TEXT_BYTES_MAX;
use crate::text::quoted;
use crate::v1::{self, RunCondition, WorkflowSpec, step_spec::Task};

pub use crate::text::format_duration_ms;

/// The text format of a spec. YAML is a superset of JSON, so YAML is the safe default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpecFormat {
    #[default]
    Yaml,
    Json,
}

impl SpecFormat {
    /// JSON for a `.json` file, YAML for anything else (`.yaml`, `.yml`, no extension, `-`).
    pub fn from_path(path: &Path) -> SpecFormat {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some(extension) if extension.eq_ignore_ascii_case("json") => SpecFormat::Json,
            _ => SpecFormat::Yaml,
        }
    }
}

/// A spec text that does not parse, or does not have the spec's shape. Displays as
/// `line 7, column 5: steps[1]: unknown field "dependson", expected one of ...`; the location
/// is absent when the parser has none (an empty or oversized text, for instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecParseError {
    /// 1-based line of the problem.
    pub line: Option<usize>,
    /// 1-based column of the problem.
    pub column: Option<usize>,
    /// What is wrong, starting with the path inside the spec when the parser knows it.
    pub message: String,
}

impl fmt::Display for SpecParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "line {line}, column {column}: {}", self.message)
            }
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SpecParseError {}

impl SpecParseError {
    pub(crate) fn without_location(message: String) -> Self {
        SpecParseError {
            line: None,
            column: None,
            message,
        }
    }

    /// serde_norway puts the location at the end (`... at line 7 column 5`); we put it first,
    /// where a reader looks, and drop it from the message.
    pub(crate) fn from_yaml(error: serde_norway::Error) -> Self {
        let text = error.to_string();
        match error.location() {
            Some(location) => {
                let (line, column) = (location.line(), location.column());
                let suffix = format!(" at line {line} column {column}");
                SpecParseError {
                    line: Some(line),
                    column: Some(column),
                    message: tidy(&remove_once(&text, &suffix)),
                }
            }
            None => Self::without_location(tidy(&text)),
        }
    }

    pub(crate) fn from_json(error: serde_json::Error) -> Self {
        let text = error.to_string();
        let (line, column) = (error.line(), error.column());
        if line == 0 {
            return Self::without_location(tidy(&text));
        }
        let suffix = format!(" at line {line} column {column}");
        SpecParseError {
            line: Some(line),
            column: (column > 0).then_some(column),
            message: tidy(&remove_once(&text, &suffix)),
        }
    }
}

/// Removes `part` from `text`: the trailing one if `text` ends with it, else the first one.
fn remove_once(text: &str, part: &str) -> String {
    if let Some(stripped) = text.strip_suffix(part) {
        return stripped.to_string();
    }
    text.replacen(part, "", 1)
}

/// serde quotes names with backticks; our messages quote them with double quotes.
fn tidy(message: &str) -> String {
    message.replace('`', "\"")
}

/// Parses a spec written as YAML or JSON. The result has the spec's shape but is not yet
/// validated: pass it to [`crate::validate::validate_spec`].
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<WorkflowSpec, SpecParseError> {
    if text.len() > SPEC_TEXT_BYTES_MAX {
        return Err(SpecParseError::without_location(format!(
            "spec text is {} bytes, more than {SPEC_TEXT_BYTES_MAX}",
            text.len()
        )));
    }
    // Both parsers would report something less clear (YAML reads nothing as an empty mapping).
    if text.trim().is_empty() {
        return Err(SpecParseError::without_location(
            "spec text is empty".to_string(),
        ));
    }
    let document: WorkflowDoc = match format {
        SpecFormat::Yaml => serde_norway::from_str(text).map_err(SpecParseError::from_yaml)?,
        SpecFormat::Json => serde_json::from_str(text).map_err(SpecParseError::from_json)?,
    };
    Ok(document.into_proto())
}

/// A duration that does not parse; see [`parse_duration_ms`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {}: {reason}, e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\" or an integer of milliseconds", quoted(.text))]
pub struct DurationError {
    /// The text given.
    pub text: String,
    /// Why it does not parse.
    pub reason: &'static str,
}

/// Parses a human duration into milliseconds: an integer (milliseconds) or numbers with units
/// `d`, `h`, `m`, `s`, `ms` from largest to smallest, each at most once: `500ms`, `1s`, `5m`,
/// `1h30m`, `7d`.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let error = |reason| DurationError {
        text: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("it is empty"));
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.parse::<u64>().map_err(|_| error("it is too large"));
    }
    // Units by decreasing size; each number must use a smaller unit than the one before.
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut total_ms: u64 = 0;
    let mut next_unit = 0; // index into UNITS of the largest unit still allowed
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
                error("each unit needs a whole number before it")
            } else {
                error("it has a character that is not a digit or a unit")
            });
        }
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if letters == 0 {
            return Err(if digits == rest.len() {
                error("the last number has no unit")
            } else {
                error("it has a character that is not a digit or a unit")
            });
        }
        let number = rest[..digits]
            .parse::<u64>()
            .map_err(|_| error("it is too large"))?;
        let unit = &rest[digits..digits + letters];
        let Some(position) = UNITS.iter().position(|&(name, _)| name == unit) else {
            return Err(error("units are d, h, m, s and ms"));
        };
        if position < next_unit {
            return Err(error(
                "units must go from largest to smallest, each at most once",
            ));
        }
        next_unit = position + 1;
        total_ms = number
            .checked_mul(UNITS[position].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| error("it is too large"))?;
        rest = &rest[digits + letters..];
    }
    Ok(total_ms)
}

/// serde `deserialize_with` for a duration given as text or as an integer of milliseconds.
pub(crate) fn duration_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"500ms\", \"30s\", \"5m\", \"1h30m\" or an integer of milliseconds")
        }

        fn visit_u64<E: de::Error>(self, ms: u64) -> Result<u64, E> {
            Ok(ms)
        }

        fn visit_i64<E: de::Error>(self, ms: i64) -> Result<u64, E> {
            u64::try_from(ms)
                .map_err(|_| E::custom(format!("invalid duration {ms}: it is negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_duration_ms(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(DurationVisitor)
}

/// serde `deserialize_with` for `noop`: `noop:`, `noop: null` and `noop: {}` all mean "a noop
/// task" (YAML reads a key with nothing after it as null, which serde would take as absent).
fn present_noop<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<NoopDoc>, D::Error> {
    Option::<NoopDoc>::deserialize(deserializer).map(|noop| Some(noop.unwrap_or_default()))
}

// ---- the document shapes: one struct per proto message, unknown keys refused ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowDoc {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    steps: Vec<StepDoc>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    input: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "duration_ms")]
    retention: u64,
    #[serde(default, deserialize_with = "duration_ms")]
    timeout: u64,
    #[serde(default)]
    params: Vec<ParamDoc>,
    concurrency: Option<ConcurrencyDoc>,
}

/// `concurrency: {key, limit}` on a workflow or a step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyDoc {
    key: String,
    limit: u32,
}

impl From<ConcurrencyDoc> for v1::Concurrency {
    fn from(doc: ConcurrencyDoc) -> Self {
        v1::Concurrency {
            key: doc.key,
            limit: doc.limit,
        }
    }
}

/// `rate_limit: {key, per_second | per_minute, burst}` on a step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDoc {
    key: String,
    #[serde(default)]
    per_second: u32,
    #[serde(default)]
    per_minute: u32,
    #[serde(default)]
    burst: u32,
}

impl From<RateLimitDoc> for v1::RateLimit {
    fn from(doc: RateLimitDoc) -> Self {
        v1::RateLimit {
            key: doc.key,
            per_second: doc.per_second,
            per_minute: doc.per_minute,
            burst: doc.burst,
        }
    }
}

/// A declared parameter: `{name, default, required, description}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDoc {
    name: String,
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    description: String,
}

impl WorkflowDoc {
    pub(crate) fn into_proto(self) -> WorkflowSpec {
        WorkflowSpec {
            name: self.name,
            labels: self.labels,
            steps: self.steps.into_iter().map(|step| step.0).collect(),
            priority: self.priority,
            input: self.input,
            retention_ms: self.retention,
            timeout_ms: self.timeout,
            params: self
                .params
                .into_iter()
                .map(|p| v1::ParamSpec {
                    name: p.name,
                    default: p.default,
                    required: p.required,
                    description: p.description,
                })
                .collect(),
            concurrency: self.concurrency.map(Into::into),
        }
    }
}

/// A step, checked for exactly one task while parsing, so that the error carries the step's
/// location.
struct StepDoc(v1::StepSpec);

impl<'de> Deserialize<'de> for StepDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = StepDoc;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a step: a mapping with a name and one task")
            }

            // The task check runs inside the mapping (not after it, as `#[serde(try_from)]`
            // would), so serde_norway stamps its error with the step's line and path.
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<StepDoc, A::Error> {
                let fields = StepFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                StepDoc::try_from(fields).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_map(StepVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFields {
    name: String,
    #[serde(default)]
    depends_on: Vec<String>,
    when: Option<WhenDoc>,
    exec: Option<ExecDoc>,
    http: Option<HttpDoc>,
    #[serde(default, deserialize_with = "present_noop")]
    noop: Option<NoopDoc>,
    sleep: Option<SleepDoc>,
    custom: Option<CustomDoc>,
    wait: Option<WaitDoc>,
    retry: Option<RetryDoc>,
    #[serde(default, deserialize_with = "duration_ms")]
    timeout: u64,
    resources: Option<ResourcesDoc>,
    #[serde(default)]
    constraints: BTreeMap<String, String>,
    priority: Option<i32>,
    #[serde(default, deserialize_with = "duration_ms")]
    lease_ttl: u64,
    #[serde(default, deserialize_with = "duration_ms")]
    schedule_to_start_timeout: u64,
    concurrency: Option<ConcurrencyDoc>,
    rate_limit: Option<RateLimitDoc>,
}

/// The keys that name a step's task, as listed in errors.
const TASK_KEYS: &str = "exec, http, noop, sleep, custom, wait";

impl TryFrom<StepFields> for StepDoc {
    type Error = String;

    fn try_from(fields: StepFields) -> Result<Self, String> {
        let mut tasks: Vec<(&str, Task)> = Vec::with_capacity(1);
        if let Some(exec) = fields.exec {
            tasks.push(("exec", Task::Exec(exec.into())));
        }
        if let Some(http) = fields.http {
            tasks.push(("http", Task::Http(http.into())));
        }
        if fields.noop.is_some() {
            tasks.push(("noop", Task::Noop(v1::NoopTask {})));
        }
        if let Some(sleep) = fields.sleep {
            tasks.push((
                "sleep",
                Task::Sleep(v1::SleepTask {
                    duration_ms: sleep.duration,
                }),
            ));
        }
        if let Some(custom) = fields.custom {
            tasks.push((
                "custom",
                Task::Custom(v1::CustomTask {
                    r#type: custom.r#type,
                    payload: custom.payload,
                }),
            ));
        }
        if let Some(wait) = fields.wait {
            tasks.push((
                "wait",
                Task::Wait(v1::WaitTask {
                    signal: wait.signal,
                    timeout_ms: wait.timeout,
                }),
            ));
        }
        let name = quoted(&fields.name);
        let task = match tasks.len() {
            0 => return Err(format!("step {name} has no task: give one of {TASK_KEYS}")),
            1 => tasks.pop().map(|(_, task)| task),
            _ => {
                let keys: Vec<&str> = tasks.iter().map(|(key, _)| *key).collect();
                return Err(format!(
                    "step {name} has {} tasks ({}): give exactly one of {TASK_KEYS}",
                    keys.len(),
                    keys.join(", ")
                ));
            }
        };
        Ok(StepDoc(v1::StepSpec {
            name: fields.name,
            depends_on: fields.depends_on,
            when: fields
                .when
                .map_or(RunCondition::Unspecified, WhenDoc::into_proto) as i32,
            task,
            retry: fields.retry.map(|retry| v1::RetryPolicy {
                max_attempts: retry.max_attempts,
                backoff: retry.backoff.map(|backoff| v1::Backoff {
                    initial_ms: backoff.initial,
                    multiplier: backoff.multiplier,
                    max_ms: backoff.max,
                }),
            }),
            timeout_ms: fields.timeout,
            resources: fields.resources.map(|resources| v1::Resources {
                cpu_millis: resources.cpu_millis,
                memory_mb: resources.memory_mb,
            }),
            constraints: fields.constraints,
            priority: fields.priority,
            lease_ttl_ms: fields.lease_ttl,
            schedule_to_start_timeout_ms: fields.schedule_to_start_timeout,
            concurrency: fields.concurrency.map(Into::into),
            rate_limit: fields.rate_limit.map(Into::into),
        }))
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WhenDoc {
    Success,
    Failure,
    Always,
}

impl WhenDoc {
    fn into_proto(self) -> RunCondition {
        match self {
            WhenDoc::Success => RunCondition::Success,
            WhenDoc::Failure => RunCondition::Failure,
            WhenDoc::Always => RunCondition::Always,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecDoc {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    working_dir: String,
}

impl From<ExecDoc> for v1::ExecTask {
    fn from(exec: ExecDoc) -> Self {
        v1::ExecTask {
            command: exec.command,
            env: exec.env,
            working_dir: exec.working_dir,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    #[serde(default)]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    success_statuses: Vec<u32>,
}

impl From<HttpDoc> for v1::HttpTask {
    fn from(http: HttpDoc) -> Self {
        v1::HttpTask {
            method: http.method,
            url: http.url,
            headers: http.headers,
            body: http.body,
            success_statuses: http.success_statuses,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoopDoc {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepDoc {
    #[serde(deserialize_with = "duration_ms")]
    duration: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitDoc {
    signal: String,
    #[serde(default, deserialize_with = "duration_ms")]
    timeout: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomDoc {
    r#type: String,
    #[serde(default)]
    payload: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDoc {
    #[serde(default)]
    max_attempts: u32,
    backoff: Option<BackoffDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffDoc {
    #[serde(default, deserialize_with = "duration_ms")]
    initial: u64,
    #[serde(default)]
    multiplier: f64,
    #[serde(default, deserialize_with = "duration_ms")]
    max: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesDoc {
    #[serde(default)]
    cpu_millis: u32,
    #[serde(default)]
    memory_mb: u32,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::validate::validate_spec;

    /// The example of DESIGN.md, verbatim.
    const DESIGN_EXAMPLE: &str = r#"name: onboard-employee
labels: {team: it}
steps:
  - name: create-account
    exec: {command: ["/opt/it/create-user", "--name", "{{ input.name }}"]}
    retry: {max_attempts: 3, backoff: {initial: 1s, multiplier: 2, max: 30s}}
    timeout: 5m
    resources: {cpu_millis: 500, memory_mb: 256}
    constraints: {zone: eu}
  - name: order-laptop
    http: {method: POST, url: "https://assets.example/api/orders", body: "..."}
    depends_on: [create-account]
  - name: notify-failure
    depends_on: [create-account, order-laptop]
    when: failure
"#;

    fn yaml(text: &str) -> Result<WorkflowSpec, SpecParseError> {
        parse_spec(text, SpecFormat::Yaml)
    }

    fn json(text: &str) -> Result<WorkflowSpec, SpecParseError> {
        parse_spec(text, SpecFormat::Json)
    }

    #[track_caller]
    fn yaml_error(text: &str) -> String {
        match yaml(text) {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[track_caller]
    fn json_error(text: &str) -> String {
        match json(text) {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn design_example_without_its_task_is_refused_at_the_step() {
        // DESIGN.md's notify-failure step has no task; the spec requires one.
        assert_eq!(
            yaml_error(DESIGN_EXAMPLE),
            "line 13, column 5: steps[2]: step \"notify-failure\" has no task: give one of exec, http, noop, sleep, custom, wait"
        );
    }

    #[test]
    fn design_example_parses() {
        let text = format!("{DESIGN_EXAMPLE}    noop: {{}}\n");
        let spec = yaml(&text).expect("parses");
        assert_eq!(validate_spec(&spec), Ok(()));
        assert_eq!(spec.name, "onboard-employee");
        assert_eq!(spec.labels, map(&[("team", "it")]));
        assert_eq!(spec.steps.len(), 3);

        let create = &spec.steps[0];
        assert_eq!(
            create.task,
            Some(Task::Exec(v1::ExecTask {
                command: vec![
                    "/opt/it/create-user".into(),
                    "--name".into(),
                    "{{ input.name }}".into()
                ],
                ..Default::default()
            }))
        );
        assert_eq!(
            create.retry,
            Some(v1::RetryPolicy {
                max_attempts: 3,
                backoff: Some(v1::Backoff {
                    initial_ms: 1000,
                    multiplier: 2.0,
                    max_ms: 30_000
                }),
            })
        );
        assert_eq!(create.timeout_ms, 300_000);
        assert_eq!(
            create.resources,
            Some(v1::Resources {
                cpu_millis: 500,
                memory_mb: 256
            })
        );
        assert_eq!(create.constraints, map(&[("zone", "eu")]));
        assert_eq!(create.when(), RunCondition::Unspecified);

        let order = &spec.steps[1];
        assert_eq!(
            order.task,
            Some(Task::Http(v1::HttpTask {
                method: "POST".into(),
                url: "https://assets.example/api/orders".into(),
                body: "...".into(),
                ..Default::default()
            }))
        );
        assert_eq!(order.depends_on, ["create-account"]);

        let notify = &spec.steps[2];
        assert_eq!(notify.when(), RunCondition::Failure);
        assert_eq!(notify.depends_on, ["create-account", "order-laptop"]);
        assert_eq!(notify.task, Some(Task::Noop(v1::NoopTask {})));
    }

    #[test]
    fn json_and_yaml_give_the_same_spec() {
        let from_yaml = yaml(&format!("{DESIGN_EXAMPLE}    noop: {{}}\n")).expect("yaml parses");
        let text = r#"{
  "name": "onboard-employee",
  "labels": {"team": "it"},
  "steps": [
    {
      "name": "create-account",
      "exec": {"command": ["/opt/it/create-user", "--name", "{{ input.name }}"]},
      "retry": {"max_attempts": 3, "backoff": {"initial": "1s", "multiplier": 2, "max": 30000}},
      "timeout": "5m",
      "resources": {"cpu_millis": 500, "memory_mb": 256},
      "constraints": {"zone": "eu"}
    },
    {
      "name": "order-laptop",
      "http": {"method": "POST", "url": "https://assets.example/api/orders", "body": "..."},
      "depends_on": ["create-account"]
    },
    {"name": "notify-failure", "depends_on": ["create-account", "order-laptop"], "when": "failure", "noop": {}}
  ]
}"#;
        assert_eq!(json(text), Ok(from_yaml.clone()));
        // YAML is a superset of JSON: the YAML reader takes the JSON text too.
        assert_eq!(yaml(text), Ok(from_yaml));
    }

    #[test]
    fn every_field_parses() {
        let text = r#"
name: all-fields
priority: -5
labels: {a: "1"}
input: {name: ada, count: 3}
steps:
  - name: one
    exec:
      command: [sh, -c, "echo $GREETING"]
      env: {GREETING: hello}
      working_dir: /tmp
    when: success
    timeout: 1h30m
    lease_ttl: 10s
    schedule_to_start_timeout: 2m
    priority: 7
    resources: {cpu_millis: 250}
  - name: two
    depends_on: [one]
    when: always
    http:
      url: http://127.0.0.1:9/
      headers: {X-Token: abc}
      success_statuses: [200, 204]
  - name: three
    sleep: {duration: 1500}
  - name: four
    custom: {type: acme/create-user, payload: '{"name": "ada"}'}
    retry: {max_attempts: 2}
  - name: five
    noop:
"#;
        let spec = yaml(text).expect("parses");
        assert_eq!(validate_spec(&spec), Ok(()));
        assert_eq!(spec.priority, -5);
        assert_eq!(spec.input, map(&[("name", "ada"), ("count", "3")]));
        let one = &spec.steps[0];
        assert_eq!(
            one.task,
            Some(Task::Exec(v1::ExecTask {
                command: vec!["sh".into(), "-c".into(), "echo $GREETING".into()],
                env: map(&[("GREETING", "hello")]),
                working_dir: "/tmp".into(),
            }))
        );
        assert_eq!(one.when(), RunCondition::Success);
        assert_eq!(one.timeout_ms, 5_400_000);
        assert_eq!(one.lease_ttl_ms, 10_000);
        assert_eq!(one.schedule_to_start_timeout_ms, 120_000);
        assert_eq!(one.priority, Some(7));
        assert_eq!(
            one.resources,
            Some(v1::Resources {
                cpu_millis: 250,
                memory_mb: 0
            })
        );
        let two = &spec.steps[1];
        assert_eq!(two.when(), RunCondition::Always);
        assert_eq!(
            two.task,
            Some(Task::Http(v1::HttpTask {
                url: "http://127.0.0.1:9/".into(),
                headers: map(&[("X-Token", "abc")]),
                success_statuses: vec![200, 204],
                ..Default::default()
            }))
        );
        assert_eq!(
            spec.steps[2].task,
            Some(Task::Sleep(v1::SleepTask { duration_ms: 1500 }))
        );
        assert_eq!(
            spec.steps[3].task,
            Some(Task::Custom(v1::CustomTask {
                r#type: "acme/create-user".into(),
                payload: "{\"name\": \"ada\"}".into()
            }))
        );
        assert_eq!(
            spec.steps[3].retry,
            Some(v1::RetryPolicy {
                max_attempts: 2,
                backoff: None
            })
        );
        assert_eq!(spec.steps[4].task, Some(Task::Noop(v1::NoopTask {})));
        assert_eq!(spec.steps[4].priority, None);
    }

    #[test]
    fn concurrency_and_rate_limits_parse() {
        let spec = yaml(
            "name: d\nconcurrency: {key: \"deploy-{{ params.env }}\", limit: 1}\nsteps:\n  - name: a\n    noop: {}\n    concurrency: {key: db, limit: 2}\n    rate_limit: {key: api, per_minute: 30, burst: 5}\n",
        )
        .unwrap();
        assert_eq!(
            spec.concurrency,
            Some(v1::Concurrency {
                key: "deploy-{{ params.env }}".into(),
                limit: 1
            })
        );
        assert_eq!(spec.steps[0].concurrency.as_ref().unwrap().limit, 2);
        let rate = spec.steps[0].rate_limit.as_ref().unwrap();
        assert_eq!((rate.per_second, rate.per_minute, rate.burst), (0, 30, 5));
        let error = yaml_error(
            "name: d\nsteps:\n  - name: a\n    noop: {}\n    rate_limit: {key: api, per_hour: 3}\n",
        );
        assert!(error.contains("per_hour"), "{error}");
    }

    #[test]
    fn noop_forms() {
        for noop in ["noop:", "noop: null", "noop: ~", "noop: {}"] {
            let spec = yaml(&format!("name: w\nsteps:\n  - name: a\n    {noop}\n")).expect(noop);
            assert_eq!(
                spec.steps[0].task,
                Some(Task::Noop(v1::NoopTask {})),
                "{noop}"
            );
        }
        let spec =
            json(r#"{"name": "w", "steps": [{"name": "a", "noop": null}]}"#).expect("parses");
        assert_eq!(spec.steps[0].task, Some(Task::Noop(v1::NoopTask {})));
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {x: 1}\n"),
            "line 4, column 12: steps[0].noop: unknown field \"x\", there are no fields"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_location() {
        let text = "name: w\nsteps:\n  - name: build\n    noop: {}\n  - name: test\n    noop: {}\n    dependson: [build]\n";
        assert_eq!(
            yaml_error(text),
            "line 7, column 5: steps[1]: unknown field \"dependson\", expected one of \"name\", \"depends_on\", \
             \"when\", \"exec\", \"http\", \"noop\", \"sleep\", \"custom\", \"wait\", \"retry\", \"timeout\", \"resources\", \
             \"constraints\", \"priority\", \"lease_ttl\", \"schedule_to_start_timeout\", \"concurrency\", \"rate_limit\""
        );
        assert_eq!(
            yaml_error("name: w\nlabel: {a: b}\nsteps: []\n"),
            "line 2, column 1: unknown field \"label\", expected one of \"name\", \"labels\", \"steps\", \"priority\", \"input\", \"retention\", \"timeout\", \"params\", \"concurrency\""
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    exec: {command: [x], cwd: /}\n"),
            "line 4, column 26: steps[0].exec: unknown field \"cwd\", expected one of \"command\", \"env\", \"working_dir\""
        );
        assert_eq!(
            json_error(
                "{\"name\": \"w\",\n \"steps\": [{\"name\": \"a\", \"noop\": {},\n   \"timeout_ms\": 5}]}"
            ),
            "line 3, column 15: unknown field \"timeout_ms\", expected one of \"name\", \"depends_on\", \"when\", \
             \"exec\", \"http\", \"noop\", \"sleep\", \"custom\", \"wait\", \"retry\", \"timeout\", \"resources\", \"constraints\", \
             \"priority\", \"lease_ttl\", \"schedule_to_start_timeout\", \"concurrency\", \"rate_limit\""
        );
    }

    #[test]
    fn task_count_errors_name_the_step() {
        assert_eq!(
            yaml_error(
                "name: w\nsteps:\n  - name: a\n    noop: {}\n  - name: b\n    depends_on: [a]\n"
            ),
            "line 5, column 5: steps[1]: step \"b\" has no task: give one of exec, http, noop, sleep, custom, wait"
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    sleep: {duration: 1s}\n"),
            "line 3, column 5: steps[0]: step \"a\" has 2 tasks (noop, sleep): give exactly one of exec, http, noop, sleep, custom, wait"
        );
        let error = json(r#"{"name": "w", "steps": [{"name": "a"}]}"#).expect_err("no task");
        assert_eq!(
            error.message,
            "step \"a\" has no task: give one of exec, http, noop, sleep, custom, wait"
        );
        assert_eq!(error.line, Some(1));
    }

    #[test]
    fn type_errors_carry_their_location() {
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    timeout: [1]\n"),
            "line 5, column 14: steps[0].timeout: invalid type: sequence, expected a duration such as \"500ms\", \
             \"30s\", \"5m\", \"1h30m\" or an integer of milliseconds"
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    timeout: 5 minutes\n"),
            "line 5, column 14: steps[0].timeout: invalid duration \"5 minutes\": it has a character that is not a \
             digit or a unit, e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\" or an integer of milliseconds"
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    lease_ttl: -5\n"),
            "line 5, column 16: steps[0].lease_ttl: invalid duration -5: it is negative"
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    when: sometimes\n"),
            "line 5, column 11: steps[0].when: unknown variant \"sometimes\", expected one of \"success\", \"failure\", \"always\""
        );
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n    priority: high\n"),
            "line 5, column 15: steps[0].priority: invalid type: string \"high\", expected i32"
        );
        assert_eq!(
            yaml_error(
                "name: w\nsteps:\n  - name: a\n    noop: {}\n    resources: {cpu_millis: -1}\n"
            ),
            "line 5, column 29: steps[0].resources.cpu_millis: invalid type: integer \"-1\", expected u32"
        );
        assert_eq!(
            yaml_error("steps: []\n"),
            "line 1, column 1: missing field \"name\""
        );
        assert_eq!(
            json_error(
                "{\"name\": \"w\", \"steps\": [{\"name\": \"a\", \"sleep\": {\"duration\": true}}]}"
            ),
            "line 1, column 64: invalid type: boolean \"true\", expected a duration such as \"500ms\", \"30s\", \"5m\", \
             \"1h30m\" or an integer of milliseconds"
        );
    }

    #[test]
    fn syntax_errors_carry_their_location() {
        assert_eq!(
            yaml_error("name: w\nsteps:\n  - name: a\n    noop: {}\n  oops\n"),
            "line 6, column 1: could not find expected ':', while scanning a simple key at line 5 column 3"
        );
        // Unquoted `{{ ... }}` in a flow sequence is a YAML flow mapping in a flow mapping.
        let unquoted =
            "name: w\nsteps:\n  - name: a\n    exec: {command: [echo, {{ input.name }}]}\n";
        assert!(
            yaml_error(unquoted).starts_with("line 4, column "),
            "{}",
            yaml_error(unquoted)
        );
        assert_eq!(
            json_error("{\"name\": \"w\",\n \"steps\": [}"),
            "line 2, column 12: expected value"
        );
        assert_eq!(json_error(""), "spec text is empty");
        assert_eq!(yaml_error(" \n"), "spec text is empty");
        assert_eq!(
            json_error("{"),
            "line 1, column 1: EOF while parsing an object"
        );
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let text = format!("name: w\n#{}\nsteps: []\n", "x".repeat(SPEC_TEXT_BYTES_MAX));
        let error = yaml(&text).expect_err("too big");
        assert_eq!(error.line, None);
        assert_eq!(
            error.to_string(),
            format!("spec text is {} bytes, more than 4194304", text.len())
        );
    }

    #[test]
    fn format_from_path() {
        for (path, format) in [
            ("wf.json", SpecFormat::Json),
            ("dir/WF.JSON", SpecFormat::Json),
            ("wf.yaml", SpecFormat::Yaml),
            ("wf.yml", SpecFormat::Yaml),
            ("wf", SpecFormat::Yaml),
            ("-", SpecFormat::Yaml),
            ("wf.json.txt", SpecFormat::Yaml),
        ] {
            assert_eq!(SpecFormat::from_path(Path::new(path)), format, "{path}");
        }
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("0", 0),
            ("500", 500),
            ("500ms", 500),
            ("1s", 1000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("1d12h", 129_600_000),
            ("2m3s4ms", 123_004),
            ("1h1ms", 3_600_001),
            (" 30s ", 30_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for (text, reason) in [
            ("", "it is empty"),
            ("  ", "it is empty"),
            ("s", "each unit needs a whole number before it"),
            ("1.5s", "it has a character that is not a digit or a unit"),
            ("1h 30m", "it has a character that is not a digit or a unit"),
            ("-1s", "it has a character that is not a digit or a unit"),
            ("1h30", "the last number has no unit"),
            ("3w", "units are d, h, m, s and ms"),
            ("5M", "units are d, h, m, s and ms"),
            (
                "30m1h",
                "units must go from largest to smallest, each at most once",
            ),
            (
                "1m1m",
                "units must go from largest to smallest, each at most once",
            ),
            ("99999999999999999999", "it is too large"),
            ("9999999999999999h", "it is too large"),
        ] {
            assert_eq!(
                parse_duration_ms(text),
                Err(DurationError {
                    text: text.to_string(),
                    reason
                }),
                "{text}"
            );
        }
        assert_eq!(
            parse_duration_ms("5x").map_err(|e| e.to_string()),
            Err("invalid duration \"5x\": units are d, h, m, s and ms, e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\" or an \
                 integer of milliseconds"
                .to_string())
        );
        for (ms, text) in [
            (0, "0ms"),
            (500, "500ms"),
            (1500, "1s500ms"),
            (5_400_000, "1h30m"),
            (604_800_000, "7d"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
        }
    }

    #[test]
    fn durations_in_json_may_be_text_or_integers() {
        let spec = json(r#"{"name": "w", "steps": [{"name": "a", "sleep": {"duration": "2s"}, "timeout": 90000}]}"#)
            .expect("parses");
        assert_eq!(
            spec.steps[0].task,
            Some(Task::Sleep(v1::SleepTask { duration_ms: 2000 }))
        );
        assert_eq!(spec.steps[0].timeout_ms, 90_000);
    }

    /// Every workflow in `examples/` parses and passes validation.
    #[test]
    fn examples_parse_and_validate() {
        let dir = &std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../examples");
        let mut checked = 0;
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let Some(extension) = path.extension().and_then(|e| e.to_str()) else {
                continue;
            };
            if !["yaml", "yml", "json"].contains(&extension) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            let spec = parse_spec(&text, SpecFormat::from_path(&path))
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            if let Err(error) = validate_spec(&spec) {
                panic!("{}: {error}", path.display());
            }
            checked += 1;
        }
        assert!(
            checked >= 3,
            "expected at least 3 examples in {}, found {checked}",
            dir.display()
        );
    }

    proptest! {
        #[test]
        fn formatted_durations_parse_back(ms in any::<u64>()) {
            prop_assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }

        #[test]
        fn duration_parser_never_panics(text in "[0-9hms .-]{0,24}|.{0,24}") {
            let _ = parse_duration_ms(&text);
        }

        #[test]
        fn spec_parser_never_panics(text in ".{0,200}") {
            let _ = parse_spec(&text, SpecFormat::Yaml);
            let _ = parse_spec(&text, SpecFormat::Json);
        }
    }
}
