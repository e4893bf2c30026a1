//! Starting a cluster on reserved ports, and starting it again on new ones when a child could not
//! bind its port: [`launch`] drives the attempts, [`decide`] is the rule, [`wait_listening`]
//! tells a child that holds its ports from one that does not (see the crate's header).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::child::{SpawnOptions, Supervised};
use crate::node::NodeSpec;
use crate::ports::{PortPicker, Ports};

/// Attempts at most, the first included.
pub const ATTEMPTS: u32 = 5;

/// How long a child may take to listen on its ports. Generous: two cores running a parallel test
/// suite start a node slowly.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a failed child's log is read and reported.
const LOG_TAIL_BYTES: u64 = 4096;

/// Why a start attempt failed.
#[derive(Clone, Debug)]
pub enum StartFailure {
    /// A child exited before it held its ports.
    Exited {
        who: String,
        status: String,
        log: PathBuf,
        /// The end of what it wrote, this run only.
        log_tail: String,
    },
    /// A child still running did not hold its ports within the time allowed.
    NotListening {
        who: String,
        ports: Vec<u16>,
        waited: Duration,
        log: PathBuf,
    },
}

impl StartFailure {
    /// A child said that an address it had to bind was in use: new ports may help.
    pub fn port_conflict(&self) -> bool {
        match self {
            StartFailure::Exited { log_tail, .. } => is_port_conflict(log_tail),
            StartFailure::NotListening { .. } => false,
        }
    }
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFailure::Exited {
                who,
                status,
                log,
                log_tail,
            } => {
                let last = log_tail.trim_end().lines().last().unwrap_or("");
                write!(
                    f,
                    "{who} exited at start ({status}): {last} (log: {})",
                    log.display()
                )
            }
            StartFailure::NotListening {
                who,
                ports,
                waited,
                log,
            } => write!(
                f,
                "{who} was not listening on {ports:?} after {waited:?} (log: {})",
                log.display()
            ),
        }
    }
}

impl std::error::Error for StartFailure {}

/// How `batond` (`batond: --listen ADDR: Address already in use (os error 98)`, and the same for
/// `--metrics-listen` and `--health-listen`), `baton agent --metrics-listen` and etcd (`bind:
/// address already in use`) say that a port was taken.
pub fn is_port_conflict(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// New ports for the whole cluster, and start again.
    Retry,
    GiveUp,
}

/// After attempt `attempt` (from 1) of `attempts` failed with `failure`: only a port taken
/// under a child is worth new ports, and only while attempts are left.
pub fn decide(failure: &StartFailure, attempt: u32, attempts: u32) -> Decision {
    if failure.port_conflict() && attempt < attempts {
        Decision::Retry
    } else {
        Decision::GiveUp
    }
}

/// What ends one attempt: a failed start (which [`decide`] judges) or anything else (which ends
/// the launch at once).
#[derive(Debug)]
pub enum AttemptError {
    Start(StartFailure),
    Other(anyhow::Error),
}

impl From<StartFailure> for AttemptError {
    fn from(failure: StartFailure) -> Self {
        AttemptError::Start(failure)
    }
}

impl From<anyhow::Error> for AttemptError {
    fn from(error: anyhow::Error) -> Self {
        AttemptError::Other(error)
    }
}

impl From<io::Error> for AttemptError {
    fn from(error: io::Error) -> Self {
        AttemptError::Other(error.into())
    }
}

/// Starts something that needs `count` ports: reserves them with `picker`, runs `start(attempt,
/// &ports)`, and while it fails on a port conflict and attempts are left, reserves new ports and
/// runs it again. `start` owns what it spawns until it returns it, so a failed attempt's
/// processes are gone (dropped) before the next; it must start from a clean slate on an attempt
/// after the first (data folders of the failed one removed). The ports stay reserved as long as
/// the returned [`Ports`] lives: keep it as long as the cluster.
pub async fn launch<T>(
    picker: &mut PortPicker,
    count: usize,
    attempts: u32,
    mut start: impl AsyncFnMut(u32, &Ports) -> Result<T, AttemptError>,
) -> anyhow::Result<(T, Ports)> {
    let mut attempt = 1;
    loop {
        let ports = picker.reserve(count)?;
        match start(attempt, &ports).await {
            Ok(started) => return Ok((started, ports)),
            Err(AttemptError::Other(error)) => return Err(error),
            Err(AttemptError::Start(failure)) => match decide(&failure, attempt, attempts) {
                Decision::Retry => {
                    eprintln!(
                        "baton-launch: {failure}; starting again on new ports (attempt {} of \
                         {attempts})",
                        attempt + 1
                    );
                    attempt += 1;
                }
                Decision::GiveUp if failure.port_conflict() => {
                    anyhow::bail!("{failure}; gave up after {attempt} attempts on new ports")
                }
                Decision::GiveUp => return Err(failure.into()),
            },
        }
    }
}

