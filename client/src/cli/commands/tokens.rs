//! `baton token create | list | revoke`: the cluster's bearer tokens (`generate` needs no
//! cluster and is answered in [`super::run`]); and `baton namespace`, whose names tokens carry.

use baton_client::Client;
use baton_client::output;
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::{NamespaceCommand, TokenCommand};
use crate::cli::failure::Failure;
use crate::cli::failure::{CallKind, client_failure};

/// `baton token ...`.
/// `namespace`: `--namespace` (or BATON_NAMESPACE): a token created then acts only there.
pub(super) async fn token(
    client: &Client,
    out: &Printer,
    command: TokenCommand,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, grants } => {
            let mut namespaces: std::collections::BTreeMap<String, String> =
                grants.into_iter().collect();
            if let (Some(ns), true) = (namespace, role.is_some())
                && namespaces.contains_key(ns)
            {
                return Err(Failure::usage(format!(
                    "--namespace {ns} and --grant {ns}=... both give a role in {ns}: give one"
                )));
            }
            if role.as_deref() == Some("agent") && (namespace.is_some() || !namespaces.is_empty()) {
                return Err(Failure::usage(
                    "--role agent: agent tokens are cluster-wide (the fleet serves every \
                     namespace); leave out --namespace and --grant",
                ));
            }
            let role = match (namespace, role) {
                (Some(namespace), Some(role)) => {
                    namespaces.insert(namespace.to_string(), role);
                    String::new()
                }
                (None, Some(role)) if namespaces.is_empty() => role,
                (None, Some(_)) => {
                    return Err(Failure::usage(
                        "--role with --grant needs --namespace (the role's namespace); or give \
                         every namespace as --grant NAMESPACE=ROLE",
                    ));
                }
                (_, None) if !namespaces.is_empty() => String::new(),
                (_, None) => {
                    return Err(Failure::usage(
                        "--role is required (admin, operator, submitter, reader or agent), or \
                         --grant NAMESPACE=ROLE",
                    ));
                }
            };
            let scope = match namespaces.is_empty() {
                true => "every namespace".to_string(),
                false => namespaces
                    .iter()
                    .map(|(ns, role)| format!("{ns} ({role})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let created = client
                .create_token(&name, &role, namespaces)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"id": created.id, "token": created.token}),
                || {
                    format!(
                        "id:    {}\ntoken: {}\nacts in: {scope}\n(shown once: store it now)",
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

/// `baton namespace ...`.
pub(super) async fn namespace(
    client: &Client,
    out: &Printer,
    command: NamespaceCommand,
) -> anyhow::Result<()> {
    match command {
        NamespaceCommand::Create {
            name,
            description,
            quotas,
        } => {
            let weight = quotas.weight.unwrap_or(0);
            let quotas = baton_client::proto::NamespaceQuotas {
                max_running_workflows: quotas.max_running_workflows.unwrap_or(0),
                max_active_steps: quotas.max_active_steps.unwrap_or(0),
                submits_per_second: quotas.submits_per_second.unwrap_or(0),
                submit_burst: quotas.submit_burst.unwrap_or(0),
            };
            client
                .create_namespace(&name, &description, Some(quotas), weight)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"name": name, "created": true}),
                || format!("namespace {name} created"),
            )
        }
        NamespaceCommand::List => {
            let namespaces = client
                .list_namespaces(baton_proto::v1::ReadConsistency::Linearizable)
                .await
                .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
            out.print(
                || {
                    Value::Array(
                        namespaces
                            .iter()
                            .map(baton_proto::json::namespace_info_json)
                            .collect(),
                    )
                },
                || output::render_namespaces(&namespaces),
            )
        }
        NamespaceCommand::Set {
            name,
            description,
            quotas,
        } => {
            let request = baton_client::proto::UpdateNamespaceRequest {
                name: name.clone(),
                description,
                max_running_workflows: quotas.max_running_workflows,
                max_active_steps: quotas.max_active_steps,
                submits_per_second: quotas.submits_per_second,
                submit_burst: quotas.submit_burst,
                weight: quotas.weight,
            };
            let namespace = client
                .update_namespace(request)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || baton_proto::json::namespace_info_json(&namespace),
                || output::render_namespaces(std::slice::from_ref(&namespace)),
            )
        }
        NamespaceCommand::Delete { name } => {
            client
                .delete_namespace(&name)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"name": name, "deleted": true}),
                || format!("namespace {name} deleted"),
            )
        }
    }
}

/// `baton audit`: the trail of changes, newest first.
pub(super) async fn audit(
    client: &Client,
    out: &Printer,
    args: crate::cli::args::AuditArgs,
    namespace: String,
) -> anyhow::Result<()> {
    let since_ms = since_ms(&args.since, now_ms()).map_err(Failure::usage)?;
    if args.limit == 0 || args.limit > 10_000 {
        return Err(Failure::usage(format!(
            "--limit {}: give 1 to 10000",
            args.limit
        )));
    }
    let records = client
        .list_audit(baton_proto::v1::ListAuditRequest {
            since_ms,
            namespace,
            limit: args.limit,
            consistency: baton_proto::v1::ReadConsistency::Linearizable as i32,
        })
        .await
        .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
    out.print(
        || {
            Value::Array(
                records
                    .iter()
                    .map(baton_proto::json::audit_record_json)
                    .collect(),
            )
        },
        || output::render_audit(&records),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `--since`: a duration back from `now_ms` (`1h`) or an RFC 3339 time.
fn since_ms(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(back) = baton_proto::spec::parse_duration_ms(text) {
        return Ok(now_ms.saturating_sub(back));
    }
    baton_proto::schedule::parse_time_ms("--since", text).map_err(|_| {
        format!("--since {text:?}: give a duration back from now (1h, 30m, 7d) or an RFC 3339 time")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_a_duration_back_or_a_time() {
        assert_eq!(
            super::since_ms("1h", 10_000_000),
            Ok(10_000_000 - 3_600_000)
        );
        assert_eq!(
            super::since_ms("2026-01-01T00:00:00Z", 0),
            Ok(1_767_225_600_000)
        );
        assert!(
            super::since_ms("yesterday", 0)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
