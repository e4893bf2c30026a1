//! `baton schedule`: create, list, get, pause, resume, delete, trigger and backfill schedules;
//! `baton template`: apply, list, get and delete templates.

use std::io::Read;
use std::path::Path;

use baton_client::Client;
use baton_client::proto::{ReadConsistency, Schedule};
use baton_proto::json::{run_json, schedule_json, template_json};
use baton_proto::limits::SPEC_TEXT_BYTES_MAX;
use baton_proto::schedule::{
    catchup_window_ms, format_time_ms, overlap, overlap_name, parse_schedule, parse_template_ref,
    parse_time_ms, validate_schedule,
};
use baton_proto::spec::{SpecFormat, format_duration_ms};
use serde_json::{Value, json};

use super::printer::Printer;
use crate::cli::args::{ScheduleCommand, TemplateCommand};
use crate::cli::failure::{CallKind, Failure, client_failure};

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// Words a failed call about schedule `name`: NOT_FOUND and the refusals as the node says them.
fn failure(name: &str, kind: CallKind) -> impl FnOnce(baton_client::ClientError) -> anyhow::Error {
    let object = format!("schedule {name}");
    move |error| match error.code() {
        Some(
            tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument,
        ) if error.outcome() != baton_client::Outcome::Unknown => Failure::failed(
            error
                .status()
                .map(|s| s.message().to_string())
                .unwrap_or_default(),
        ),
        _ => client_failure(error, kind, Some(&object), None),
    }
}

pub(super) async fn template(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    command: TemplateCommand,
) -> anyhow::Result<()> {
    let read = |name: &str| {
        let object = format!("template {name}");
        move |error: baton_client::ClientError| match error.code() {
            Some(tonic::Code::NotFound | tonic::Code::InvalidArgument) => Failure::failed(
                error
                    .status()
                    .map(|s| s.message().to_string())
                    .unwrap_or_default(),
            ),
            _ => client_failure(error, CallKind::Read, Some(&object), None),
        }
    };
    match command {
        TemplateCommand::Apply { file } => {
            let (display_name, spec) = super::submit::read_spec(&file)?;
            let name = spec.name.clone();
            let applied = connect()?
                .apply_template(spec)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || json!({"name": name, "version": applied.version, "created": applied.created}),
                || {
                    if applied.created {
                        format!(
                            "template {name} version {} from {display_name}",
                            applied.version
                        )
                    } else {
                        format!(
                            "template {name} unchanged: still version {}",
                            applied.version
                        )
                    }
                },
            )
        }
        TemplateCommand::List { stale } => {
            let templates = connect()?
                .list_templates(consistency(stale))
                .await
                .map_err(|e| client_failure(e, CallKind::Read, Some("templates"), None))?;
            out.print(
                || Value::Array(templates.iter().map(template_json).collect()),
                || {
                    if templates.is_empty() {
                        return "no templates".into();
                    }
                    let width = templates
                        .iter()
                        .map(|t| t.name.len())
                        .max()
                        .unwrap_or(4)
                        .max(4);
                    let mut lines = vec![format!("{:<width$}  VERSION  VERSIONS KEPT", "NAME")];
                    for t in &templates {
                        lines.push(format!(
                            "{:<width$}  {:<7}  {}",
                            t.name,
                            t.version,
                            t.versions.len()
                        ));
                    }
                    lines.join("\n")
                },
            )
        }
        TemplateCommand::Get { name, stale } => {
            let (name, version) =
                parse_template_ref(&name).map_err(|e| Failure::usage(format!("NAME: {e}")))?;
            let template = connect()?
                .get_template(&name, version, consistency(stale))
                .await
                .map_err(read(&name))?;
            out.print(
                || template_json(&template),
                || {
                    let spec = template.spec.clone().unwrap_or_default();
                    let steps: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "template {} version {} (of {:?}), applied {}\nsteps: {}",
                        template.name,
                        template.version,
                        template.versions,
                        format_time_ms(template.created_at_ms),
                        steps.join(", ")
                    )
                },
            )
        }
        TemplateCommand::Delete { name } => {
            connect()?
                .delete_template(&name)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || json!({"name": name, "deleted": true}),
                || format!("template {name} deleted (its runs keep its name and version)"),
            )
        }
    }
}

