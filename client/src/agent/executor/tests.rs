//! Executors against real processes and a real (local) HTTP server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1::step_spec::Task;
use baton_proto::v1::{Assignment, CustomTask, ExecTask, HttpTask, NoopTask, SleepTask, StepSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::ExecJob;
use super::http::is_success;
use super::*;
use crate::agent::handler::{Erased, StopReason, TaskContext, TaskError};
use crate::agent::runtime::run_attempt;

const DEADLINE: Duration = Duration::from_secs(20);

fn executors() -> Executors {
    executors_with(HashMap::new())
}

fn executors_with(handlers: HashMap<String, Arc<dyn DynHandler>>) -> Executors {
    Executors::new(http::new_client().expect("http client"), handlers)
}

fn assignment(task: Task) -> Assignment {
    Assignment {
        namespace: Default::default(),
        workflow_id: 42,
        step: "deploy".into(),
        attempt_id: 1001,
        attempt_number: 2,
        spec: Some(StepSpec {
            name: "deploy".into(),
            task: Some(task),
            ..Default::default()
        }),
        lease_ttl_ms: 5000,
        timeout_ms: 0,
        inputs: BTreeMap::from([("build".to_string(), "artifact-7".to_string())]),
        workflow_input: BTreeMap::from([("name".to_string(), "ada".to_string())]),
    }
}

fn sh(script: &str) -> Task {
    Task::Exec(ExecTask {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    })
}

async fn run(assignment: Assignment) -> TaskResult {
    run_with(&executors(), assignment).await
}

async fn run_with(executors: &Executors, assignment: Assignment) -> TaskResult {
    let finished = tokio::time::timeout(
        DEADLINE,
        run_attempt(executors, assignment, AttemptControl::new()),
    )
    .await
    .expect("the attempt ends");
    finished.result
}

fn exec_job(argv: &[&str]) -> ExecJob {
    ExecJob {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: Vec::new(),
        working_dir: None,
    }
}

// ---- exec ----

#[tokio::test]
async fn exec_success_and_failure_follow_the_exit_code() {
    let ok = run(assignment(sh("echo hello; echo warn >&2"))).await;
    assert!(ok.success, "{ok:?}");
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.output, "hello\n");
    assert_eq!(ok.error, "warn\n");

    let failed = run(assignment(sh("echo partial; echo oops >&2; exit 3"))).await;
    assert!(!failed.success);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.output, "partial\n");
    assert_eq!(failed.error, "oops\n");
}

#[tokio::test]
async fn exec_of_a_missing_program_fails_naming_it() {
    let result = run(assignment(Task::Exec(ExecTask {
        command: vec!["baton-no-such-program".into()],
        ..Default::default()
    })))
    .await;
    assert!(!result.success);
    assert_eq!(result.exit_code, None);
    assert!(
        result.error.contains("cannot start baton-no-such-program"),
        "{}",
        result.error
    );
}

#[tokio::test]
async fn exec_gets_the_step_env_templates_and_working_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut assignment = assignment(Task::Exec(ExecTask {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"$BATON_WORKFLOW_ID $BATON_STEP $BATON_ATTEMPT $BATON_ATTEMPT_NUMBER \
             $BATON_INPUT_BUILD $BATON_PARAM_NAME $GREETING $1\"; pwd"
                .into(),
            "sh".into(),
            "--from={{ steps.build.output }}".into(),
        ],
        env: BTreeMap::from([
            ("GREETING".to_string(), "hi-{{input.name}}".to_string()),
            // A spec cannot shadow the fencing token.
            ("BATON_ATTEMPT".to_string(), "forged".to_string()),
        ]),
        working_dir: dir.path().to_str().unwrap().to_string(),
    }));
    assignment.step = "deploy".into();
    let result = run(assignment).await;
    assert!(result.success, "{result:?}");
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        result.output,
        format!(
            "42 deploy 1001 2 artifact-7 ada hi-ada --from=artifact-7\n{}\n",
            dir.display()
        )
    );
}

