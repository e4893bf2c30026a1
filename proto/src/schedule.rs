//! Schedules: their text form (YAML or JSON, as `baton schedule create` reads it), their rules,
//! and [`Calendar`], which names the nominal times a schedule fires at. The node's state machine
//! and the CLI use the same calendar, so what `baton schedule get` shows is what will run.
//!
//! ```yaml
//! name: nightly-report
//! cron: "30 2 * * *"          # or `every: 15m`; 6 fields put seconds first; @daily and the like
//! timezone: Europe/Paris      # IANA; default UTC
//! overlap: skip               # skip | buffer_one | allow | cancel_previous
//! catchup_window: 1h          # default 5m; 0 = none
//! jitter: 30s
//! params: {region: eu}
//! workflow:                   # a workflow spec, as `baton submit` reads it
//!   name: nightly-report
//!   steps: [...]
//! ```
//!
//! **Daylight saving** (the cron crate's rules, which are Vixie cron's): a time that names a
//! fixed hour and minute falling in the hour skipped in spring (`30 2 * * *` in a zone that
//! jumps from 2:00 to 3:00) runs once, at the first instant after the gap (3:00); in the hour
//! repeated in autumn it runs once, the first time. A pattern with a wildcard or a step in its
//! hour field (`@hourly`, `*/15 * * * *`) follows the clock: no run inside the skipped hour,
//! and a run for each pass of the repeated one.

use std::collections::BTreeMap;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::spec::{SpecFormat, SpecParseError, WorkflowDoc, duration_ms};
use crate::text::quoted;
use crate::v1::{OverlapPolicy, ScheduleSpec, TriggerSpec};
use crate::validate::{SpecError, check_name, resolve_params, validate_spec};

/// The catch-up window of a schedule that sets none.
pub const CATCHUP_WINDOW_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// The shortest `every`.
pub const EVERY_MS_MIN: u64 = 1000;
/// The longest `jitter` and `catchup_window`.
pub const JITTER_MS_MAX: u64 = 24 * 3600 * 1000;
pub const CATCHUP_WINDOW_MS_MAX: u64 = 366 * 24 * 3600 * 1000;
/// Runs one backfill starts at most.
pub const BACKFILL_RUNS_MAX: usize = 1000;
/// A webhook trigger's secret, in bytes: at least 128 bits, and no essay.
pub const TRIGGER_SECRET_BYTES_MIN: usize = 16;
pub const TRIGGER_SECRET_BYTES_MAX: usize = 256;
/// Parameters a trigger sets, fixed and from the body together.
pub const TRIGGER_PARAMS_MAX: usize = 64;

/// The catch-up window `spec` takes.
pub fn catchup_window_ms(spec: &ScheduleSpec) -> u64 {
    spec.catchup_window_ms.unwrap_or(CATCHUP_WINDOW_MS_DEFAULT)
}

/// The overlap policy `spec` takes (unset: skip).
pub fn overlap(spec: &ScheduleSpec) -> OverlapPolicy {
    match OverlapPolicy::try_from(spec.overlap) {
        Ok(OverlapPolicy::Unspecified) | Err(_) => OverlapPolicy::Skip,
        Ok(policy) => policy,
    }
}

/// The text name of a policy, as a schedule file writes it.
pub fn overlap_name(policy: OverlapPolicy) -> &'static str {
    match policy {
        OverlapPolicy::Unspecified | OverlapPolicy::Skip => "skip",
        OverlapPolicy::BufferOne => "buffer_one",
        OverlapPolicy::Allow => "allow",
        OverlapPolicy::CancelPrevious => "cancel_previous",
    }
}

/// When a schedule fires: its pattern or interval, in its time zone, within its bounds.
#[derive(Clone, Debug)]
pub struct Calendar {
    when: When,
    start_at_ms: u64,
    end_at_ms: u64,
}

#[derive(Clone, Debug)]
enum When {
    Cron(Box<Cron>, TimeZone),
    Every { every_ms: u64, offset_ms: u64 },
}

