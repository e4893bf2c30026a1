//! The JSON shapes of the API's messages, one function per message, written by hand: the CLI's
//! `-o json` and the node's archive lines (`batond --archive-dir`) are both these.
//!
//! prost types do not derive `Serialize`, and their derived names would leak wire details
//! (`WORKFLOW_STATE_RUNNING`, `0` for "never"). The shape is an interface for scripts: field
//! names are the proto's, enum values lowercase names (`"running"`), times integers of
//! milliseconds since the Unix epoch (`null` when not set), ids numbers. Add fields freely;
//! never rename or retype one.

use std::collections::BTreeMap;

use crate::schedule::{catchup_window_ms, overlap, overlap_name};
use crate::v1::{
    AgentInfo, ClusterStatusResponse, Member, Schedule, ScheduleRun, Step, StepAttempt, StepSpec,
    SubmitResponse, Template, TokenInfo, Trigger, Workflow, WorkflowEvent, WorkflowSpec,
    step_spec::Task,
};
use serde_json::{Map, Value, json};

use crate::names::{
    attempt_outcome_name, event_kind_name, run_condition_name, step_state_name, workflow_state_name,
};

/// A time field: 0 means "not yet" on the wire, `null` here.
fn time_json(ms: u64) -> Value {
    if ms == 0 { Value::Null } else { json!(ms) }
}

fn map_json(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect(),
    )
}

pub fn submit_json(response: &SubmitResponse) -> Value {
    json!({
        "workflow_id": response.workflow_id,
        "created": response.created,
        "log_index": response.log_index,
    })
}

/// A namespace as the API names it: `default` for the empty name of older answers.
pub fn namespace_json(namespace: &str) -> &str {
    if namespace.is_empty() {
        "default"
    } else {
        namespace
    }
}

/// A namespace and what it holds.
pub fn namespace_info_json(namespace: &crate::v1::Namespace) -> Value {
    json!({
        "name": namespace.name,
        "description": namespace.description,
        "created_at_ms": time_json(namespace.created_ms),
        "workflows": namespace.workflows,
        "running": namespace.running,
        "active_steps": namespace.active_steps,
        "weight": namespace.weight,
        "quotas": quotas_json(&namespace.quotas.unwrap_or_default()),
    })
}

/// One change of the audit trail.
pub fn audit_record_json(record: &crate::v1::AuditRecord) -> Value {
    json!({
        "index": record.index,
        "time_ms": time_json(record.time_ms),
        "actor": if record.actor.is_empty() { Value::Null } else { json!(record.actor) },
        "namespace": if record.namespace.is_empty() { Value::Null } else { json!(record.namespace) },
        "action": record.action,
        "target": record.target,
        "detail": record.detail,
        "workflow_id": if record.workflow_id == 0 { Value::Null } else { json!(record.workflow_id) },
    })
}

/// A namespace's quotas; 0 is no limit.
pub fn quotas_json(quotas: &crate::v1::NamespaceQuotas) -> Value {
    json!({
        "max_running_workflows": quotas.max_running_workflows,
        "max_active_steps": quotas.max_active_steps,
        "submits_per_second": quotas.submits_per_second,
        "submit_burst": quotas.submit_burst,
    })
}

/// A workflow, with its spec and steps when the server sent them (Get does, List does not).
pub fn workflow_json(workflow: &Workflow) -> Value {
    json!({
        "id": workflow.id,
        "namespace": namespace_json(&workflow.namespace),
        "name": workflow.name,
        "state": workflow_state_name(workflow.state),
        "labels": map_json(&workflow.labels),
        "idempotency_key": workflow.idempotency_key,
        "created_at_ms": time_json(workflow.created_at_ms),
        "finished_at_ms": time_json(workflow.finished_at_ms),
        "reason": workflow.reason,
        "revision": workflow.revision,
        "paused": workflow.paused,
        "params": map_json(&workflow.params),
        "deadline_ms": time_json(workflow.deadline_ms),
        // The schedule that started it and the time it is the run for (null: submitted).
        "schedule": (!workflow.schedule.is_empty()).then_some(&workflow.schedule),
        "nominal_time_ms": time_json(workflow.nominal_time_ms),
        // The template it was started from and its version (null: a spec of its own).
        "template": (!workflow.template.is_empty()).then_some(&workflow.template),
        "template_version": (workflow.template_version != 0).then_some(workflow.template_version),
        "steps": workflow.steps.iter().map(step_json).collect::<Vec<_>>(),
        "spec": workflow.spec.as_ref().map(spec_json),
    })
}

/// A step; `earlier_attempts` only when the server sent some (Get for `baton logs`, archives).
pub fn step_json(step: &Step) -> Value {
    let mut value = json!({
        "name": step.name,
        "state": step_state_name(step.state),
        "attempts": step.attempts,
        "attempt_id": if step.attempt_id == 0 { Value::Null } else { json!(step.attempt_id) },
        "agent": if step.agent.is_empty() { Value::Null } else { json!(step.agent) },
        "ready_at_ms": time_json(step.ready_at_ms),
        "started_at_ms": time_json(step.started_at_ms),
        "finished_at_ms": time_json(step.finished_at_ms),
        "retry_at_ms": time_json(step.retry_at_ms),
        "pending_reason": step.pending_reason,
        "output": step.output,
        "error": step.error,
        "exit_code": step.exit_code,
    });
    if !step.earlier_attempts.is_empty() {
        value["earlier_attempts"] = step.earlier_attempts.iter().map(attempt_json).collect();
    }
    value
}

