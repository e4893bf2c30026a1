//! Agents are bound to their own leases, and every input is bounded: an agent cannot renew or
//! report another agent's attempt; oversize and malformed requests get INVALID_ARGUMENT (naming
//! the field) or RESOURCE_EXHAUSTED; a saturated node refuses at once. None of these refusals
//! changes the replicated state: the applied index and the state hash stay where they were.

use crate::common;

use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use common::*;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

/// A raw agent session: the test speaks the protocol message by message.
struct RawAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: Streaming<pb::ServerMessage>,
    agent_id: u64,
}

impl RawAgent {
    async fn register(cluster: &TestCluster, node: u64, name: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                name: name.into(),
                slots: 1,
                cpu_millis: 1000,
                memory_mb: 1024,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut rx = AgentServiceClient::new(channel(cluster.addr(node)))
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("session opens")
            .into_inner();
        let agent_id = match next(&mut rx).await {
            pb::server_message::Msg::Registered(r) => r.agent_id,
            other => panic!("expected registered, got {other:?}"),
        };
        Self { tx, rx, agent_id }
    }

    async fn send(&self, msg: pb::agent_message::Msg) {
        self.tx
            .send(pb::AgentMessage { msg: Some(msg) })
            .await
            .expect("session open");
    }

    /// The next message that is not an assignment or stop (those are checked elsewhere).
    async fn answer(&mut self) -> pb::server_message::Msg {
        loop {
            match next(&mut self.rx).await {
                pb::server_message::Msg::Assignment(_) | pb::server_message::Msg::Stop(_) => {}
                other => return other,
            }
        }
    }
}

async fn next(rx: &mut Streaming<pb::ServerMessage>) -> pb::server_message::Msg {
    let message = tokio::time::timeout(Duration::from_secs(15), rx.message())
        .await
        .expect("an answer within 15 s");
    match message {
        Ok(Some(pb::ServerMessage { msg: Some(msg) })) => msg,
        other => panic!("session ended: {other:?}"),
    }
}

/// (applied index, state hash) once every node agrees.
async fn fingerprint(cluster: &TestCluster) -> (u64, String) {
    let status = &cluster.converged(Duration::from_secs(10)).await[0];
    (status.applied_index, status.state_hash.clone())
}

