//! A scripted in-process Baton server for client tests: real gRPC over loopback, fake answers.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::proto::admin_service_server::{AdminService, AdminServiceServer};
use baton_client::proto::workflow_service_server::{WorkflowService, WorkflowServiceServer};
use baton_client::proto::*;
use tonic::{Request, Response, Status};

/// What the fake answers and what it was asked.
#[derive(Default)]
pub struct Script {
    /// Submits answered UNAVAILABLE before one succeeds.
    pub submits_unavailable: AtomicU32,
    /// When set, every submit and batch fails with INTERNAL (an unknown outcome that is not
    /// retried).
    pub submit_internal: std::sync::atomic::AtomicBool,
    /// Every submit request received, in order.
    pub submits: Mutex<Vec<SubmitRequest>>,
    /// Every SubmitBatch request received, in order; answered like submits (the same
    /// `submits_unavailable` budget), item `i` as workflow `100 + i`.
    pub batches: Mutex<Vec<SubmitBatchRequest>>,
    /// When set, batches after this many are refused with FAILED_PRECONDITION (a definite
    /// failure).
    pub batches_ok: Mutex<Option<usize>>,
    /// Get requests received.
    pub gets: AtomicU32,
    /// How long Get takes before answering.
    pub get_delay: Mutex<Duration>,
    /// Workflow ids List pages through (newest first), two per page.
    pub workflow_ids: Mutex<Vec<u64>>,
    pub node_id: u64,
    /// When not empty, what Watch serves: the events at or after `from_index` of the watched
    /// workflow; Get then also knows workflow 7, in `workflow_state`.
    pub events: Mutex<Vec<WorkflowEvent>>,
    /// Watch streams that break (UNAVAILABLE) after their first event, before one that does not.
    pub watch_breaks: AtomicU32,
    pub watch_requests: Mutex<Vec<WatchRequest>>,
    /// When set, a watch of every workflow from below this index is refused with OUT_OF_RANGE
    /// naming it (a node that no longer holds those events).
    pub events_from: Mutex<Option<u64>>,
    pub workflow_state: Mutex<WorkflowState>,
}

impl Script {
    /// How the next submit or batch fails, if it does: INTERNAL while `submit_internal` is set,
    /// else UNAVAILABLE while the `submits_unavailable` budget lasts (one taken).
    fn submit_failure(&self) -> Option<Status> {
        if self.submit_internal.load(Ordering::SeqCst) {
            return Some(Status::internal("raft proposal dropped"));
        }
        let unavailable = &self.submits_unavailable;
        if unavailable.load(Ordering::SeqCst) > 0 {
            unavailable.fetch_sub(1, Ordering::SeqCst);
            return Some(Status::unavailable("no leader yet"));
        }
        None
    }
}

pub struct Fake(pub Arc<Script>);