#[tokio::test]
async fn an_unknown_template_fails_the_attempt_without_running_it() {
    let result = run(assignment(sh("echo {{ input.missing }}; touch /never"))).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "exec.command[2]: template \"{{ input.missing }}\" names unknown workflow input \"missing\""
    );
}

#[tokio::test]
async fn exec_output_is_the_bounded_tail() {
    // About 5 MiB of output, then a marker that must survive at the very end.
    let result = run(assignment(sh(
        "i=0; while [ $i -lt 80 ]; do head -c 65536 /dev/zero | tr '\\0' a; i=$((i+1)); done; \
         printf END; head -c 3000000 /dev/zero | tr '\\0' e >&2; printf FIN >&2",
    )))
    .await;
    assert!(
        result.success,
        "{:?}",
        &result.error[..100.min(result.error.len())]
    );
    assert_eq!(result.output.len(), OUTPUT_BYTES_MAX);
    assert!(result.output.ends_with("aaaEND"));
    assert_eq!(result.error.len(), OUTPUT_BYTES_MAX);
    assert!(result.error.ends_with("eeeFIN"));
}

/// Whether `pid` is gone (or a zombie, which runs nothing and only waits to be reaped).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let background = dir.path().join("background.pid");
    let shell = dir.path().join("shell.pid");
    let script = format!(
        "sleep 100 & echo $! > {bg}.tmp && mv {bg}.tmp {bg}; echo $$ > {sh}.tmp && mv {sh}.tmp {sh}; sleep 100",
        bg = background.display(),
        sh = shell.display()
    );
    let mut assignment = assignment(sh(&script));
    assignment.timeout_ms = 1000;
    let attempt = tokio::spawn(async move { run(assignment).await });
    wait_until("the script wrote its pids", || {
        read_pid(&background).is_some() && read_pid(&shell).is_some()
    })
    .await;
    let pids = [read_pid(&background).unwrap(), read_pid(&shell).unwrap()];
    assert!(
        pids.iter().all(|pid| !is_dead(*pid)),
        "{pids:?} already dead"
    );

    let result = attempt.await.unwrap();
    assert!(!result.success);
    assert_eq!(
        result.exit_code, None,
        "killed by a signal, so no exit code"
    );
    assert!(
        result.error.ends_with("baton: timed out after 1000 ms"),
        "{}",
        result.error
    );
    for pid in pids {
        wait_until(&format!("process {pid} is gone"), || is_dead(pid)).await;
    }
}

#[tokio::test]
async fn a_stop_kills_a_group_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The child traps SIGTERM, so only the SIGKILL after the grace period ends it.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {p}.tmp && mv {p}.tmp {p}; while :; do sleep 1; done' & wait",
        p = pid_file.display()
    );
    let control = AttemptControl::new();
    let job = exec_job(&["sh", "-c", &script]);
    let run_control = control.clone();
    let attempt = tokio::spawn(async move { exec::run(&job, &run_control).await });
    wait_until("the child wrote its pid", || read_pid(&pid_file).is_some()).await;
    let pid = read_pid(&pid_file).unwrap();
    control.stop(StopReason::Shutdown);
    let result = tokio::time::timeout(DEADLINE, attempt)
        .await
        .unwrap()
        .unwrap();
    assert!(!result.success);
    wait_until(&format!("process {pid} is gone"), || is_dead(pid)).await;
}

/// Run in a child process by `the_step_dies_with_the_agent`: plays an agent that starts a
/// step, then exits abruptly (no destructors, as after kill -9 of the agent).
#[test]
fn pdeathsig_agent() {
    let Some(dir) = std::env::var_os("BATON_PDEATHSIG_DIR") else {
        return;
    };
    let pid_file = std::path::Path::new(&dir).join("step.pid");
    let script = format!(
        "echo $$ > {p}.tmp && mv {p}.tmp {p}; exec sleep 100",
        p = pid_file.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let job = exec_job(&["sh", "-c", &script]);
        let control = AttemptControl::new();
        let step = exec::run(&job, &control);
        tokio::pin!(step);
        loop {
            tokio::select! {
                _ = &mut step => panic!("the step ended by itself"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {
                    if read_pid(&pid_file).is_some() {
                        std::process::exit(0);
                    }
                }
            }
        }
    });
}

