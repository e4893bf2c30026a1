//! Real `baton agent` processes running real step processes: when the agent running a step is
//! SIGKILLed, the step's process dies with it (nothing runs without a lease), and the step runs
//! again on the other agent under a new fencing token, once its lease has run out (the delay is
//! logged as a figure).

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{Proc, endpoints_flag, loopbacks, spawn_agent, start_nodes};
use common::*;

const LEASE_TTL_MS: u64 = 2_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether process `pid` is gone: no longer in /proc, or a zombie waiting for its reaper.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The first execution records its pid and sleeps far past any lease; later ones finish.
fn step_spec(dir: &Path) -> pb::WorkflowSpec {
    let script = format!(
        "if mkdir {dir}/first 2>/dev/null; then echo $$ > {dir}/first/pid; exec sleep 300; fi; \
         echo \"ran $BATON_STEP as attempt $BATON_ATTEMPT\"",
        dir = dir.display()
    );
    pb::WorkflowSpec {
        name: "survives-agent-death".into(),
        steps: vec![pb::StepSpec {
            name: "work".into(),
            task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec!["sh".into(), "-c".into(), script],
                ..Default::default()
            })),
            lease_ttl_ms: LEASE_TTL_MS,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn get(
    client: &mut WorkflowServiceClient<tonic::transport::Channel>,
    id: u64,
) -> Option<pb::Workflow> {
    client
        .get(pb::GetRequest {
            workflow_id: id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .ok()?
        .into_inner()
        .workflow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_step_process_dies_and_the_step_runs_on_another_agent() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ports, _nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = loopbacks(&ports);
    let endpoints = endpoints_flag(&ports);
    let mut agents: Vec<(String, Proc)> = ["agent-a", "agent-b"]
        .into_iter()
        .map(|name| {
            let agent = spawn_agent(name, &endpoints, dir.path(), &[], &["--slots", "1"]);
            (name.to_owned(), agent)
        })
        .collect();

    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let spec = step_spec(&work);
    let workflow_id = wait_for(
        Duration::from_secs(30),
        "an acknowledged submit",
        || async {
            for addr in &addrs {
                let mut client = WorkflowServiceClient::new(channel(*addr));
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(spec.clone()),
                    idempotency_key: "survives-agent-death".into(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                if let Ok(reply) = client.submit(request).await {
                    return Some(reply.into_inner().workflow_id);
                }
            }
            None
        },
    )
    .await;
    let client = WorkflowServiceClient::new(channel(addrs[0]));

    let pid_file = work.join("first/pid");
    let pid: u32 = wait_for(
        Duration::from_secs(30),
        "the step's process to start",
        || async { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() },
    )
    .await;
    let first = wait_for(Duration::from_secs(10), "the step to be running", || {
        let mut client = client.clone();
        async move {
            let workflow = get(&mut client, workflow_id).await?;
            let step = workflow.steps.into_iter().next()?;
            (step.state == pb::StepState::Running as i32).then_some(step)
        }
    })
    .await;
    assert!(!process_gone(pid), "the step process {pid} is not running");

    tracing::info!(agent = %first.agent, pid, "--- SIGKILL the agent running the step");
    let index = agents
        .iter()
        .position(|(name, _)| *name == first.agent)
        .unwrap_or_else(|| panic!("unknown agent {:?}", first.agent));
    let killed_at_ms = now_ms();
    agents[index].1.kill();

    wait_for(
        Duration::from_secs(5),
        "the killed agent's step process to die with it",
        || async { process_gone(pid).then_some(()) },
    )
    .await;

    let workflow = wait_for_success(&client, workflow_id, Duration::from_secs(30)).await;
    let step = &workflow.steps[0];
    let survivor = &agents[1 - index].0;
    assert_eq!(
        &step.agent, survivor,
        "the step ran again on the other agent"
    );
    assert_eq!(step.attempts, 2);
    assert!(
        step.attempt_id > first.attempt_id,
        "the re-run carries a newer fencing token"
    );
    assert_eq!(
        step.output.trim(),
        format!("ran work as attempt {}", step.attempt_id)
    );
    // A figure, not a bound: how soon a step moves depends on the machine's load. What the
    // test holds is that it moves (the wait above), and not before the first attempt's lease
    // could have run out: the re-run starts at least a TTL after the first one did.
    let rescheduled_after = step.started_at_ms.saturating_sub(killed_at_ms);
    tracing::info!(
        rescheduled_after_ms = rescheduled_after,
        "rescheduled after the kill"
    );
    assert!(
        step.started_at_ms >= first.started_at_ms + LEASE_TTL_MS,
        "the re-run started {} ms after the first attempt, within its lease TTL",
        step.started_at_ms - first.started_at_ms
    );
}
