//! The client against fake nodes: failover, retries, timeouts, outcomes, paging.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_client::proto::{ListRequest, ReadConsistency, WorkflowSpec};
use baton_client::{Client, ClientConfig, ClientError, Endpoints, Outcome};
use futures::StreamExt;

fn fast_config() -> ClientConfig {
    ClientConfig {
        call_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        attempts_max: 4,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        retry_budget: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn client(addresses: &[String]) -> Client {
    Client::with_config(
        Endpoints::parse(&addresses.join(",")).unwrap(),
        fast_config(),
    )
    .unwrap()
}

#[tokio::test]
async fn fails_over_from_a_dead_node_and_then_prefers_the_live_one() {
    let (live, script) = common::start(common::Script::default()).await;
    let dead = common::dead_address();
    let client = client(&[dead.to_string(), live.to_string()]);

    let workflow = client.get(42, ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(workflow.id, 42);
    assert_eq!(client.preferred_endpoint().to_string(), live.to_string());
    client.get(42, ReadConsistency::Stale).await.unwrap();
    assert_eq!(script.gets.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_submit_on_unavailable_with_one_generated_key() {
    let script = common::Script::default();
    script.submits_unavailable.store(2, Ordering::SeqCst);
    let (live, script) = common::start(script).await;
    let client = client(&[live.to_string()]);

    let response = client.submit(WorkflowSpec::default(), None).await.unwrap();
    assert_eq!(response.workflow_id, 7);
    let submits = script.submits.lock().unwrap();
    assert_eq!(submits.len(), 3);
    assert!(
        submits[0].idempotency_key.starts_with("baton-"),
        "{:?}",
        submits[0].idempotency_key
    );
    assert!(
        submits
            .iter()
            .all(|submit| submit.idempotency_key == submits[0].idempotency_key)
    );
}

#[tokio::test]
async fn retries_a_batch_on_unavailable_with_the_same_keys() {
    let script = common::Script::default();
    script.submits_unavailable.store(1, Ordering::SeqCst);
    let (live, script) = common::start(script).await;
    let client = client(&[live.to_string()]);

    let items = vec![
        (WorkflowSpec::default(), None),
        (WorkflowSpec::default(), Some("order-1234".into())),
        (WorkflowSpec::default(), None),
    ];
    let results = client.submit_batch(items).await.unwrap();
    assert_eq!(results.len(), 3);
    let batches = script.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "one retry after UNAVAILABLE");
    let keys = |b: &baton_client::proto::SubmitBatchRequest| -> Vec<String> {
        b.submits
            .iter()
            .map(|s| s.idempotency_key.clone())
            .collect()
    };
    let first = keys(&batches[0]);
    assert_eq!(first, keys(&batches[1]), "the retry carries the same keys");
    assert_eq!(first[1], "order-1234");
    assert!(first[0].starts_with("baton-") && first[2].starts_with("baton-"));
    assert_ne!(first[0], first[2], "every item has its own key");

    let error = client
        .submit_batch(vec![(WorkflowSpec::default(), Some("bad\nkey".into()))])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::InvalidRequest(m) if m.starts_with("submits[0].idempotency_key")),
        "{error:?}"
    );
}

#[tokio::test]
async fn keeps_the_callers_key_and_refuses_a_bad_one_before_sending() {
    let (live, script) = common::start(common::Script::default()).await;
    let client = client(&[live.to_string()]);
    client
        .submit(WorkflowSpec::default(), Some("order-1234".into()))
        .await
        .unwrap();
    assert_eq!(
        script.submits.lock().unwrap()[0].idempotency_key,
        "order-1234"
    );

    let error = client
        .submit(WorkflowSpec::default(), Some("bad\nkey".into()))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::InvalidRequest(_)), "{error:?}");
    assert_eq!(error.outcome(), Outcome::NotApplied);
    assert_eq!(script.submits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_refusal_is_final_and_certainly_not_applied() {
    let (live, script) = common::start(common::Script::default()).await;
    let client = client(&[live.to_string()]);
    let error = client
        .get(404, ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert_eq!(error.outcome(), Outcome::NotApplied);
    assert_eq!(error.to_string(), "not found: workflow 404 not found");
    assert_eq!(script.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_cluster_is_not_applied_after_bounded_attempts() {
    let client = client(&[
        common::dead_address().to_string(),
        common::dead_address().to_string(),
    ]);
    let error = client.cancel(42, "test").await.unwrap_err();
    assert!(
        matches!(error, ClientError::Retried { attempts: 4, .. }),
        "{error:?}"
    );
    assert!(
        matches!(error.last(), ClientError::Unreachable { .. }),
        "{error:?}"
    );
    assert_eq!(error.outcome(), Outcome::NotApplied);
}

#[tokio::test]
async fn a_slow_node_times_out_with_an_unknown_outcome() {
    let script = common::Script::default();
    *script.get_delay.lock().unwrap() = Duration::from_secs(5);
    let (live, _script) = common::start(script).await;
    let config = ClientConfig {
        attempts_max: 2,
        ..fast_config()
    };
    let client = Client::with_config(Endpoints::parse(&live.to_string()).unwrap(), config).unwrap();
    let error = client
        .get(42, ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(error.last(), ClientError::Timeout { .. }),
        "{error:?}"
    );
    assert_eq!(error.outcome(), Outcome::Unknown);
}

#[tokio::test]
async fn an_unknown_attempt_taints_a_later_refusal() {
    // First endpoint times out (unknown), the second refuses: the call as a whole may have
    // been applied by the first.
    let slow = common::Script::default();
    *slow.get_delay.lock().unwrap() = Duration::from_secs(5);
    let (slow, _) = common::start(slow).await;
    let (live, _) = common::start(common::Script::default()).await;
    let client = client(&[slow.to_string(), live.to_string()]);
    let error = client
        .get(404, ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert_eq!(error.outcome(), Outcome::Unknown);
}

#[tokio::test]
async fn list_all_pages_through_and_stops_when_asked() {
    let script = common::Script::default();
    *script.workflow_ids.lock().unwrap() = vec![5, 4, 3, 2, 1];
    let (live, _) = common::start(script).await;
    let client = client(&[live.to_string()]);
    let ids: Vec<u64> = client
        .list_all(ListRequest::default())
        .map(|workflow| workflow.unwrap().id)
        .collect()
        .await;
    assert_eq!(ids, [5, 4, 3, 2, 1]);
    let first_three: Vec<u64> = client
        .list_all(ListRequest::default())
        .take(3)
        .map(|workflow| workflow.unwrap().id)
        .collect()
        .await;
    assert_eq!(first_three, [5, 4, 3]);
}

#[tokio::test]
async fn admin_calls_and_watch_reach_the_node() {
    let (live, _) = common::start(common::Script {
        node_id: 2,
        ..Default::default()
    })
    .await;
    let client = client(&[live.to_string()]);
    let status = client.cluster_status().await.unwrap();
    assert_eq!((status.node_id, status.leader_id), (2, 1));
    let endpoint = client.endpoints().as_slice()[0].clone();
    assert_eq!(
        client.cluster_status_of(&endpoint).await.unwrap().node_id,
        2
    );
    assert_eq!(client.trigger_snapshot().await.unwrap().snapshot_index, 10);
    let error = client.add_member(4, "127.0.0.1:7104").await.unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::Unimplemented));

    let events: Vec<u64> = client
        .watch(42, 0)
        .await
        .unwrap()
        .map(|event| event.unwrap().index)
        .collect()
        .await;
    assert_eq!(events, [1, 2, 3]);
}

#[tokio::test]
async fn a_connection_dropped_mid_call_is_an_unknown_outcome() {
    // Accepts, reads the request's first bytes, then hangs up: the request may have arrived.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 64];
            let _ = socket.read(&mut buffer).await;
            drop(socket);
        }
    });
    let client = client(&[address.to_string()]);
    let error = client.cancel(42, "test").await.unwrap_err();
    assert!(
        matches!(error.last(), ClientError::ConnectionLost { .. }),
        "{error:?}"
    );
    assert_eq!(error.outcome(), Outcome::Unknown);
    assert!(
        matches!(error, ClientError::Retried { attempts: 4, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_refusal_after_failover_reads_as_itself() {
    let (live, _) = common::start(common::Script::default()).await;
    let client = client(&[common::dead_address().to_string(), live.to_string()]);
    let error = client
        .get(404, ReadConsistency::Linearizable)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Status { .. }), "{error:?}");
    assert_eq!(error.outcome(), Outcome::NotApplied);
}