#[tokio::test]
async fn the_step_dies_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "agent::executor::tests::pdeathsig_agent",
            "--test-threads=1",
        ])
        .env("BATON_PDEATHSIG_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, agent.wait())
        .await
        .expect("the fake agent exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let pid = read_pid(&dir.path().join("step.pid")).expect("the step started");
    // Nothing in this process kills it: only PR_SET_PDEATHSIG can.
    wait_until(&format!("step process {pid} is gone"), || is_dead(pid)).await;
}

// ---- noop, sleep, custom ----

#[tokio::test]
async fn noop_succeeds_and_sleep_is_cancellable() {
    let result = run(assignment(Task::Noop(NoopTask {}))).await;
    assert_eq!(result, TaskResult::succeeded(String::new()));

    let short = run(assignment(Task::Sleep(SleepTask { duration_ms: 10 }))).await;
    assert!(short.success);

    let control = AttemptControl::new();
    let executors = Arc::new(executors());
    let mut long = assignment(Task::Sleep(SleepTask {
        duration_ms: 3_600_000,
    }));
    long.timeout_ms = 50;
    let result = tokio::time::timeout(DEADLINE, run_attempt(&executors, long, control))
        .await
        .expect("a timed-out sleep ends")
        .result;
    assert!(!result.success);
    assert_eq!(result.error, "baton: timed out after 50 ms");
}

#[tokio::test]
async fn custom_handlers_get_their_context_and_cancellation() {
    let mut handlers: HashMap<String, Arc<dyn DynHandler>> = HashMap::new();
    let echo = |ctx: TaskContext| async move {
        Ok::<_, TaskError>(format!(
            "{} {} {} {} {} {:?} {:?}",
            ctx.task_type(),
            ctx.payload(),
            ctx.workflow_id(),
            ctx.step(),
            ctx.attempt_id(),
            ctx.input("build"),
            ctx.param("name"),
        ))
    };
    let waits = |ctx: TaskContext| async move {
        ctx.cancelled().await;
        Err::<String, _>(TaskError::new("cancelled").with_output("half done"))
    };
    let stubborn = |_ctx: TaskContext| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, TaskError>(String::new())
    };
    handlers.insert("echo".into(), Arc::new(Erased(Arc::new(echo))));
    handlers.insert("waits".into(), Arc::new(Erased(Arc::new(waits))));
    handlers.insert("stubborn".into(), Arc::new(Erased(Arc::new(stubborn))));
    let executors = executors_with(handlers);
    assert_eq!(
        executors.task_types(),
        ["exec", "http", "noop", "sleep", "echo", "stubborn", "waits"]
    );

    let custom = |task_type: &str| {
        assignment(Task::Custom(CustomTask {
            r#type: task_type.into(),
            payload: "{\"size\": 3}".into(),
        }))
    };
    let result = run_with(&executors, custom("echo")).await;
    assert!(result.success);
    assert_eq!(
        result.output,
        "echo {\"size\": 3} 42 deploy 1001 Some(\"artifact-7\") Some(\"ada\")"
    );

    let mut waits = custom("waits");
    waits.timeout_ms = 50;
    let result = run_with(&executors, waits).await;
    assert!(!result.success);
    assert_eq!(result.output, "half done");
    assert_eq!(result.error, "cancelled\nbaton: timed out after 50 ms");

    let mut stubborn = custom("stubborn");
    stubborn.timeout_ms = 50;
    let result = run_with(&executors, stubborn).await;
    assert!(!result.success);
    assert!(
        result.error.contains("did not return within"),
        "{}",
        result.error
    );

    let result = run_with(&executors, custom("unregistered")).await;
    assert!(!result.success);
    assert!(result.error.contains("no handler"), "{}", result.error);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_only() {
    let mut handlers: HashMap<String, Arc<dyn DynHandler>> = HashMap::new();
    let panics = |ctx: TaskContext| async move {
        if ctx.attempt_id() > 0 {
            panic!("handler bug");
        }
        Ok::<_, TaskError>(String::new())
    };
    handlers.insert("panics".into(), Arc::new(Erased(Arc::new(panics))));
    let result = run_with(
        &executors_with(handlers),
        assignment(Task::Custom(CustomTask {
            r#type: "panics".into(),
            payload: String::new(),
        })),
    )
    .await;
    assert!(!result.success);
    assert_eq!(result.error, "the task panicked");
}

// ---- http ----

/// A tiny HTTP/1.1 server: `/echo` answers 200 with the method, a header and the body;
/// `/status/N` answers N; `/big` sends 1 MiB; `/hang` never answers. One request per
/// connection (it closes after answering).
async fn http_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let head_end = loop {
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|line| {
                            let (key, value) = line.split_once(':')?;
                            key.eq_ignore_ascii_case(name)
                                .then(|| value.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while request.len() < head_end + length {
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                let mut parts = head.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let (status, answer) = if path == "/echo" {
                    (200, format!("{method} {} {body}", header("x-token")))
                } else if let Some(code) = path.strip_prefix("/status/") {
                    (code.parse().unwrap_or(500), format!("status {code}"))
                } else if path == "/big" {
                    (200, "b".repeat(1024 * 1024))
                } else if path == "/hang" {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                } else {
                    (404, "not found".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    address
}

fn http_task(method: &str, url: String) -> HttpTask {
    HttpTask {
        method: method.into(),
        url,
        ..Default::default()
    }
}

#[tokio::test]
async fn http_status_decides_and_the_body_is_the_output() {
    let address = http_server().await;
    let mut echo = http_task("post", format!("http://{address}/echo"));
    echo.headers = BTreeMap::from([("X-Token".to_string(), "{{ input.name }}".to_string())]);
    echo.body = "built {{ steps.build.output }}".into();
    let result = run(assignment(Task::Http(echo))).await;
    assert!(result.success, "{result:?}");
    assert_eq!(result.output, "POST ada built artifact-7");

    let result = run(assignment(Task::Http(http_task(
        "",
        format!("http://{address}/status/503"),
    ))))
    .await;
    assert!(!result.success);
    assert_eq!(result.output, "status 503");
    assert!(result.error.contains("503"), "{}", result.error);

    let mut accepted = http_task("GET", format!("http://{address}/status/503"));
    accepted.success_statuses = vec![503];
    assert!(run(assignment(Task::Http(accepted))).await.success);

    let result = run(assignment(Task::Http(http_task(
        "GET",
        format!("http://{address}/big"),
    ))))
    .await;
    assert!(result.success);
    assert_eq!(result.output.len(), OUTPUT_BYTES_MAX);
}

#[tokio::test]
async fn http_timeout_and_refusals_fail_the_attempt() {
    let address = http_server().await;
    let mut hang = assignment(Task::Http(http_task(
        "GET",
        format!("http://{address}/hang"),
    )));
    hang.timeout_ms = 100;
    let result = run(hang).await;
    assert!(!result.success);
    assert!(
        result.error.ends_with("baton: timed out after 100 ms"),
        "{}",
        result.error
    );

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = run(assignment(Task::Http(http_task(
        "GET",
        format!("http://{dead}/"),
    ))))
    .await;
    assert!(!result.success);
    assert!(
        result.error.starts_with("http request failed"),
        "{}",
        result.error
    );

    let result = run(assignment(Task::Http(http_task("GET", "ftp://x/".into())))).await;
    assert!(!result.success);
    assert!(
        result.error.contains("not an http or https url"),
        "{}",
        result.error
    );
}

#[test]
fn success_statuses_default_to_2xx() {
    assert!(is_success(&[], 200));
    assert!(is_success(&[], 299));
    assert!(!is_success(&[], 300));
    assert!(!is_success(&[], 199));
    assert!(is_success(&[404], 404));
    assert!(!is_success(&[404], 200));
}

#[test]
fn error_lines_keep_the_error_within_bounds() {
    let mut result = TaskResult::failed("x".repeat(OUTPUT_BYTES_MAX));
    result.add_error_line("baton: timed out after 5 ms");
    assert_eq!(result.error.len(), OUTPUT_BYTES_MAX);
    assert!(result.error.ends_with("x\nbaton: timed out after 5 ms"));
    let mut empty = TaskResult::failed("");
    empty.add_error_line("reason");
    assert_eq!(empty.error, "reason");
}

/// Executors whose secrets come from a folder holding `token` and `db-password`.
fn executors_with_secrets() -> (Executors, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok-3f9a1c\n").unwrap();
    std::fs::write(dir.path().join("db-password"), "pw-8e7d").unwrap();
    let executors = executors().with_secrets(crate::agent::secrets::SecretSource {
        dir: Some(dir.path().to_owned()),
    });
    (executors, dir)
}

#[tokio::test]
async fn a_secret_fills_its_template_and_never_comes_back_in_what_the_step_printed() {
    let (executors, _dir) = executors_with_secrets();
    let mut task = ExecTask {
        command: vec![
            "sh".into(),
            "-c".into(),
            // Prints both secrets (the argument and the variable), fails naming one.
            "echo \"arg={{ secrets.token }} env=$DB\"; echo \"bad password $DB\" >&2; exit 3"
                .into(),
        ],
        ..Default::default()
    };
    task.env
        .insert("DB".into(), "{{ secrets.db-password }}".into());
    let result = run_with(&executors, assignment(Task::Exec(task))).await;
    assert!(!result.success);
    assert_eq!(result.exit_code, Some(3));
    // The process had the values; the report has none.
    assert_eq!(result.output.trim(), "arg=*** env=***");
    assert!(
        result.error.contains("bad password ***"),
        "{}",
        result.error
    );
    assert!(!result.output.contains("tok-3f9a1c") && !result.error.contains("pw-8e7d"));
}

#[tokio::test]
async fn a_secret_the_agent_lacks_fails_the_attempt_naming_it_and_runs_nothing() {
    let (executors, dir) = executors_with_secrets();
    let marker = dir.path().join("ran");
    let script = format!("echo {{{{ secrets.api-key }}}}; touch {}", marker.display());
    let result = run_with(&executors, assignment(sh(&script))).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "exec.command[2]: template \"{{ secrets.api-key }}\" names secret \"api-key\", which this \
         agent does not have (a file \"api-key\" in its --secrets-dir, or BATON_SECRET_API_KEY \
         in its environment)"
    );
    assert!(!marker.exists(), "the step ran");
}

#[tokio::test]
async fn a_step_reads_only_its_own_namespaces_secrets() {
    let (executors, dir) = executors_with_secrets();
    std::fs::create_dir(dir.path().join("team-a")).unwrap();
    std::fs::write(dir.path().join("team-a").join("token"), "team-a-tok").unwrap();
    let mut of_team_a = assignment(sh("echo {{ secrets.token }}"));
    of_team_a.namespace = "team-a".into();
    let result = run_with(&executors, of_team_a.clone()).await;
    assert!(result.success, "{}", result.error);
    assert_eq!(result.output.trim(), "***");
    // default's secret of the same name is not team-a's, and team-a has no db-password.
    let mut other = assignment(sh("echo {{ secrets.db-password }}"));
    other.namespace = "team-a".into();
    let result = run_with(&executors, other).await;
    assert!(
        result.error.contains(
            "a file \"team-a/db-password\" in its --secrets-dir: a step of namespace team-a \
             reads that namespace's secrets only"
        ),
        "{}",
        result.error
    );
}
