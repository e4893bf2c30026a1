//! In-process clusters: acknowledged workflows survive a leader stop; any node serves any call;
//! bad input is refused with the field named and nothing written.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::v1 as pb;
use common::*;
use tokio::sync::Mutex;
use tonic::Code;

/// 1,000 submissions from 8 concurrent clients; the leader is stopped once half are in. Every
/// acknowledged workflow is then readable from every surviving node, and a retried key never
/// made a second workflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_submissions_survive_a_leader_stop() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    tracing::info!(leader, "--- cluster formed; submitting");

    const TOTAL: usize = 1_000;
    const CLIENTS: usize = 8;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let addrs: Vec<_> = [1, 2, 3].map(|id| cluster.addr(id)).to_vec();
    let half_done = Arc::new(tokio::sync::Notify::new());

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let acked = acked.clone();
        let addrs = addrs.clone();
        let half_done = half_done.clone();
        clients.push(tokio::spawn(async move {
            let mut node = c % addrs.len();
            for i in (c..TOTAL).step_by(CLIENTS) {
                let key = format!("key-{i}");
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(noop_spec(&format!("wf-{i}"), 2)),
                    idempotency_key: key.clone(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                // Retry on every failure with the same key, moving to another node: the key makes
                // a retry after an unknown outcome safe.
                let mut attempts = 0;
                let id = loop {
                    attempts += 1;
                    assert!(attempts < 200, "submission {i} never acknowledged");
                    let mut client =
                        baton_proto::v1::workflow_service_client::WorkflowServiceClient::new(
                            channel(addrs[node]),
                        );
                    match client.submit(request.clone()).await {
                        Ok(reply) => break reply.into_inner().workflow_id,
                        Err(status) => {
                            // A status with a source is the connection failing (the stopping
                            // leader's GOAWAY can surface as INTERNAL), not a node's answer; the
                            // client library retries those too.
                            let transport = std::error::Error::source(&status).is_some();
                            assert!(
                                transport
                                    || matches!(
                                        status.code(),
                                        Code::Unavailable
                                            | Code::Unknown
                                            | Code::Cancelled
                                            | Code::DeadlineExceeded
                                    ),
                                "submission {i}: unexpected {status:?}"
                            );
                            node = (node + 1) % addrs.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                let mut acked = acked.lock().await;
                acked.insert(key, id);
                if acked.len() == TOTAL / 2 {
                    half_done.notify_one();
                }
            }
        }));
    }

    half_done.notified().await;
    tracing::info!(leader, "--- half acknowledged; stopping the leader");
    cluster.stop(leader).await;
    for client in clients {
        client.await.expect("client task");
    }
    let new_leader = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    tracing::info!(new_leader, "--- all acknowledged; checking every survivor");

    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), TOTAL);
    let mut ids: Vec<u64> = acked.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), TOTAL, "two keys share a workflow id");

    for id in cluster.running() {
        let mut client = cluster.workflows(id).await;
        for (key, &workflow_id) in &acked {
            let workflow = client
                .get(pb::GetRequest {
                    workflow_id,
                    consistency: pb::ReadConsistency::Linearizable as i32,
                    attempts_of_step: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("node {id}: workflow {workflow_id} ({key}): {e}"))
                .into_inner()
                .workflow
                .unwrap();
            assert_eq!(&workflow.idempotency_key, key);
            assert_eq!(workflow.steps.len(), 2);
        }
        // Nothing beyond the acknowledged ones was created: retries deduplicated.
        let listed = list_all(&mut client).await;
        assert_eq!(
            listed.len(),
            TOTAL,
            "node {id} holds workflows nobody acknowledged"
        );
    }

    tracing::info!("--- the stopped leader rejoins and converges");
    cluster.restart(leader).await;
    let statuses = cluster.converged(Duration::from_secs(30)).await;
    let hashes: Vec<_> = statuses.iter().map(|s| s.state_hash.clone()).collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "state hashes differ: {hashes:?}"
    );
    cluster.shutdown().await;
}