pub fn sample_workflow(id: u64) -> Workflow {
    Workflow {
        id,
        name: "nightly-report".into(),
        state: WorkflowState::Running as i32,
        created_at_ms: 1_714_566_605_123,
        steps: vec![Step {
            name: "build".into(),
            state: StepState::Running as i32,
            attempts: 1,
            attempt_id: 3,
            agent: "agent-1".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl WorkflowService for Fake {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.0.submits.lock().unwrap().push(request.into_inner());
        if let Some(status) = self.0.submit_failure() {
            return Err(status);
        }
        Ok(Response::new(SubmitResponse {
            workflow_id: 7,
            created: true,
            log_index: 3,
        }))
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        let request = request.into_inner();
        let items = request.submits.len();
        let received = {
            let mut batches = self.0.batches.lock().unwrap();
            batches.push(request);
            batches.len()
        };
        if self
            .0
            .batches_ok
            .lock()
            .unwrap()
            .is_some_and(|ok| received > ok)
        {
            return Err(Status::failed_precondition("SubmitBatch is off"));
        }
        if let Some(status) = self.0.submit_failure() {
            return Err(status);
        }
        let results = (0..items as u64)
            .map(|i| SubmitBatchResult {
                outcome: Some(submit_batch_result::Outcome::Submitted(SubmitResponse {
                    workflow_id: 100 + i,
                    created: true,
                    log_index: 3,
                })),
            })
            .collect();
        Ok(Response::new(SubmitBatchResponse { results }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.0.gets.fetch_add(1, Ordering::SeqCst);
        let delay = *self.0.get_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let id = request.into_inner().workflow_id;
        if id == 7 && !self.0.events.lock().unwrap().is_empty() {
            return Ok(Response::new(GetResponse {
                workflow: Some(Workflow {
                    state: *self.0.workflow_state.lock().unwrap() as i32,
                    reason: "step \"build\" failed".into(),
                    ..sample_workflow(7)
                }),
            }));
        }
        if id == 42 {
            Ok(Response::new(GetResponse {
                workflow: Some(sample_workflow(42)),
            }))
        } else {
            Err(Status::not_found(format!("workflow {id} not found")))
        }
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let ids = self.0.workflow_ids.lock().unwrap().clone();
        let start: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token: bad"))?
        };
        let end = (start + 2).min(ids.len());
        let workflows = ids[start..end]
            .iter()
            .map(|id| Workflow {
                steps: vec![],
                ..sample_workflow(*id)
            })
            .collect();
        let next_page_token = if end < ids.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListResponse {
            workflows,
            next_page_token,
        }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        match request.into_inner().workflow_id {
            42 => Ok(Response::new(CancelResponse {
                state: WorkflowState::Cancelled as i32,
            })),
            id => Err(Status::not_found(format!("workflow {id} not found"))),
        }
    }

    async fn pause(
        &self,
        request: Request<PauseRequest>,
    ) -> Result<Response<PauseResponse>, Status> {
        match request.into_inner().workflow_id {
            42 => Ok(Response::new(PauseResponse { changed: true })),
            id => Err(Status::not_found(format!("workflow {id} not found"))),
        }
    }

    async fn resume(
        &self,
        request: Request<PauseRequest>,
    ) -> Result<Response<PauseResponse>, Status> {
        match request.into_inner().workflow_id {
            42 => Ok(Response::new(PauseResponse { changed: false })),
            id => Err(Status::not_found(format!("workflow {id} not found"))),
        }
    }

    /// Workflow 42 is running: a retry is refused as the node refuses it.
    async fn retry(
        &self,
        request: Request<RetryRequest>,
    ) -> Result<Response<RetryResponse>, Status> {
        match request.into_inner().workflow_id {
            42 => Err(Status::failed_precondition(
                "workflow 42 is still running: only a finished workflow can be retried (cancel \
                 it first)",
            )),
            id => Err(Status::not_found(format!("workflow {id} not found"))),
        }
    }

    /// Workflow 42's step `approve` waits for a signal; anything else is refused as the node
    /// refuses it.
    async fn signal(
        &self,
        request: Request<SignalRequest>,
    ) -> Result<Response<SignalResponse>, Status> {
        let request = request.into_inner();
        match (request.workflow_id, request.step.as_str()) {
            (42, "approve") => Ok(Response::new(SignalResponse {})),
            (42, step) => Err(Status::failed_precondition(format!(
                "step {step:?} of workflow 42 is not waiting for a signal: it is not a wait step"
            ))),
            (id, _) => Err(Status::not_found(format!("workflow {id} not found"))),
        }
    }

    /// The scripted events of the workflow, as its history.
    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let id = request.into_inner().workflow_id;
        let events: Vec<WorkflowEvent> = self
            .0
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event.workflow_id == id)
            .cloned()
            .collect();
        if events.is_empty() {
            return Err(Status::not_found(format!("workflow {id} not found")));
        }
        Ok(Response::new(GetHistoryResponse { events }))
    }

    type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WorkflowEvent, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        self.0.watch_requests.lock().unwrap().push(request.clone());
        if let Some(from) = *self.0.events_from.lock().unwrap()
            && request.workflow_id == 0
            && request.from_index < from
        {
            let mut status = Status::out_of_range("from_index: not held here");
            status.metadata_mut().insert(
                baton_proto::status::EVENTS_FROM_METADATA,
                from.to_string().parse().unwrap(),
            );
            return Err(status);
        }
        let scripted: Vec<WorkflowEvent> = self
            .0
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| {
                event.index >= request.from_index
                    && (request.workflow_id == 0 || event.workflow_id == request.workflow_id)
            })
            .cloned()
            .collect();
        if !self.0.events.lock().unwrap().is_empty() {
            let breaks = &self.0.watch_breaks;
            let mut items: Vec<Result<WorkflowEvent, Status>> = Vec::new();
            if breaks.load(Ordering::SeqCst) > 0 {
                breaks.fetch_sub(1, Ordering::SeqCst);
                items.extend(scripted.into_iter().take(1).map(Ok));
                items.push(Err(Status::unavailable("node stepping down")));
            } else {
                items.extend(scripted.into_iter().map(Ok));
            }
            return Ok(Response::new(Box::pin(futures::stream::iter(items))));
        }
        let events = (1..=3).map(|index| {
            Ok(WorkflowEvent {
                index,
                workflow_id: 42,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }
}

#[tonic::async_trait]
impl AdminService for Fake {
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(ClusterStatusResponse {
            node_id: self.0.node_id,
            leader_id: 1,
            term: 2,
            role: if self.0.node_id == 1 {
                "leader"
            } else {
                "follower"
            }
            .into(),
            applied_index: 10,
            committed_index: 10,
            state_hash: "abc123".into(),
            members: vec![Member {
                node_id: 1,
                address: "127.0.0.1:7101".into(),
                voter: true,
                matched_index: 10,
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
    async fn add_member(
        &self,
        _r: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_member(
        &self,
        _r: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn transfer_leader(
        &self,
        _r: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn trigger_snapshot(
        &self,
        _r: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        Ok(Response::new(TriggerSnapshotResponse {
            snapshot_index: 10,
        }))
    }
    type SaveSnapshotStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<baton_proto::v1::SnapshotChunk, Status>> + Send>,
    >;
    async fn save_snapshot(
        &self,
        _r: Request<baton_proto::v1::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn create_token(
        &self,
        _r: Request<baton_proto::v1::CreateTokenRequest>,
    ) -> Result<Response<baton_proto::v1::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_tokens(
        &self,
        _r: Request<baton_proto::v1::ListTokensRequest>,
    ) -> Result<Response<baton_proto::v1::ListTokensResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn revoke_token(
        &self,
        _r: Request<baton_proto::v1::RevokeTokenRequest>,
    ) -> Result<Response<baton_proto::v1::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn create_namespace(
        &self,
        _r: Request<baton_proto::v1::CreateNamespaceRequest>,
    ) -> Result<Response<baton_proto::v1::CreateNamespaceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn update_namespace(
        &self,
        _r: Request<baton_proto::v1::UpdateNamespaceRequest>,
    ) -> Result<Response<baton_proto::v1::UpdateNamespaceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_namespaces(
        &self,
        _r: Request<baton_proto::v1::ListNamespacesRequest>,
    ) -> Result<Response<baton_proto::v1::ListNamespacesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_audit(
        &self,
        _r: Request<baton_proto::v1::ListAuditRequest>,
    ) -> Result<Response<baton_proto::v1::ListAuditResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_namespace(
        &self,
        _r: Request<baton_proto::v1::DeleteNamespaceRequest>,
    ) -> Result<Response<baton_proto::v1::DeleteNamespaceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_agents(
        &self,
        _r: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Ok(Response::new(ListAgentsResponse {
            agents: vec![AgentInfo {
                agent_id: 3,
                name: "worker-1".into(),
                connected: true,
                slots: 4,
                slots_used: 1,
                cpu_millis: 4000,
                cpu_millis_used: 500,
                memory_mb: 8192,
                memory_mb_used: 256,
                running: vec![RunningAttempt {
                    workflow_id: 42,
                    step: "build".into(),
                    attempt_id: 3,
                }],
                ..Default::default()
            }],
        }))
    }
}

/// Starts a fake node on a free loopback port; it serves until the test's runtime ends.
pub async fn start(script: Script) -> (SocketAddr, Arc<Script>) {
    let script = Arc::new(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let server = tonic::transport::Server::builder()
        .add_service(WorkflowServiceServer::new(Fake(script.clone())))
        .add_service(AdminServiceServer::new(Fake(script.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (address, script)
}

/// A loopback address nothing listens on (bound, then released), for "connection refused".
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// The events of workflow 7 from submit (index 3) to its end in `state`.
pub fn workflow_7_events(state: WorkflowState) -> Vec<WorkflowEvent> {
    let event = |index: u64, kind: EventKind, step: &str| WorkflowEvent {
        index,
        workflow_id: 7,
        time_ms: 1_714_566_605_000 + index * 1000,
        kind: kind as i32,
        step: step.into(),
        ..Default::default()
    };
    vec![
        event(3, EventKind::WorkflowSubmitted, ""),
        event(4, EventKind::StepReady, "build"),
        WorkflowEvent {
            attempt_id: 11,
            agent: "worker-1".into(),
            ..event(5, EventKind::StepAssigned, "build")
        },
        WorkflowEvent {
            attempt_id: 11,
            agent: "worker-1".into(),
            step_state: if state == WorkflowState::Succeeded {
                StepState::Succeeded
            } else {
                StepState::Failed
            } as i32,
            message: "exit 0".into(),
            ..event(6, EventKind::StepFinished, "build")
        },
        WorkflowEvent {
            workflow_state: state as i32,
            ..event(7, EventKind::WorkflowFinished, "")
        },
    ]
}
