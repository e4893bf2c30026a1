//! `baton bench --start-cluster` end to end: real `batond` and agent processes, a small count,
//! and a JSON report that adds up. No timing thresholds: only that the counts agree and the
//! latencies were measured.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

fn batond_is_built() -> bool {
    let batond = Path::new(BATON).with_file_name("batond");
    assert!(
        batond.is_file(),
        "{} not found: `cargo test --workspace` builds it; alone, run \
         `cargo build -p baton-node --bin batond` first",
        batond.display()
    );
    true
}

/// `baton` as a new user runs it: no context from this machine's config folder (`batond dev`
/// saves one there), no endpoints from the environment.
fn baton() -> Command {
    let mut command = Command::new(BATON);
    command
        .env("BATON_CLIENT_CONFIG", "/nonexistent/baton/config.toml")
        .env_remove("BATON_CONTEXT")
        .env_remove("BATON_ENDPOINTS");
    command
}

fn bench(args: &[&str]) -> (Value, String) {
    assert!(batond_is_built());
    let out = baton()
        .args(["bench", "--start-cluster", "-o", "json"])
        .args(args)
        .output()
        .expect("run baton bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "baton bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (report, stderr)
}

fn latency_measured(report: &Value, name: &str, count: u64) {
    let l = &report[name];
    assert_eq!(l["count"], count, "{name}: {l}");
    let (p50, p99, max) = (
        l["p50_ms"].as_f64().unwrap(),
        l["p99_ms"].as_f64().unwrap(),
        l["max_ms"].as_f64().unwrap(),
    );
    assert!(max > 0.0 && p50 <= p99 && p99 <= max, "{name}: {l}");
}

#[test]
fn single_step_workflows_all_finish_and_add_up() {
    let (report, stderr) = bench(&["--count", "50", "--clients", "4"]);
    assert_eq!(report["shape"], "single");
    assert_eq!(report["submitted"], 50, "{report}\n{stderr}");
    assert_eq!(report["accepted"], 50);
    assert_eq!(report["submit_errors"], 0);
    assert_eq!(report["workflows_succeeded"], 50);
    assert_eq!(report["workflows_failed"], 0);
    assert_eq!(report["workflows_unfinished"], 0);
    assert_eq!(report["steps_completed"], 50);
    assert!(report["workflows_accepted_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["steps_completed_per_second"].as_f64().unwrap() > 0.0);
    latency_measured(&report, "submit_ack", 50);
    latency_measured(&report, "submit_to_start", 50);
    latency_measured(&report, "submit_to_end", 50);
    // Every step starts before its workflow ends.
    assert!(
        report["submit_to_start"]["max_ms"].as_f64() <= report["submit_to_end"]["max_ms"].as_f64()
    );
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{report}");
    for node in nodes {
        assert!(node["rss_mib"].as_f64().unwrap() > 0.0, "{node}");
        assert!(node["cpu_percent"].as_f64().unwrap() >= 0.0, "{node}");
    }
    // Measured for the bench and (self-started) the agents. The kernel counts CPU time in clock
    // ticks (10 ms), so a short run's agents can show 0; the figure must exist and be sane.
    for key in ["bench_cpu_percent", "agents_cpu_percent"] {
        let cpu = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {report}"));
        assert!((0.0..=400.0).contains(&cpu), "{key}: {report}");
    }
}

#[test]
fn batches_submit_every_workflow_once() {
    // 45 in calls of 10: four full calls and one of the 5 left, whichever client makes them.
    let (report, stderr) = bench(&["--count", "45", "--clients", "2", "--batch", "10"]);
    assert_eq!(report["batch"], 10);
    assert_eq!(report["accepted"], 45, "{report}\n{stderr}");
    assert_eq!(report["submit_errors"], 0);
    assert_eq!(report["workflows_succeeded"], 45, "{report}\n{stderr}");
    // One acknowledgement per call; every workflow tracked from its submit.
    latency_measured(&report, "submit_ack", 5);
    latency_measured(&report, "submit_to_start", 45);
    latency_measured(&report, "submit_to_end", 45);
}

#[test]
fn fan_out_counts_every_step() {
    let (report, stderr) = bench(&["--count", "10", "--shape", "fanout", "--steps", "3"]);
    assert_eq!(report["steps_per_workflow"], 4);
    assert_eq!(report["workflows_succeeded"], 10, "{report}\n{stderr}");
    assert_eq!(report["steps_completed"], 40);
}

#[test]
fn a_secured_cluster_runs_the_same_load() {
    let (report, stderr) = bench(&["--count", "20", "--clients", "4", "--tls"]);
    assert!(stderr.contains("mTLS+tokens"), "{stderr}");
    assert_eq!(report["accepted"], 20, "{report}\n{stderr}");
    assert_eq!(report["submit_errors"], 0);
    assert_eq!(report["workflows_succeeded"], 20, "{report}\n{stderr}");
}

#[test]
fn bad_arguments_fail_before_starting_anything() {
    let out = baton()
        .args(["bench", "--agents", "2"])
        .output()
        .expect("run baton bench");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--agents"), "{stderr}");
    assert!(stderr.contains("--start-cluster"), "{stderr}");
}

#[test]
fn kill_leader_counts_every_kill_and_loses_no_accepted_workflow() {
    let (report, stderr) = bench(&[
        "--duration",
        "5s",
        "--rate",
        "50",
        "--kill-leader",
        "--kill-every",
        "1500ms",
    ]);
    let kills = report["leader_kills"].as_u64().unwrap();
    assert!(kills >= 1, "{report}\n{stderr}");
    let measured = report["kill_to_assignment"]["count"].as_u64().unwrap();
    let missed = report["kills_without_assignment"].as_u64().unwrap();
    assert_eq!(measured + missed, kills, "{report}");
    // Submits may fail with an unknown outcome while the leader is down; every one that was
    // acknowledged must still run to its end.
    assert_eq!(
        report["workflows_succeeded"], report["accepted"],
        "{report}"
    );
    assert_eq!(report["workflows_unfinished"], 0);
    assert_eq!(report["nodes"].as_array().unwrap().len(), 0, "{report}");
}

#[test]
fn compare_etcd_runs_the_same_load_against_etcd() {
    let (report, stderr) = bench(&["--count", "40", "--clients", "4", "--compare-etcd"]);
    assert_eq!(report["accepted"], 40, "{report}\n{stderr}");
    let etcd = &report["etcd"];
    assert_eq!(etcd["puts"], 40, "{etcd}\n{stderr}");
    assert_eq!(etcd["put_errors"], 0, "{etcd}");
    assert!(etcd["version"].as_str().unwrap().contains("etcd"), "{etcd}");
    latency_measured(etcd, "put_ack", 40);
    assert_eq!(etcd["members"].as_array().unwrap().len(), 3, "{etcd}");
    let ratio = etcd["baton_to_etcd_ratio"].as_f64().unwrap();
    let expected = report["workflows_accepted_per_second"].as_f64().unwrap()
        / etcd["puts_per_second"].as_f64().unwrap();
    assert!(
        (ratio - expected).abs() < 1e-9 * expected,
        "{ratio} vs {expected}"
    );
}
