//! Security end to end on an in-process 3-node cluster with mutual TLS and tokens: who is
//! refused (no certificate, no token, wrong role, wrong certificate role), revocation through
//! the log on every node, and a rotated node certificate served without a restart.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{Client, ClientConfig, ClientError, Credentials, Endpoints, Outcome};
use baton_node::config::SecurityConfig;
use baton_proto::raft::v1 as raft_pb;
use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_security::devcerts::{self, DevCa, stem};
use baton_security::{PeerIdentity, PeerRole, TlsFiles, TlsSettings};
use common::{TestCluster, noop_spec, test_timing, wait_for};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(20);

struct Secure {
    cluster: TestCluster,
    pki: tempfile::TempDir,
    admin_token: String,
}

fn tls(pki: &Path, role: PeerRole, name: &str) -> Arc<TlsSettings> {
    TlsSettings::load(TlsFiles::in_dir(pki, &stem(&PeerIdentity::new(role, name)))).unwrap()
}

async fn start() -> Secure {
    common::init_logs();
    let pki = tempfile::tempdir().unwrap();
    let mut identities: Vec<PeerIdentity> = (1..=3)
        .map(|i| PeerIdentity::new(PeerRole::Node, i.to_string()))
        .collect();
    identities.push(PeerIdentity::new(PeerRole::Client, "ops"));
    identities.push(PeerIdentity::new(PeerRole::Agent, "a1"));
    devcerts::ensure(pki.path(), &identities).unwrap();
    let admin = baton_security::token::generate().unwrap();
    let token_file = pki.path().join("bootstrap-token");
    std::fs::write(&token_file, &admin.text).unwrap();
    // An admin credential: owner-only, as batond asks of it.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let dir = pki.path().to_owned();
    let cluster = TestCluster::start_with(3, test_timing(), move |id| SecurityConfig::Secure {
        tls: TlsFiles::in_dir(&dir, &format!("node-{id}")),
        bootstrap_token_file: Some(token_file.clone()),
    })
    .await;
    Secure {
        cluster,
        pki,
        admin_token: admin.text,
    }
}

