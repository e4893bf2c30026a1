//! The observability stack against the real thing: three `batond` processes and two `baton agent`
//! processes (the binaries this workspace builds), a real Prometheus (Debian's `prometheus`
//! package, which `scripts/prereqs.sh` installs) scraping them on loopback with the shipped scrape
//! config and alert rules, and load on the cluster. Then:
//!
//! - `promtool check metrics` finds nothing on any node's or agent's `/metrics`;
//! - `promtool check rules`, `promtool test rules` and `promtool check config` pass on `deploy/`;
//! - the workflow counters move and are not counted three times (exact totals, fleet capacity);
//! - every PromQL expression of the shipped dashboard parses and returns data, and every alert
//!   expression parses, read from the files in `deploy/` so they cannot drift;
//! - killing the leader moves the leader-change counter, and the "no leader" alert's expression
//!   is empty once a new leader is elected;
//! - JSON logs carry workflow, step, attempt and agent as fields.
//!
//! The `baton` binary is taken from beside `batond`: `cargo test --workspace` builds both; when
//! running this test alone, build it first (`cargo build -p baton-client --bin baton`).

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{self, Proc, baton_binary, loopback, reserve_ports};
use common::*;
use serde_json::Value as Json;

/// How long each phase may take before the test fails, naming what never happened.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .parent()
    .expect("the node crate sits in the workspace")
    .to_owned()
}

/// A Prometheus tool from PATH (or /usr/bin, where Debian puts it).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install Debian's `prometheus` package \
                 (scripts/prereqs.sh does, and .ci/run runs it)"
            )
        })
}

fn spawn_node(id: usize, grpc: &[u16], metrics: SocketAddr, http: SocketAddr, dir: &Path) -> Proc {
    let (metrics, http) = (metrics.to_string(), http.to_string());
    procs::spawn_node(
        id,
        grpc,
        dir,
        &[
            "--metrics-listen",
            &metrics,
            "--http-listen",
            &http,
            "--log-format",
            "json",
        ],
    )
}

fn spawn_agent(name: &str, labels: &str, endpoints: &str, metrics: SocketAddr, dir: &Path) -> Proc {
    let metrics = metrics.to_string();
    procs::spawn_agent(
        name,
        endpoints,
        dir,
        &["--log-format", "json"],
        &[
            "--slots",
            "4",
            "--labels",
            labels,
            "--metrics-listen",
            &metrics,
        ],
    )
}

