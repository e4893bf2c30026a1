//! `WorkflowWatch` against a fake node: resumes after a broken stream at the last index seen,
//! skipping the events of it already seen, yields every event once (also when one index carries
//! several), ends after the workflow's finish, and resumes a stream that ends early.

use crate::common;

use std::sync::atomic::Ordering;

use baton_client::proto::{EventKind, WorkflowState};
use baton_client::{Client, Endpoints, WatchUpdate, WorkflowWatch};

#[tokio::test]
async fn resumes_after_breaks_without_losing_or_repeating_events() {
    let script = common::Script::default();
    *script.events.lock().unwrap() = common::workflow_7_events(WorkflowState::Succeeded);
    script.watch_breaks.store(2, Ordering::SeqCst);
    let (address, script) = common::start(script).await;
    let client = Client::new(Endpoints::parse(&address.to_string()).unwrap()).unwrap();

    let mut watch = WorkflowWatch::new(client, 7, 0);
    let mut indexes = Vec::new();
    let mut resumed = Vec::new();
    while let Some(update) = watch.next().await.unwrap() {
        match update {
            WatchUpdate::Event(event) => {
                indexes.push(event.index);
                if event.kind == EventKind::WorkflowFinished as i32 {
                    assert_eq!(event.workflow_state, WorkflowState::Succeeded as i32);
                }
            }
            WatchUpdate::Resumed { from_index, reason } => {
                assert!(reason.contains("node stepping down"), "{reason}");
                resumed.push(from_index);
            }
        }
    }
    assert_eq!(indexes, [3, 4, 5, 6, 7]);
    // The fake breaks each stream after one event: the first break loses nothing past index 3,
    // the second comes right after the skipped repeat of it.
    assert_eq!(resumed, [3, 3]);
    let from: Vec<u64> = script
        .watch_requests
        .lock()
        .unwrap()
        .iter()
        .map(|request| request.from_index)
        .collect();
    assert_eq!(from, [0, 3, 3]);
    assert!(watch.next().await.unwrap().is_none(), "stays finished");
}

/// One index with several events (a batched entry): a stream lost after the first of them resumes
/// at that index and yields the rest, each once.
#[tokio::test]
async fn a_break_inside_an_index_loses_and_repeats_nothing() {
    let script = common::Script::default();
    let event = |index: u64, kind: EventKind, step: &str| baton_client::proto::WorkflowEvent {
        index,
        workflow_id: 7,
        kind: kind as i32,
        step: step.into(),
        ..Default::default()
    };
    let events = vec![
        event(3, EventKind::WorkflowSubmitted, ""),
        event(3, EventKind::StepReady, "a"),
        event(3, EventKind::StepReady, "b"),
        event(4, EventKind::StepAssigned, "a"),
        event(5, EventKind::StepFinished, "a"),
        event(5, EventKind::WorkflowFinished, ""),
    ];
    *script.events.lock().unwrap() = events.clone();
    script.watch_breaks.store(1, Ordering::SeqCst);
    let (address, _) = common::start(script).await;
    let client = Client::new(Endpoints::parse(&address.to_string()).unwrap()).unwrap();

    let mut watch = WorkflowWatch::new(client, 7, 0);
    let mut got = Vec::new();
    while let Some(update) = watch.next().await.unwrap() {
        if let WatchUpdate::Event(event) = update {
            got.push(event);
        }
    }
    assert_eq!(got, events);
}

#[tokio::test]
async fn a_stream_that_ends_before_the_finish_is_resumed() {
    let (address, _) = common::start(common::Script::default()).await;
    let client = Client::new(Endpoints::parse(&address.to_string()).unwrap()).unwrap();
    // The default fake serves three events of kind 0 and then ends: resumed, never finished.
    let mut watch = WorkflowWatch::new(client, 42, 0);
    let mut events = 0;
    while events < 6 {
        match watch.next().await.unwrap() {
            Some(WatchUpdate::Event(_)) => events += 1,
            Some(WatchUpdate::Resumed { from_index, .. }) => assert_eq!(from_index, 3),
            None => panic!("a workflow that never finished cannot end the watch"),
        }
    }
}

/// A watch of every workflow resumed (or opened) from an index a node no longer holds every event
/// from: the other nodes are asked; when none holds them, the caller gets the OUT_OF_RANGE, with
/// where the refusing node can start.
#[tokio::test]
async fn a_node_that_no_longer_holds_the_events_is_passed_over_then_reported() {
    let events = common::workflow_7_events(WorkflowState::Succeeded);
    let restarted = common::Script::default();
    *restarted.events.lock().unwrap() = events.clone();
    *restarted.events_from.lock().unwrap() = Some(5);
    let whole = common::Script::default();
    *whole.events.lock().unwrap() = events;
    let (first, restarted) = common::start(restarted).await;
    let (second, whole) = common::start(whole).await;
    let endpoints = Endpoints::parse(&format!("{first},{second}")).unwrap();
    let client = Client::new(endpoints).unwrap();

    let mut watch = WorkflowWatch::new(client.clone(), 0, 3);
    let Some(WatchUpdate::Event(event)) = watch.next().await.unwrap() else {
        panic!("an event");
    };
    assert_eq!(event.index, 3, "served whole by the second node");
    assert_eq!(restarted.watch_requests.lock().unwrap().len(), 1);
    assert_eq!(whole.watch_requests.lock().unwrap().len(), 1);

    // Both refuse: the caller hears it.
    *whole.events_from.lock().unwrap() = Some(5);
    let mut watch = WorkflowWatch::new(client, 0, 3);
    let error = watch.next().await.expect_err("no node holds index 3");
    assert_eq!(error.code(), Some(tonic::Code::OutOfRange));
    let from = error
        .status()
        .and_then(|s| s.metadata().get(baton_proto::status::EVENTS_FROM_METADATA))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    assert_eq!(from, Some(5));
}
