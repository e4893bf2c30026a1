//! Real processes for tests: `batond` nodes and `baton agent`s from the binaries this workspace
//! builds, through `baton-launch` (the launcher `batond dev`, the bench and the chaos suite use):
//! on loopback ports reserved for the test (no other test, launcher or kernel choice can take
//! them while the test holds its [`Ports`]), logging to files in the test's temporary folder,
//! each in its own process group, and killed when dropped so a failing test leaves nothing behind.
//!
//! The `baton` binary is taken from beside `batond`: `cargo test --workspace` builds both; when
//! running one test alone, build it first (`cargo build -p baton-client --bin baton`).

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use baton_launch::Ports;
pub use baton_launch::Supervised as Proc;
pub use baton_launch::ports::loopback;
use baton_launch::{NodeSpec, PortPicker};

/// Fast Raft timing for tests.
const TEST_TIMING: [&str; 6] = [
    "--heartbeat-ms",
    "50",
    "--election-timeout-min-ms",
    "300",
    "--election-timeout-max-ms",
    "600",
];

/// `n` loopback ports for this test's processes, reserved until the result is dropped: keep it
/// as long as the processes (restarts included).
pub fn reserve_ports(n: usize) -> Ports {
    baton_launch::reserve(n).expect("reserve loopback ports")
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
    let baton = batond_binary().with_file_name(baton_launch::bins::BATON);
    assert!(
        baton.is_file(),
        "{} not found: `cargo test --workspace` builds it; alone, run \
         `cargo build -p baton-client --bin baton` first",
        baton.display()
    );
    baton
}

pub fn batond_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_batond"))
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn spawn(command: Command, log: &Path, what: &str) -> Proc {
    Proc::spawn(command, log).unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// Node `id` (1-based) of a cluster whose nodes listen on `grpc`: data in `dir/node{id}`, log in
/// `dir/node{id}.log`, insecure, fast test timing, `extra` flags appended.
pub fn node_spec(id: usize, grpc: &[u16], dir: &Path, extra: &[&str]) -> NodeSpec {
    let addrs = loopbacks(grpc);
    NodeSpec::new(id as u64, addrs[id - 1], dir)
        .initial_cluster(baton_launch::initial_cluster((1..).zip(&addrs)))
        .args(TEST_TIMING)
        .args(extra.iter().copied())
}

/// Node `id` (1-based) of a cluster whose nodes listen on `grpc` (see [`node_spec`]).
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
    let mut spec = node_spec(id, grpc, dir, extra);
    for (key, value) in env {
        spec = spec.env(*key, *value);
    }
    spawn(spec.command(&batond_binary()), &spec.log, "batond")
}

/// Starts nodes 1..=`n` of a new cluster in `dir` (as [`spawn_node`], with `extra`) on ports
/// reserved for it, and waits until each one listens; a node that finds its port taken after
/// all (a foreign program) makes the whole cluster start again on new ports. Keep the ports as
/// long as the nodes.
pub async fn start_nodes(n: usize, dir: &Path, extra: &[&str]) -> (Ports, Vec<Proc>) {
    start_nodes_picking(&mut PortPicker::new(), n, dir, extra).await
}

/// [`start_nodes`] with the ports chosen by `picker` (a test forces a taken port this way).
pub async fn start_nodes_picking(
    picker: &mut PortPicker,
    n: usize,
    dir: &Path,
    extra: &[&str],
) -> (Ports, Vec<Proc>) {
    let (nodes, ports) = baton_launch::launch(
        picker,
        n,
        baton_launch::ATTEMPTS,
        async |attempt, ports: &Ports| {
            let specs: Vec<NodeSpec> = (1..=n).map(|id| node_spec(id, ports, dir, extra)).collect();
            if attempt > 1 {
                for spec in &specs {
                    let _ = std::fs::remove_dir_all(&spec.data_dir);
                }
            }
            baton_launch::spawn_nodes(&batond_binary(), &specs, Default::default()).await
        },
    )
    .await
    .expect("start the cluster's nodes");
    (ports, nodes)
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
    spawn_agent_env(name, endpoints, dir, global, extra, &[])
}

/// [`spawn_agent`] with environment variables added to the test's own.
pub fn spawn_agent_env(
    name: &str,
    endpoints: &str,
    dir: &Path,
    global: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut command = Command::new(baton_binary());
    command
        .args(["--endpoints", endpoints])
        .args(global)
        .args(["agent", "--name", name])
        .args(extra)
        .envs(env.iter().copied());
    spawn(command, &log_path(dir, name), "baton agent")
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
    let mut command = Command::new(batond_binary());
    command.args(args).args(TEST_TIMING);
    spawn(command, &log_path(dir, name), "batond")
}

/// Any other long-running program of a test (Prometheus), supervised the same way.
pub fn spawn_program(program: &Path, args: &[OsString], dir: &Path, name: &str) -> Proc {
    let mut command = Command::new(program);
    command.args(args);
    spawn(
        command,
        &log_path(dir, name),
        &program.display().to_string(),
    )
}

/// Runs a one-shot command (`batond restore`, `baton cluster ...`) to its end: exit code,
/// stdout, stderr. No `baton` context of this machine's user applies (`batond dev` saves one).
pub fn run_to_end(program: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("BATON_CLIENT_CONFIG", "/nonexistent/baton/config.toml")
        .env_remove("BATON_CONTEXT")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
