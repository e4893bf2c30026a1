//! The `-o json` shapes, one function per message, written by hand (see the [module
//! header](super)): field names the proto's, enums lowercase names, unset times `null`.

use std::collections::BTreeMap;

use baton_proto::v1::{
    AgentInfo, ClusterStatusResponse, Member, Step, StepSpec, SubmitResponse, TokenInfo, Workflow,
    WorkflowEvent, WorkflowSpec, step_spec::Task,
};
use serde_json::{Map, Value, json};

use super::names::{event_kind_name, run_condition_name, step_state_name, workflow_state_name};

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

/// A workflow, with its spec and steps when the server sent them (Get does, List does not).
pub fn workflow_json(workflow: &Workflow) -> Value {
    json!({
        "id": workflow.id,
        "name": workflow.name,
        "state": workflow_state_name(workflow.state),
        "labels": map_json(&workflow.labels),
        "idempotency_key": workflow.idempotency_key,
        "created_at_ms": time_json(workflow.created_at_ms),
        "finished_at_ms": time_json(workflow.finished_at_ms),
        "reason": workflow.reason,
        "revision": workflow.revision,
        "steps": workflow.steps.iter().map(step_json).collect::<Vec<_>>(),
        "spec": workflow.spec.as_ref().map(spec_json),
    })
}

pub fn step_json(step: &Step) -> Value {
    json!({
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
    })
}

/// The spec as the server stored it, in the proto's field names (durations in `_ms` fields).
pub fn spec_json(spec: &WorkflowSpec) -> Value {
    json!({
        "name": spec.name,
        "labels": map_json(&spec.labels),
        "priority": spec.priority,
        "input": map_json(&spec.input),
        "steps": spec.steps.iter().map(step_spec_json).collect::<Vec<_>>(),
    })
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
    Value::Object(object)
}

pub fn event_json(event: &WorkflowEvent) -> Value {
    json!({
        "index": event.index,
        "workflow_id": event.workflow_id,
        "time_ms": time_json(event.time_ms),
        "kind": event_kind_name(event.kind),
        "step": if event.step.is_empty() { Value::Null } else { json!(event.step) },
        "attempt_id": if event.attempt_id == 0 { Value::Null } else { json!(event.attempt_id) },
        "agent": if event.agent.is_empty() { Value::Null } else { json!(event.agent) },
        "workflow_state": workflow_state_name(event.workflow_state),
        "step_state": step_state_name(event.step_state),
        "message": event.message,
    })
}

pub fn member_json(member: &Member) -> Value {
    json!({
        "node_id": member.node_id,
        "address": member.address,
        "voter": member.voter,
        "matched_index": member.matched_index,
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
        "role": token.role,
        "created_at_ms": time_json(token.created_ms),
        "revoked_at_ms": time_json(token.revoked_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::sample_workflow;

    #[test]
    fn workflow_json_has_the_documented_shape() {
        let value = workflow_json(&sample_workflow());
        let expected = json!({
            "id": 42,
            "name": "onboard-employee",
            "state": "running",
            "labels": {"team": "it"},
            "idempotency_key": "k-1",
            "created_at_ms": 1_714_566_605_123u64,
            "finished_at_ms": null,
            "reason": "",
            "revision": 17,
            "steps": [
                {
                    "name": "create-account", "state": "succeeded", "attempts": 1,
                    "attempt_id": 7, "agent": "agent-eu-1",
                    "ready_at_ms": 1_714_566_605_200u64, "started_at_ms": 1_714_566_605_300u64,
                    "finished_at_ms": 1_714_566_606_000u64, "retry_at_ms": null, "pending_reason": "",
                    "output": "uid=1001", "error": "", "exit_code": 0
                },
                {
                    "name": "order-laptop", "state": "waiting", "attempts": 0,
                    "attempt_id": null, "agent": null, "ready_at_ms": null,
                    "started_at_ms": null, "finished_at_ms": null, "retry_at_ms": null, "pending_reason": "",
                    "output": "", "error": "", "exit_code": null
                }
            ],
            "spec": {
                "name": "onboard-employee",
                "labels": {"team": "it"},
                "priority": 0,
                "input": {},
                "steps": [{
                    "name": "create-account",
                    "depends_on": [],
                    "when": "success",
                    "exec": {"command": ["/opt/it/create-user"], "env": {}, "working_dir": ""},
                    "retry": {"max_attempts": 3, "backoff": null},
                    "timeout_ms": 300_000,
                    "resources": null,
                    "constraints": {},
                    "priority": null,
                    "lease_ttl_ms": 0,
                    "schedule_to_start_timeout_ms": 0
                }]
            }
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn submit_json_names_the_id_and_whether_it_was_created() {
        let response = SubmitResponse {
            workflow_id: 9,
            created: false,
            log_index: 120,
        };
        assert_eq!(
            serde_json::to_string(&submit_json(&response)).unwrap(),
            r#"{"created":false,"log_index":120,"workflow_id":9}"#
        );
    }
}
