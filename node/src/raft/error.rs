//! Why a proposal or a read did not go through ([`NodeError`]), and what a forwarded call's
//! status says about it: the one place that decides whether a command certainly did not apply,
//! applied, or may have.

use super::types::RaftNodeId;

/// Why a proposal or read did not go through. Says whether the command may have been applied.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    /// Certainly not applied: no leader is known (election under way, or no quorum).
    #[error("no leader is available: {0}")]
    NoLeader(String),
    /// May or may not have been applied: the leader was lost mid-request.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// Certainly not applied: this node is not the leader (internal, for forwarding).
    #[error("node is not the leader")]
    NotLeader { leader: Option<RaftNodeId> },
    /// The Raft core or storage failed; the node cannot serve.
    #[error("raft failed: {0}")]
    Fatal(String),
    /// Certainly not applied: the node (or the leader it forwards to) has
    /// `limits::PROPOSALS_IN_FLIGHT_MAX` proposals in flight. Retry with backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Certainly not applied: the leader's data disk is below its reserve, and the command would
    /// add workflows (see [`RaftNode::propose_local`]). The message names the node, the disk, its
    /// free space and the reserve. Retry once space is freed, or leadership moved to a node with
    /// room.
    #[error("{0}")]
    DiskLow(String),
}

/// Metadata key of a leader's RESOURCE_EXHAUSTED answer to a forwarded proposal saying why it
/// refused, so the follower passes the same refusal on (a [`NodeError::DiskLow`] stays one).
pub const REFUSAL_METADATA: &str = "baton-refusal";
/// [`REFUSAL_METADATA`]'s value for [`NodeError::DiskLow`].
pub const REFUSAL_DISK_LOW: &str = "disk-low";

/// The refusal of a proposal past `PROPOSALS_IN_FLIGHT_MAX`.
pub fn overloaded() -> NodeError {
    NodeError::Overloaded(format!(
        "{} proposals in flight on this node; retry with backoff",
        crate::limits::PROPOSALS_IN_FLIGHT_MAX
    ))
}

/// The leader's answer to a proposal a follower forwarded, when it did not commit: the status
/// [`status_to_error`] turns back into the same kind of [`NodeError`] on the follower, so the
/// follower's caller learns exactly whether the command may have been applied.
pub(super) fn forwarded_status(err: NodeError) -> tonic::Status {
    match err {
        NodeError::NotLeader { .. } | NodeError::NoLeader(_) => {
            tonic::Status::failed_precondition("not the leader")
        }
        NodeError::Unknown(e) => tonic::Status::aborted(e),
        NodeError::Fatal(e) => tonic::Status::internal(e),
        NodeError::Overloaded(e) => tonic::Status::resource_exhausted(e),
        NodeError::DiskLow(e) => {
            // Marked, so the follower's caller is told exactly this, not "overloaded".
            let mut status = tonic::Status::resource_exhausted(e);
            status.metadata_mut().insert(
                REFUSAL_METADATA,
                tonic::metadata::MetadataValue::from_static(REFUSAL_DISK_LOW),
            );
            status
        }
    }
}