impl Calendar {
    /// The calendar of `spec`; an error names the field (`cron: ...`).
    pub fn new(spec: &ScheduleSpec) -> Result<Calendar, SpecError> {
        let when = match (spec.cron.is_empty(), spec.every_ms) {
            (true, 0) => {
                return Err(SpecError::new(
                    "",
                    "a schedule needs `cron` or `every` to say when it runs",
                ));
            }
            (false, every) if every != 0 => {
                return Err(SpecError::new(
                    "every",
                    "a schedule takes `cron` or `every`, not both",
                ));
            }
            (false, _) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(&spec.cron)
                    .map_err(|e| {
                        SpecError::new(
                            "cron",
                            format!(
                                "{} is not a cron pattern: {e} (5 fields \"min hour day month \
                                 weekday\", 6 with seconds first, or @hourly, @daily, ...)",
                                quoted(&spec.cron)
                            ),
                        )
                    })?;
                let zone = time_zone(&spec.timezone)?;
                When::Cron(Box::new(cron), zone)
            }
            (true, every_ms) => {
                if every_ms < EVERY_MS_MIN {
                    return Err(SpecError::new(
                        "every",
                        format!("{every_ms} ms is shorter than the shortest interval, 1s"),
                    ));
                }
                if !spec.timezone.is_empty() {
                    time_zone(&spec.timezone)?;
                }
                When::Every {
                    every_ms,
                    offset_ms: spec.start_at_ms % every_ms,
                }
            }
        };
        if spec.end_at_ms != 0 && spec.end_at_ms < spec.start_at_ms {
            return Err(SpecError::new("end_at", "it is before start_at"));
        }
        Ok(Calendar {
            when,
            start_at_ms: spec.start_at_ms,
            end_at_ms: spec.end_at_ms,
        })
    }

    /// The first nominal time strictly after `after_ms`, within the bounds; None when there is
    /// none (past `end_at`, or a pattern that never matches again).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        // Never before start_at: search from just before it.
        let from = after_ms.max(self.start_at_ms.saturating_sub(1));
        let next = match &self.when {
            When::Every {
                every_ms,
                offset_ms,
            } => {
                let k = from.saturating_sub(*offset_ms) / every_ms + 1;
                let next = k.checked_mul(*every_ms)?.checked_add(*offset_ms)?;
                // `from` below the offset: the first multiple is the offset itself.
                if from < *offset_ms { *offset_ms } else { next }
            }
            When::Cron(cron, zone) => {
                let start = Timestamp::from_millisecond(i64::try_from(from).ok()?)
                    .ok()?
                    .to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()?
            }
        };
        (self.end_at_ms == 0 || next <= self.end_at_ms).then_some(next)
    }

    /// Every nominal time in `[from_ms, to_ms]` (from_ms at least 1), at most `max` of them;
    /// `Err(max + 1)` when the range holds more.
    pub fn times_in(&self, from_ms: u64, to_ms: u64, max: usize) -> Result<Vec<u64>, usize> {
        let mut times = Vec::new();
        let mut cursor = from_ms.saturating_sub(1);
        while let Some(next) = self.next_after(cursor).filter(|&t| t <= to_ms) {
            if times.len() == max {
                return Err(max + 1);
            }
            times.push(next);
            cursor = next;
        }
        Ok(times)
    }
}

fn time_zone(name: &str) -> Result<TimeZone, SpecError> {
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| {
        SpecError::new(
            "timezone",
            format!(
                "{} is not an IANA time zone (e.g. \"UTC\", \"Europe/Paris\", \
                 \"America/New_York\")",
                quoted(name)
            ),
        )
    })
}

/// Checks a schedule as the node does before creating it: its name, its calendar, its bounds,
/// its workflow spec (fields under `workflow.`) and its params against the spec's declarations
/// (`params.NAME`). Returns the params resolved (given or defaulted).
pub fn validate_schedule(spec: &ScheduleSpec) -> Result<BTreeMap<String, String>, SpecError> {
    check_name("name", "schedule name", &spec.name)?;
    Calendar::new(spec)?;
    if spec.jitter_ms > JITTER_MS_MAX {
        return Err(SpecError::new("jitter", "it is longer than 24h"));
    }
    if catchup_window_ms(spec) > CATCHUP_WINDOW_MS_MAX {
        return Err(SpecError::new(
            "catchup_window",
            "it is longer than 366 days",
        ));
    }
    if OverlapPolicy::try_from(spec.overlap).is_err() {
        return Err(SpecError::new(
            "overlap",
            format!("{} is not an overlap policy", spec.overlap),
        ));
    }
    if spec.template.is_empty() && spec.template_version != 0 {
        return Err(SpecError::new("template_version", "set without a template"));
    }
    if !spec.template.is_empty() {
        if spec.workflow.is_some() {
            return Err(SpecError::new(
                "template",
                "a schedule runs a workflow or a template, not both",
            ));
        }
        check_name("template", "template name", &spec.template)?;
        // The params are checked against the template by the node, which has it.
        return Ok(spec.params.clone());
    }
    let workflow = spec.workflow.as_ref().ok_or_else(|| {
        SpecError::new(
            "workflow",
            "a schedule needs the workflow it runs (`workflow:` or `template:`)",
        )
    })?;
    let prefixed = |e: SpecError| SpecError {
        field: if e.field.is_empty() {
            "workflow".into()
        } else {
            format!("workflow.{}", e.field)
        },
        message: e.message,
    };
    validate_spec(workflow).map_err(prefixed)?;
    resolve_params(workflow, &spec.params)
}

