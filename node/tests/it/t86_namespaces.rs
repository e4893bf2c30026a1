//! Namespaces on a secure three-node cluster, over gRPC and HTTPS alike: a token of namespace A
//! cannot see, cancel or submit in B (a workflow of B reads as one that does not exist), lists
//! and watches of every namespace hold only the caller's, the cluster's own calls need a
//! cluster-wide token, keys and templates of two namespaces stay apart, and a namespace that
//! holds work is not deleted.

use std::collections::BTreeMap;

use baton_client::Client;
use baton_proto::v1 as pb;
use futures::StreamExt;
use reqwest::StatusCode;
use tonic::Code;

use crate::common::noop_spec;
use crate::t84_http_api::{TIMEOUT, start_secure};

fn code<T>(result: Result<T, baton_client::ClientError>) -> Code {
    result.map_or_else(|e| e.code().unwrap_or(Code::Unknown), |_| Code::Ok)
}

fn message<T: std::fmt::Debug>(result: Result<T, baton_client::ClientError>) -> String {
    result
        .unwrap_err()
        .status()
        .map(|s| s.message().to_string())
        .unwrap_or_default()
}

async fn ids(client: &Client, namespace: &str, all: bool) -> Vec<u64> {
    let listed = client
        .list(pb::ListRequest {
            namespace: namespace.into(),
            all_namespaces: all,
            ..Default::default()
        })
        .await
        .unwrap();
    listed.workflows.iter().map(|w| w.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teams_token_acts_in_its_namespace_only() {
    let secure = start_secure().await;
    let admin = secure.grpc_admin().await;
    for name in ["team-a", "team-b"] {
        admin
            .create_namespace(name, "a team", None, 0)
            .await
            .unwrap();
    }
    assert_eq!(
        code(admin.create_namespace("team-a", "", None, 0).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(admin.create_namespace("Team_A", "", None, 0).await),
        Code::InvalidArgument
    );
    let token = |namespace: &str, role: &str| {
        let admin = admin.clone();
        let (namespace, role) = (namespace.to_string(), role.to_string());
        async move {
            admin
                .create_token(
                    &format!("{namespace}-{role}"),
                    "",
                    BTreeMap::from([(namespace, role)]),
                )
                .await
                .unwrap()
                .token
        }
    };
    let a_token = token("team-a", "submitter").await;
    let b_token = token("team-b", "submitter").await;
    let a = secure.grpc(&a_token, "team-a");
    let b = secure.grpc(&b_token, "team-b");
    // A token for a namespace that does not exist, or with role and namespaces both, is refused.
    assert_eq!(
        code(
            admin
                .create_token(
                    "x",
                    "",
                    BTreeMap::from([("team-z".into(), "reader".into())])
                )
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            admin
                .create_token(
                    "x",
                    "reader",
                    BTreeMap::from([("team-a".into(), "reader".into())])
                )
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            admin
                .create_token("x", "", BTreeMap::from([("team-a".into(), "agent".into())]))
                .await
        ),
        Code::InvalidArgument
    );

    // Each team submits in its own namespace, with the same idempotency key: two workflows.
    let spec = noop_spec("deploy", 1);
    let in_a = a
        .submit(spec.clone(), Some("deploy-1".into()))
        .await
        .unwrap();
    let in_b = b
        .submit(spec.clone(), Some("deploy-1".into()))
        .await
        .unwrap();
    assert!(in_a.created && in_b.created);
    assert_ne!(in_a.workflow_id, in_b.workflow_id);
    let again = a
        .submit(spec.clone(), Some("deploy-1".into()))
        .await
        .unwrap();
    assert_eq!(
        (again.workflow_id, again.created),
        (in_a.workflow_id, false)
    );
    let got = a
        .get(in_a.workflow_id, pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.namespace, "team-a");

    // A cannot submit elsewhere: B's namespace, or `default`.
    let a_in_b = secure.grpc(&a_token, "team-b");
    let refused = a_in_b.submit(spec.clone(), None).await;
    assert_eq!(
        message(refused),
        "WorkflowService.Submit in namespace team-b needs a token with role submitter, \
         operator or admin there; this token acts only in team-a (submitter)"
    );
    let a_in_default = secure.grpc(&a_token, "");
    assert_eq!(
        code(a_in_default.submit(spec.clone(), None).await),
        Code::PermissionDenied
    );

    // B's workflow reads, for A, exactly as one that does not exist; A cannot change it.
    let missing = message(a.get(999_999, pb::ReadConsistency::Linearizable).await);
    assert_eq!(missing, "workflow 999999 not found");
    assert_eq!(
        message(
            a.get(in_b.workflow_id, pb::ReadConsistency::Linearizable)
                .await
        ),
        format!("workflow {} not found", in_b.workflow_id)
    );
    assert_eq!(
        code(
            a.history(in_b.workflow_id, pb::ReadConsistency::Linearizable)
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(a.cancel(in_b.workflow_id, "mine now").await),
        Code::NotFound
    );
    assert_eq!(code(a.pause(in_b.workflow_id, true).await), Code::NotFound);
    assert_eq!(code(a.retry(in_b.workflow_id, "").await), Code::NotFound);
    assert_eq!(code(a.watch(in_b.workflow_id, 0).await), Code::NotFound);
    let untouched = admin
        .get(in_b.workflow_id, pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(untouched.state, pb::WorkflowState::Running as i32);
    assert!(!untouched.paused);
    // A reader of team-a may read but not cancel there.
    let a_reader = secure.grpc(&token("team-a", "reader").await, "team-a");
    assert!(
        a_reader
            .get(in_a.workflow_id, pb::ReadConsistency::Linearizable)
            .await
            .is_ok()
    );
    assert_eq!(
        message(a_reader.cancel(in_a.workflow_id, "").await),
        format!(
            "WorkflowService.Cancel needs a token with role submitter, operator or admin; this \
             token's strongest role in its namespaces is reader"
        )
    );

    // Lists: one namespace, or every one the token may read.
    assert_eq!(ids(&a, "team-a", false).await, [in_a.workflow_id]);
    assert_eq!(ids(&a, "", true).await, [in_a.workflow_id]);
    assert_eq!(
        code(
            a.list(pb::ListRequest {
                namespace: "team-b".into(),
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied
    );
    let everything = ids(&admin, "", true).await;
    assert!(everything.contains(&in_a.workflow_id) && everything.contains(&in_b.workflow_id));
    assert!(
        ids(&admin, "", false).await.is_empty(),
        "`default` holds neither"
    );
    let names: Vec<String> = a
        .list_namespaces(pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["team-a"]);
    let all: Vec<(String, u64)> = admin
        .list_namespaces(pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.workflows))
        .collect();
    assert_eq!(
        all,
        [
            ("default".to_string(), 0),
            ("team-a".to_string(), 1),
            ("team-b".to_string(), 1)
        ]
    );

    // A watch of every workflow in team-a carries team-a's events only: B submits first, then A;
    // the first event A's watch sees is A's.
    let mut watch = a.watch(0, 0).await.unwrap();
    let from_b = b.submit(spec.clone(), None).await.unwrap();
    let from_a = a.submit(spec.clone(), None).await.unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&from_a.workflow_id) {
        let event = tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("an event");
        assert_eq!(event.namespace, "team-a", "{event:?}");
        seen.push(event.workflow_id);
    }
    assert!(!seen.contains(&from_b.workflow_id));
    assert!(!seen.contains(&in_b.workflow_id));

    // Templates of one name in two namespaces are two templates, each seen by its team only.
    let template = noop_spec("release", 2);
    a.apply_template(template.clone()).await.unwrap();
    assert_eq!(
        code(
            b.get_template("release", 0, pb::ReadConsistency::Linearizable)
                .await
        ),
        Code::NotFound
    );
    let run = a
        .submit_template("release", 0, "r-1".into(), BTreeMap::new())
        .await
        .unwrap();
    let run = a
        .get(run.workflow_id, pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        (run.namespace.as_str(), run.template.as_str()),
        ("team-a", "release")
    );
    assert_eq!(
        code(
            b.submit_template("release", 0, "r-1".into(), BTreeMap::new())
                .await
        ),
        Code::NotFound
    );

    // The cluster's own calls need a cluster-wide token.
    assert_eq!(
        message(a.create_namespace("team-c", "", None, 0).await),
        "AdminService.CreateNamespace needs a cluster-wide token with role admin; this token \
         acts only in its namespaces"
    );
    assert_eq!(code(a.list_tokens().await), Code::PermissionDenied);
    assert_eq!(code(a.save_snapshot().await), Code::PermissionDenied);
    // The fleet is shared; a team sees the agents but not another team's running steps.
    assert!(a.list_agents().await.is_ok());

    // A namespace holding work is not deleted, and says what it holds.
    let refused = message(admin.delete_namespace("team-a").await);
    assert!(
        refused.starts_with("namespace team-a is not empty: it holds 3 workflows, 1 templates"),
        "{refused}"
    );
    admin
        .create_namespace("scratch", "", None, 0)
        .await
        .unwrap();
    admin.delete_namespace("scratch").await.unwrap();
    assert_eq!(
        code(admin.delete_namespace("scratch").await),
        Code::NotFound
    );
    assert_eq!(
        code(admin.delete_namespace("default").await),
        Code::FailedPrecondition
    );
    // A token of a namespace created later does not see into it.
    assert_eq!(
        code(
            a.list(pb::ListRequest {
                namespace: "scratch".into(),
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied
    );

    // Over HTTPS, the same decisions.
    let leader = secure.cluster.leader(TIMEOUT).await;
    let follower = secure.cluster.follower(leader);
    let http_a = secure.http(follower, Some(&a_token));
    let http_b = secure.http(follower, Some(&b_token));
    let listed = http_a.get("/api/v1/workflows?namespace=team-a").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["namespace"] == "team-a")
    );
    let foreign = http_a.get("/api/v1/workflows?namespace=team-b").await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(
        foreign.message().contains("namespace team-b"),
        "{}",
        foreign.message()
    );
    let hidden = http_b
        .get(&format!("/api/v1/workflows/{}", in_a.workflow_id))
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(
        hidden.message(),
        format!("workflow {} not found", in_a.workflow_id)
    );
    let cancel = http_b
        .post(&format!("/api/v1/workflows/{}/cancel", in_a.workflow_id))
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let submitted = http_b
        .call(
            reqwest::Method::POST,
            "/api/v1/workflows?namespace=team-a",
            Some((
                "application/yaml",
                "name: sneak\nsteps:\n  - name: s\n    noop: {}\n",
            )),
            &[],
        )
        .await;
    assert_eq!(submitted.status, StatusCode::FORBIDDEN);
    let namespaces = http_b.get("/api/v1/namespaces").await;
    assert_eq!(namespaces.status, StatusCode::OK);
    assert_eq!(namespaces.body["namespaces"].as_array().unwrap().len(), 1);
    let create = http_b
        .post_json("/api/v1/namespaces", serde_json::json!({"name": "mine"}))
        .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    let created = secure
        .http(follower, Some(&secure.admin))
        .post_json(
            "/api/v1/namespaces",
            serde_json::json!({"name": "http-made"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    // Its own team may cancel it.
    let cancelled = a.cancel(in_a.workflow_id, "done").await.unwrap();
    assert_eq!(cancelled.state, pb::WorkflowState::Cancelled as i32);
    secure.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_refuses_with_its_name_and_writes_nothing() {
    let secure = start_secure().await;
    let admin = secure.grpc_admin().await;
    admin
        .create_namespace(
            "batch",
            "nightly jobs",
            Some(pb::NamespaceQuotas {
                max_running_workflows: 2,
                ..Default::default()
            }),
            0,
        )
        .await
        .unwrap();
    let batch = secure.grpc(&secure.admin, "batch");
    // No agent runs them: both stay running.
    let spec = noop_spec("job", 1);
    for _ in 0..2 {
        batch.submit(spec.clone(), None).await.unwrap();
    }
    let refused = batch.submit(spec.clone(), Some("third".into())).await;
    let status = refused.unwrap_err().status().cloned().unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "namespace batch is at its quota max_running_workflows of 2 running workflows: nothing \
         was written; wait for work to finish, or raise it (baton namespace set batch \
         --max-running-workflows N)"
    );
    assert_eq!(
        ids(&batch, "batch", false).await.len(),
        2,
        "nothing written"
    );
    // The same refusal over HTTPS is a 429.
    let leader = secure.cluster.leader(TIMEOUT).await;
    let http = secure.http(secure.cluster.follower(leader), Some(&secure.admin));
    let answer = http
        .call(
            reqwest::Method::POST,
            "/api/v1/workflows?namespace=batch",
            Some((
                "application/yaml",
                "name: job\nsteps:\n  - name: s\n    noop: {}\n",
            )),
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.code(), "resource_exhausted");
    assert!(answer.message().contains("max_running_workflows of 2"));
    // The namespace says what it holds against its quota; raising it lets the next one in.
    let listed = admin
        .list_namespaces(pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    let shown = listed.iter().find(|n| n.name == "batch").unwrap();
    assert_eq!((shown.running, shown.active_steps), (2, 2));
    let changed = admin
        .update_namespace(pb::UpdateNamespaceRequest {
            name: "batch".into(),
            max_running_workflows: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let quotas = changed.quotas.unwrap();
    assert_eq!(quotas.max_running_workflows, 3);
    assert_eq!(
        changed.description, "nightly jobs",
        "what was not given stays"
    );
    assert!(
        batch
            .submit(spec.clone(), Some("third".into()))
            .await
            .unwrap()
            .created
    );
    // Over HTTPS too, field by field.
    let patched = http
        .call(
            reqwest::Method::PATCH,
            "/api/v1/namespaces/batch",
            Some(("application/json", r#"{"max_active_steps": 10}"#)),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["quotas"]["max_active_steps"], 10);
    assert_eq!(patched.body["quotas"]["max_running_workflows"], 3);
    // Bad quotas are refused before anything is proposed.
    assert_eq!(
        message(
            admin
                .create_namespace(
                    "bursty",
                    "",
                    Some(pb::NamespaceQuotas {
                        submit_burst: 5,
                        ..Default::default()
                    }),
                    0,
                )
                .await
        ),
        "quotas.submit_burst: set without quotas.submits_per_second (the rate it bursts above)"
    );
    secure.cluster.shutdown().await;
}

/// The starvation figure end to end: an agent busy with a backlog of one namespace still starts
/// another namespace's step at its next free slot (fair order across namespaces). Prints the
/// figures; asserts only the order (how many of the backlog's steps started first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_in_one_namespace_does_not_hold_back_another() {
    use crate::common::agent::{Behavior, TestAgent};
    use crate::common::{TestCluster, test_timing, wait_for};
    use std::time::{Duration, Instant};

    crate::common::init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let mut admin = cluster.admin(1).await;
    for name in ["team-a", "team-b"] {
        admin
            .create_namespace(pb::CreateNamespaceRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    const SLOTS: u32 = 4;
    const BACKLOG: usize = 2_000;
    let agent = TestAgent::start("a1", SLOTS, vec![cluster.addr(1)], |_| {
        Behavior::Take(Duration::from_millis(20))
    });
    let mut workflows = cluster.workflows(1).await;
    let spec = noop_spec("backlog", 1);
    for _ in 0..BACKLOG / 250 {
        let submits = (0..250)
            .map(|_| pb::SubmitRequest {
                spec: Some(spec.clone()),
                namespace: "team-a".into(),
                ..Default::default()
            })
            .collect();
        workflows
            .submit_batch(pb::SubmitBatchRequest { submits })
            .await
            .unwrap();
    }
    wait_for(TIMEOUT, "the backlog to be running", || async {
        (agent.executions().len() >= 20).then_some(())
    })
    .await;
    let submitted = Instant::now();
    let b = workflows
        .submit(pb::SubmitRequest {
            spec: Some(noop_spec("urgent", 1)),
            namespace: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let started = wait_for(TIMEOUT, "team-b's step to start", || async {
        agent
            .executions()
            .into_iter()
            .find(|e| e.workflow_id == b)
            .map(|e| e.started)
    })
    .await;
    let executions = agent.executions();
    let before = executions
        .iter()
        .filter(|e| e.started >= submitted && e.started < started)
        .count();
    let backlog_left = BACKLOG - executions.iter().filter(|e| e.started < started).count();
    println!(
        "team-b's step started {:?} after its submit; {before} of team-a's steps started in \
         between, {backlog_left} of its {BACKLOG} still waiting ({SLOTS} slots, 20 ms steps)",
        started - submitted
    );
    // At its next free slot: at most a round or two of the backlog goes first, never the rest.
    assert!(
        before <= 4 * SLOTS as usize,
        "{before} of team-a's went first"
    );
    assert!(
        backlog_left > BACKLOG / 2,
        "the backlog had drained: no contest"
    );
    agent.kill();
    cluster.shutdown().await;
}
