//! `baton trigger`: create, list, get and delete webhook triggers.

use std::path::Path;

use baton_client::Client;
use baton_client::proto::{ReadConsistency, Trigger};
use baton_proto::json::trigger_json;
use baton_proto::schedule::{parse_trigger, validate_trigger, validate_trigger_secret};
use serde_json::{Value, json};

use super::printer::Printer;
use super::schedules::read_text;
use crate::cli::args::TriggerCommand;
use crate::cli::failure::{CallKind, Failure, client_failure};

/// Words a failed call about trigger `name`: NOT_FOUND and the refusals as the node says them.
fn failure(name: &str, kind: CallKind) -> impl FnOnce(baton_client::ClientError) -> anyhow::Error {
    let object = format!("trigger {name}");
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

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// The secret from `--secret-file` (one trailing newline dropped), or a new one.
fn secret(file: Option<&Path>) -> anyhow::Result<(String, bool)> {
    let Some(path) = file else {
        let secret = baton_security::token::random_secret()
            .map_err(|e| Failure::failed(format!("no randomness for a secret: {e}")))?;
        return Ok((secret, true));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("--secret-file {}: {e}", path.display())))?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_string();
    validate_trigger_secret(&secret)
        .map_err(|e| Failure::usage(format!("--secret-file {}: {}", path.display(), e.message)))?;
    Ok((secret, false))
}

pub(super) async fn trigger(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    command: TriggerCommand,
) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Create {
            file,
            secret_file,
            replace,
        } => {
            // Checked before anything is sent: bad input never waits on a node.
            let (display_name, text, format) = read_text(&file)?;
            let spec = parse_trigger(&text, format)
                .map_err(|e| Failure::usage(format!("{display_name}: {e}")))?;
            validate_trigger(&spec).map_err(|e| Failure::usage(format!("{display_name}: {e}")))?;
            let (secret, generated) = secret(secret_file.as_deref())?;
            let name = spec.name.clone();
            let created = connect()?
                .create_trigger(spec, secret.clone(), replace)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            let path = format!("/api/v1/triggers/{name}");
            out.print(
                || {
                    let mut value =
                        json!({"name": name, "created": created.created, "url_path": path});
                    if generated {
                        value["secret"] = json!(secret);
                    }
                    value
                },
                || {
                    let done = if created.created {
                        "created"
                    } else {
                        "replaced"
                    };
                    let mut text = format!(
                        "trigger {name} {done} from {display_name}; deliveries: POST {path} on any \
                         node's HTTP listener, signed with HMAC-SHA256 (X-Baton-Signature-256 or \
                         X-Hub-Signature-256: sha256=HEX)"
                    );
                    if generated {
                        text.push_str(&format!(
                            "\nsecret (shown once; give it to the sender): {secret}"
                        ));
                    }
                    text
                },
            )
        }
        TriggerCommand::List { stale } => {
            let triggers = connect()?
                .list_triggers(consistency(stale))
                .await
                .map_err(|e| client_failure(e, CallKind::Read, Some("triggers"), None))?;
            out.print(
                || Value::Array(triggers.iter().map(trigger_json).collect()),
                || render_list(&triggers),
            )
        }
        TriggerCommand::Get { name, stale } => {
            let trigger = connect()?
                .get_trigger(&name, consistency(stale))
                .await
                .map_err(failure(&name, CallKind::Read))?;
            out.print(
                || trigger_json(&trigger),
                || render_list(std::slice::from_ref(&trigger)),
            )
        }
        TriggerCommand::Delete { name } => {
            connect()?
                .delete_trigger(&name)
                .await
                .map_err(failure(&name, CallKind::Write))?;
            out.print(
                || json!({"name": name, "deleted": true}),
                || format!("trigger {name} deleted (its runs go on)"),
            )
        }
    }
}

fn render_list(triggers: &[Trigger]) -> String {
    if triggers.is_empty() {
        return "no triggers".into();
    }
    let mut lines = Vec::new();
    for trigger in triggers {
        let spec = trigger.spec.clone().unwrap_or_default();
        let template = match spec.template_version {
            0 => spec.template.clone(),
            v => format!("{}@{v}", spec.template),
        };
        let mut params: Vec<String> = spec
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                spec.params_from_body
                    .iter()
                    .map(|(k, p)| format!("{k}<-body{p}")),
            )
            .collect();
        params.sort();
        lines.push(format!(
            "{}  starts {template}  POST /api/v1/triggers/{}{}",
            spec.name,
            spec.name,
            if params.is_empty() {
                String::new()
            } else {
                format!("  params {}", params.join(" "))
            }
        ));
    }
    lines.join("\n")
}
