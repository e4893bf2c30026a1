//! `WorkflowWatch` against a fake node: resumes after a broken stream from the last index + 1,
//! yields every event once, ends after the workflow's finish, and resumes a stream that ends early.

mod common;

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
    assert_eq!(resumed, [4, 5]);
    let from: Vec<u64> = script
        .watch_requests
        .lock()
        .unwrap()
        .iter()
        .map(|request| request.from_index)
        .collect();
    assert_eq!(from, [0, 4, 5]);
    assert!(watch.next().await.unwrap().is_none(), "stays finished");
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
            Some(WatchUpdate::Resumed { from_index, .. }) => assert_eq!(from_index, 4),
            None => panic!("a workflow that never finished cannot end the watch"),
        }
    }
}