/// An earlier attempt of a step.
pub fn attempt_json(attempt: &StepAttempt) -> Value {
    json!({
        "attempt_id": attempt.attempt_id,
        "agent": attempt.agent,
        "started_at_ms": time_json(attempt.started_at_ms),
        "finished_at_ms": time_json(attempt.finished_at_ms),
        "outcome": attempt_outcome_name(attempt.outcome),
        "exit_code": attempt.exit_code,
        "output": attempt.output,
        "error": attempt.error,
    })
}

/// The spec as the server stored it, in the proto's field names (durations in `_ms` fields).
pub fn spec_json(spec: &WorkflowSpec) -> Value {
    json!({
        "name": spec.name,
        "labels": map_json(&spec.labels),
        "priority": spec.priority,
        "input": map_json(&spec.input),
        "retention_ms": spec.retention_ms,
        "timeout_ms": spec.timeout_ms,
        "params": spec.params.iter().map(|p| json!({
            "name": p.name,
            "default": p.default,
            "required": p.required,
            "description": p.description,
        })).collect::<Vec<_>>(),
        "concurrency": spec.concurrency.as_ref().map(concurrency_json),
        "steps": spec.steps.iter().map(step_spec_json).collect::<Vec<_>>(),
    })
}

fn concurrency_json(concurrency: &crate::v1::Concurrency) -> Value {
    json!({ "key": concurrency.key, "limit": concurrency.limit })
}

fn step_spec_json(step: &StepSpec) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), json!(step.name));
    object.insert("depends_on".into(), json!(step.depends_on));
    object.insert("when".into(), json!(run_condition_name(step.when)));
    // The task under its own key, as in the YAML a user writes.
    match &step.task {
        Some(Task::Exec(exec)) => object.insert(
            "exec".into(),
            json!({
                "command": exec.command,
                "env": map_json(&exec.env),
                "working_dir": exec.working_dir,
            }),
        ),
        Some(Task::Http(http)) => object.insert(
            "http".into(),
            json!({
                "method": http.method,
                "url": http.url,
                "headers": map_json(&http.headers),
                "body": http.body,
                "success_statuses": http.success_statuses,
            }),
        ),
        Some(Task::Noop(_)) => object.insert("noop".into(), json!({})),
        Some(Task::Sleep(sleep)) => {
            object.insert("sleep".into(), json!({ "duration_ms": sleep.duration_ms }))
        }
        Some(Task::Custom(custom)) => object.insert(
            "custom".into(),
            json!({ "type": custom.r#type, "payload": custom.payload }),
        ),
        Some(Task::Wait(wait)) => object.insert(
            "wait".into(),
            json!({ "signal": wait.signal, "timeout_ms": wait.timeout_ms }),
        ),
        None => None,
    };
    let retry = step.retry.as_ref().map(|retry| {
        json!({
            "max_attempts": retry.max_attempts,
            "backoff": retry.backoff.as_ref().map(|backoff| json!({
                "initial_ms": backoff.initial_ms,
                "multiplier": backoff.multiplier,
                "max_ms": backoff.max_ms,
            })),
        })
    });
    object.insert("retry".into(), json!(retry));
    object.insert("timeout_ms".into(), json!(step.timeout_ms));
    let resources = step.resources.as_ref().map(
        |resources| json!({ "cpu_millis": resources.cpu_millis, "memory_mb": resources.memory_mb }),
    );
    object.insert("resources".into(), json!(resources));
    object.insert("constraints".into(), map_json(&step.constraints));
    object.insert("priority".into(), json!(step.priority));
    object.insert("lease_ttl_ms".into(), json!(step.lease_ttl_ms));
    object.insert(
        "schedule_to_start_timeout_ms".into(),
        json!(step.schedule_to_start_timeout_ms),
    );
    object.insert(
        "concurrency".into(),
        json!(step.concurrency.as_ref().map(concurrency_json)),
    );
    let rate_limit = step.rate_limit.as_ref().map(|rate| {
        json!({
            "key": rate.key,
            "per_second": rate.per_second,
            "per_minute": rate.per_minute,
            "burst": rate.burst,
        })
    });
    object.insert("rate_limit".into(), json!(rate_limit));
    Value::Object(object)
}

pub fn event_json(event: &WorkflowEvent) -> Value {
    json!({
        "index": event.index,
        "workflow_id": event.workflow_id,
        "namespace": namespace_json(&event.namespace),
        "time_ms": time_json(event.time_ms),
        "kind": event_kind_name(event.kind),
        "step": if event.step.is_empty() { Value::Null } else { json!(event.step) },
        "attempt_id": if event.attempt_id == 0 { Value::Null } else { json!(event.attempt_id) },
        "agent": if event.agent.is_empty() { Value::Null } else { json!(event.agent) },
        "workflow_state": workflow_state_name(event.workflow_state),
        "step_state": step_state_name(event.step_state),
        "message": event.message,
        "actor": if event.actor.is_empty() { Value::Null } else { json!(event.actor) },
        "output_bytes": event.output_bytes,
        "error_bytes": event.error_bytes,
    })
}

pub fn member_json(member: &Member) -> Value {
    json!({
        "node_id": member.node_id,
        "address": member.address,
        "voter": member.voter,
        "matched_index": member.matched_index,
        "data_folder": member.data_folder,
    })
}

pub fn members_json(members: &[Member]) -> Value {
    json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() })
}

