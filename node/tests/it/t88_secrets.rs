//! Secrets end to end with real processes: a step names a secret, a real `baton agent` resolves
//! it from its `--secrets-dir`, the step's process gets the value, and the value is nowhere the
//! cluster keeps or says anything: not in any node's data folder (Raft log, state, snapshots),
//! not in any node's or the agent's log, not in the step's reported output or error, not in
//! `baton get -o json`.

use crate::common;

use std::path::Path;
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{
    baton_binary, endpoints_flag, loopbacks, run_to_end, spawn_agent_env, start_nodes,
};
use common::*;

const SECRET: &str = "s3cr3t-Zq8Wx-4471";
const TEMPLATE: &str = "{{ secrets.api-token }}";

/// Every file under `dir` holding `needle`, by path.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_step_and_nothing_the_cluster_keeps_or_says() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    // The secrets and what the step saw live apart from the folder searched afterwards.
    let outside = tempfile::tempdir().unwrap();
    let secrets = outside.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("api-token"), format!("{SECRET}\n")).unwrap();
    let seen = outside.path().join("seen");

    let (ports, _nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = loopbacks(&ports);
    let endpoints = endpoints_flag(&ports);
    // A secret given by environment too: the agent may fill it in, no step's process reads it.
    let _agent = spawn_agent_env(
        "a1",
        &endpoints,
        dir.path(),
        &[],
        &["--secrets-dir", secrets.to_str().unwrap()],
        &[("BATON_SECRET_FROM_ENV", "env-Kq2-9001")],
    );
    let script = format!(
        "printf %s \"$TOKEN\" > {seen}; echo \"token=$TOKEN arg={TEMPLATE}\"; \
         echo \"used $TOKEN\" >&2; echo \"inherited=$(env | grep -c '^BATON_SECRET_') other=$OTHER\"",
        seen = seen.display()
    );
    let spec = pb::WorkflowSpec {
        name: "uses-a-secret".into(),
        steps: vec![pb::StepSpec {
            name: "call".into(),
            task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec!["sh".into(), "-c".into(), script],
                env: [
                    ("TOKEN".to_string(), TEMPLATE.to_string()),
                    ("OTHER".to_string(), "{{ secrets.from-env }}".to_string()),
                ]
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let id = wait_for(
        Duration::from_secs(30),
        "a leader to take the submit",
        || {
            let spec = spec.clone();
            let addr = addrs[0];
            async move {
                let mut client = WorkflowServiceClient::new(channel(addr));
                client
                    .submit(pb::SubmitRequest {
                        spec: Some(spec),
                        idempotency_key: "secret-1".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().workflow_id)
            }
        },
    )
    .await;
    let mut client = WorkflowServiceClient::new(channel(addrs[1]));
    let done = wait_for_success(&client, id, Duration::from_secs(60)).await;
    // The step's process had the value.
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), SECRET);
    // Its report did not.
    let step = &done.steps[0];
    assert_eq!(
        step.output.trim(),
        "token=*** arg=***\ninherited=0 other=***"
    );
    assert_eq!(step.error.trim(), "used ***");
    let history = client
        .get_history(pb::GetHistoryRequest {
            workflow_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{history:?}").contains(SECRET));
    let (code, stdout, stderr) = run_to_end(
        &baton_binary(),
        &[
            "--endpoints",
            &endpoints,
            "get",
            &id.to_string(),
            "-o",
            "json",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("token=***"), "{stdout}");
    assert!(!stdout.contains(SECRET));

    // Snapshots on every node, so the state is on disk in that form too.
    for addr in &addrs {
        baton_proto::v1::admin_service_client::AdminServiceClient::new(channel(*addr))
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .unwrap();
    }
    // The data folders hold the spec (its template, as written) but never the value; the
    // logs neither.
    assert!(
        !files_holding(dir.path(), TEMPLATE.as_bytes()).is_empty(),
        "the search sees the spec's bytes where the nodes keep them"
    );
    for value in [SECRET, "env-Kq2-9001"] {
        assert_eq!(
            files_holding(dir.path(), value.as_bytes()),
            Vec::<String>::new(),
            "files holding a secret's value"
        );
    }
    // Refused at submit: a name that could be a path.
    let refused = client
        .submit(pb::SubmitRequest {
            spec: Some(pb::WorkflowSpec {
                name: "bad".into(),
                steps: vec![pb::StepSpec {
                    name: "s".into(),
                    task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                        command: vec!["cat".into(), "{{ secrets.../../etc/passwd }}".into()],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("steps[0].exec.command[1]: step \"s\" names secret \"../../etc/passwd\""),
        "{}",
        refused.message()
    );
}
