//! `baton-launch`: the one launcher of real `batond` and `baton agent` processes on this machine,
//! shared by `batond dev`, `baton bench --start-cluster` (and its etcd yardstick), the chaos suite
//! and the node's process tests. It holds what they all need and nothing of the node itself (no
//! RocksDB): where the binaries are ([`bins`]), a node's command line ([`NodeSpec`]), a supervised
//! child ([`Supervised`]: its own process group, PR_SET_PDEATHSIG, output to a log file, killed
//! on drop, SIGTERM then SIGKILL to stop), the ports ([`ports`]), starting a cluster with a
//! bounded retry ([`launch`]), and CPU and memory samples from `/proc` ([`sample`]).
//!
//! # Ports that cannot race
//!
//! Binding port 0, reading the port and closing the listener before the child binds it leaves a
//! window in which anything else may take the port: another test binding port 0, the source port
//! of any outgoing connection, another launcher doing the same. Three layers close it:
//!
//! 1. **Outside the kernel's reach.** Ports are chosen from 10000-65535 *outside*
//!    `/proc/sys/net/ipv4/ip_local_port_range` (32768-60999 by default, so 10000-32767 and
//!    61000-65535). The kernel hands out ports only from that range, both to `bind(port 0)` and
//!    to the implicit bind of `connect()`, so no kernel-chosen port can ever be one of ours: not
//!    the in-process test clusters' listeners, not the chaos proxies', not a client's source port.
//! 2. **Reserved among launchers.** Each chosen port is locked for as long as its [`Ports`] lives:
//!    an open-file-description lock (`F_OFD_SETLK`) on the byte at offset PORT of one shared file,
//!    `$TMPDIR/baton-launch-ports.lock`. Every launcher, in this process (parallel tests) or any
//!    other (a bench beside a test run), skips a locked port; the kernel drops the locks when the
//!    holder exits, however it exits. A cluster keeps its `Ports` for its whole life, so a node
//!    killed and restarted gets its port back: no other launcher can have taken it meanwhile.
//!    A port is also checked free (bound and closed at once) before it is handed out.
//! 3. **Checked, and retried.** What is left is a program that binds a fixed port of that band
//!    on its own, between the check and the child's bind. [`launch`] starts a cluster's
//!    processes and waits until each one *holds* its ports (its own listening socket, read from
//!    `/proc/PID/fd` and `/proc/PID/net/tcp`, so a port answered by someone else does not count).
//!    A child that exits first with "Address already in use" in its log (how `batond`, `baton
//!    agent` and etcd report a failed bind: `batond: --listen ADDR: Address already in use (os
//!    error 98)`) makes the whole attempt fail: every process of it is stopped, new ports are
//!    chosen for the whole cluster, and it starts again, at most [`ATTEMPTS`] times, each reason
//!    printed on stderr. The decision is the pure [`decide`].
//!
//! Where `ip_local_port_range` leaves no band (it covers 10000-65535), ports come from the
//! ephemeral range itself: layers 2 and 3 still hold, and layer 3 then carries the kernel case.
//! The one window left by design: a node stopped for a while (a test's restart, the chaos suite's
//! kill) can lose its port to a *foreign* program binding that fixed port in the meantime; the
//! node then fails to start, visibly, and nothing else is affected.

pub mod bins;
pub mod child;
pub mod launch;
pub mod node;
pub mod ports;
pub mod sample;

pub use child::{SpawnOptions, Supervised};
pub use launch::{
    ATTEMPTS, AttemptError, Decision, StartFailure, decide, is_port_conflict, launch,
    listening_ports, spawn_nodes, wait_listening,
};
pub use node::{NodeSpec, Security, initial_cluster};
pub use ports::{PortPicker, Ports, reserve};