impl Secure {
    /// A client of the given nodes with the `ops` client certificate (or none) and a token.
    fn client(&self, nodes: &[u64], with_tls: bool, token: Option<&str>) -> Client {
        let endpoints = nodes
            .iter()
            .map(|id| self.cluster.addr(*id).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let config = ClientConfig {
            attempts_max: 1,
            call_timeout: Duration::from_secs(5),
            credentials: Credentials {
                tls: with_tls.then(|| tls(self.pki.path(), PeerRole::Client, "ops")),
                token: token.map(str::to_owned),
            },
            ..ClientConfig::default()
        };
        Client::with_config(Endpoints::parse(&endpoints).unwrap(), config).unwrap()
    }

    /// The admin client, once the bootstrap token is recorded and a leader is there.
    async fn admin(&self) -> Client {
        let admin = self.client(&[1, 2, 3], true, Some(&self.admin_token));
        wait_for(TIMEOUT, "the bootstrap admin token to work", || async {
            admin.list_tokens().await.ok()
        })
        .await;
        admin
    }
}

fn code(result: Result<impl Sized, baton_client::ClientError>) -> Option<Code> {
    match result {
        Ok(_) => Some(Code::Ok),
        Err(error) => error.code(),
    }
}

/// A client with credentials against a node that runs with --insecure is told so on its first
/// attempt, instead of retrying a handshake that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_client_is_told_the_node_speaks_plaintext() {
    common::init_logs();
    let pki = tempfile::tempdir().unwrap();
    devcerts::ensure(pki.path(), &[PeerIdentity::new(PeerRole::Client, "ops")]).unwrap();
    let cluster = TestCluster::start(1, test_timing()).await;
    let config = ClientConfig {
        call_timeout: Duration::from_secs(5),
        credentials: Credentials {
            tls: Some(tls(pki.path(), PeerRole::Client, "ops")),
            token: None,
        },
        ..ClientConfig::default()
    };
    let client = Client::with_config(
        Endpoints::parse(&cluster.addr(1).to_string()).unwrap(),
        config,
    )
    .unwrap();
    let err = client.cluster_status().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::TlsMismatch {
                node_speaks_tls: false,
                ..
            }
        ),
        "one attempt, named: {err:?}"
    );
    assert!(err.to_string().contains("speaks plaintext"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_tokens_and_certificates_are_enforced() {
    let secure = start().await;
    let admin = secure.admin().await;

    tracing::info!(
        "--- no certificate: the TLS handshake fails; a certificate but no token: unauthenticated"
    );
    let plaintext = secure.client(&[1], false, None);
    let err = plaintext.list_tokens().await.unwrap_err();
    assert!(
        matches!(
            err.last(),
            ClientError::TlsMismatch {
                node_speaks_tls: true,
                ..
            }
        ),
        "a plaintext client is told the node needs TLS: {err}"
    );
    assert!(err.to_string().contains("requires mutual TLS"), "{err}");
    assert_eq!(err.outcome(), Outcome::NotApplied);
    let no_token = secure.client(&[1], true, None);
    assert_eq!(
        code(no_token.cluster_status().await),
        Some(Code::Unauthenticated)
    );
    let bogus = baton_security::token::generate().unwrap().text;
    let unknown = secure.client(&[1], true, Some(&bogus));
    assert_eq!(
        code(unknown.cluster_status().await),
        Some(Code::Unauthenticated)
    );

    tracing::info!("--- a reader cannot submit; a submitter cannot change membership");
    let reader_token = admin
        .create_token("r", "reader", Default::default())
        .await
        .unwrap()
        .token;
    let submitter = admin
        .create_token("s", "submitter", Default::default())
        .await
        .unwrap();
    let reader = secure.client(&[1, 2, 3], true, Some(&reader_token));
    assert_eq!(code(reader.cluster_status().await), Some(Code::Ok));
    assert_eq!(
        code(reader.submit(noop_spec("r", 1), None).await),
        Some(Code::PermissionDenied)
    );
    let submitting = secure.client(&[1, 2, 3], true, Some(&submitter.token));
    assert_eq!(
        code(submitting.submit(noop_spec("s", 1), None).await),
        Some(Code::Ok)
    );
    assert_eq!(
        code(submitting.remove_member(3).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(submitting.list_tokens().await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(admin.create_token("x", "emperor", Default::default()).await),
        Some(Code::InvalidArgument)
    );

    tracing::info!("--- a revoked token stops working on every node");
    for id in 1..=3 {
        let one = secure.client(&[id], true, Some(&submitter.token));
        wait_for(
            TIMEOUT,
            "the submitter token to work on every node",
            || async { one.get(1, Default::default()).await.ok() },
        )
        .await;
    }
    assert!(admin.revoke_token(&submitter.id).await.unwrap().was_live);
    for id in 1..=3 {
        let one = secure.client(&[id], true, Some(&submitter.token));
        wait_for(
            TIMEOUT,
            "the revoked token to be refused on every node",
            || async {
                (code(one.get(1, Default::default()).await) == Some(Code::Unauthenticated))
                    .then_some(())
            },
        )
        .await;
    }
    let listed = admin.list_tokens().await.unwrap().tokens;
    assert!(
        listed
            .iter()
            .any(|t| t.id == submitter.id && t.revoked_ms > 0)
    );

    tracing::info!("--- an agent certificate cannot call the Raft service; a node's can");
    let raft = |role, name: &str, id: u64| {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", secure.cluster.addr(id)))
                .unwrap()
                .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls(
                    secure.pki.path(),
                    role,
                    name,
                )));
        RaftServiceClient::new(channel)
    };
    let hello = raft_pb::HelloRequest::default();
    let status = raft(PeerRole::Agent, "a1", 1)
        .hello(hello.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let status = raft(PeerRole::Client, "ops", 1)
        .hello(hello.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let by_node = raft(PeerRole::Node, "2", 1).hello(hello).await;
    assert!(
        by_node.as_ref().map_or_else(
            |s| s.code() != Code::PermissionDenied && s.code() != Code::Unauthenticated,
            |_| true
        ),
        "{by_node:?}"
    );

    tracing::info!("--- a client certificate with an agent token cannot open an agent session");
    let agent_token = admin
        .create_token("a1", "agent", Default::default())
        .await
        .unwrap()
        .token;
    let as_client = secure.client(&[1], true, Some(&agent_token));
    assert_eq!(
        code(as_client.cluster_status().await),
        Some(Code::PermissionDenied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_node_certificate_is_served_without_a_restart() {
    let secure = start().await;
    let node1 = TlsFiles::in_dir(secure.pki.path(), "node-1");
    let served = |files: TlsFiles| {
        let addr = secure.cluster.addr(1);
        let client = tls(secure.pki.path(), PeerRole::Client, "ops");
        async move {
            use rustls::pki_types::pem::PemObject;
            let expected = rustls::pki_types::CertificateDer::from_pem_file(&files.cert).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let stream = tokio_rustls::TlsConnector::from(client.client_config())
                .connect(name, tcp)
                .await
                .ok()?;
            let leaf = stream.get_ref().1.peer_certificates()?.first()?.clone();
            (leaf == expected).then_some(())
        }
    };
    served(node1.clone())
        .await
        .expect("node 1 serves its first certificate");
    tracing::info!("--- re-issue node 1's certificate in place");
    DevCa::open_or_create(secure.pki.path())
        .unwrap()
        .issue(secure.pki.path(), &PeerIdentity::new(PeerRole::Node, "1"))
        .unwrap();
    wait_for(TIMEOUT, "node 1 to serve its new certificate", || {
        served(node1.clone())
    })
    .await;
    tracing::info!("--- the cluster still works across the rotation");
    let admin = secure.admin().await;
    admin
        .submit(noop_spec("after-rotation", 1), None)
        .await
        .unwrap();
}

/// An agent session over mutual TLS with `name`'s agent certificate, registering as `register_as`
/// with `token`. Returns the sender (to heartbeat) and the server's messages.
async fn agent_session(
    secure: &Secure,
    node: u64,
    certificate: &str,
    register_as: &str,
    token: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::ServerMessage>,
    ),
    tonic::Status,
> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", secure.cluster.addr(node)))
            .unwrap()
            .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls(
                secure.pki.path(),
                PeerRole::Agent,
                certificate,
            )));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            name: register_as.into(),
            slots: 1,
            task_types: vec!["noop".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut inbound = AgentServiceClient::new(channel)
        .session(request)
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Registered(_)),
        }) => Ok((tx, inbound)),
        other => panic!("expected Registered, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_are_bound_to_their_certificate_and_revocation_ends_their_sessions() {
    let secure = start().await;
    let admin = secure.admin().await;
    let agent = admin
        .create_token("a1", "agent", Default::default())
        .await
        .unwrap();
    let leader = secure.cluster.leader(TIMEOUT).await;

    tracing::info!("--- agent a1's certificate cannot register as another agent");
    for other in ["b1", "a1x", "a"] {
        let refused = agent_session(&secure, leader, "a1", other, &agent.token)
            .await
            .err()
            .unwrap_or_else(|| panic!("registering as {other:?} with a1's certificate worked"));
        assert_eq!(refused.code(), Code::PermissionDenied, "{other}: {refused}");
    }
    let listed = admin.list_agents().await.unwrap().agents;
    assert!(
        listed.is_empty(),
        "a refused registration registered: {listed:?}"
    );

    tracing::info!("--- as itself, or a member of its pool, it may");
    let (_pool_tx, _pool_rx) = agent_session(&secure, leader, "a1", "a1.pod-7", &agent.token)
        .await
        .unwrap();
    let (tx, mut inbound) = agent_session(&secure, leader, "a1", "a1", &agent.token)
        .await
        .unwrap();

    tracing::info!("--- revoking its token ends the session at its next message");
    admin.revoke_token(&agent.id).await.unwrap();
    wait_for(TIMEOUT, "the revocation to apply on the leader", || async {
        let one = secure.client(&[leader], true, Some(&agent.token));
        (code(one.cluster_status().await) == Some(Code::Unauthenticated)).then_some(())
    })
    .await;
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            running_attempts: vec![],
            seq: 1,
        })),
    })
    .await
    .unwrap();
    let ended = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the session ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended}");
    let again = agent_session(&secure, leader, "a1", "a1", &agent.token)
        .await
        .expect_err("a revoked token opened a session");
    assert_eq!(again.code(), Code::Unauthenticated, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_a_follower_forwards_is_authorized_on_the_callers_token() {
    let secure = start().await;
    let admin = secure.admin().await;
    let leader = secure.cluster.leader(TIMEOUT).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let reader = admin
        .create_token("r", "reader", Default::default())
        .await
        .unwrap()
        .token;
    let operator = admin
        .create_token("o", "operator", Default::default())
        .await
        .unwrap()
        .token;
    for token in [&reader, &operator] {
        let one = secure.client(&[follower], true, Some(token));
        wait_for(TIMEOUT, "the new tokens to reach the follower", || async {
            one.cluster_status().await.ok()
        })
        .await;
    }

    tracing::info!("--- a reader's ListAgents is forwarded to the leader and answered");
    let via_follower = secure.client(&[follower], true, Some(&reader));
    assert_eq!(code(via_follower.list_agents().await), Some(Code::Ok));

    tracing::info!("--- an operator's TransferLeader through the follower works");
    let operator_via_follower = secure.client(&[follower], true, Some(&operator));
    assert_eq!(
        code(operator_via_follower.transfer_leader(Some(follower)).await),
        Some(Code::Ok)
    );
    wait_for(TIMEOUT, "the follower to lead", || async {
        (secure.cluster.leader(TIMEOUT).await == follower).then_some(())
    })
    .await;

    tracing::info!("--- a node certificate without a token is no client credential");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        secure.cluster.addr(follower)
    ))
    .unwrap()
    .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls(
        secure.pki.path(),
        PeerRole::Node,
        &leader.to_string(),
    )));
    let status = AdminServiceClient::new(channel)
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
}