/// Parses a schedule file (YAML or JSON). The result has the shape of a schedule but is not yet
/// checked: see [`validate_schedule`].
pub fn parse_schedule(text: &str, format: SpecFormat) -> Result<ScheduleSpec, SpecParseError> {
    if text.trim().is_empty() {
        return Err(SpecParseError::without_location(
            "schedule text is empty".into(),
        ));
    }
    let doc: ScheduleDoc = match format {
        SpecFormat::Yaml => serde_norway::from_str(text).map_err(SpecParseError::from_yaml)?,
        SpecFormat::Json => serde_json::from_str(text).map_err(SpecParseError::from_json)?,
    };
    doc.into_proto().map_err(SpecParseError::without_location)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleDoc {
    name: String,
    #[serde(default)]
    workflow: Option<WorkflowDoc>,
    /// `NAME` or `NAME@VERSION`.
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    cron: String,
    #[serde(default, deserialize_with = "duration_ms")]
    every: u64,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    overlap: Option<String>,
    #[serde(default, deserialize_with = "optional_duration_ms")]
    catchup_window: Option<u64>,
    #[serde(default, deserialize_with = "duration_ms")]
    jitter: u64,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    end_at: Option<String>,
    #[serde(default)]
    paused: bool,
}

fn optional_duration_ms<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    duration_ms(deserializer).map(Some)
}

impl ScheduleDoc {
    fn into_proto(self) -> Result<ScheduleSpec, String> {
        let overlap = match self.overlap.as_deref() {
            None => OverlapPolicy::Unspecified,
            Some(text) => parse_overlap(text).ok_or_else(|| {
                format!(
                    "overlap: {} is not one of skip, buffer_one, allow, cancel_previous",
                    quoted(text)
                )
            })?,
        };
        let (template, template_version) = match self.template.as_deref() {
            None => (String::new(), 0),
            Some(text) => parse_template_ref(text).map_err(|e| format!("template: {e}"))?,
        };
        Ok(ScheduleSpec {
            name: self.name,
            workflow: self.workflow.map(WorkflowDoc::into_proto),
            template,
            template_version,
            params: self.params,
            cron: self.cron,
            every_ms: self.every,
            timezone: self.timezone,
            overlap: overlap as i32,
            catchup_window_ms: self.catchup_window,
            jitter_ms: self.jitter,
            start_at_ms: self
                .start_at
                .as_deref()
                .map(|t| parse_time_ms("start_at", t))
                .transpose()?
                .unwrap_or(0),
            end_at_ms: self
                .end_at
                .as_deref()
                .map(|t| parse_time_ms("end_at", t))
                .transpose()?
                .unwrap_or(0),
            paused: self.paused,
        })
    }
}

/// `NAME` or `NAME@VERSION` (a template and one of its versions; 0: the latest).
pub fn parse_template_ref(text: &str) -> Result<(String, u32), String> {
    match text.split_once('@') {
        None => Ok((text.to_owned(), 0)),
        Some((name, version)) => match version.parse::<u32>() {
            Ok(v) if v > 0 => Ok((name.to_owned(), v)),
            _ => Err(format!(
                "{} is not NAME@VERSION with a version of 1 or more",
                quoted(text)
            )),
        },
    }
}

/// An overlap policy by its file name.
pub fn parse_overlap(text: &str) -> Option<OverlapPolicy> {
    match text {
        "skip" => Some(OverlapPolicy::Skip),
        "buffer_one" => Some(OverlapPolicy::BufferOne),
        "allow" => Some(OverlapPolicy::Allow),
        "cancel_previous" => Some(OverlapPolicy::CancelPrevious),
        _ => None,
    }
}

