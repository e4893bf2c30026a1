//! The `baton` binary end to end: bad input exits 2 before connecting; against a fake node,
//! answers, not-found and unknown outcomes print and exit as documented.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

async fn baton(args: &[&str]) -> Output {
    tokio::process::Command::new(BATON)
        .args(args)
        // No context from the user's own config folder.
        .env("BATON_CLIENT_CONFIG", "/nonexistent/baton/config.toml")
        .env_remove("BATON_CONTEXT")
        .env_remove("BATON_ENDPOINTS")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run baton")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

const VALID_SPEC: &str = "\
name: build-and-deploy
steps:
  - name: build
    exec: {command: [make]}
  - name: deploy
    depends_on: [build]
    noop: {}
";

#[tokio::test]
async fn a_syntax_error_names_file_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "broken.yaml",
        "name: broken\nsteps:\n  - name: a: b\n",
    );
    // A dead endpoint: the command must fail on the input, never reach the network.
    let output = baton(&[
        "submit",
        &file,
        "--endpoints",
        &common::dead_address().to_string(),
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}: line 3, column")),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// A schedule file is checked before anything is sent: a bad cron pattern, time zone or key is
/// a usage error naming the file and the field or line.
#[tokio::test]
async fn a_bad_schedule_file_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = "workflow: {name: w, steps: [{name: a, noop: {}}]}\n";
    for (head, said) in [
        (
            "name: s\ncron: '61 * * * *'\n",
            "cron: \"61 * * * *\" is not a cron pattern",
        ),
        (
            "name: s\ncron: '@daily'\ntimezone: Mars/Base\n",
            "timezone: \"Mars/Base\" is not an IANA time zone",
        ),
        (
            "name: s\nevery: 10ms\n",
            "every: 10 ms is shorter than the shortest interval, 1s",
        ),
        (
            "name: s\ncron: '@daily'\novelap: skip\n",
            "line 3, column 1: unknown field \"ovelap\"",
        ),
    ] {
        let file = write(dir.path(), "schedule.yaml", &format!("{head}{workflow}"));
        let output = baton(&[
            "schedule",
            "create",
            &file,
            "--endpoints",
            &common::dead_address().to_string(),
        ])
        .await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{file}: ")) && stderr.contains(said),
            "{stderr}"
        );
    }
}

/// A trigger file and its secret are checked before anything is sent.
#[tokio::test]
async fn a_bad_trigger_file_or_secret_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let short = write(dir.path(), "short-secret", "too-short\n");
    for (contents, secret, said) in [
        (
            "name: t\ntemplate: deploy\nparams_from_body: {sha: after}\n",
            None,
            "params_from_body.sha: \"after\" is not a JSON Pointer",
        ),
        ("name: t\n", None, "missing field \"template\""),
        (
            "name: t\ntemplate: deploy\nsecret: s\n",
            None,
            "unknown field \"secret\"",
        ),
        (
            "name: t\ntemplate: deploy\n",
            Some(short.as_str()),
            "9 bytes; a trigger's secret has 16 to 256",
        ),
    ] {
        let file = write(dir.path(), "trigger.yaml", contents);
        let mut args = vec!["trigger", "create", &file];
        if let Some(secret) = secret {
            args.extend(["--secret-file", secret]);
        }
        let dead = common::dead_address().to_string();
        args.extend(["--endpoints", &dead]);
        let output = baton(&args).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }
}