async fn list_all(
    client: &mut baton_proto::v1::workflow_service_client::WorkflowServiceClient<
        tonic::transport::Channel,
    >,
) -> Vec<pb::Workflow> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.workflows);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Writes through a follower are forwarded; reads from a follower see them at once (linearizable
/// by default); cancel and not-found behave; bad input names the field and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_call_and_bad_input_changes_nothing() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let follower = cluster.follower(leader);
    let other = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .unwrap();

    let mut via_follower = cluster.workflows(follower).await;
    let submitted = via_follower
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("forwarded", 3)),
            idempotency_key: "once".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit through a follower")
        .into_inner();
    assert!(submitted.created);
    // Read it back at once from the third node: a linearizable read must see it.
    let mut via_other = cluster.workflows(other).await;
    let got = via_other
        .get(pb::GetRequest {
            workflow_id: submitted.workflow_id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .expect("linearizable get")
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!(got.name, "forwarded");
    assert_eq!(got.state, pb::WorkflowState::Running as i32);
    assert_eq!(got.steps[0].state, pb::StepState::Ready as i32);
    assert_eq!(got.steps[1].state, pb::StepState::Waiting as i32);

    let again = via_other
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("forwarded", 3)),
            idempotency_key: "once".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.workflow_id, again.created),
        (submitted.workflow_id, false)
    );

    tracing::info!("--- bad input");
    let before = cluster.converged(Duration::from_secs(10)).await[0].clone();
    let mut cycle = noop_spec("cyclic", 3);
    cycle.steps[0].depends_on = vec!["s2".into()];
    let mut unknown_dep = noop_spec("unknown", 2);
    unknown_dep.steps[1].depends_on = vec!["build".into()];
    let mut dup = noop_spec("dup", 2);
    dup.steps[1].name = "s0".into();
    let huge = pb::WorkflowSpec {
        name: "huge".into(),
        steps: noop_spec("huge", 1001).steps,
        ..Default::default()
    };
    let cases: Vec<(pb::SubmitRequest, &str)> = vec![
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: None,
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "spec",
        ),
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(cycle),
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "cycle",
        ),
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(unknown_dep),
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "steps[1].depends_on[0]",
        ),
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(dup),
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "steps[1].name",
        ),
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(huge),
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "steps",
        ),
        (
            pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec("k", 1)),
                idempotency_key: "x".repeat(500),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            },
            "idempotency_key",
        ),
    ];
    for (request, names) in cases {
        let status = via_follower.submit(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(names),
            "{names}: {}",
            status.message()
        );
    }
    let status = via_other
        .get(pb::GetRequest {
            workflow_id: 4242,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "workflow 4242 not found");
    let status = via_other
        .list(pb::ListRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_token"));
    let after = cluster.converged(Duration::from_secs(10)).await[0].clone();
    assert_eq!(
        before.state_hash, after.state_hash,
        "refused input changed the state"
    );

    tracing::info!("--- cancel");
    let cancelled = via_other
        .cancel(pb::CancelRequest {
            workflow_id: submitted.workflow_id,
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::WorkflowState::Cancelled as i32);
    let got = via_follower
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
    assert_eq!(got.state, pb::WorkflowState::Cancelled as i32);
    assert_eq!(got.reason, "test");
    assert!(
        got.steps
            .iter()
            .all(|s| s.state == pb::StepState::Cancelled as i32)
    );
    let status = via_other
        .cancel(pb::CancelRequest {
            workflow_id: 999,
            reason: String::new(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);

    let statuses = cluster.converged(Duration::from_secs(10)).await;
    assert!(
        statuses
            .iter()
            .all(|s| s.state_hash == statuses[0].state_hash)
    );
    assert!(
        statuses
            .iter()
            .all(|s| !s.cluster_id.is_empty() && s.cluster_id == statuses[0].cluster_id)
    );
    cluster.shutdown().await;
}

/// 300 submits at once, half through a follower: the leader groups them into far fewer log
/// entries than submits (`raft::batcher`), and still every caller gets the answer to its own
/// command: its own workflow, with its own name, and within a burst a repeated idempotency key
/// makes one workflow, created for exactly one of its callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_share_entries_and_each_gets_its_own_answer() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let follower = cluster.follower(leader);
    let index_before = cluster.converged(Duration::from_secs(10)).await[0].applied_index;

    const SUBMITS: usize = 300;
    // Submits 2k and 2k+1 share a key for k < 20: 20 pairs racing in one burst.
    let key = |i: usize| {
        if i < 40 {
            format!("pair-{}", i / 2)
        } else {
            format!("single-{i}")
        }
    };
    // One connection per node, as a real client has: calls are concurrent HTTP/2 streams on it.
    let via = [
        cluster.workflows(leader).await,
        cluster.workflows(follower).await,
    ];
    let mut calls = Vec::new();
    for i in 0..SUBMITS {
        let mut client = via[i % 2].clone();
        let request = pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec(&format!("burst-{i}"), 1)),
            idempotency_key: key(i),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        };
        calls.push(tokio::spawn(async move {
            client.submit(request).await.map(|r| r.into_inner())
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().expect("submit"));
    }

    let statuses = cluster.converged(Duration::from_secs(10)).await;
    let entries = statuses[0].applied_index - index_before;
    tracing::info!(entries, "{SUBMITS} concurrent submits written");
    assert!(
        entries < (SUBMITS / 2) as u64,
        "{SUBMITS} concurrent submits took {entries} entries: not batched"
    );

    let mut reader = cluster.workflows(leader).await;
    for pair in 0..20 {
        let (a, b) = (&answers[2 * pair], &answers[2 * pair + 1]);
        assert_eq!(
            a.workflow_id, b.workflow_id,
            "pair {pair}: one key, one workflow"
        );
        assert!(
            a.created != b.created,
            "pair {pair}: created for exactly one caller"
        );
        let creator = if a.created { 2 * pair } else { 2 * pair + 1 };
        let got = workflow_name(&mut reader, a.workflow_id).await;
        assert_eq!(got, format!("burst-{creator}"), "pair {pair}");
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, answer) in answers.iter().enumerate().skip(40) {
        assert!(answer.created, "submit {i}");
        assert!(ids.insert(answer.workflow_id), "submit {i}: id given twice");
        let got = workflow_name(&mut reader, answer.workflow_id).await;
        assert_eq!(
            got,
            format!("burst-{i}"),
            "submit {i} got another's workflow"
        );
    }
    cluster.shutdown().await;
}

/// SubmitBatch, through the leader and through a follower, while single submits run alongside:
/// each batch commits in one entry (every item's workflow created at one log index) and answers
/// every item with its own workflow, in order; the leader splices batches into the entries it
/// groups singles into, and each caller still gets its own answers; a key repeated inside a
/// batch makes one workflow; a retried batch returns the same workflows; one bad item, or too
/// many items, refuses the whole call with the item or the limit named, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_commits_in_one_entry_and_answers_each_item() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let follower = cluster.follower(leader);
    let via = [
        cluster.workflows(leader).await,
        cluster.workflows(follower).await,
    ];
    let mut reader = cluster.workflows(leader).await;

    const ITEMS: usize = 50;
    // Items 0 and 1 of every batch share a key; the rest have their own.
    let batch = |b: usize| pb::SubmitBatchRequest {
        submits: (0..ITEMS)
            .map(|i| pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec(&format!("batch-{b}-{i}"), 1 + i % 3)),
                idempotency_key: if i < 2 {
                    format!("batch-{b}-pair")
                } else {
                    format!("batch-{b}-{i}")
                },
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            })
            .collect(),
    };
    // Rounds of 2 batches and 50 singles at once, until a batch has shared its entry with a
    // single (the leader groups what queues while 4 entries are in flight; a burst of 52 calls
    // makes that all but certain in the first round).
    let mut ids = std::collections::BTreeSet::new();
    let mut spliced = false;
    let mut first_answers = Vec::new();
    for round in 0..10 {
        let mut batches = Vec::new();
        let mut singles = Vec::new();
        for k in 0..2 {
            let b = round * 2 + k;
            let mut client = via[k].clone();
            let request = batch(b);
            batches.push(tokio::spawn(async move {
                client.submit_batch(request).await.map(|r| r.into_inner())
            }));
            for i in 0..25 {
                let name = format!("single-{b}-{i}");
                let mut client = via[i % 2].clone();
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(noop_spec(&name, 1)),
                    idempotency_key: String::new(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                singles.push((
                    name,
                    tokio::spawn(
                        async move { client.submit(request).await.map(|r| r.into_inner()) },
                    ),
                ));
            }
        }
        let mut batch_indexes = Vec::new();
        for (k, call) in batches.into_iter().enumerate() {
            let b = round * 2 + k;
            let results = call.await.unwrap().expect("submit batch").results;
            assert_eq!(results.len(), ITEMS, "batch {b}: one result per item");
            let submitted: Vec<pb::SubmitResponse> = results
                .iter()
                .map(|r| match &r.outcome {
                    Some(pb::submit_batch_result::Outcome::Submitted(s)) => *s,
                    other => panic!("batch {b}: {other:?}"),
                })
                .collect();
            // The pair: the first item creates, the second finds it.
            assert!(submitted[0].created && !submitted[1].created, "batch {b}");
            assert_eq!(submitted[0].workflow_id, submitted[1].workflow_id);
            let index = submitted[0].log_index;
            for (i, s) in submitted.iter().enumerate() {
                let want = if i == 1 { 0 } else { i };
                if i != 1 {
                    assert!(s.created, "batch {b} item {i}");
                    assert!(
                        ids.insert(s.workflow_id),
                        "batch {b} item {i}: id given twice"
                    );
                }
                let (name, revision) = workflow_view(&mut reader, s.workflow_id).await;
                assert_eq!(name, format!("batch-{b}-{want}"), "batch {b} item {i}");
                assert_eq!(
                    revision, index,
                    "batch {b} item {i}: created in another entry"
                );
            }
            batch_indexes.push(index);
            first_answers.push(results);
        }
        for (name, call) in singles {
            let answer = call.await.unwrap().expect("submit");
            assert!(answer.created && ids.insert(answer.workflow_id), "{name}");
            let (got, revision) = workflow_view(&mut reader, answer.workflow_id).await;
            assert_eq!(got, name);
            assert_eq!(revision, answer.log_index, "{name}");
            spliced |= batch_indexes.contains(&answer.log_index);
        }
        if spliced {
            break;
        }
    }
    assert!(
        spliced,
        "no batch ever shared an entry with a single submit"
    );

    // The same batch again: the same workflows, none new.
    let again = via[1]
        .clone()
        .submit_batch(batch(0))
        .await
        .expect("retry")
        .into_inner();
    for (first, second) in first_answers[0].iter().zip(&again.results) {
        let (
            Some(pb::submit_batch_result::Outcome::Submitted(first)),
            Some(pb::submit_batch_result::Outcome::Submitted(second)),
        ) = (&first.outcome, &second.outcome)
        else {
            panic!("{first:?} / {second:?}");
        };
        assert_eq!(first.workflow_id, second.workflow_id);
        assert!(!second.created);
    }

    // One bad item refuses the call: named by its path in the request, and nothing of the
    // batch is written.
    let mut bad = batch(99);
    bad.submits[3].spec.as_mut().unwrap().steps[0].depends_on = vec!["nowhere".into()];
    let status = via[0].clone().submit_batch(bad).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("submits[3].spec.steps[0].depends_on"),
        "{}",
        status.message()
    );
    let mut missing = batch(99);
    missing.submits[7].spec = None;
    let status = via[1]
        .clone()
        .submit_batch(missing)
        .await
        .expect_err("refused");
    assert_eq!(status.message(), "submits[7].spec: missing");
    let mut bad_key = batch(99);
    bad_key.submits[0].idempotency_key = "tab\there".into();
    let status = via[0]
        .clone()
        .submit_batch(bad_key)
        .await
        .expect_err("refused");
    assert!(
        status.message().starts_with("submits[0].idempotency_key"),
        "{}",
        status.message()
    );
    let too_many = pb::SubmitBatchRequest {
        submits: (0..=baton_proto::limits::SUBMIT_BATCH_ITEMS_MAX)
            .map(|i| pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec(&format!("batch-99-{i}"), 1)),
                idempotency_key: String::new(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            })
            .collect(),
    };
    let status = via[0]
        .clone()
        .submit_batch(too_many)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("submits: 257 items"),
        "{}",
        status.message()
    );
    let listed = reader
        .list(pb::ListRequest {
            name_prefix: "batch-99-".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.workflows.is_empty(),
        "a refused batch wrote: {listed:?}"
    );

    // An empty batch is an empty answer.
    let empty = via[0]
        .clone()
        .submit_batch(pb::SubmitBatchRequest::default())
        .await
        .expect("empty batch")
        .into_inner();
    assert!(empty.results.is_empty());
    cluster.shutdown().await;
}

/// A workflow's name and revision (the log index of its last change), by a linearizable read.
async fn workflow_view(
    client: &mut baton_proto::v1::workflow_service_client::WorkflowServiceClient<
        tonic::transport::Channel,
    >,
    workflow_id: u64,
) -> (String, u64) {
    let workflow = client
        .get(pb::GetRequest {
            workflow_id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .expect("get")
        .into_inner()
        .workflow
        .expect("the workflow");
    (workflow.name, workflow.revision)
}

/// A workflow's name, by a linearizable read.
async fn workflow_name(
    client: &mut baton_proto::v1::workflow_service_client::WorkflowServiceClient<
        tonic::transport::Channel,
    >,
    workflow_id: u64,
) -> String {
    workflow_view(client, workflow_id).await.0
}
