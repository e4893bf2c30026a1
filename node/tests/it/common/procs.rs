//! Real processes for tests: `batond` nodes and `baton agent`s from the binaries this workspace
//! builds, on free loopback ports, logging to files in the test's temporary folder, and killed
//! when dropped so a failing test leaves nothing behind.
//!
//! The `baton` binary is taken from beside `batond`: `cargo test --workspace` builds both; when
//! running one test alone, build it first (`cargo build -p baton-client --bin baton`).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process, SIGKILLed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap: the process is gone when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Free loopback ports: bound to learn them, then released for the processes to bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn loopbacks(ports: &[u16]) -> Vec<SocketAddr> {
    ports.iter().map(|p| loopback(*p)).collect()
}

/// `--endpoints` for a client or agent: every node, comma-separated.
pub fn endpoints_flag(ports: &[u16]) -> String {
    loopbacks(ports)
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn baton_binary() -> PathBuf {
    let baton = Path::new(env!("CARGO_BIN_EXE_batond")).with_file_name("baton");
    assert!(
        baton.is_file(),
        "{} not found: `cargo test --workspace` builds it; alone, run \
         `cargo build -p baton-client --bin baton` first",
        baton.display()
    );
    baton
}

fn log_file(dir: &Path, name: &str) -> (Stdio, Stdio) {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create log file");
    (log.try_clone().expect("clone log file").into(), log.into())
}

/// Node `id` (1-based) of a cluster whose nodes listen on `grpc`, with its data in
/// `dir/node{id}` and its log in `dir/node{id}.log`; fast test timing; `extra` flags appended.
pub fn spawn_node(id: usize, grpc: &[u16], dir: &Path, extra: &[&str]) -> Proc {
    spawn_node_env(id, grpc, dir, extra, &[])
}

/// [`spawn_node`] with environment variables added to the test's own (e.g. `LD_PRELOAD`).
pub fn spawn_node_env(
    id: usize,
    grpc: &[u16],
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &OsStr)],
) -> Proc {
    let cluster: Vec<String> = grpc
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={}", i + 1, loopback(*p)))
        .collect();
    let (stdout, stderr) = log_file(dir, &format!("node{id}"));
    let child = Command::new(env!("CARGO_BIN_EXE_batond"))
        .args(["--insecure", "--node-id", &id.to_string()])
        .args(["--listen", &loopback(grpc[id - 1]).to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("node{id}")))
        .args(["--initial-cluster", &cluster.join(",")])
        .args([
            "--heartbeat-ms",
            "50",
            "--election-timeout-min-ms",
            "300",
            "--election-timeout-max-ms",
            "600",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn batond");
    Proc { child }
}

/// A `baton agent` named `name` connected to `endpoints`, logging to `dir/{name}.log`;
/// `global` flags go before the `agent` subcommand, `extra` after it.
pub fn spawn_agent(
    name: &str,
    endpoints: &str,
    dir: &Path,
    global: &[&str],
    extra: &[&str],
) -> Proc {
    let (stdout, stderr) = log_file(dir, name);
    let child = Command::new(baton_binary())
        .args(["--endpoints", endpoints])
        .args(global)
        .args(["agent", "--name", name])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn baton agent");
    Proc { child }
}

/// Asks process `proc` to stop (SIGTERM), as systemd, Kubernetes or docker would.
pub fn sigterm(proc: &Proc) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(proc.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {}", proc.pid());
}

/// `batond` with arbitrary arguments (a node outside `spawn_node`'s shape, e.g. one that joins
/// a running cluster), logging to `dir/{name}.log`.
pub fn spawn_batond(name: &str, dir: &Path, args: &[&str]) -> Proc {
    let (stdout, stderr) = log_file(dir, name);
    let child = Command::new(env!("CARGO_BIN_EXE_batond"))
        .args(args)
        .args([
            "--heartbeat-ms",
            "50",
            "--election-timeout-min-ms",
            "300",
            "--election-timeout-max-ms",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn batond");
    Proc { child }
}

/// Runs a one-shot command (`batond restore`, `baton cluster ...`) to its end: exit code,
/// stdout, stderr.
pub fn run_to_end(program: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn batond_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_batond"))
}