/// Waits until `child` holds a listening socket on each of `ports`. It exiting first, or not
/// listening within `timeout`, is a [`StartFailure`] naming it `who`.
pub async fn wait_listening(
    child: &mut Supervised,
    who: &str,
    ports: &[u16],
    timeout: Duration,
) -> Result<(), AttemptError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(StartFailure::Exited {
                who: who.to_owned(),
                status: status.to_string(),
                log: child.log().to_path_buf(),
                log_tail: child.log_tail(LOG_TAIL_BYTES),
            }
            .into());
        }
        let held = listening_ports(child.pid());
        if ports.iter().all(|p| held.contains(p)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::NotListening {
                who: who.to_owned(),
                ports: ports.to_vec(),
                waited: timeout,
                log: child.log().to_path_buf(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spawns every node of `specs` with `batond`, then waits until each holds its ports
/// ([`NodeSpec::ports`]). On a failure the nodes spawned so far are dropped (killed).
pub async fn spawn_nodes(
    batond: &Path,
    specs: &[NodeSpec],
    options: SpawnOptions,
) -> Result<Vec<Supervised>, AttemptError> {
    let mut nodes = Vec::with_capacity(specs.len());
    for spec in specs {
        let node = Supervised::spawn_with(spec.command(batond), &spec.log, options)
            .map_err(|e| anyhow::anyhow!("starting node {}: {e}", spec.id))?;
        nodes.push(node);
    }
    for (spec, node) in specs.iter().zip(&mut nodes) {
        wait_listening(
            node,
            &format!("node {}", spec.id),
            &spec.ports(),
            LISTEN_TIMEOUT,
        )
        .await?;
    }
    Ok(nodes)
}

/// The TCP ports on which process `pid` holds a listening socket: the inodes of the sockets
/// among its descriptors, looked up in its network namespace's TCP tables.
pub fn listening_ports(pid: u32) -> HashSet<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| socket_inode(&target.to_string_lossy()))
        .collect();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            ports.extend(listening_in_table(&text, &inodes));
        }
    }
    ports
}

/// `socket:[INODE]`, a descriptor's link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The local ports of the LISTEN sockets (state `0A`) of `/proc/net/tcp`-style `table` whose
/// inode is one of `inodes`.
pub fn listening_in_table(table: &str, inodes: &HashSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.contains(&inode.parse().ok()?) {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(log_tail: &str) -> StartFailure {
        StartFailure::Exited {
            who: "node 2".into(),
            status: "exit status: 1".into(),
            log: "/d/node2.log".into(),
            log_tail: log_tail.into(),
        }
    }

    #[test]
    fn only_a_taken_port_is_retried_and_only_while_attempts_are_left() {
        let batond = exited(
            "2026-01-01T00:00:00Z INFO opening\nbatond: --listen 127.0.0.1:20002: Address \
             already in use (os error 98)\n",
        );
        let metrics = exited(
            "batond: --metrics-listen 127.0.0.1:20009: failed to create HTTP listener: Address \
             already in use (os error 98)\n",
        );
        let etcd = exited(
            "{\"level\":\"fatal\",\"msg\":\"listen tcp 127.0.0.1:20003: bind: address already \
             in use\"}\n",
        );
        for failure in [&batond, &metrics, &etcd] {
            assert!(failure.port_conflict(), "{failure}");
            assert_eq!(decide(failure, 1, ATTEMPTS), Decision::Retry);
            assert_eq!(decide(failure, ATTEMPTS - 1, ATTEMPTS), Decision::Retry);
            assert_eq!(decide(failure, ATTEMPTS, ATTEMPTS), Decision::GiveUp);
        }
        // Anything else is not helped by new ports.
        let foreign = exited("batond: /d/node2 is not a batond data dir\n");
        assert_eq!(decide(&foreign, 1, ATTEMPTS), Decision::GiveUp);
        let slow = StartFailure::NotListening {
            who: "node 1".into(),
            ports: vec![20001],
            waited: LISTEN_TIMEOUT,
            log: "/d/node1.log".into(),
        };
        assert_eq!(decide(&slow, 1, ATTEMPTS), Decision::GiveUp);
        assert_eq!(
            batond.to_string(),
            "node 2 exited at start (exit status: 1): batond: --listen 127.0.0.1:20002: Address \
             already in use (os error 98) (log: /d/node2.log)"
        );
    }

    #[test]
    fn listening_sockets_are_read_from_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n   \
            1: 0100007F:4E22 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n   \
            2: 0100007F:4E23 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1\n";
        let ours: HashSet<u64> = [111, 333].into();
        // 0x4E21 = 20001 is ours and listening; 20002 is someone else's; 333 is a connection.
        assert_eq!(listening_in_table(table, &ours), [20001]);
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn this_process_is_seen_holding_its_listener_and_not_anothers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        drop(listener);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }

    #[tokio::test]
    async fn a_child_that_cannot_bind_is_retried_on_new_ports() {
        // A stand-in for batond: python binds the port it is given, as a node binds --listen.
        if std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("no python3: skipped (node/tests/it/t50_processes.rs does it with batond)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let mut picker = PortPicker::trying_first([taken]);
        let mut tried = Vec::new();
        let (mut child, ports) = launch(&mut picker, 1, ATTEMPTS, async |_, ports: &Ports| {
            tried.push(ports[0]);
            let mut command = std::process::Command::new("python3");
            command.args([
                "-c",
                "import socket,sys,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, \
                 socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\n\
                 time.sleep(60)",
                &ports[0].to_string(),
            ]);
            let log = dir.path().join("server.log");
            let mut child = Supervised::spawn(command, &log)?;
            wait_listening(&mut child, "server", ports, Duration::from_secs(30)).await?;
            Ok(child)
        })
        .await
        .unwrap();
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_eq!(tried[0], taken);
        assert_ne!(ports[0], taken);
        assert!(listening_ports(child.pid()).contains(&ports[0]));
        child.kill();
    }
}