#[tokio::test]
async fn a_validation_error_names_file_and_field_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "name: w\nsteps:\n  - name: a\n    noop: {}\n  - name: b\n    depends_on: [x]\n    noop: {}\n";
    let file = write(dir.path(), "unknown-dep.yaml", spec);
    let output = baton(&[
        "submit",
        &file,
        "--endpoints",
        &common::dead_address().to_string(),
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {file}: steps[1].depends_on[0]: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn version_and_completion_need_no_cluster_and_no_credentials() {
    // Credentials that do not exist: neither command reads them.
    let version = tokio::process::Command::new(BATON)
        .args(["-o", "json", "version"])
        .env("BATON_CREDENTIALS", "/nonexistent")
        .output()
        .await
        .unwrap();
    assert!(version.status.success(), "{}", text(&version.stderr));
    let json: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["commit"], env!("BATON_COMMIT"));
    // A checkout builds with its commit; only a build outside git says "unknown".
    let commit = json["commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    let flag = baton(&["--version"]).await;
    assert_eq!(
        text(&flag.stdout).trim(),
        format!("baton {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );

    let bash = baton(&["completion", "bash"]).await;
    assert!(bash.status.success());
    let script = text(&bash.stdout);
    assert!(
        script.starts_with("_baton()"),
        "{}",
        &script[..80.min(script.len())]
    );
    for command in ["submit", "watch", "completion", "version"] {
        assert!(script.contains(command), "bash completion lacks {command}");
    }
    let unknown = baton(&["completion", "tcsh"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("bash"),
        "{}",
        text(&unknown.stderr)
    );
}

#[tokio::test]
async fn a_missing_file_exits_2() {
    let output = baton(&["submit", "/nonexistent/spec.yaml"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read /nonexistent/spec.yaml: "),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_prints_the_id_alone_or_json() {
    let (address, script) = common::start(common::Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.yaml", VALID_SPEC);
    let endpoints = address.to_string();

    let output = baton(&["submit", &file, "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "7\n");

    let output = baton(&[
        "submit",
        &file,
        "--endpoints",
        &endpoints,
        "-o",
        "json",
        "--idempotency-key",
        "k1",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["workflow_id"], 7);
    assert_eq!(json["created"], true);

    let submits = script.submits.lock().unwrap();
    assert_eq!(submits[1].idempotency_key, "k1");
    assert_eq!(submits[0].spec.as_ref().unwrap().steps.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_submit_outcome_exits_3_and_names_the_key_to_retry_with() {
    let script = common::Script::default();
    script.submit_internal.store(true, Ordering::SeqCst);
    let (address, script) = common::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.yaml", VALID_SPEC);

    let output = baton(&["submit", &file, "--endpoints", &address.to_string()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let key = script.submits.lock().unwrap()[0].idempotency_key.clone();
    assert!(stderr.starts_with("error: outcome unknown: "), "{stderr}");
    assert!(
        stderr.contains(&format!("--idempotency-key {key}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_go_in_batches_with_numbered_keys() {
    let (address, script) = common::start(common::Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // More files than one SubmitBatch takes.
    let files: Vec<String> = (0..300)
        .map(|i| write(dir.path(), &format!("w{i}.yaml"), VALID_SPEC))
        .collect();
    let endpoints = address.to_string();
    let mut args = vec![
        "submit",
        "--endpoints",
        &endpoints,
        "--idempotency-key",
        "nightly",
    ];
    args.extend(files.iter().map(String::as_str));
    let output = baton(&args).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 300, "{stdout}");
    // `ID<TAB>FILE`, in the files' order; the fake numbers each batch's items from 100.
    assert_eq!(lines[0], format!("100\t{}", files[0]));
    assert_eq!(lines[299], format!("{}\t{}", 100 + 299 - 256, files[299]));
    {
        let batches = script.batches.lock().unwrap();
        let sizes: Vec<usize> = batches.iter().map(|b| b.submits.len()).collect();
        assert_eq!(sizes, [256, 44]);
        let keys: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.submits.iter().map(|s| s.idempotency_key.as_str()))
            .collect();
        assert_eq!(keys[0], "nightly-1");
        assert_eq!(keys[299], "nightly-300");
        assert!(
            script.submits.lock().unwrap().is_empty(),
            "no single submit"
        );
    }

    // JSON: one line per workflow, naming its file.
    let output = baton(&[
        "submit",
        &files[0],
        &files[1],
        "--endpoints",
        &endpoints,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let json: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2);
    assert_eq!(json[1]["file"], files[1].as_str());
    assert_eq!(json[1]["workflow_id"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_part_way_says_how_to_submit_the_rest_without_repeats() {
    let script = common::Script::default();
    *script.batches_ok.lock().unwrap() = Some(1);
    let (address, _) = common::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = (0..260)
        .map(|i| write(dir.path(), &format!("w{i}.yaml"), VALID_SPEC))
        .collect();
    let endpoints = address.to_string();
    let mut args = vec!["submit", "--endpoints", &endpoints];
    args.extend(files.iter().map(String::as_str));
    let output = baton(&args).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The first call's workflows were printed; the message names the key base to finish with.
    assert_eq!(text(&output.stdout).lines().count(), 256);
    assert!(
        stderr.contains("256 workflows were submitted before this error"),
        "{stderr}"
    );
    assert!(stderr.contains("--idempotency-key baton-"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_file_among_several_submits_nothing() {
    let (address, script) = common::start(common::Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", VALID_SPEC);
    let bad = write(dir.path(), "bad.yaml", "name: w\nsteps: []\n");
    let output = baton(&["submit", &good, &bad, "--endpoints", &address.to_string()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with(&format!("error: {bad}: ")), "{stderr}");
    assert!(script.batches.lock().unwrap().is_empty());
    let output = baton(&["submit", "-", "-", "--endpoints", &address.to_string()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("can be given once"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_batch_outcome_names_the_key_base_to_retry_with() {
    let script = common::Script::default();
    script.submit_internal.store(true, Ordering::SeqCst);
    let (address, script) = common::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", VALID_SPEC);
    let b = write(dir.path(), "b.yaml", VALID_SPEC);
    let output = baton(&["submit", &a, &b, "--endpoints", &address.to_string()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let key = script.batches.lock().unwrap()[0].submits[0]
        .idempotency_key
        .clone();
    let base = key.strip_suffix("-1").expect("file 1's key is BASE-1");
    assert!(
        stderr.contains(&format!("--idempotency-key {base}`")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_a_workflow_or_says_it_is_not_found() {
    let (address, _) = common::start(common::Script::default()).await;
    let endpoints = address.to_string();

    let output = baton(&["get", "42", "--endpoints", &endpoints]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.starts_with("workflow 42  nightly-report  running"),
        "{stdout}"
    );
    assert!(stdout.contains("STEP"), "{stdout}");

    let output = baton(&["get", "42", "--endpoints", &endpoints, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["steps"][0]["agent"], "agent-1");

    let output = baton(&["get", "43", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "error: workflow 43 not found\n");
}

/// A context saved once serves every later command, with no flag and no variable; flags still
/// beat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_context_is_used_until_flags_say_otherwise() {
    let (address, _) = common::start(common::Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton/config.toml");
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            tokio::process::Command::new(BATON)
                .args(&args)
                .env("BATON_CLIENT_CONFIG", &config)
                .env_remove("BATON_CONTEXT")
                .env_remove("BATON_ENDPOINTS")
                .env_remove("BATON_CREDENTIALS")
                .output()
                .await
                .unwrap()
        }
    };
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let output = run(args(&["get", "42"])).await;
    assert_ne!(
        output.status.code(),
        Some(0),
        "no context: the local default"
    );

    let output = run(args(&[
        "context",
        "set",
        "fake",
        "--to",
        &address.to_string(),
    ]))
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = run(args(&["get", "42"])).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("workflow 42"));

    let output = run(args(&["context", "list"])).await;
    assert!(
        text(&output.stdout).starts_with(&format!("* fake  {address}  plaintext")),
        "{}",
        text(&output.stdout)
    );
    let output = run(args(&["-o", "json", "context", "show"])).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["name"], "fake");
    assert_eq!(json["current"], true);

    // A flag beats the context; an unknown context is named.
    let output = run(args(&["get", "42", "--endpoints", "127.0.0.1:1"])).await;
    assert_ne!(output.status.code(), Some(0));
    let output = run(args(&["--context", "prod", "get", "42"])).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("no context \"prod\""),
        "{}",
        text(&output.stderr)
    );
    let output = run(args(&["context", "use", "prod"])).await;
    assert_eq!(output.status.code(), Some(2));

    let output = run(args(&["context", "delete", "fake"])).await;
    assert_eq!(output.status.code(), Some(0));
    let output = run(args(&["context", "list"])).await;
    assert!(
        text(&output.stdout).starts_with("no contexts"),
        "{}",
        text(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_cluster_status_all() {
    let script = common::Script {
        node_id: 1,
        ..Default::default()
    };
    *script.workflow_ids.lock().unwrap() = vec![5, 4, 3];
    let (first, _) = common::start(script).await;
    let (second, _) = common::start(common::Script {
        node_id: 2,
        ..Default::default()
    })
    .await;

    let output = baton(&[
        "list",
        "--endpoints",
        &first.to_string(),
        "-o",
        "json",
        "--limit",
        "2",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [5, 4]);

    let endpoints = format!("{first},{second}");
    let output = baton(&["cluster", "status", "--all", "--endpoints", &endpoints]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.contains("leader") && stdout.contains("follower"),
        "{stdout}"
    );
    assert!(stdout.contains("state hashes agree"), "{stdout}");

    let endpoints = format!("{first},{}", common::dead_address());
    let output = baton(&[
        "cluster",
        "status",
        "--all",
        "--endpoints",
        &endpoints,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json[0]["status"]["node_id"], 1);
    assert!(
        json[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect to"),
        "{json}"
    );
    assert_eq!(text(&output.stderr), "error: 1 of 2 nodes did not answer\n");
}

#[tokio::test]
async fn submit_wait_follows_the_workflow_and_exits_by_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "spec.yaml", VALID_SPEC);
    for (state, code) in [
        (baton_client::proto::WorkflowState::Succeeded, 0),
        (baton_client::proto::WorkflowState::Failed, 1),
    ] {
        let script = common::Script::default();
        *script.events.lock().unwrap() = common::workflow_7_events(state);
        // The stream breaks once: the wait resumes where it was and misses nothing.
        script.watch_breaks.store(1, Ordering::SeqCst);
        *script.workflow_state.lock().unwrap() = baton_client::proto::WorkflowState::Running;
        let (address, script) = common::start(script).await;
        let output = baton(&[
            "submit",
            &file,
            "--wait",
            "--endpoints",
            &address.to_string(),
        ])
        .await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{stderr}");
        assert_eq!(text(&output.stdout), "7\n");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines[0].contains("build") && lines[0].contains("step_ready"),
            "{stderr}"
        );
        assert!(
            lines[1].contains("step_assigned") && lines[1].contains("attempt 11"),
            "{stderr}"
        );
        assert!(lines[3].contains("workflow_finished"), "{stderr}");
        if code == 1 {
            assert_eq!(lines.last().unwrap(), &"error: workflow 7 failed");
        }
        let from: Vec<u64> = script
            .watch_requests
            .lock()
            .unwrap()
            .iter()
            .map(|request| request.from_index)
            .collect();
        // From the submit's log index, then from the last index seen again (its events already
        // received are skipped: an index can carry many).
        assert_eq!(from, [3, 3]);
    }
}

#[tokio::test]
async fn a_wait_that_finds_the_workflow_finished_after_a_reconnect_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "spec.yaml", VALID_SPEC);
    let script = common::Script::default();
    *script.events.lock().unwrap() =
        common::workflow_7_events(baton_client::proto::WorkflowState::Failed);
    script.watch_breaks.store(1, Ordering::SeqCst);
    // Get already says it failed: the wait ends on that, with its reason.
    *script.workflow_state.lock().unwrap() = baton_client::proto::WorkflowState::Failed;
    let (address, _) = common::start(script).await;
    let output = baton(&[
        "submit",
        &file,
        "--wait",
        "--endpoints",
        &address.to_string(),
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with("error: workflow 7 failed: step \"build\" failed\n"),
        "{stderr}"
    );
}

#[tokio::test]
async fn watch_prints_lines_or_json_lines_until_the_end() {
    let script = common::Script::default();
    *script.events.lock().unwrap() =
        common::workflow_7_events(baton_client::proto::WorkflowState::Succeeded);
    let (address, _) = common::start(script).await;
    let endpoints = address.to_string();

    let output = baton(&["watch", "7", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(lines[0].starts_with("2024-05-01 12:30:08  -"), "{stdout}");
    assert!(lines[4].ends_with("succeeded"), "{stdout}");

    let output = baton(&[
        "watch",
        "7",
        "--from-index",
        "6",
        "--endpoints",
        &endpoints,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let events: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["kind"], "step_finished");
    assert_eq!(events[0]["step_state"], "succeeded");
    assert_eq!(events[1]["workflow_state"], "succeeded");
}

#[tokio::test]
async fn agents_shows_usage_and_running_steps() {
    let (address, _) = common::start(common::Script::default()).await;
    let output = baton(&["agents", "--endpoints", &address.to_string()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let row = stdout.lines().nth(1).unwrap();
    for cell in ["worker-1", "yes", "1/4", "500/4000", "256/8192", "42/build"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    let output = baton(&["agents", "--endpoints", &address.to_string(), "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json[0]["running"][0]["step"], "build");
}

#[tokio::test]
async fn agent_refuses_a_bad_name_before_connecting() {
    let output = baton(&[
        "agent",
        "--name",
        "bad name",
        "--endpoints",
        &common::dead_address().to_string(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("name \"bad name\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_prints_every_event_with_its_index_or_as_json() {
    let script = common::Script::default();
    *script.events.lock().unwrap() =
        common::workflow_7_events(baton_client::proto::WorkflowState::Succeeded);
    let (address, _) = common::start(script).await;
    let endpoints = address.to_string();

    let output = baton(&["history", "7", "--endpoints", &endpoints]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("INDEX") && lines[0].ends_with("BY"),
        "{stdout}"
    );
    assert!(lines[1].contains("workflow_submitted"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("step_assigned") && l.contains("11")),
        "{stdout}"
    );

    let output = baton(&["history", "7", "--endpoints", &endpoints, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = json.as_array().unwrap();
    assert_eq!(events.len(), lines.len() - 1, "one per table row");
    assert_eq!(events.last().unwrap()["kind"], "workflow_finished");

    let output = baton(&["history", "8", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "error: workflow 8 not found\n");
}

/// `baton archive` reads the node's archive files themselves: no cluster is needed.
#[tokio::test]
async fn archive_get_and_list_read_an_archive_folder() {
    let dir = tempfile::tempdir().unwrap();
    let line = |id: u64, name: &str| {
        serde_json::json!({
            "purge_index": 90 + id,
            "purged_at_ms": 1_714_600_000_000u64,
            "retention_ms": 3_600_000,
            "workflow": {"id": id, "name": name, "state": "succeeded",
                         "finished_at_ms": 1_714_596_400_000u64, "steps": []},
            "history": [],
        })
        .to_string()
    };
    write(
        dir.path(),
        "purge-00000000000000000091.jsonl",
        &format!("{}\n{}\n", line(1, "first"), line(2, "second")),
    );
    write(
        dir.path(),
        "purge-00000000000000000093.jsonl",
        &format!("{}\n", line(3, "third")),
    );
    write(dir.path(), "notes.txt", "not an archive file\n");
    let folder = dir.path().to_str().unwrap();

    let output = baton(&["archive", "list", "--dir", folder]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let ids: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "3"], "{stdout}");
    assert!(stdout.contains("2024-05-01 21:46:40"), "{stdout}");

    let output = baton(&["archive", "get", "2", "--dir", folder, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["workflow"]["name"], "second");
    assert_eq!(json["purge_index"], 92);

    let output = baton(&["archive", "get", "9", "--dir", folder]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).starts_with("error: workflow 9 is not in the archive"),
        "{}",
        text(&output.stderr)
    );

    write(dir.path(), "purge-00000000000000000095.jsonl", "{\"cut\n");
    let output = baton(&["archive", "list", "--dir", folder]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("purge-00000000000000000095.jsonl line 1: not an archive line"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_retry_say_what_happened_and_exit_by_it() {
    let (address, _) = common::start(common::Script::default()).await;
    let endpoints = address.to_string();

    let output = baton(&["pause", "42", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "workflow 42 paused\n");
    let output = baton(&["resume", "42", "--endpoints", &endpoints, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["changed"], false);

    // The node's refusal is the message, and the exit code says it failed.
    let output = baton(&["retry", "42", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: workflow 42 is still running: only a finished workflow can be retried (cancel \
         it first)\n"
    );
    let output = baton(&["pause", "43", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stderr), "error: workflow 43 not found\n");
}

#[tokio::test]
async fn parameters_are_checked_against_the_spec_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "deploy.yaml",
        "name: deploy\nparams:\n  - {name: version, required: true, description: the release}\n  - {name: env, default: staging}\nsteps:\n  - name: ship\n    exec: {command: [echo, \"{{ params.version }}\"]}\n",
    );
    // No node at this address: every one of these fails before connecting.
    let nowhere = "127.0.0.1:1";
    let output = baton(&["submit", &file, "--endpoints", nowhere]).await;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        format!(
            "error: {file}: params[\"version\"]: required parameter (the release) has no value: \
             give one with -p version=VALUE\n"
        )
    );
    let output = baton(&[
        "submit",
        &file,
        "-p",
        "version=1",
        "-p",
        "zone=eu",
        "--endpoints",
        nowhere,
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("params[\"zone\"]: workflow \"deploy\" declares no parameter \"zone\"; it declares env, version"),
        "{}",
        text(&output.stderr)
    );
    let output = baton(&[
        "submit",
        &file,
        "-p",
        "version=1",
        "-p",
        "version=2",
        "--endpoints",
        nowhere,
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "error: -p version: given twice; give each parameter once\n"
    );
    let output = baton(&["submit", &file, "-p", "version", "--endpoints", nowhere]).await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_sends_json_data_and_says_why_a_step_cannot_take_it() {
    let (address, _) = common::start(common::Script::default()).await;
    let endpoints = address.to_string();
    let output = baton(&[
        "signal",
        "42",
        "approve",
        "--data",
        "{\"ok\": true}",
        "--endpoints",
        &endpoints,
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "workflow 42 step approve: signalled\n"
    );
    let output = baton(&["signal", "42", "build", "--endpoints", &endpoints]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "error: step \"build\" of workflow 42 is not waiting for a signal: it is not a wait step\n"
    );
    let output = baton(&[
        "signal",
        "42",
        "approve",
        "--data",
        "yes please",
        "--endpoints",
        &endpoints,
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).starts_with("error: --data: not JSON"),
        "{}",
        text(&output.stderr)
    );
}
