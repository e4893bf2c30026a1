//! How results look: stable JSON (`-o json`) and aligned human tables, built from the prost types.
//!
//! The JSON shapes and the enums' names live in `baton_proto::json` and `baton_proto::names`
//! (the node's archive writes the same shapes) and are re-exported here; `json` holds their
//! tests against this module's fixtures.
//!
//! Code map (the module lives in `cli/` with the rest of the CLI, but is compiled into the
//! library as the public `baton_client::output`): `text` the table and cell helpers, `tables` the views of workflows, tokens and
//! agents, `cluster` the views of the cluster, `events` events as lines and as a history table, `logs` one
//! attempt of a step in full.

mod cluster;
mod events;
#[cfg(test)]
mod json;
mod logs;
mod tables;
mod text;

pub use self::cluster::{
    NodeStatus, render_cluster_status, render_cluster_statuses, render_members,
};
pub use self::events::{EventColumns, render_event_line, render_history};
pub use self::logs::{AttemptView, attempt_json, choose_attempt, render_attempt, step_attempts};
pub use self::tables::{
    render_agents, render_audit, render_namespaces, render_tokens, render_workflow,
    render_workflow_list, render_workflow_list_namespaced,
};
pub use self::text::{Table, format_time_ms};
pub use baton_proto::json::{
    agent_json, cluster_status_json, event_json, member_json, members_json, spec_json, step_json,
    submit_json, token_json, workflow_json,
};
pub use baton_proto::names::{
    event_kind_name, parse_workflow_state, run_condition_name, step_state_name, workflow_state_name,
};

/// A workflow with a spec and two steps, for the tests of its views.
#[cfg(test)]
mod fixtures {
    use std::collections::BTreeMap;

    use baton_proto::v1::{
        ExecTask, RetryPolicy, Step, StepSpec, StepState, Workflow, WorkflowSpec, WorkflowState,
        step_spec::Task,
    };

    pub(super) fn sample_workflow() -> Workflow {
        Workflow {
            id: 42,
            namespace: "default".into(),
            name: "onboard-employee".into(),
            labels: BTreeMap::from([("team".to_string(), "it".to_string())]),
            state: WorkflowState::Running as i32,
            idempotency_key: "k-1".into(),
            created_at_ms: 1_714_566_605_123,
            finished_at_ms: 0,
            spec: Some(WorkflowSpec {
                name: "onboard-employee".into(),
                labels: BTreeMap::from([("team".to_string(), "it".to_string())]),
                steps: vec![StepSpec {
                    name: "create-account".into(),
                    task: Some(Task::Exec(ExecTask {
                        command: vec!["/opt/it/create-user".into()],
                        ..Default::default()
                    })),
                    retry: Some(RetryPolicy {
                        max_attempts: 3,
                        backoff: None,
                    }),
                    timeout_ms: 300_000,
                    ..Default::default()
                }],
                priority: 0,
                concurrency: None,
                input: BTreeMap::new(),
                retention_ms: 0,
                timeout_ms: 0,
                params: Default::default(),
            }),
            steps: vec![
                Step {
                    name: "create-account".into(),
                    state: StepState::Succeeded as i32,
                    attempts: 1,
                    attempt_id: 7,
                    agent: "agent-eu-1".into(),
                    ready_at_ms: 1_714_566_605_200,
                    started_at_ms: 1_714_566_605_300,
                    finished_at_ms: 1_714_566_606_000,
                    output: "uid=1001".into(),
                    error: String::new(),
                    exit_code: Some(0),
                    retry_at_ms: 0,
                    pending_reason: String::new(),
                    earlier_attempts: Vec::new(),
                },
                Step {
                    name: "order-laptop".into(),
                    state: StepState::Waiting as i32,
                    ..Default::default()
                },
            ],
            reason: String::new(),
            revision: 17,
            paused: false,
            deadline_ms: 0,
            params: Default::default(),
            schedule: String::new(),
            nominal_time_ms: 0,
            template: String::new(),
            template_version: 0,
        }
    }
}
