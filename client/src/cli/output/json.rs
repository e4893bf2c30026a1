//! Tests of the `-o json` shapes, which live in `baton_proto::json` (the node's archive writes
//! them too), against this module's fixtures.

#[cfg(test)]
mod tests {
    use baton_proto::json::*;
    use baton_proto::v1::SubmitResponse;
    use serde_json::{Value, json};

    use crate::output::fixtures::sample_workflow;

    #[test]
    fn workflow_json_has_the_documented_shape() {
        let value = workflow_json(&sample_workflow());
        let mut expected = json!({
            "id": 42,
            "namespace": "default",
            "name": "onboard-employee",
            "state": "running",
            "labels": {"team": "it"},
            "idempotency_key": "k-1",
            "created_at_ms": 1_714_566_605_123u64,
            "finished_at_ms": null,
            "reason": "",
            "revision": 17,
            "paused": false,
            "params": {},
            "deadline_ms": null,
            "schedule": null,
            "nominal_time_ms": null,
            "template": null,
            "template_version": null,
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
                "retention_ms": 0,
                "timeout_ms": 0,
                "params": [],
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
        // Past what one `json!` expands: the keys and rate limit, absent here.
        expected["spec"]["concurrency"] = Value::Null;
        expected["spec"]["steps"][0]["concurrency"] = Value::Null;
        expected["spec"]["steps"][0]["rate_limit"] = Value::Null;
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
