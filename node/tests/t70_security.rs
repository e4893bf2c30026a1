//! Security end to end on an in-process 3-node cluster with mutual TLS and tokens: who is
//! refused (no certificate, no token, wrong role, wrong certificate role), revocation through
//! the log on every node, and a rotated node certificate served without a restart.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{Client, ClientConfig, Credentials, Endpoints};
use baton_node::config::SecurityConfig;
use baton_proto::raft::v1 as raft_pb;
use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
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
    fn client(&self, nodes: &[u64], tls: bool, token: Option<&str>) -> Client {
        let endpoints = nodes
            .iter()
            .map(|id| self.cluster.addr(*id).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let config = ClientConfig {
            attempts_max: 1,
            call_timeout: Duration::from_secs(5),
            credentials: Credentials {
                tls: tls.then(|| tls(self.pki.path(), PeerRole::Client, "ops")),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_tokens_and_certificates_are_enforced() {
    let secure = start().await;
    let admin = secure.admin().await;

    tracing::info!(
        "--- no certificate: the TLS handshake fails; a certificate but no token: unauthenticated"
    );
    let plaintext = secure.client(&[1], false, Some(&secure.admin_token));
    let err = plaintext.list_tokens().await.unwrap_err();
    assert_ne!(err.code(), Some(Code::Ok), "{err}");
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
    let reader_token = admin.create_token("r", "reader").await.unwrap().token;
    let submitter = admin.create_token("s", "submitter").await.unwrap();
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
        code(admin.create_token("x", "emperor").await),
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
    let agent_token = admin.create_token("a1", "agent").await.unwrap().token;
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