/// Maps a status from the leader's internal RPC: whether the command may have been applied.
///
/// Only two things prove a forwarded command was not applied: the connection to the leader could
/// not be made (so the request never left), or the leader answered that it refused before
/// proposing. Everything else (the connection lost mid-call, a reset, a timeout, an answer that
/// says nothing about how far it got) is an unknown outcome: the caller is told so, and never
/// retried here, since a retry could apply the command twice.
pub(super) fn status_to_error(status: tonic::Status) -> NodeError {
    if baton_proto::status::has_source::<tonic::ConnectError>(&status) {
        return NodeError::NoLeader(format!("the leader is unreachable: {}", status.message()));
    }
    // A status with a source was made on this side from a transport error, after the
    // connection was up: the request may have reached the leader.
    if std::error::Error::source(&status).is_some() {
        return NodeError::Unknown(format!(
            "the connection to the leader broke during the call: {}",
            status.message()
        ));
    }
    match status.code() {
        // The leader refused before proposing: its data disk is low.
        tonic::Code::ResourceExhausted
            if status
                .metadata()
                .get(REFUSAL_METADATA)
                .is_some_and(|v| v == REFUSAL_DISK_LOW) =>
        {
            NodeError::DiskLow(status.message().to_owned())
        }
        // The leader refused before proposing: it is saturated.
        tonic::Code::ResourceExhausted => NodeError::Overloaded(status.message().to_owned()),
        // The leader refused before proposing (it is no longer the leader, or has no quorum).
        tonic::Code::FailedPrecondition => NodeError::NotLeader { leader: None },
        _ => NodeError::Unknown(format!("{}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::raft::network;
    use crate::state::Command;

    /// What the forwarding follower makes of real transport failures: a leader that cannot be
    /// reached certainly did not apply the command; one that took the request and then lost the
    /// connection may have.
    #[tokio::test]
    async fn a_forward_that_loses_the_leaders_answer_is_unknown_not_refused() {
        use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
        let propose = |addr: String| async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            RaftServiceClient::new(channel)
                .propose(network::encode(&Command::Tick))
                .await
                .expect_err("no leader answers")
        };

        // Nobody listens: the request never left.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let status = propose(addr).await;
        assert!(
            matches!(status_to_error(status.clone()), NodeError::NoLeader(_)),
            "{status:?}"
        );

        // A "leader" that reads the whole request and then drops the connection unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let swallow = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            // The preface, SETTINGS, HEADERS and DATA of the call: read until the client
            // waits for an answer, then hang up.
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await;
        });
        let status = propose(addr).await;
        swallow.await.unwrap();
        assert!(
            matches!(status_to_error(status.clone()), NodeError::Unknown(_)),
            "{status:?}"
        );

        // The leader's own refusals say the command was not proposed.
        assert!(matches!(
            status_to_error(tonic::Status::failed_precondition("not the leader")),
            NodeError::NotLeader { .. }
        ));
        assert!(matches!(
            status_to_error(tonic::Status::resource_exhausted("full")),
            NodeError::Overloaded(_)
        ));
        // An answer that does not say how far it got is unknown.
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Aborted,
            tonic::Code::Internal,
        ] {
            assert!(matches!(
                status_to_error(tonic::Status::new(code, "?")),
                NodeError::Unknown(_)
            ));
        }
    }

    /// What the leader answers a forwarded proposal with is read back as the same kind of
    /// error: never "not applied" for what may have been, never "unknown" for what was not.
    #[test]
    fn a_forwarded_error_keeps_what_it_says_about_the_command() {
        let certainly_not = |e: &NodeError| {
            matches!(
                e,
                NodeError::NoLeader(_)
                    | NodeError::NotLeader { .. }
                    | NodeError::Overloaded(_)
                    | NodeError::DiskLow(_)
            )
        };
        for err in [
            NodeError::NoLeader("election".into()),
            NodeError::NotLeader { leader: Some(2) },
            NodeError::Unknown("lost".into()),
            NodeError::Fatal("core stopped".into()),
            NodeError::Overloaded("full".into()),
            NodeError::DiskLow("node 1: disk low".into()),
        ] {
            let back = status_to_error(forwarded_status(err.clone()));
            assert_eq!(
                certainly_not(&back),
                certainly_not(&err),
                "{err:?} came back as {back:?}"
            );
            assert_eq!(
                std::mem::discriminant(&back)
                    == std::mem::discriminant(&NodeError::DiskLow(String::new())),
                matches!(err, NodeError::DiskLow(_)),
                "{err:?} came back as {back:?}"
            );
        }
    }

    #[test]
    fn a_forwarded_disk_refusal_stays_one() {
        let mut status = tonic::Status::resource_exhausted("node 1: data disk /d has 3 MiB free");
        status
            .metadata_mut()
            .insert(REFUSAL_METADATA, REFUSAL_DISK_LOW.parse().unwrap());
        match status_to_error(status) {
            NodeError::DiskLow(message) => {
                assert_eq!(message, "node 1: data disk /d has 3 MiB free")
            }
            other => panic!("{other:?}"),
        }
    }
}