pub fn cluster_status_json(status: &ClusterStatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "cluster_id": status.cluster_id,
        "role": status.role,
        "leader_id": if status.leader_id == 0 { Value::Null } else { json!(status.leader_id) },
        "term": status.term,
        "last_log_index": status.last_log_index,
        "committed_index": status.committed_index,
        "applied_index": status.applied_index,
        "snapshot_index": status.snapshot_index,
        "purged_index": status.purged_index,
        "state_hash": status.state_hash,
        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

pub fn agent_json(agent: &AgentInfo) -> Value {
    json!({
        "agent_id": agent.agent_id,
        "name": agent.name,
        "labels": map_json(&agent.labels),
        "connected": agent.connected,
        "slots": agent.slots,
        "slots_used": agent.slots_used,
        "cpu_millis": agent.cpu_millis,
        "cpu_millis_used": agent.cpu_millis_used,
        "memory_mb": agent.memory_mb,
        "memory_mb_used": agent.memory_mb_used,
        "task_types": agent.task_types,
        "namespaces": agent.namespaces,
        "running": agent.running.iter().map(|attempt| json!({
            "workflow_id": attempt.workflow_id,
            "step": attempt.step,
            "attempt_id": attempt.attempt_id,
        })).collect::<Vec<_>>(),
    })
}

pub fn token_json(token: &TokenInfo) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        // Empty for a namespaced token, whose roles are in `namespaces`.
        "role": token.role,
        "namespaces": token.namespaces,
        "created_at_ms": time_json(token.created_ms),
        "revoked_at_ms": time_json(token.revoked_ms),
    })
}

/// A template: its latest (or asked-for) version, with its spec when the server sent it.
pub fn template_json(template: &Template) -> Value {
    json!({
        "namespace": namespace_json(&template.namespace),
        "name": template.name,
        "version": template.version,
        "versions": template.versions,
        "created_at_ms": template.created_at_ms,
        "spec": template.spec.as_ref().map(spec_json),
    })
}

/// One run of a schedule.
pub fn run_json(run: &ScheduleRun) -> Value {
    json!({"workflow_id": run.workflow_id, "nominal_time_ms": run.nominal_time_ms})
}

/// A schedule: its spec's fields, its state and its counters.
pub fn schedule_json(schedule: &Schedule) -> Value {
    let spec = schedule.spec.clone().unwrap_or_default();
    json!({
        "namespace": namespace_json(&schedule.namespace),
        "name": spec.name,
        "cron": spec.cron,
        "every_ms": spec.every_ms,
        "timezone": spec.timezone,
        "overlap": overlap_name(overlap(&spec)),
        "catchup_window_ms": catchup_window_ms(&spec),
        "jitter_ms": spec.jitter_ms,
        "start_at_ms": spec.start_at_ms,
        "end_at_ms": spec.end_at_ms,
        "params": spec.params,
        "workflow": spec.workflow.as_ref().map(|w| w.name.clone()),
        "template": spec.template,
        "template_version": spec.template_version,
        "last_error": schedule.last_error,
        "paused": schedule.paused,
        "created_at_ms": schedule.created_at_ms,
        "next_fire_ms": schedule.next_fire_ms,
        "running": schedule.running.iter().map(run_json).collect::<Vec<_>>(),
        "buffered_nominal_ms": schedule.buffered_nominal_ms,
        "runs_started": schedule.runs_started,
        "runs_skipped": schedule.runs_skipped,
        "runs_missed": schedule.runs_missed,
        "last_run": schedule.last_run.as_ref().map(run_json),
    })
}

/// A webhook trigger (never its secret).
pub fn trigger_json(trigger: &Trigger) -> Value {
    let spec = trigger.spec.clone().unwrap_or_default();
    let namespace = namespace_json(&trigger.namespace);
    json!({
        "namespace": namespace,
        "name": spec.name,
        "template": spec.template,
        "template_version": spec.template_version,
        "params": spec.params,
        "params_from_body": spec.params_from_body,
        "created_at_ms": trigger.created_at_ms,
        "url_path": match namespace {
            "default" => format!("/api/v1/triggers/{}", spec.name),
            other => format!("/api/v1/triggers/{}?namespace={other}", spec.name),
        },
    })
}
