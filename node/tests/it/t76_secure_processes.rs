//! A secured cluster of real processes, set up the way docs/OPERATIONS.md says: `batond certs`,
//! three `batond` with TLS files and the bootstrap token, an agent token made with the `baton`
//! CLI, `baton agent --credentials`, `baton submit --wait`. Also: the CLI without credentials, or
//! with a certificate but no token, is refused; an agent cannot register under a name its
//! certificate does not carry; the plaintext `--health-listen` port answers probes and nothing
//! else.

use crate::common;

use std::path::Path;
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{
    Proc, baton_binary, batond_binary, loopback, reserve_ports, run_to_end, spawn_agent,
    spawn_batond,
};
use common::wait_for;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(30);

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `baton` with `args`, on a blocking thread: exit code, stdout, stderr.
async fn baton(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_end(&baton_binary(), &args)
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_set_up_with_batond_certs_runs_workflows_and_refuses_strangers() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ports = reserve_ports(4);
    let (grpc, health_port) = (&ports[..3], ports[3]);
    let endpoints: Vec<String> = grpc.iter().map(|p| loopback(*p).to_string()).collect();
    let endpoints = endpoints.join(",");

    let (code, out, err) = run_to_end(
        &batond_binary(),
        &[
            "certs",
            "--out",
            path(&pki),
            "--node",
            "1=127.0.0.1",
            "--node",
            "2=127.0.0.1",
            "--node",
            "3=127.0.0.1",
            "--agent",
            "worker",
            "--client",
            "ops",
        ],
    );
    assert_eq!(code, Some(0), "batond certs: {out}{err}");

    let initial: Vec<String> = grpc
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={}", i + 1, loopback(*p)))
        .collect();
    let initial = initial.join(",");
    let ca = path(&pki.join("ca.pem")).to_owned();
    let bootstrap = path(&pki.join("bootstrap-token")).to_owned();
    let _nodes: Vec<Proc> = (1..=3)
        .map(|id| {
            let data = dir.path().join(format!("node{id}"));
            let cert = pki.join(format!("node-{id}.pem"));
            let key = pki.join(format!("node-{id}-key.pem"));
            let listen = loopback(grpc[id - 1]).to_string();
            let health = loopback(health_port).to_string();
            let mut args = vec![
                "--node-id",
                ["1", "2", "3"][id - 1],
                "--listen",
                &listen,
                "--data-dir",
                path(&data),
                "--initial-cluster",
                &initial,
                "--tls-ca",
                &ca,
                "--tls-cert",
                path(&cert),
                "--tls-key",
                path(&key),
                "--bootstrap-token-file",
                &bootstrap,
            ];
            if id == 1 {
                args.extend(["--health-listen", health.as_str()]);
            }
            spawn_batond(&format!("node{id}"), dir.path(), &args)
        })
        .collect();

    let admin = |more: &[&str]| {
        let mut args = strings(&[
            "--endpoints",
            &endpoints,
            "--credentials",
            path(&pki.join("client-ops")),
            "--token-file",
            path(&pki.join("bootstrap-token")),
        ]);
        args.extend(strings(more));
        args
    };

    tracing::info!("--- the agent's token, made with the bootstrap admin token");
    let created = wait_for(TIMEOUT, "`baton token create` to work", || {
        let args = admin(&["token", "create", "--name", "worker", "--role", "agent"]);
        async move {
            let (code, out, _) = baton(args).await;
            (code == Some(0)).then_some(out)
        }
    })
    .await;
    let token = created
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in {created:?}"))
        .trim()
        .to_owned();
    std::fs::write(pki.join("agent-worker/token"), &token).unwrap();

    tracing::info!("--- strangers are refused");
    let (code, _, err) = baton(strings(&["--endpoints", &endpoints, "cluster", "status"])).await;
    assert_ne!(code, Some(0), "plaintext CLI was served: {err}");
    let cert_only = strings(&[
        "--endpoints",
        &endpoints,
        "--ca",
        path(&pki.join("ca.pem")),
        "--cert",
        path(&pki.join("client-ops/cert.pem")),
        "--key",
        path(&pki.join("client-ops/key.pem")),
        "cluster",
        "status",
    ]);
    let (code, _, err) = baton(cert_only).await;
    assert_ne!(code, Some(0));
    assert!(err.to_lowercase().contains("unauthenticated"), "{err}");
    let (code, _, err) = baton(strings(&[
        "--endpoints",
        &endpoints,
        "--token-file",
        path(&pki.join("bootstrap-token")),
        "cluster",
        "status",
    ]))
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("only over TLS"), "a token without TLS: {err}");

    tracing::info!("--- an agent under a name its certificate does not carry is refused");
    let creds = pki.join("agent-worker");
    let global = ["--credentials", path(&creds)];
    let mut impostor = spawn_agent("someone-else", &endpoints, dir.path(), &global, &[]);
    wait_for(TIMEOUT, "the impostor to be refused", || {
        let log = dir.path().join("someone-else.log");
        async move {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.contains("not the name in this agent's certificate")
                .then_some(())
        }
    })
    .await;
    impostor.kill();

    tracing::info!("--- the agent runs a submitted workflow to the end");
    let _agent = spawn_agent("worker", &endpoints, dir.path(), &global, &[]);
    let spec = dir.path().join("hello.yaml");
    std::fs::write(
        &spec,
        "name: hello\nsteps:\n  - name: say\n    exec:\n      command: [\"sh\", \"-c\", \"echo hello\"]\n",
    )
    .unwrap();
    let (code, out, err) = baton(admin(&[
        "submit",
        path(&spec),
        "--wait",
        "--timeout",
        "30s",
    ]))
    .await;
    assert_eq!(code, Some(0), "submit --wait: {out}{err}");

    tracing::info!("--- a reader that submits is told what was refused and which role allows it");
    let (code, out, err) = baton(admin(&[
        "token", "create", "--name", "viewer", "--role", "reader",
    ]))
    .await;
    assert_eq!(code, Some(0), "token create: {out}{err}");
    let reader_token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in {out:?}"))
        .trim()
        .to_owned();
    let reader_file = dir.path().join("reader-token");
    std::fs::write(&reader_file, &reader_token).unwrap();
    let (code, _, err) = baton(strings(&[
        "--endpoints",
        &endpoints,
        "--credentials",
        path(&pki.join("client-ops")),
        "--token-file",
        path(&reader_file),
        "submit",
        path(&spec),
    ]))
    .await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains(
            "permission denied: WorkflowService.Submit needs a token with role submitter, \
             operator or admin; this token's role is reader"
        ),
        "{err}"
    );
    let (code, out, _) = baton(admin(&["-o", "json", "agents"])).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"worker\"") && !out.contains("someone-else"),
        "{out}"
    );

    tracing::info!("--- the health port: plaintext probes, and nothing but health");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
            .unwrap()
            .connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    wait_for(TIMEOUT, "node 1 to report ready on the health port", || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (reply.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    let live = health
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap();
    assert_eq!(live.into_inner().status, ServingStatus::Serving as i32);
    let status = WorkflowServiceClient::new(channel)
        .get(pb::GetRequest {
            workflow_id: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
}
