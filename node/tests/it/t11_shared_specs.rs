//! Workflows submitted with the same spec bytes hold one decoded spec, through `apply` and
//! through a snapshot's decoding, and only they do. The memo belongs to each state, so other
//! states (other tests in this process) neither share its specs nor churn it.

use std::sync::Arc;

use baton_node::state::{ApplyCtx, ClusterState, Command, LogEntry, SubmitCommand, WorkflowId};
use baton_proto::v1 as pb;
use prost::Message;

fn spec_bytes(input: Option<&str>) -> Vec<u8> {
    pb::WorkflowSpec {
        name: "nightly".into(),
        steps: vec![pb::StepSpec {
            name: "extract".into(),
            task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
            ..Default::default()
        }],
        input: input
            .map(|day| [("day".to_string(), day.to_string())].into())
            .unwrap_or_default(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn equal_specs_share_one_decoded_copy_before_and_after_a_snapshot() {
    let mut state = ClusterState::default();
    let specs = [
        spec_bytes(None),
        spec_bytes(None),
        spec_bytes(Some("monday")),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        state.apply(
            ApplyCtx {
                index: i as u64 + 1,
            },
            LogEntry {
                time_ms: 1_000,
                command: Command::Submit(SubmitCommand {
                    actor: String::new(),
                    namespace: Default::default(),
                    spec,
                    idempotency_key: format!("run-{i}"),
                    params: Default::default(),
                    template: None,
                }),
            },
        );
    }
    let shared = |state: &ClusterState| {
        let spec = |id| {
            state
                .workflow(WorkflowId(id))
                .expect("submitted")
                .spec
                .clone()
        };
        (
            Arc::ptr_eq(&spec(1), &spec(2)),
            Arc::ptr_eq(&spec(1), &spec(3)),
        )
    };
    assert_eq!(shared(&state), (true, false), "after apply");
    let restored = ClusterState::decode(&state.encode()).expect("decodes");
    assert_eq!(shared(&restored), (true, false), "after a snapshot");
    assert_eq!(restored, state);
}