/// A node certificate is bound to its node id: a Raft message must come with the certificate of
/// the node it says it is from, and once a member is removed, its certificate (still signed by
/// the CA) can no longer append entries, ask for votes or install snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_certificate_speaks_only_for_its_node_and_not_after_removal() {
    use baton_node::raft::envelope::{Addressee, Envelope};
    let secure = start().await;
    let admin = secure.admin().await;
    let leader = secure.cluster.leader(TIMEOUT).await;
    let target = secure.cluster.follower(leader);
    let raft = |name: &str| {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            secure.cluster.addr(target)
        ))
        .unwrap()
        .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls(
            secure.pki.path(),
            PeerRole::Node,
            name,
        )));
        RaftServiceClient::new(channel)
    };
    // A vote request as openraft encodes it is not needed: the envelope is checked first.
    let claiming = |from: u64| {
        let mut request = tonic::Request::new(raft_pb::RaftPayload { data: vec![0xc0] });
        Envelope {
            cluster_id: String::new(),
            from: Addressee {
                node_id: from,
                incarnation: String::new(),
            },
            to: Addressee {
                node_id: target,
                incarnation: String::new(),
            },
        }
        .stamp(request.metadata_mut());
        request
    };
    let other = (1..=3).find(|id| *id != target && *id != leader).unwrap();

    tracing::info!("--- node {leader}'s certificate cannot speak for node {other}");
    let refused = raft(&leader.to_string())
        .vote(claiming(other))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .contains(&format!("node {other}'s certificate, not node {leader}'s")),
        "{refused}"
    );
    // Its own id passes the envelope (and then fails on the payload, which is not a vote).
    let own = raft(&leader.to_string())
        .vote(claiming(leader))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::InvalidArgument, "{own}");

    tracing::info!("--- node {other} is removed; its certificate is refused from then on");
    admin.remove_member(other).await.unwrap();
    wait_for(TIMEOUT, "the removal to reach the target", || async {
        let refused = raft(&other.to_string())
            .append_entries(claiming(other))
            .await
            .err()?;
        (refused.code() == Code::PermissionDenied
            && refused
                .message()
                .contains(&format!("node {other} was removed")))
        .then_some(())
    })
    .await;
    for call in ["vote", "install_snapshot"] {
        let refused = match call {
            "vote" => raft(&other.to_string()).vote(claiming(other)).await,
            _ => {
                let mut request =
                    tonic::Request::new(tokio_stream::iter(
                        vec![raft_pb::SnapshotChunk::default()],
                    ));
                *request.metadata_mut() = claiming(other).metadata().clone();
                raft(&other.to_string()).install_snapshot(request).await
            }
        }
        .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{call}: {refused}");
    }
    admin
        .submit(noop_spec("after-removal", 1), None)
        .await
        .expect("the cluster goes on without the removed member");
}
