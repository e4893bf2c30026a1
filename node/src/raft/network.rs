//! The client half of the Raft transport: openraft's network traits over tonic.
//!
//! Every call gets the deadline openraft hands us (`RPCOption::soft_ttl`), and every failure to
//! reach a peer (refused, reset, timed out) maps to `Unreachable`, so openraft backs off instead of
//! hammering a dead or partitioned node. Payloads are MessagePack with field names (see
//! `raft.proto`). Snapshots stream in chunks, the stream built before the call so the request
//! body flows while the call is awaited.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::raft::v1 as pb;
use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
use openraft::BasicNode;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::envelope::{self, Addressee, Envelope};
use crate::limits;
use crate::raft::types::{RaftNodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::state::NodeId;
use crate::storage::Replica;

/// Lazily connected channels to peers, shared by replication and forwarding.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Who this node is, and the applied state that says who the others are (see `envelope`).
    local: Arc<Local>,
    /// Incarnations peers answered with whose ids have none bound yet: the leader binds them
    /// ([`Peers::heard_unbound`]).
    heard: Arc<Mutex<BTreeMap<RaftNodeId, String>>>,
    /// Member address -> the address this node actually dials (`--peer-dial`). Empty in
    /// production; the chaos suite routes every directed link through its own proxy with it,
    /// while the membership (replicated, the same on every node) keeps the real addresses.
    dial: Arc<BTreeMap<String, String>>,
    /// Mutual TLS with this node's certificate; `None` with `--insecure`.
    tls: Option<Arc<baton_security::TlsSettings>>,
}

/// This node as it signs its Raft messages.
pub struct Local {
    pub node_id: RaftNodeId,
    pub incarnation: String,
    pub replica: Arc<Replica>,
}

impl Peers {
    pub fn new(
        local: Local,
        dial: BTreeMap<String, String>,
        tls: Option<Arc<baton_security::TlsSettings>>,
    ) -> Peers {
        Peers {
            channels: Arc::default(),
            local: Arc::new(local),
            heard: Arc::default(),
            dial: Arc::new(dial),
            tls,
        }
    }

    /// The headers of a message to `target`: the incarnation bound for it, if any.
    fn envelope(&self, target: RaftNodeId) -> Envelope {
        let view = self.local.replica.peer_view();
        Envelope {
            cluster_id: view.cluster_id.clone(),
            from: Addressee {
                node_id: self.local.node_id,
                incarnation: self.local.incarnation.clone(),
            },
            to: Addressee {
                node_id: target,
                incarnation: view
                    .incarnation_of(NodeId(target))
                    .unwrap_or_default()
                    .to_owned(),
            },
        }
    }

    /// Checks who answered: an answer from another incarnation than the one bound for `target`
    /// does not count (that node lost its data, or another node answers at its address).
    fn check_answer(
        &self,
        target: RaftNodeId,
        expected: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), String> {
        let Some(answered) = envelope::answered_by(metadata) else {
            return Ok(());
        };
        if expected.is_empty() {
            if !answered.is_empty() {
                self.heard.lock().insert(target, answered.to_owned());
            }
            return Ok(());
        }
        if answered != expected {
            return Err(format!(
                "answered from data folder {answered}, but the cluster knows it by {expected}: \
                 it lost its data; replace it (`baton cluster remove {target}`)"
            ));
        }
        Ok(())
    }

    /// Asks the node at `addr` who it is (`Hello`); `None` if it does not answer in `timeout`.
    pub async fn hello(&self, addr: &str, timeout: Duration) -> Option<pb::HelloResponse> {
        let mut client = self.client(addr).ok()?;
        let request = pb::HelloRequest {
            cluster_id: self.local.replica.read(|a| a.state.cluster_id().to_owned()),
            node_id: self.local.node_id,
            incarnation: self.local.incarnation.clone(),
        };
        tokio::time::timeout(timeout, client.hello(request))
            .await
            .ok()?
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// The incarnation bound for `node`, if any.
    pub fn bound(&self, node: RaftNodeId) -> Option<String> {
        self.local
            .replica
            .peer_view()
            .incarnation_of(NodeId(node))
            .map(str::to_owned)
    }

    /// Members that answered with an incarnation while none was bound for them, and that one.
    pub fn heard_unbound(&self) -> Vec<(RaftNodeId, String)> {
        let mut heard = self.heard.lock();
        heard.retain(|id, _| self.bound(*id).is_none());
        heard.iter().map(|(id, inc)| (*id, inc.clone())).collect()
    }

    /// A channel to `addr` (HOST:PORT); connects on first use and reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let dial = self.dial.get(addr).map_or(addr, String::as_str);
        let endpoint = Endpoint::from_shared(format!("http://{dial}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(limits::TCP_KEEPALIVE))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(
                baton_security::connector::TlsDialer::new(tls.clone()),
            ),
            None => endpoint.connect_lazy(),
        };
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    pub fn client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX))
    }
}

