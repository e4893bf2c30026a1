//! The CPU and memory around a run: self-started nodes and agents, and this bench process,
//! sampled from /proc before the first submit and after the last workflow.

use super::cluster::{self, ProcSample};
use super::usage::NodeUsage;

/// The processes whose resources the report shows.
#[derive(Default)]
pub struct Pids {
    /// `(node id, pid)`: self-started nodes only.
    pub nodes: Vec<(u64, u32)>,
    /// Self-started agents; `None` against `--endpoints`.
    pub agents: Option<Vec<u32>>,
}

/// CPU seconds that `pids` used so far, from /proc; `None` if one cannot be read.
fn cpu_seconds(pids: &[u32], ticks_per_second: u64) -> Option<f64> {
    let ticks = pids
        .iter()
        .map(|&pid| cluster::sample(pid).map(|s| s.cpu_ticks))
        .sum::<Option<u64>>()?;
    Some(ticks as f64 / ticks_per_second as f64)
}

/// The samples taken before the run.
pub struct Before {
    ticks_per_second: u64,
    nodes: Vec<Option<ProcSample>>,
    bench_cpu_seconds: Option<f64>,
    agents_cpu_seconds: Option<f64>,
}

/// What the report shows of the resources used over the run.
pub struct Used {
    pub nodes: Vec<NodeUsage>,
    pub agents_cpu_percent: Option<f64>,
    pub bench_cpu_percent: f64,
}

impl Before {
    pub fn sample(pids: &Pids) -> Before {
        let ticks_per_second = cluster::clock_ticks_per_second();
        let nodes: Vec<_> = pids
            .nodes
            .iter()
            .map(|&(_, pid)| cluster::sample(pid))
            .collect();
        let bench_cpu_seconds = cpu_seconds(&[std::process::id()], ticks_per_second);
        let agents_cpu_seconds = pids
            .agents
            .as_deref()
            .and_then(|agents| cpu_seconds(agents, ticks_per_second));
        Before {
            ticks_per_second,
            nodes,
            bench_cpu_seconds,
            agents_cpu_seconds,
        }
    }

    /// What was used since, over `wall_seconds`: 100 % = one core busy all along.
    pub fn used(self, pids: &Pids, wall_seconds: f64) -> Used {
        let ticks_per_second = self.ticks_per_second;
        let percent = |before: Option<f64>, after: Option<f64>| {
            Some(100.0 * (after? - before?).max(0.0) / wall_seconds)
        };
        let bench_cpu_percent = percent(
            self.bench_cpu_seconds,
            cpu_seconds(&[std::process::id()], ticks_per_second),
        )
        .unwrap_or(0.0);
        let agents_cpu_percent = percent(
            self.agents_cpu_seconds,
            pids.agents
                .as_deref()
                .and_then(|agents| cpu_seconds(agents, ticks_per_second)),
        );
        let nodes = pids
            .nodes
            .iter()
            .zip(self.nodes)
            .filter_map(|(&(node_id, pid), before)| {
                cluster::usage(node_id, pid, before, wall_seconds)
            })
            .collect();
        Used {
            nodes,
            agents_cpu_percent,
            bench_cpu_percent,
        }
    }
}
