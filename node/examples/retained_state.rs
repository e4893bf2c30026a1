//! Memory and snapshot cost of retained finished workflows, through the real `apply`.
//!
//! Builds a replica's state the way the log would: one agent registers, then for each workflow
//! a Submit (a single noop step, the `baton bench` shape, with a 32-character idempotency key as
//! the client generates), an Assign and a successful Complete. Prints the process's resident
//! memory per retained workflow, the snapshot's size per workflow, and the time to encode and
//! decode the snapshot (what a restarting node spends before it can apply the log tail).
//!
//! Every workflow is submitted with the same spec bytes, as runs of one definition are, so the
//! replica shares one decoded spec between them (`state::specs`). With `--distinct-specs` each
//! spec carries its own `input` value, so none is shared: the cost of workflows that are all
//! different.
//!
//! `cargo run --release -p baton-node --example retained_state -- 1000000 [--distinct-specs]`

use std::time::Instant;

use baton_node::state::{
    AgentId, ApplyCtx, Assignment, ClusterState, Command, CompleteCommand, LogEntry,
    RegisterAgentCommand, Response, SubmitCommand, WorkflowId,
};
use baton_proto::v1 as pb;
use prost::Message;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

struct Log {
    state: ClusterState,
    index: u64,
}

impl Log {
    fn apply(&mut self, command: Command) -> Response {
        self.index += 1;
        self.state
            .apply(
                ApplyCtx { index: self.index },
                LogEntry {
                    time_ms: 1_700_000_000_000 + self.index,
                    command,
                },
            )
            .response
    }
}

fn main() {
    let mut workflows: u64 = 1_000_000;
    let mut distinct_specs = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--distinct-specs" => distinct_specs = true,
            text => {
                workflows = text.parse().unwrap_or_else(|_| {
                    eprintln!(
                        "usage: retained_state [WORKFLOWS] [--distinct-specs]  \
                         (a count, not {text:?})"
                    );
                    std::process::exit(2)
                })
            }
        }
    }
    let spec = pb::WorkflowSpec {
        name: "bench-single".into(),
        steps: vec![pb::StepSpec {
            name: "s".into(),
            task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
            ..Default::default()
        }],
        ..Default::default()
    };
    // Encoded once when shared, so the timed loop does what a log replay does: apply bytes.
    let shared_spec = spec.encode_to_vec();
    let spec_of = |i: u64| {
        if !distinct_specs {
            return shared_spec.clone();
        }
        let mut spec = spec.clone();
        spec.input.insert("run".into(), i.to_string());
        spec.encode_to_vec()
    };

    let mut log = Log {
        state: ClusterState::default(),
        index: 0,
    };
    let Response::AgentRegistered { agent_id } =
        log.apply(Command::RegisterAgent(RegisterAgentCommand {
            namespaces: Default::default(),
            name: "agent-1".into(),
            labels: Default::default(),
            slots: 64,
            cpu_millis: 0,
            memory_mb: 0,
            task_types: Vec::new(),
        }))
    else {
        panic!("the agent did not register")
    };
    let before_kib = rss_kib();
    let started = Instant::now();
    for i in 0..workflows {
        let Response::Submitted { workflow_id, .. } = log.apply(Command::Submit(SubmitCommand {
            actor: String::new(),
            namespace: Default::default(),
            spec: spec_of(i),
            idempotency_key: format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15),
            params: Default::default(),
            template: None,
        })) else {
            panic!("submit {i} refused")
        };
        let attempt = assign(&mut log, workflow_id, agent_id);
        let done = log.apply(Command::Complete(CompleteCommand {
            attempt_id: attempt,
            agent_id,
            success: true,
            output: String::new(),
            error: String::new(),
            exit_code: Some(0),
        }));
        assert_eq!(done, Response::Completed, "workflow {workflow_id}");
    }
    let applied = started.elapsed();
    let after_kib = rss_kib();
    let per_workflow = (after_kib.saturating_sub(before_kib) * 1024) as f64 / workflows as f64;

    let started = Instant::now();
    let snapshot = log.state.encode();
    let encoded = started.elapsed();
    let started = Instant::now();
    let decoded = ClusterState::decode(&snapshot).expect("decode our own snapshot");
    let decode = started.elapsed();
    assert_eq!(decoded.workflow_count() as u64, workflows);

    println!(
        "workflows retained        {workflows}, {}",
        if distinct_specs {
            "every spec distinct"
        } else {
            "one spec shared"
        }
    );
    println!(
        "applied                   {} entries in {:.2} s ({:.0} entries/s)",
        log.index,
        applied.as_secs_f64(),
        log.index as f64 / applied.as_secs_f64()
    );
    println!(
        "resident memory           {:.0} MiB more, {per_workflow:.0} bytes per workflow",
        (after_kib - before_kib) as f64 / 1024.0
    );
    println!(
        "snapshot                  {:.1} MiB, {:.0} bytes per workflow",
        snapshot.len() as f64 / (1024.0 * 1024.0),
        snapshot.len() as f64 / workflows as f64
    );
    println!("snapshot encode           {:.2} s", encoded.as_secs_f64());
    println!("snapshot decode           {:.2} s", decode.as_secs_f64());
}

fn assign(
    log: &mut Log,
    workflow_id: WorkflowId,
    agent_id: AgentId,
) -> baton_node::state::AttemptId {
    match log.apply(Command::Assign {
        assignments: vec![Assignment {
            workflow_id,
            step: baton_node::state::StepIndex(0),
            agent_id,
        }],
    }) {
        Response::Assigned { attempts } => attempts[0].expect("the step was ready"),
        other => panic!("assign of {workflow_id}: {other:?}"),
    }
}