pub fn encode<T: Serialize>(value: &T) -> pb::RaftPayload {
    pb::RaftPayload {
        data: rmp_serde::to_vec_named(value).expect("raft message encodes"),
    }
}

pub fn decode<T: DeserializeOwned>(
    payload: &pb::RaftPayload,
) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(&payload.data)
}

pub struct NetworkFactory {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            target,
            client: self.peers.client(&node.addr).map_err(|e| e.to_string()),
            peers: self.peers.clone(),
        }
    }
}

pub struct PeerNetwork {
    target: RaftNodeId,
    peers: Peers,
    /// An address that does not parse is reported on every call rather than panicking.
    client: Result<RaftServiceClient<Channel>, String>,
}

fn unreachable(target: RaftNodeId, what: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!("node {target}: {what}")))
}

impl PeerNetwork {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| unreachable(self.target, format!("bad address: {e}")))
    }

    /// Runs one unary call with a deadline and maps its failure for openraft.
    async fn call<Req, Resp, F, Fut>(
        &self,
        request: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<pb::RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftPayload>, tonic::Status>>,
    {
        let client = self.client()?;
        let (request, expected) = self.signed(encode(request));
        // openraft derives the deadline from the heartbeat interval (tens of ms); a follower
        // busy with an fsync or a big batch must not count as unreachable for that.
        let ttl = option.soft_ttl().max(limits::RAFT_RPC_TIMEOUT_MIN);
        let reply = match tokio::time::timeout(ttl, f(client, request)).await {
            Err(_) => {
                return Err(unreachable(
                    self.target,
                    format!("no answer within {ttl:?}"),
                ));
            }
            Ok(Err(status)) => return Err(map_status(self.target, status)),
            Ok(Ok(reply)) => reply,
        };
        self.peers
            .check_answer(self.target, &expected, reply.metadata())
            .map_err(|e| unreachable(self.target, e))?;
        decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// `message` as a request carrying this node's envelope, and the incarnation expected to
    /// answer.
    fn signed<T>(&self, message: T) -> (tonic::Request<T>, String) {
        let envelope = self.peers.envelope(self.target);
        let mut request = tonic::Request::new(message);
        envelope.stamp(request.metadata_mut());
        (request, envelope.to.incarnation)
    }
}

fn map_status(target: RaftNodeId, status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        // The peer is down, restarting, or shutting down its Raft; or it refuses this node's
        // messages (see `envelope`: it is not the member it was, or this node is not one any
        // more), which no retry soon will change: back off.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::FailedPrecondition
        | tonic::Code::PermissionDenied => unreachable(target, status.message()),
        _ => RPCError::Network(NetworkError::from_string(format!(
            "node {target}: {}: {}",
            status.code(),
            status.message()
        ))),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move { c.vote(p).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header =
            rmp_serde::to_vec_named(&(&vote, &snapshot.meta)).expect("snapshot header encodes");
        let signature = snapshot.meta.signature();
        let data = tokio::task::spawn_blocking(move || snapshot.snapshot.into_bytes())
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // Replaced by a newer snapshot since openraft named it: openraft asks for
                    // the current one and tries again.
                    StreamingError::Network(NetworkError::new(&e))
                } else {
                    // Corrupt or unreadable: retrying cannot help, and corruption stops the node
                    // loudly rather than being retried as a network fault.
                    StreamingError::StorageError(openraft::StorageError::read_snapshot(
                        Some(signature),
                        openraft::errors::ErrorSource::from_error(&e),
                    ))
                }
            })?;
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(limits::SNAPSHOT_CHUNK_BYTES)
            .clamp(1, limits::SNAPSHOT_CHUNK_BYTES);
        // Chunks are copied out one at a time as the stream is polled, not all up front.
        // An empty snapshot still sends one chunk: the header.
        let total = data.len();
        let chunk_count = total.div_ceil(chunk_bytes).max(1);
        let chunks = (0..chunk_count).map(move |i| {
            let start = (i * chunk_bytes).min(total);
            let end = (start + chunk_bytes).min(total);
            pb::SnapshotChunk {
                header: if i == 0 { header.clone() } else { Vec::new() },
                data: data[start..end].to_vec(),
            }
        });
        // Sized to the snapshot: a big state legitimately takes longer than one heartbeat RPC.
        let ttl = option.hard_ttl().max(limits::snapshot_send_timeout(total));
        let (request, expected) = self.signed(tokio_stream::iter(chunks));
        let call = client.install_snapshot(request);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = tokio::time::timeout(ttl, call) => reply,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!(
                        "node {}: snapshot of {total} bytes not installed within {ttl:?}",
                        self.target
                    ),
                )));
            }
            Ok(Err(status)) => return Err(map_status(self.target, status).into()),
            Ok(Ok(reply)) => reply,
        };
        self.peers
            .check_answer(self.target, &expected, reply.metadata())
            .map_err(|e| StreamingError::from(unreachable(self.target, e)))?;
        decode(reply.get_ref()).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}