/// An instant written as RFC 3339 (`2026-12-24T18:00:00Z`, `2026-12-24T18:00:00+01:00`), in
/// ms since the Unix epoch; `field` names it in the error.
pub fn parse_time_ms(field: &str, text: &str) -> Result<u64, String> {
    let at = Timestamp::from_str(text).map_err(|_| {
        format!(
            "{field}: {} is not an RFC 3339 time, e.g. \"2026-12-24T18:00:00Z\"",
            quoted(text)
        )
    })?;
    u64::try_from(at.as_millisecond())
        .map_err(|_| format!("{field}: {} is before 1970", quoted(text)))
}

/// `ms` as RFC 3339 in UTC, for people.
pub fn format_time_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{ms} ms"), |t| t.to_string())
}

/// Checks a webhook trigger as the node does before creating it (the template's own parameters
/// are checked by the node, which has it, and again at each delivery).
pub fn validate_trigger(spec: &TriggerSpec) -> Result<(), SpecError> {
    check_name("name", "trigger name", &spec.name)?;
    if spec.template.is_empty() {
        return Err(SpecError::new(
            "template",
            "a trigger starts a template (`template: NAME` or `NAME@VERSION`)",
        ));
    }
    check_name("template", "template name", &spec.template)?;
    let count = spec.params.len() + spec.params_from_body.len();
    if count > TRIGGER_PARAMS_MAX {
        return Err(SpecError::new(
            "params",
            format!("{count} parameters, more than {TRIGGER_PARAMS_MAX}"),
        ));
    }
    for name in spec.params.keys() {
        check_name(&format!("params.{name}"), "parameter name", name)?;
    }
    for (name, pointer) in &spec.params_from_body {
        check_name(&format!("params_from_body.{name}"), "parameter name", name)?;
        if spec.params.contains_key(name) {
            return Err(SpecError::new(
                format!("params_from_body.{name}"),
                "also in params: give it one source",
            ));
        }
        if !pointer.starts_with('/') || pointer.len() > 512 {
            return Err(SpecError::new(
                format!("params_from_body.{name}"),
                format!(
                    "{} is not a JSON Pointer into the body (`/ref`, `/head_commit/id`)",
                    quoted(pointer)
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a trigger's secret: its length only (any text is a key).
pub fn validate_trigger_secret(secret: &str) -> Result<(), SpecError> {
    let n = secret.len();
    if !(TRIGGER_SECRET_BYTES_MIN..=TRIGGER_SECRET_BYTES_MAX).contains(&n) {
        return Err(SpecError::new(
            "secret",
            format!(
                "{n} bytes; a trigger's secret has {TRIGGER_SECRET_BYTES_MIN} to \
                 {TRIGGER_SECRET_BYTES_MAX}"
            ),
        ));
    }
    Ok(())
}

/// Parses a trigger file (YAML or JSON); see [`validate_trigger`].
pub fn parse_trigger(text: &str, format: SpecFormat) -> Result<TriggerSpec, SpecParseError> {
    if text.trim().is_empty() {
        return Err(SpecParseError::without_location(
            "trigger text is empty".into(),
        ));
    }
    let doc: TriggerDoc = match format {
        SpecFormat::Yaml => serde_norway::from_str(text).map_err(SpecParseError::from_yaml)?,
        SpecFormat::Json => serde_json::from_str(text).map_err(SpecParseError::from_json)?,
    };
    let (template, template_version) = parse_template_ref(&doc.template)
        .map_err(|e| SpecParseError::without_location(format!("template: {e}")))?;
    Ok(TriggerSpec {
        name: doc.name,
        template,
        template_version,
        params: doc.params,
        params_from_body: doc.params_from_body,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerDoc {
    name: String,
    /// `NAME` or `NAME@VERSION`.
    template: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    params_from_body: BTreeMap<String, String>,
}

/// The parameters of one delivery: the trigger's fixed ones, and those its pointers find in the
/// JSON `body` (a string as is, any other value as its JSON text; nothing found: left out).
pub fn delivery_params(spec: &TriggerSpec, body: &serde_json::Value) -> BTreeMap<String, String> {
    let mut params = spec.params.clone();
    for (name, pointer) in &spec.params_from_body {
        match body.pointer(pointer) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(text)) => {
                params.insert(name.clone(), text.clone());
            }
            Some(other) => {
                params.insert(name.clone(), other.to_string());
            }
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{NoopTask, StepSpec, WorkflowSpec, step_spec::Task};

    fn at(text: &str) -> u64 {
        parse_time_ms("t", text).unwrap()
    }

    fn cron(pattern: &str, zone: &str) -> Calendar {
        Calendar::new(&ScheduleSpec {
            cron: pattern.into(),
            timezone: zone.into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn next_n(calendar: &Calendar, from: u64, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = calendar.next_after(t).unwrap();
            out.push(format_time_ms(t));
        }
        out
    }

    #[test]
    fn a_fixed_time_in_the_skipped_hour_runs_once_after_the_gap_and_once_in_the_repeated_one() {
        // New York: 2026-03-08 02:00 EST jumps to 03:00 EDT; 2026-11-01 02:00 EDT falls back
        // to 01:00 EST.
        let daily = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            next_n(&daily, at("2026-03-07T12:00:00Z"), 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
            "the gap's 2:30 runs at 3:00 EDT (07:00Z), then 2:30 EDT"
        );
        let early = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            next_n(&early, at("2026-10-31T12:00:00Z"), 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            "1:30 comes twice on Nov 1 and runs once, the first time (EDT)"
        );
        let hourly = cron("@hourly", "America/New_York");
        assert_eq!(
            next_n(&hourly, at("2026-11-01T04:30:00Z"), 3),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z"
            ],
            "an hourly pattern runs in both passes of the repeated hour (1:00 EDT, 1:00 EST)"
        );
        assert_eq!(
            next_n(&hourly, at("2026-03-08T06:30:00Z"), 2),
            ["2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"],
            "and not in the skipped one: 1:00 EST (06:00Z) then 3:00 EDT (07:00Z)"
        );
    }

    #[test]
    fn seconds_and_intervals_and_bounds() {
        let every_second = cron("* * * * * *", "");
        assert_eq!(every_second.next_after(1_500), Some(2_000));
        let every = Calendar::new(&ScheduleSpec {
            every_ms: 30_000,
            start_at_ms: 10_000,
            end_at_ms: 100_000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(every.next_after(0), Some(10_000), "not before start_at");
        assert_eq!(every.next_after(10_000), Some(40_000));
        assert_eq!(every.next_after(69_999), Some(70_000));
        assert_eq!(every.next_after(70_000), Some(100_000));
        assert_eq!(every.next_after(100_000), None, "past end_at");
        assert_eq!(
            every.times_in(0, 75_000, 10),
            Ok(vec![10_000, 40_000, 70_000])
        );
        assert_eq!(every.times_in(0, 200_000, 2), Err(3));
        let daily = cron("@daily", "UTC");
        assert_eq!(
            daily.times_in(at("2026-01-01T00:00:00Z"), at("2026-01-03T00:00:00Z"), 10),
            Ok(vec![
                at("2026-01-01T00:00:00Z"),
                at("2026-01-02T00:00:00Z"),
                at("2026-01-03T00:00:00Z")
            ]),
            "both ends are in the range"
        );
    }

    fn spec() -> ScheduleSpec {
        ScheduleSpec {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            workflow: Some(WorkflowSpec {
                name: "report".into(),
                steps: vec![StepSpec {
                    name: "a".into(),
                    task: Some(Task::Noop(NoopTask {})),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn bad_schedules_are_named_by_their_field() {
        let error = |f: &dyn Fn(&mut ScheduleSpec)| {
            let mut s = spec();
            f(&mut s);
            validate_schedule(&s).unwrap_err().to_string()
        };
        assert!(
            error(&|s| s.cron = "61 * * * *".into())
                .starts_with("cron: \"61 * * * *\" is not a cron pattern")
        );
        assert!(error(&|s| s.cron = "* * *".into()).starts_with("cron: "));
        assert_eq!(
            error(&|s| s.timezone = "Mars/Olympus".into()),
            "timezone: \"Mars/Olympus\" is not an IANA time zone (e.g. \"UTC\", \"Europe/Paris\", \"America/New_York\")"
        );
        assert_eq!(
            error(&|s| s.every_ms = 5_000),
            "every: a schedule takes `cron` or `every`, not both"
        );
        assert_eq!(
            error(&|s| {
                s.cron.clear();
                s.every_ms = 10
            }),
            "every: 10 ms is shorter than the shortest interval, 1s"
        );
        assert_eq!(
            error(&|s| s.name = "a b".into()),
            "name: schedule name \"a b\" has a character outside [A-Za-z0-9._-]"
        );
        assert!(error(&|s| s.workflow.as_mut().unwrap().steps.clear()).starts_with("workflow."));
        assert!(
            error(&|s| {
                s.params.insert("nope".into(), "1".into());
            })
            .starts_with("params[\"nope\"]: ")
        );
        assert!(validate_schedule(&spec()).is_ok());
    }

    /// Every schedule in `examples/schedules/` parses and passes the node's checks.
    #[test]
    fn example_schedules_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/schedules");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/schedules") {
            let path = entry.expect("an entry").path();
            let text = std::fs::read_to_string(&path).expect("readable");
            let spec = parse_schedule(&text, SpecFormat::from_path(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            validate_schedule(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(Calendar::new(&spec).unwrap().next_after(0).is_some());
            checked += 1;
        }
        assert!(checked >= 1, "no schedule in {}", dir.display());
    }

    #[test]
    fn a_schedule_file_parses_with_its_conveniences_and_names_bad_keys() {
        let text = "name: nightly\ncron: '30 2 * * *'\ntimezone: Europe/Paris\noverlap: buffer_one\n\
                    catchup_window: 1h\njitter: 30s\nstart_at: 2026-01-01T00:00:00Z\n\
                    workflow:\n  name: report\n  steps:\n    - name: a\n      noop: {}\n";
        let parsed = parse_schedule(text, SpecFormat::Yaml).unwrap();
        assert_eq!(parsed.overlap, OverlapPolicy::BufferOne as i32);
        assert_eq!(parsed.catchup_window_ms, Some(3_600_000));
        assert_eq!(parsed.jitter_ms, 30_000);
        assert_eq!(parsed.start_at_ms, at("2026-01-01T00:00:00Z"));
        assert!(validate_schedule(&parsed).is_ok());
        let typo = parse_schedule("name: x\nkron: '* * * * *'\n", SpecFormat::Yaml).unwrap_err();
        assert_eq!(typo.line, Some(2), "{typo}");
        assert!(typo.message.contains("unknown field \"kron\""), "{typo}");
        let overlap = parse_schedule(
            "name: x\noverlap: never\nworkflow: {name: w, steps: [{name: a, noop: {}}]}\n",
            SpecFormat::Yaml,
        )
        .unwrap_err();
        assert_eq!(
            overlap.to_string(),
            "overlap: \"never\" is not one of skip, buffer_one, allow, cancel_previous"
        );
    }

    #[test]
    fn triggers_parse_check_and_map_a_delivery() {
        let text = "name: on-push\ntemplate: deploy@3\nparams: {env: staging}\n\
                    params_from_body: {sha: /head_commit/id, branch: /ref, size: /size}\n";
        let spec = parse_trigger(text, SpecFormat::Yaml).unwrap();
        assert_eq!(
            (spec.template.as_str(), spec.template_version),
            ("deploy", 3)
        );
        validate_trigger(&spec).unwrap();
        let body = serde_json::json!({"ref": "refs/heads/main", "head_commit": {"id": "abc"},
                                      "size": 3});
        let params = delivery_params(&spec, &body);
        assert_eq!(params["env"], "staging");
        assert_eq!(params["sha"], "abc");
        assert_eq!(params["branch"], "refs/heads/main");
        assert_eq!(params["size"], "3");
        // A pointer that finds nothing leaves the parameter to its default.
        let params = delivery_params(&spec, &serde_json::json!({}));
        assert_eq!(params.len(), 1);

        let field = |text: &str| {
            let spec = parse_trigger(text, SpecFormat::Yaml).unwrap();
            validate_trigger(&spec).unwrap_err().field
        };
        assert_eq!(
            field("name: x\ntemplate: t\nparams_from_body: {a: ref}\n"),
            "params_from_body.a"
        );
        assert_eq!(
            field("name: x\ntemplate: t\nparams: {a: b}\nparams_from_body: {a: /a}\n"),
            "params_from_body.a"
        );
        assert_eq!(field("name: \"bad name\"\ntemplate: t\n"), "name");
        assert!(parse_trigger("name: x\n", SpecFormat::Yaml).is_err());
        assert!(parse_trigger("name: x\ntemplate: t\nsecret: s\n", SpecFormat::Yaml).is_err());
        assert!(validate_trigger_secret("short").is_err());
        assert!(validate_trigger_secret(&"k".repeat(16)).is_ok());
        assert!(validate_trigger_secret(&"k".repeat(257)).is_err());
    }
}