pub(super) async fn schedule(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Create { file, replace } => {
            // Checked before anything is sent: bad input never waits on a node.
            let (display_name, spec) = read_schedule(&file)?;
            let name = spec.name.clone();
            let created = connect()?
                .create_schedule(spec, replace)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            let next = next_text(created.next_fire_ms);
            out.print(
                || json!({"name": name, "created": created.created, "next_fire_ms": created.next_fire_ms}),
                || {
                    let done = if created.created { "created" } else { "replaced" };
                    format!("schedule {name} {done} from {display_name}; next run {next}")
                },
            )
        }
        ScheduleCommand::List { stale } => {
            let schedules = connect()?
                .list_schedules(consistency(stale))
                .await
                .map_err(|e| client_failure(e, CallKind::Read, Some("schedules"), None))?;
            out.print(
                || Value::Array(schedules.iter().map(schedule_json).collect()),
                || render_list(&schedules),
            )
        }
        ScheduleCommand::Get { name, stale } => {
            let got = connect()?
                .get_schedule(&name, consistency(stale))
                .await
                .map_err(failure(&name, CallKind::Read))?;
            let schedule = got.schedule.unwrap_or_default();
            out.print(
                || {
                    let mut value = schedule_json(&schedule);
                    value["upcoming_ms"] = json!(got.upcoming_ms);
                    value
                },
                || render_one(&schedule, &got.upcoming_ms),
            )
        }
        ScheduleCommand::Pause { name } => pause(connect, out, name, true).await,
        ScheduleCommand::Resume { name } => pause(connect, out, name, false).await,
        ScheduleCommand::Delete { name } => {
            connect()?
                .delete_schedule(&name)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || json!({"name": name, "deleted": true}),
                || format!("schedule {name} deleted (its runs go on)"),
            )
        }
        ScheduleCommand::Trigger { name } => {
            let fired = connect()?
                .trigger_schedule(&name)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || {
                    json!({"name": name, "workflow_id": fired.workflow_id,
                           "nominal_time_ms": fired.nominal_time_ms, "outcome": fired.outcome})
                },
                || match fired.workflow_id {
                    0 => format!("schedule {name}: {}", fired.outcome),
                    id => format!(
                        "schedule {name}: started workflow {id} for {}",
                        format_time_ms(fired.nominal_time_ms)
                    ),
                },
            )
        }
        ScheduleCommand::Backfill { name, from, to } => {
            let from_ms = parse_time_ms("--from", &from).map_err(Failure::usage)?;
            let to_ms = parse_time_ms("--to", &to).map_err(Failure::usage)?;
            if to_ms < from_ms {
                return Err(Failure::usage("--to: it is before --from"));
            }
            let filled = connect()?
                .backfill_schedule(&name, from_ms, to_ms)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || {
                    json!({"name": name, "started": filled.started.iter().map(run_json).collect::<Vec<_>>(),
                           "already_run": filled.already_run,
                           "stopped": (!filled.stopped.is_empty()).then_some(&filled.stopped)})
                },
                || {
                    let mut text = format!(
                        "schedule {name}: {} runs started, {} times already had one",
                        filled.started.len(),
                        filled.already_run
                    );
                    for run in &filled.started {
                        text.push_str(&format!(
                            "\n  {}  workflow {}",
                            format_time_ms(run.nominal_time_ms),
                            run.workflow_id
                        ));
                    }
                    if !filled.stopped.is_empty() {
                        text.push_str(&format!("\nstopped early: {}", filled.stopped));
                    }
                    text
                },
            )
        }
    }
}

async fn pause(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    name: String,
    paused: bool,
) -> anyhow::Result<()> {
    let changed = connect()?
        .pause_schedule(&name, paused)
        .await
        .map_err(failure(&name, CallKind::Write))?;
    let word = if paused { "paused" } else { "resumed" };
    out.print(
        || json!({"name": name, "paused": paused, "changed": changed}),
        || {
            if changed {
                format!("schedule {name} {word}")
            } else {
                format!("schedule {name} was already {word}")
            }
        },
    )
}

fn next_text(next_ms: u64) -> String {
    match next_ms {
        0 => "never (paused, or past its end)".into(),
        ms => format_time_ms(ms),
    }
}

fn when_text(schedule: &Schedule) -> String {
    let spec = schedule.spec.clone().unwrap_or_default();
    let zone = if spec.timezone.is_empty() {
        "UTC".to_string()
    } else {
        spec.timezone.clone()
    };
    if spec.cron.is_empty() {
        format!("every {}", format_duration_ms(spec.every_ms))
    } else {
        format!("cron \"{}\" {zone}", spec.cron)
    }
}