fn one_step(name: &str) -> pb::WorkflowSpec {
    let mut spec = noop_spec(name, 1);
    // No expiry during the test: nothing but the test's own calls may write to the log.
    spec.steps[0].lease_ttl_ms = baton_proto::limits::LEASE_TTL_MS_MAX;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_a_cannot_renew_or_report_agent_b_attempt() {
    init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let mut b = RawAgent::register(&cluster, leader, "agent-b").await;
    let submitted = cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(one_step("bound")),
            idempotency_key: String::new(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit")
        .into_inner();
    let attempt = match next(&mut b.rx).await {
        pb::server_message::Msg::Assignment(a) => a.attempt_id,
        other => panic!("expected an assignment, got {other:?}"),
    };
    let mut a = RawAgent::register(&cluster, leader, "agent-a").await;
    assert_ne!(a.agent_id, b.agent_id);
    let before = fingerprint(&cluster).await;

    // A heartbeat naming B's attempt renews nothing.
    a.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
        seq: 7,
        running_attempts: vec![attempt],
    }))
    .await;
    match a.answer().await {
        pb::server_message::Msg::HeartbeatAck(ack) => {
            assert_eq!(ack.seq, 7);
            assert!(
                ack.renewed_attempts.is_empty(),
                "agent A renewed B's lease: {ack:?}"
            );
        }
        other => panic!("expected a heartbeat ack, got {other:?}"),
    }
    // A report of B's attempt, with B's (correct) fencing token, is refused.
    a.send(pb::agent_message::Msg::Report(pb::Report {
        attempt_id: attempt,
        success: false,
        error: "forged by A".into(),
        ..Default::default()
    }))
    .await;
    match a.answer().await {
        pb::server_message::Msg::Rejected(r) => {
            assert_eq!(r.attempt_id, attempt);
            assert!(r.reason.contains("leased to agent"), "{}", r.reason);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        fingerprint(&cluster).await,
        before,
        "a foreign report or heartbeat changed the replicated state"
    );
    let workflow = cluster
        .workflows(leader)
        .await
        .get(pb::GetRequest {
            workflow_id: submitted.workflow_id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!(workflow.steps[0].state, pb::StepState::Running as i32);

    // B's own heartbeat renews it, and B's report is accepted.
    b.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
        seq: 1,
        running_attempts: vec![attempt],
    }))
    .await;
    match b.answer().await {
        pb::server_message::Msg::HeartbeatAck(ack) => assert_eq!(ack.renewed_attempts, [attempt]),
        other => panic!("expected a heartbeat ack, got {other:?}"),
    }
    b.send(pb::agent_message::Msg::Report(pb::Report {
        attempt_id: attempt,
        success: true,
        output: "done by B".into(),
        ..Default::default()
    }))
    .await;
    match b.answer().await {
        pb::server_message::Msg::ReportAccepted(r) => assert_eq!(r.attempt_id, attempt),
        other => panic!("expected acceptance, got {other:?}"),
    }
    let workflow = wait_for_success(
        &cluster.workflows(leader).await,
        submitted.workflow_id,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(workflow.steps[0].output, "done by B");

    // Now finished, the attempt is stale for everyone: A's late report is refused too.
    let before = fingerprint(&cluster).await;
    a.send(pb::agent_message::Msg::Report(pb::Report {
        attempt_id: attempt,
        success: true,
        ..Default::default()
    }))
    .await;
    assert!(matches!(
        a.answer().await,
        pb::server_message::Msg::Rejected(_)
    ));
    assert_eq!(fingerprint(&cluster).await, before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_inputs_are_refused_and_change_nothing() {
    init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let mut client = cluster.workflows(leader).await;
    // A first workflow, so that the fingerprint has something in it; no agent matches it, so
    // the agents below are never assigned it (nothing but the test's calls writes).
    let mut first = noop_spec("first", 2);
    for step in &mut first.steps {
        step.constraints = [("zone".to_owned(), "nowhere".to_owned())].into();
    }
    client
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(first),
            idempotency_key: String::new(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit");
    let before = fingerprint(&cluster).await;

    let refused = |spec: pb::WorkflowSpec, key: &str| {
        let mut client = client.clone();
        let request = pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(spec),
            idempotency_key: key.into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        };
        async move { client.submit(request).await.expect_err("refused") }
    };

    // Malformed: INVALID_ARGUMENT naming the field.
    let long_key = "k".repeat(200);
    let cases: Vec<(pb::WorkflowSpec, &str, &str)> = vec![
        (pb::WorkflowSpec::default(), "", "name"),
        (noop_spec("bad name!", 1), "", "name"),
        (noop_spec("no-steps", 0), "", "steps"),
        (noop_spec(&"n".repeat(129), 1), "", "name"),
        (noop_spec("ok", 1), "key\u{7}", "idempotency_key"),
        (noop_spec("ok", 1), &long_key, "idempotency_key"),
        (
            {
                let mut s = noop_spec("unknown-dep", 2);
                s.steps[1].depends_on = vec!["nope".into()];
                s
            },
            "",
            "steps[1].depends_on[0]",
        ),
        (noop_spec("too-many-steps", 1001), "", "steps"),
        (noop_spec("too-deep", 300), "", "steps["),
        (
            {
                let mut s = noop_spec("labels", 1);
                s.labels = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
                s
            },
            "",
            "labels",
        ),
        (
            {
                let mut s = noop_spec("empty-task", 1);
                s.steps[0].task = None;
                s
            },
            "",
            "steps[0]",
        ),
    ];
    for (spec, key, field) in cases {
        let name = spec.name.clone();
        let status = refused(spec, key).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{name:?}: {}",
            status.message()
        );
        assert!(
            status.message().starts_with(field),
            "{name:?}: {:?} does not name {field:?}",
            status.message()
        );
    }

    // Over the spec's encoded bound (1 MiB) but under the request bound: INVALID_ARGUMENT too
    // (the spec is the problem, not the message).
    let mut big = noop_spec("big", 1);
    big.input = (0..20)
        .map(|i| (format!("k{i}"), "x".repeat(60 * 1024)))
        .collect();
    let status = refused(big, "").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());

    // Over the request bound (4 MiB): RESOURCE_EXHAUSTED before anything is decoded.
    let mut huge = noop_spec("huge", 1);
    huge.steps[0].task = Some(pb::step_spec::Task::Custom(pb::CustomTask {
        r#type: "blob".into(),
        payload: "x".repeat(5 * 1024 * 1024),
    }));
    let mut big_client = client.clone().max_encoding_message_size(64 * 1024 * 1024);
    let status = big_client
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(huge),
            idempotency_key: String::new(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );

    // Bad reads and cancels.
    let status = client
        .list(pb::ListRequest {
            page_size: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_size"));
    let status = client
        .list(pb::ListRequest {
            name_prefix: "p".repeat(1000),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("name_prefix"));
    let status = client
        .cancel(pb::CancelRequest {
            workflow_id: 1,
            reason: "r".repeat(5000),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("reason"));

    // Request headers past 16 KiB: refused by HTTP/2 before any handler runs.
    let mut request = tonic::Request::new(pb::GetRequest {
        workflow_id: 1,
        consistency: 0,
        attempts_of_step: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(20 * 1024).parse().unwrap());
    let status = client.get(request).await.expect_err("refused");
    // HTTP 431 Request Header Fields Too Large, which tonic's client shows as UNKNOWN.
    assert!(status.message().contains("431"), "{status:?}");

    // A malformed agent: a bad name, and a heartbeat naming more attempts than any agent runs.
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            name: "no spaces allowed".into(),
            slots: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let status = AgentServiceClient::new(channel(cluster.addr(leader)))
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("register.name"));

    let agent_before = fingerprint(&cluster).await;
    let mut agent = RawAgent::register(&cluster, leader, "flooder").await;
    let registered = fingerprint(&cluster).await;
    assert_eq!(registered.0, agent_before.0 + 1, "register is one entry");
    agent
        .send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            seq: 1,
            running_attempts: (1..=20_000).collect(),
        }))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), agent.rx.message())
        .await
        .expect("answered");
    let status = ended.expect_err("the session ends");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("heartbeat.running_attempts"));
    // An agent message past its bound (1 MiB): RESOURCE_EXHAUSTED.
    let mut agent = RawAgent::register(&cluster, leader, "flooder").await;
    agent
        .send(pb::agent_message::Msg::Report(pb::Report {
            attempt_id: 1,
            output: "o".repeat(2 * 1024 * 1024),
            ..Default::default()
        }))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), agent.rx.message())
        .await
        .expect("answered");
    let status = ended.expect_err("the session ends");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    // Registering is the only write the agent made (twice, same name).
    assert_eq!(fingerprint(&cluster).await.0, registered.0 + 1);

    // The user-facing refusals above wrote nothing.
    let (index, _) = before;
    assert_eq!(agent_before.0, index, "a refused request wrote to the log");
    assert_eq!(agent_before, before, "a refused request changed the state");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_node_answers_resource_exhausted_at_once() {
    init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let mut client = cluster.workflows(leader).await;
    let before = fingerprint(&cluster).await;
    let admission = &cluster.servers[&leader].node.admission;

    // Every proposal slot in use: a submit is refused before it reaches Raft.
    let taken = admission.withhold_proposals(usize::MAX);
    assert_eq!(taken, baton_node::limits::PROPOSALS_IN_FLIGHT_MAX);
    let status = client
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("under-load", 1)),
            idempotency_key: "k1".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    let status = client
        .cancel(pb::CancelRequest {
            workflow_id: 1,
            reason: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        fingerprint(&cluster).await,
        before,
        "a refused submit wrote"
    );

    // Every session and watch slot in use: new ones are refused.
    let (sessions, watches) = admission.withhold_streams(usize::MAX);
    let status = client
        .watch(pb::WatchRequest {
            all_namespaces: Default::default(),
            namespace: Default::default(),
            workflow_id: 0,
            from_index: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            name: "late".into(),
            slots: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let status = AgentServiceClient::new(channel(cluster.addr(leader)))
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(fingerprint(&cluster).await, before);

    // Slots back: the same submit goes through.
    admission.restore_proposals(taken);
    admission.restore_streams(sessions, watches);
    let submitted = client
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("under-load", 1)),
            idempotency_key: "k1".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("accepted once the load is gone")
        .into_inner();
    assert!(submitted.created);

    // A batch takes a slot per item: with 5 free, 6 items are refused whole and 5 go through.
    let taken = admission.withhold_proposals(baton_node::limits::PROPOSALS_IN_FLIGHT_MAX - 5);
    let batch = |n: usize| pb::SubmitBatchRequest {
        submits: (0..n)
            .map(|i| pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec(&format!("batched-{i}"), 1)),
                idempotency_key: format!("batched-{i}"),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            })
            .collect(),
    };
    let before = fingerprint(&cluster).await;
    let status = client.submit_batch(batch(6)).await.expect_err("refused");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert_eq!(fingerprint(&cluster).await, before, "a refused batch wrote");
    let results = client
        .submit_batch(batch(5))
        .await
        .expect("five fit")
        .into_inner()
        .results;
    assert_eq!(results.len(), 5);
    admission.restore_proposals(taken);
    cluster.shutdown().await;
}
