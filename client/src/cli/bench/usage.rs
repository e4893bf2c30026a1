//! What a bench reports of one server process (a Baton node or an etcd member): a type of its
//! own, so that the launchers that sample processes and the report that prints them need not
//! know each other.

use serde::Serialize;

/// One self-started node's resources over the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeUsage {
    pub node_id: u64,
    /// CPU time over wall time of the measured run: 100 = one core busy all along.
    pub cpu_percent: f64,
    pub rss_mib: f64,
    pub rss_peak_mib: f64,
}