fn render_list(schedules: &[Schedule]) -> String {
    if schedules.is_empty() {
        return "no schedules".into();
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "WHEN".into(),
        "NEXT".into(),
        "RUNNING".into(),
        "STARTED".into(),
        "SKIPPED".into(),
        "MISSED".into(),
    ]];
    for s in schedules {
        let name = s
            .spec
            .as_ref()
            .map(|spec| spec.name.clone())
            .unwrap_or_default();
        let next = if s.paused {
            "paused".into()
        } else {
            next_text(s.next_fire_ms)
        };
        rows.push([
            name,
            when_text(s),
            next,
            s.running.len().to_string(),
            s.runs_started.to_string(),
            s.runs_skipped.to_string(),
            s.runs_missed.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_one(schedule: &Schedule, upcoming: &[u64]) -> String {
    let spec = schedule.spec.clone().unwrap_or_default();
    let mut lines = vec![
        format!("schedule  {}", spec.name),
        format!("when      {}", when_text(schedule)),
        format!(
            "overlap   {}   catch-up window {}   jitter {}",
            overlap_name(overlap(&spec)),
            format_duration_ms(catchup_window_ms(&spec)),
            format_duration_ms(spec.jitter_ms)
        ),
        if spec.template.is_empty() {
            format!(
                "workflow  {}",
                spec.workflow.as_ref().map_or("", |w| w.name.as_str())
            )
        } else {
            format!(
                "template  {}{}",
                spec.template,
                match spec.template_version {
                    0 => " (latest version at each run)".to_string(),
                    v => format!("@{v}"),
                }
            )
        },
        format!(
            "state     {}",
            if schedule.paused { "paused" } else { "active" }
        ),
        format!(
            "runs      {} started, {} skipped by overlap, {} missed beyond the catch-up window",
            schedule.runs_started, schedule.runs_skipped, schedule.runs_missed
        ),
    ];
    if !schedule.last_error.is_empty() {
        lines.push(format!("error     {}", schedule.last_error));
    }
    if let Some(last) = &schedule.last_run {
        lines.push(format!(
            "last run  workflow {} for {}",
            last.workflow_id,
            format_time_ms(last.nominal_time_ms)
        ));
    }
    for run in &schedule.running {
        lines.push(format!(
            "running   workflow {} for {}",
            run.workflow_id,
            format_time_ms(run.nominal_time_ms)
        ));
    }
    if schedule.buffered_nominal_ms != 0 {
        lines.push(format!(
            "buffered  {} (starts when the running run ends)",
            format_time_ms(schedule.buffered_nominal_ms)
        ));
    }
    if upcoming.is_empty() {
        lines.push(format!("next      {}", next_text(0)));
    }
    for (i, t) in upcoming.iter().enumerate() {
        let label = if i == 0 { "next" } else { "" };
        lines.push(format!("{label:<9} {}", format_time_ms(*t)));
    }
    lines.join("\n")
}

/// Reads, parses and checks a schedule file (`-`: stdin), as the node will: every problem is a
/// usage error naming the file, and the line or the field.
/// A file's text (or stdin's, for `-`), its name for messages, and its format: the bound and the
/// errors every spec-like file gets.
pub(super) fn read_text(path: &Path) -> anyhow::Result<(String, String, SpecFormat)> {
    let from_stdin = path.as_os_str() == "-";
    let display_name = if from_stdin {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let mut bytes = Vec::new();
    let limit = (SPEC_TEXT_BYTES_MAX + 1) as u64;
    let read = if from_stdin {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|error| Failure::usage(format!("cannot read {display_name}: {error}")))?;
    if bytes.len() > SPEC_TEXT_BYTES_MAX {
        return Err(Failure::usage(format!(
            "{display_name}: more than {SPEC_TEXT_BYTES_MAX} bytes"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{display_name}: not utf-8 text")))?;
    let format = if from_stdin {
        SpecFormat::Yaml
    } else {
        SpecFormat::from_path(path)
    };
    Ok((display_name, text, format))
}

fn read_schedule(path: &Path) -> anyhow::Result<(String, baton_client::proto::ScheduleSpec)> {
    let (display_name, text, format) = read_text(path)?;
    let spec = parse_schedule(&text, format)
        .map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    validate_schedule(&spec).map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    Ok((display_name, spec))
}
