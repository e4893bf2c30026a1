//! The standard `grpc.health.v1` service, so grpc_health_probe, grpcurl and Kubernetes gRPC
//! probes work unchanged, and the two states it reports:
//!
//! - `""` (the default a probe asks for) and each `baton.v1.*` service: **ready**. SERVING while
//!   this node knows a leader (it is the leader, or hears from one), is a member of the
//!   membership, and has applied its log to within [`APPLY_LAG_MAX`] entries of what it knows is
//!   committed; NOT_SERVING otherwise, and from the moment a drain starts (SIGTERM). A ready
//!   node can take any call: writes are forwarded to the leader, reads are linearized. A node
//!   without quorum, a restarted node still replaying, or one not yet added reports NOT_SERVING,
//!   so a load balancer sends clients elsewhere.
//! - `liveness`: SERVING as long as the process serves gRPC at all, draining included. A node that
//!   lost its quorum is alive; restarting it would not help, so liveness does not depend on Raft,
//!   with one exception: a node that halted (its Raft core stopped on a storage error) is not
//!   alive, and never reports SERVING again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::raft::{RaftNode, Role};

/// A node this many entries or more behind its known commit index is not ready: it would answer
/// linearizable reads only after catching up, and stale reads from far behind.
pub const APPLY_LAG_MAX: u64 = 1_000;

/// The service name whose status is liveness rather than readiness.
pub const LIVENESS_SERVICE: &str = "liveness";

/// The service names that report readiness: the overall status and every public service.
const READY_SERVICES: &[&str] = &[
    "",
    "baton.v1.WorkflowService",
    "baton.v1.AgentService",
    "baton.v1.AdminService",
];

/// Keeps the health service's statuses up to date with Raft and the drain.
pub struct Health {
    reporter: HealthReporter,
    draining: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Health {
    /// The health service to serve, and the task that keeps its statuses current.
    pub async fn start(
        node: Arc<RaftNode>,
    ) -> (
        Arc<Self>,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        JoinHandle<()>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Arc::new(Self {
            reporter,
            draining: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        });
        // The reporter starts with "" SERVING; nothing is ready before Raft says so.
        health.set_ready(false).await;
        let task = tokio::spawn(health.clone().follow(node));
        (health, service, task)
    }

    /// From now on the node reports not ready, whatever Raft says.
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.set_ready(false).await;
        self.changed.notify_one();
    }

    async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in READY_SERVICES {
            self.reporter.set_service_status(*service, status).await;
        }
    }

    async fn follow(self: Arc<Self>, node: Arc<RaftNode>) {
        self.reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let mut raft = node.status_watch();
        let mut reported = None;
        loop {
            let ready = {
                let s = raft.current();
                let role_serves = matches!(s.role, Role::Leader | Role::Follower | Role::Learner);
                s.member
                    && role_serves
                    && s.leader.is_some()
                    && s.committed_index.saturating_sub(s.applied_index) < APPLY_LAG_MAX
                    && !self.draining.load(Ordering::SeqCst)
            };
            if reported != Some(ready) {
                tracing::info!(ready, "health status");
                self.set_ready(ready).await;
                reported = Some(ready);
            }
            tokio::select! {
                changed = raft.changed() => if !changed { break },
                () = self.changed.notified() => {}
                _ = node.halted() => break,
            }
        }
        // The Raft core is gone: nothing this node answers can be trusted to be current.
        self.set_ready(false).await;
        self.reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
            .await;
    }
}