/// The shipped static scrape config, with the test's targets, one-second intervals and the
/// shipped alert rules by absolute path. Every job it names must be one the test can fill.
fn prometheus_config(jobs: &BTreeMap<&str, Vec<SocketAddr>>) -> String {
    use serde_norway::Value as Yaml;
    let path = repo_root().join("deploy/prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut config: Yaml = serde_norway::from_str(&text).unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    config["rule_files"] = Yaml::Sequence(vec![rules.to_str().unwrap().into()]);
    let scrape = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let mut seen = Vec::new();
    for job in scrape.iter_mut() {
        let name = job["job_name"].as_str().expect("job_name").to_owned();
        let targets = jobs
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{}: unexpected job {name:?}", path.display()));
        let targets: Vec<Yaml> = targets.iter().map(|a| a.to_string().into()).collect();
        let mut static_config = serde_norway::Mapping::new();
        static_config.insert("targets".into(), Yaml::Sequence(targets));
        job["static_configs"] = Yaml::Sequence(vec![Yaml::Mapping(static_config)]);
        seen.push(name);
    }
    seen.sort();
    let mut expected: Vec<String> = jobs.keys().map(|j| j.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "{}: jobs", path.display());
    serde_norway::to_string(&config).unwrap()
}

/// Runs a promtool subcommand; panics with its output unless it succeeds without a word of
/// complaint on stdout beyond `SUCCESS` lines.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

struct Prometheus {
    http: reqwest::Client,
    base: String,
}

impl Prometheus {
    /// An instant query: the result vector, or Prometheus's error (a query that does not parse).
    async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            &[("query", expr)],
        )
        .unwrap();
        let reply: Json = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("prometheus unreachable: {e}"))?
            .text()
            .await
            .map_err(|e| format!("prometheus answer cut short: {e}"))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| format!("not json ({e}): {text}"))
            })?;
        if reply["status"] != "success" {
            return Err(format!(
                "{}: {}",
                reply["errorType"].as_str().unwrap_or("?"),
                reply["error"].as_str().unwrap_or("?")
            ));
        }
        Ok(reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of a query that must return one sample (NaN when it returns none).
    async fn value(&self, expr: &str) -> f64 {
        match self.query(expr).await {
            Ok(result) if result.len() == 1 => sample_value(&result[0]),
            Ok(_) => f64::NAN,
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    /// Waits until `expr`'s single value satisfies `ok`; returns it.
    async fn wait_value(&self, expr: &str, ok: impl Fn(f64) -> bool) -> f64 {
        wait_for(PHASE_TIMEOUT, expr, || async {
            let value = self.value(expr).await;
            ok(value).then_some(value)
        })
        .await
    }
}

fn sample_value(sample: &Json) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every PromQL expression of the dashboard, with Grafana's `$__rate_interval` made concrete.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/grafana/dashboards/baton.json");
    let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push((title.clone(), expr.replace("$__rate_interval", "1m")));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(
        out.len() >= 20,
        "{}: only {} expressions",
        path.display(),
        out.len()
    );
    out
}

/// Every alert rule of the shipped rules file: (name, expression).
fn alert_expressions() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/prometheus/alerts.yml");
    let rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(alert) = rule["alert"].as_str() {
                out.push((alert.to_owned(), rule["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

fn step(name: &str, task: pb::step_spec::Task) -> pb::StepSpec {
    pb::StepSpec {
        name: name.into(),
        task: Some(task),
        ..Default::default()
    }
}

fn workflow(name: &str, steps: Vec<pb::StepSpec>) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        steps,
        ..Default::default()
    }
}

fn sleep(ms: u64) -> pb::step_spec::Task {
    pb::step_spec::Task::Sleep(pb::SleepTask { duration_ms: ms })
}

/// Submits through any node that answers, retrying with the same key.
async fn submit(addrs: &[SocketAddr], key: &str, spec: &pb::WorkflowSpec) -> u64 {
    wait_for(PHASE_TIMEOUT, "an acknowledged submit", || async {
        for addr in addrs {
            let mut client = WorkflowServiceClient::new(channel(*addr));
            let request = pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(spec.clone()),
                idempotency_key: key.into(),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            };
            if let Ok(reply) = client.submit(request).await {
                return Some(reply.into_inner().workflow_id);
            }
        }
        None
    })
    .await
}

/// The highest Raft term any node reports.
async fn cluster_term(addrs: &[SocketAddr]) -> u64 {
    let mut term = 0;
    for addr in addrs {
        let mut admin =
            baton_proto::v1::admin_service_client::AdminServiceClient::new(channel(*addr));
        if let Ok(status) = admin.cluster_status(pb::ClusterStatusRequest {}).await {
            term = term.max(status.into_inner().term);
        }
    }
    term
}

/// JSON log lines of a process' log file, each checked to be one JSON object. Only whole lines:
/// the process may be running (its log writer writes in bursts) or killed mid-write, so a last
/// line without its newline is not read.
fn json_logs(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", path.display()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_dashboard_and_alerts_hold_against_a_real_prometheus() {
    init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prometheus_bin = tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let ports = reserve_ports(12);
    let grpc = &ports[0..3];
    let node_metrics: Vec<SocketAddr> = ports[3..6].iter().map(|p| loopback(*p)).collect();
    let agent_metrics: Vec<SocketAddr> = ports[6..8].iter().map(|p| loopback(*p)).collect();
    let prometheus_addr = loopback(ports[8]);
    let node_http: Vec<SocketAddr> = ports[9..12].iter().map(|p| loopback(*p)).collect();
    let addrs: Vec<SocketAddr> = grpc.iter().map(|p| loopback(*p)).collect();
    let endpoints: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    let endpoints = endpoints.join(",");

    tracing::info!("--- a three-node cluster, two agents, and Prometheus scraping them");
    let mut nodes: Vec<Proc> = (1..=3)
        .map(|id| {
            spawn_node(
                id,
                grpc,
                node_metrics[id - 1],
                node_http[id - 1],
                dir.path(),
            )
        })
        .collect();
    let mut agents = vec![
        spawn_agent(
            "agent-1",
            "pool=main",
            &endpoints,
            agent_metrics[0],
            dir.path(),
        ),
        spawn_agent(
            "agent-2",
            "pool=doomed",
            &endpoints,
            agent_metrics[1],
            dir.path(),
        ),
    ];
    let jobs = BTreeMap::from([
        ("batond", node_metrics.clone()),
        ("baton-agent", agent_metrics.clone()),
    ]);
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, prometheus_config(&jobs)).unwrap();
    promtool(&["check", "config", config_path.to_str().unwrap()], None);
    let _prometheus = procs::spawn_program(
        &prometheus_bin,
        &[
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()).into(),
            format!("--web.listen-address={prometheus_addr}").into(),
        ],
        dir.path(),
        "prometheus",
    );
    let prom = Prometheus {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://{prometheus_addr}"),
    };
    wait_for(PHASE_TIMEOUT, "prometheus to be ready", || async {
        let reply = prom.http.get(format!("{}/-/ready", prom.base)).send().await;
        reply.ok()?.status().is_success().then_some(())
    })
    .await;
    let targets = node_metrics.len() + agent_metrics.len();
    prom.wait_value("sum(up)", |up| up == targets as f64).await;
    // Exactly one node reports fleet capacity: both agents' 4 slots once, not three times.
    prom.wait_value(r#"sum(baton_fleet_capacity{resource="slots"})"#, |v| {
        v == 8.0
    })
    .await;
    // An idle cluster's empty ready queue reads 0 on every node, not "no data": the queue panel
    // and the queue alerts see a value.
    prom.wait_value(
        r#"count(baton_scheduler_ready_steps{priority="0"} == 0)"#,
        |v| v == node_metrics.len() as f64,
    )
    .await;
    let term_before = cluster_term(&addrs).await;

    tracing::info!("--- load: successes, failures with retries, timeouts, slow steps");
    let mut created = 0;
    let mut submits = Vec::new();
    for i in 0..30 {
        submits.push((format!("ok-{i}"), noop_spec(&format!("ok-{i}"), 3)));
    }
    for i in 0..20 {
        let mut s = step("work", sleep(300));
        s.resources = Some(pb::Resources {
            cpu_millis: 500,
            memory_mb: 256,
        });
        submits.push((format!("slow-{i}"), workflow(&format!("slow-{i}"), vec![s])));
    }
    for i in 0..10 {
        let mut s = step(
            "flaky",
            pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec!["false".into()],
                ..Default::default()
            }),
        );
        s.retry = Some(pb::RetryPolicy {
            max_attempts: 2,
            backoff: Some(pb::Backoff {
                initial_ms: 100,
                multiplier: 1.0,
                max_ms: 100,
            }),
        });
        submits.push((format!("fail-{i}"), workflow(&format!("fail-{i}"), vec![s])));
    }
    for i in 0..3 {
        let mut s = step("nowhere", pb::step_spec::Task::Noop(pb::NoopTask {}));
        s.constraints = BTreeMap::from([("pool".into(), "nowhere".into())]);
        s.schedule_to_start_timeout_ms = 1_000;
        submits.push((format!("late-{i}"), workflow(&format!("late-{i}"), vec![s])));
    }
    let mut tasks = Vec::new();
    for (key, spec) in submits {
        let addrs = addrs.clone();
        tasks.push(tokio::spawn(
            async move { submit(&addrs, &key, &spec).await },
        ));
        created += 1;
    }
    for task in tasks {
        task.await.unwrap();
    }

    tracing::info!("--- steps on agent-2, then agent-2 dies: its leases expire");
    let mut doomed = Vec::new();
    for i in 0..4 {
        let mut s = step("hold", sleep(120_000));
        s.constraints = BTreeMap::from([("pool".into(), "doomed".into())]);
        s.lease_ttl_ms = 1_000;
        let spec = workflow(&format!("doomed-{i}"), vec![s]);
        doomed.push(submit(&addrs, &format!("doomed-{i}"), &spec).await);
        created += 1;
    }
    // All four run on agent-2, which then holds nothing else (4 slots): the leases that expire
    // when it dies are exactly these four.
    let workflows = WorkflowServiceClient::new(channel(addrs[0]));
    for id in &doomed {
        wait_for(PHASE_TIMEOUT, "a doomed step running on agent-2", || {
            let mut workflows = workflows.clone();
            async move {
                let step = workflows
                    .get(pb::GetRequest {
                        workflow_id: *id,
                        consistency: 0,
                        attempts_of_step: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .workflow?
                    .steps
                    .into_iter()
                    .next()?;
                (step.state == pb::StepState::Running as i32 && step.agent == "agent-2")
                    .then_some(())
            }
        })
        .await;
    }
    prom.wait_value(
        r#"sum(baton_fleet_agent_allocated{agent="agent-2",resource="slots"})"#,
        |v| v == 4.0,
    )
    .await;
    prom.wait_value("sum(baton_agent_attempts_running)", |v| v >= 4.0)
        .await;

    tracing::info!("--- promtool check metrics on every node and agent");
    let mut scraped = Vec::new();
    for addr in node_metrics.iter().chain(&agent_metrics) {
        let text = prom
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let complaints = promtool(&["check", "metrics"], Some(&text));
        assert!(
            complaints.trim().is_empty(),
            "promtool check metrics on {addr}:\n{complaints}"
        );
        scraped.push(text);
    }
    assert!(scraped[..3].iter().all(|t| t.contains("baton_raft_term")));
    assert!(
        scraped[3..]
            .iter()
            .all(|t| t.contains("baton_agent_attempts_running"))
    );
    agents[1].kill();

    tracing::info!("--- the work ends as it should (asked through the API)");
    let running = || {
        let mut workflows = workflows.clone();
        async move {
            let list = workflows
                .list(pb::ListRequest {
                    states: vec![pb::WorkflowState::Running as i32],
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let mut ids: Vec<u64> = list.workflows.iter().map(|w| w.id).collect();
            ids.sort_unstable();
            Some(ids)
        }
    };
    let mut doomed_sorted = doomed.clone();
    doomed_sorted.sort_unstable();
    wait_for(
        PHASE_TIMEOUT,
        "only the doomed workflows running",
        || async { (running().await? == doomed_sorted).then_some(()) },
    )
    .await;
    // Agent-2's leases expired: its steps are back in the queue (no other agent matches them).
    for id in &doomed {
        wait_for(PHASE_TIMEOUT, "a doomed step requeued", || {
            let mut workflows = workflows.clone();
            async move {
                let workflow = workflows
                    .get(pb::GetRequest {
                        workflow_id: *id,
                        consistency: 0,
                        attempts_of_step: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .workflow?;
                (workflow.steps[0].state == pb::StepState::Ready as i32).then_some(())
            }
        })
        .await;
        wait_for(PHASE_TIMEOUT, "a cancel", || {
            let mut workflows = workflows.clone();
            async move {
                workflows
                    .cancel(pb::CancelRequest {
                        workflow_id: *id,
                        reason: "agent-2 is gone".into(),
                    })
                    .await
                    .ok()
            }
        })
        .await;
    }
    wait_for(PHASE_TIMEOUT, "no workflow running", || async {
        running().await?.is_empty().then_some(())
    })
    .await;

    tracing::info!("--- the counters moved, each event counted once");
    let term_now = cluster_term(&addrs).await;
    // Without a leader change every entry is counted by its leader exactly once. After one,
    // the entries a deposed leader never applied go uncounted: never more than the truth.
    let stable = term_now == term_before;
    let sum = |metric: &str| format!("sum({metric})");
    let expected = [
        (sum("baton_workflows_submitted_total"), created as f64),
        (
            r#"sum(baton_workflows_finished_total{outcome="succeeded"})"#.to_owned(),
            50.0,
        ),
        (
            r#"sum(baton_workflows_finished_total{outcome="failed"})"#.to_owned(),
            13.0,
        ),
        (
            r#"sum(baton_workflows_finished_total{outcome="cancelled"})"#.to_owned(),
            4.0,
        ),
        (
            sum("baton_workflow_cycle_time_seconds_count"),
            created as f64,
        ),
        (
            r#"sum(baton_step_attempts_finished_total{outcome="failed"})"#.to_owned(),
            20.0,
        ),
        (
            r#"sum(baton_step_attempts_finished_total{outcome="lease_expired"})"#.to_owned(),
            4.0,
        ),
        (sum("baton_lease_expirations_total"), 4.0),
        (sum("baton_scheduler_reschedules_total"), 4.0),
        (sum("baton_scheduler_schedule_to_start_timeouts_total"), 3.0),
        // 30 x 3 no-op steps, 20 slow, 10 x 2 failing attempts, 4 on agent-2.
        (sum("baton_scheduler_assignments_total"), 134.0),
        (
            sum("baton_scheduler_ready_to_assigned_seconds_count"),
            134.0,
        ),
        // One first start per workflow that started: all but the 3 that timed out waiting.
        (
            sum("baton_scheduler_submit_to_start_seconds_count"),
            (created - 3) as f64,
        ),
    ];
    for (expr, truth) in &expected {
        // Prometheus scrapes every second: give it a few scrapes to catch up.
        let settled = tokio::time::timeout(
            Duration::from_secs(15),
            prom.wait_value(expr, |v| v == *truth),
        )
        .await;
        let value = prom.value(expr).await;
        if stable {
            assert!(settled.is_ok(), "{expr} = {value}, expected {truth}");
        } else {
            tracing::warn!(%expr, value, truth, "leader changed during the load");
            assert!(value <= *truth, "{expr} = {value}, more than {truth}");
        }
    }
    // Agent-side counters moved too (agent-2's series are gone with it: no exact total).
    prom.wait_value(
        r#"sum(baton_agent_attempts_finished_total{outcome="failed"})"#,
        |v| v >= 1.0,
    )
    .await;
    prom.wait_value(r#"sum(baton_fleet_capacity{resource="slots"})"#, |v| {
        v == 4.0
    })
    .await;

    tracing::info!("--- a schedule runs every second (after the exact counts above)");
    wait_for(PHASE_TIMEOUT, "a schedule created", || async {
        for addr in &addrs {
            let mut schedules =
                baton_proto::v1::schedule_service_client::ScheduleServiceClient::new(channel(
                    *addr,
                ));
            let created = schedules
                .create_schedule(pb::CreateScheduleRequest {
                    namespace: Default::default(),
                    spec: Some(pb::ScheduleSpec {
                        name: "every-second".into(),
                        workflow: Some(noop_spec("scheduled", 1)),
                        every_ms: 1_000,
                        overlap: pb::OverlapPolicy::Allow as i32,
                        ..Default::default()
                    }),
                    replace: true,
                })
                .await;
            if created.is_ok() {
                return Some(());
            }
        }
        None
    })
    .await;
    prom.wait_value(
        r#"sum(baton_schedule_runs_total{outcome="started"})"#,
        |v| v >= 3.0,
    )
    .await;

    tracing::info!("--- the rules and configs in deploy/ pass promtool");
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    promtool(
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        None,
    );
    promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    );
    let rules: Json = serde_json::from_str(
        &prom
            .http
            .get(format!("{}/api/v1/rules", prom.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let loaded: Vec<&Json> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alerts = alert_expressions();
    assert_eq!(loaded.len(), alerts.len(), "rules Prometheus loaded");

    tracing::info!("--- the JSON API on every node, and a signed webhook delivery");
    for addr in &node_http {
        let listed = prom
            .http
            .get(format!("http://{addr}/api/v1/workflows?page_size=5"))
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 200);
    }
    let mut templates =
        baton_proto::v1::template_service_client::TemplateServiceClient::new(channel(addrs[0]));
    templates
        .apply_template(pb::ApplyTemplateRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("hooked", 1)),
        })
        .await
        .unwrap();
    let secret = "observability-webhook-secret";
    baton_proto::v1::trigger_service_client::TriggerServiceClient::new(channel(addrs[0]))
        .create_trigger(pb::CreateTriggerRequest {
            namespace: Default::default(),
            spec: Some(pb::TriggerSpec {
                name: "hook".into(),
                template: "hooked".into(),
                ..Default::default()
            }),
            secret: secret.into(),
            replace: false,
        })
        .await
        .unwrap();
    let body = r#"{"event": "push"}"#;
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let delivered = prom
        .http
        .post(format!("http://{}/api/v1/triggers/hook", node_http[1]))
        .header("x-baton-signature-256", signature)
        .header("x-baton-delivery", "observability-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 201);
    prom.wait_value("sum(baton_http_requests_total)", |v| v >= 4.0)
        .await;
    prom.wait_value(
        r#"sum(baton_trigger_deliveries_total{trigger="hook",outcome="started"})"#,
        |v| v == 1.0,
    )
    .await;

    tracing::info!("--- a namespace with quotas, and a submit one of them refuses");
    baton_proto::v1::admin_service_client::AdminServiceClient::new(channel(addrs[0]))
        .create_namespace(pb::CreateNamespaceRequest {
            weight: Default::default(),
            name: "teams".into(),
            description: String::new(),
            quotas: Some(pb::NamespaceQuotas {
                max_running_workflows: 50,
                max_active_steps: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let refused = WorkflowServiceClient::new(channel(addrs[1]))
        .submit(pb::SubmitRequest {
            spec: Some(workflow(
                "two-roots",
                vec![step("a", sleep(10)), step("b", sleep(10))],
            )),
            namespace: "teams".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    prom.wait_value(
        r#"sum(baton_namespace_quota_refusals_total{namespace="teams",quota="max_active_steps"})"#,
        |v| v == 1.0,
    )
    .await;
    prom.wait_value(
        r#"max(baton_namespace_quota{namespace="teams",quota="max_running_workflows"})"#,
        |v| v == 50.0,
    )
    .await;

    tracing::info!("--- every dashboard expression returns data; every alert parses");
    let expressions = dashboard_expressions();
    let mut missing = Vec::new();
    for (panel, expr) in &expressions {
        let got = wait_for(PHASE_TIMEOUT, expr, || async {
            match prom.query(expr).await {
                Err(e) => panic!("panel {panel:?}: {expr}: {e}"),
                Ok(result) if !result.is_empty() => Some(true),
                Ok(_) => None,
            }
        });
        // Bounded: a missing series is reported with its panel, not as a bare timeout.
        if tokio::time::timeout(Duration::from_secs(20), got)
            .await
            .is_err()
        {
            missing.push(format!("panel {panel:?}: {expr}"));
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard expressions without data:\n{}",
        missing.join("\n")
    );
    for (alert, expr) in &alerts {
        if let Err(e) = prom.query(expr).await {
            panic!("alert {alert}: {expr}: {e}");
        }
    }
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "rule {}", rule["name"]);
    }
    tracing::info!(
        dashboard = expressions.len(),
        alerts = alerts.len(),
        "expressions checked"
    );
    wait_for(PHASE_TIMEOUT, "the schedule deleted", || async {
        for addr in &addrs {
            let mut schedules =
                baton_proto::v1::schedule_service_client::ScheduleServiceClient::new(channel(
                    *addr,
                ));
            let deleted = schedules
                .delete_schedule(pb::DeleteScheduleRequest {
                    namespace: Default::default(),
                    name: "every-second".into(),
                })
                .await;
            match deleted {
                Ok(_) => return Some(()),
                Err(e) if e.code() == tonic::Code::NotFound => return Some(()),
                Err(_) => {}
            }
        }
        None
    })
    .await;

    tracing::info!("--- leadership moves: the old leader's cluster-wide gauges go to 0");
    let leader_instance = || async {
        let leaders = prom.query("baton_raft_is_leader == 1").await.ok()?;
        let instance = leaders.first()?["metric"]["instance"].as_str()?.to_owned();
        (leaders.len() == 1).then_some(instance)
    };
    let first_leader = wait_for(PHASE_TIMEOUT, "one leader", leader_instance).await;
    let mut admin = baton_proto::v1::admin_service_client::AdminServiceClient::new(channel(
        addrs[node_metrics
            .iter()
            .position(|a| a.to_string() == first_leader)
            .unwrap()],
    ));
    admin
        .transfer_leader(pb::TransferLeaderRequest { to_node_id: 0 })
        .await
        .expect("leader transfer");
    wait_for(PHASE_TIMEOUT, "another leader", || async {
        leader_instance().await.filter(|l| *l != first_leader)
    })
    .await;
    // Agent-1 follows the leader; only the new leader counts its slots.
    prom.wait_value(
        r#"count(baton_fleet_capacity{resource="slots"} > 0)"#,
        |v| v == 1.0,
    )
    .await;
    prom.wait_value(r#"sum(baton_fleet_capacity{resource="slots"})"#, |v| {
        v == 4.0
    })
    .await;
    let old = prom
        .value(&format!(
            r#"sum(baton_fleet_agent_capacity{{instance="{first_leader}"}})"#
        ))
        .await;
    assert_eq!(old, 0.0, "the old leader still reports agent capacity");

    tracing::info!("--- kill the leader: leader changes counted, no-leader alert quiet again");
    let leaders = prom.query("baton_raft_is_leader == 1").await.unwrap();
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    let old_leader = leaders[0]["metric"]["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let survivors: Vec<String> = node_metrics
        .iter()
        .map(SocketAddr::to_string)
        .filter(|a| *a != old_leader)
        .collect();
    let survivors = survivors.join("|");
    let changes = format!(r#"sum(baton_raft_leader_changes_total{{instance=~"{survivors}"}})"#);
    let changes_before = prom.value(&changes).await;
    let index = node_metrics
        .iter()
        .position(|a| a.to_string() == old_leader)
        .unwrap();
    nodes[index].kill();
    prom.wait_value(&changes, |v| v > changes_before).await;
    let new_leader = wait_for(PHASE_TIMEOUT, "a new leader in Prometheus", || async {
        let leaders = prom.query("baton_raft_is_leader == 1").await.ok()?;
        let instance = leaders.first()?["metric"]["instance"].as_str()?.to_owned();
        (leaders.len() == 1 && instance != old_leader).then_some(instance)
    })
    .await;
    let (_, no_leader) = alerts
        .iter()
        .find(|(name, _)| name == "BatonNoLeader")
        .expect("a BatonNoLeader rule");
    wait_for(
        PHASE_TIMEOUT,
        "the no-leader expression to be empty",
        || async {
            prom.query(no_leader)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    tracing::info!(old = %old_leader, new = %new_leader, "leader replaced");

    tracing::info!("--- JSON logs carry workflow, step, attempt and agent");
    let node_lines: Vec<Json> = (1..=3)
        .flat_map(|id| json_logs(&dir.path().join(format!("node{id}.log"))))
        .collect();
    for message in ["step assigned", "report accepted"] {
        let line = node_lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("a `{message}` log line"));
        for field in ["workflow", "step", "attempt", "agent"] {
            assert!(
                !line["fields"][field].is_null(),
                "`{message}` lacks {field}: {line}"
            );
        }
    }
    // The schedule's runs ("scheduled") and the webhook's ("hooked"), started after the counts
    // were checked, aside.
    let finished: Vec<&Json> = node_lines
        .iter()
        .filter(|l| l["fields"]["message"] == "workflow finished")
        .filter(|l| l["fields"]["name"] != "scheduled" && l["fields"]["name"] != "hooked")
        .collect();
    // Logged once per workflow, by the leader that counts it (the same rule as the counters).
    if stable {
        assert_eq!(finished.len(), created, "`workflow finished` lines");
    } else {
        assert!(finished.len() <= created, "`workflow finished` lines");
    }
    assert!(finished.iter().all(|l| l["fields"]["outcome"].is_string()));
    let agent_lines = json_logs(&dir.path().join("agent-1.log"));
    let finished = agent_lines
        .iter()
        .find(|l| l["fields"]["message"] == "attempt finished")
        .expect("an `attempt finished` log line");
    for field in ["workflow", "step", "attempt", "agent"] {
        assert!(
            !finished["fields"][field].is_null(),
            "`attempt finished` lacks {field}: {finished}"
        );
    }
    drop(agents);
    drop(nodes);
}

/// Debian's Prometheus is built without Kubernetes discovery, so `promtool check config` cannot
/// read the Kubernetes scrape config; its shape is checked here instead: the same jobs as the
/// static config (the names the rules and dashboard expect), each discovering pods, and the
/// same rule file.
#[test]
fn the_kubernetes_scrape_config_has_the_jobs_the_rules_expect() {
    use serde_norway::Value as Yaml;
    let read = |name: &str| -> Yaml {
        let path = repo_root().join("deploy/prometheus").join(name);
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let jobs = |config: &Yaml| -> Vec<String> {
        config["scrape_configs"]
            .as_sequence()
            .expect("scrape_configs")
            .iter()
            .map(|job| job["job_name"].as_str().expect("job_name").to_owned())
            .collect()
    };
    let static_config = read("prometheus.yml");
    let kubernetes = read("prometheus-kubernetes.yml");
    assert_eq!(jobs(&kubernetes), jobs(&static_config));
    assert_eq!(jobs(&kubernetes), ["batond", "baton-agent"]);
    assert_eq!(kubernetes["rule_files"], static_config["rule_files"]);
    for job in kubernetes["scrape_configs"].as_sequence().unwrap() {
        assert_eq!(
            job["kubernetes_sd_configs"][0]["role"], "pod",
            "{job:?} discovers pods"
        );
        let keeps: Vec<&str> = job["relabel_configs"]
            .as_sequence()
            .expect("relabel_configs")
            .iter()
            .filter(|r| r["action"] == "keep")
            .filter_map(|r| r["regex"].as_str())
            .collect();
        assert_eq!(
            keeps,
            [job["job_name"].as_str().unwrap(), "metrics"],
            "{job:?} keeps its own pods' metrics port"
        );
    }
}

/// A metrics address that cannot be bound stops `batond` and `baton agent` at start with an
/// error naming the flag, instead of running unobserved.
#[test]
fn a_metrics_address_in_use_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ports = reserve_ports(1);
    let listen = loopback(ports[0]).to_string();
    let node = Command::new(env!("CARGO_BIN_EXE_batond"))
        .args([
            "--insecure",
            "--node-id",
            "1",
            "--listen",
            &listen,
            "--metrics-listen",
            &taken,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("n1"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&node.stderr);
    assert_eq!(node.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--metrics-listen {taken}")),
        "{stderr}"
    );

    let agent = Command::new(baton_binary())
        .args(["--endpoints", &listen, "agent", "--name", "a"])
        .args(["--metrics-listen", &taken])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&agent.stderr);
    assert_eq!(agent.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--metrics-listen {taken}")),
        "{stderr}"
    );
}
