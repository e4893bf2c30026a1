//! What a bench measured: latency histograms summarised, per-node resources, and the report
//! (Baton's, and etcd's with `--compare-etcd`) printed as a table or JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::usage::NodeUsage;

/// Latencies are recorded in microseconds; this bounds them (an hour) and keeps 3 significant
/// digits, so a percentile is within 0.1% of the true value.
const LATENCY_US_MAX: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// Records `us`, clamped into the histogram's range (a latency of 0 counts as 1 µs: the
/// lowest value, and a sign of a clock coarser than the event).
pub fn record(histogram: &mut Histogram<u64>, us: u64) {
    histogram.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// p50, p99 and max of one latency, in milliseconds; all 0 when nothing was recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Everything one run measured, as printed.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub shape: String,
    pub steps_per_workflow: u32,
    /// Every workflow had its own spec (`--distinct-specs`).
    pub distinct_specs: bool,
    pub clients: u32,
    /// Workflows per submit call (`--batch`); 1 = one Submit each.
    pub batch: u32,
    /// Workflows per second asked for with `--rate`; absent: as fast as the clients go.
    pub rate: Option<f64>,
    pub submitted: u64,
    pub accepted: u64,
    pub submit_errors: u64,
    /// The first submit error, for the reader to see why.
    pub first_submit_error: Option<String>,
    pub submit_seconds: f64,
    pub workflows_accepted_per_second: f64,
    pub workflows_succeeded: u64,
    pub workflows_failed: u64,
    /// Accepted but not finished when the drain timeout ran out.
    pub workflows_unfinished: u64,
    pub steps_completed: u64,
    /// From the first submit to the last workflow's end, in the leader's clock.
    pub run_seconds: f64,
    pub steps_completed_per_second: f64,
    /// Client-side: from sending a submit (with `--batch`, a SubmitBatch call) to its
    /// acknowledgement; one sample per call.
    pub submit_ack: LatencySummary,
    /// Leader clock: from the WORKFLOW_SUBMITTED event to the workflow's first STEP_ASSIGNED.
    pub submit_to_start: LatencySummary,
    /// Leader clock: from WORKFLOW_SUBMITTED to WORKFLOW_FINISHED.
    pub submit_to_end: LatencySummary,
    /// Self-started nodes only (empty against `--endpoints`).
    pub nodes: Vec<NodeUsage>,
    /// The self-started agents together (absent against `--endpoints`): 100 = one core.
    pub agents_cpu_percent: Option<f64>,
    /// This bench process (the load generator and the watch) over the run: 100 = one core.
    pub bench_cpu_percent: f64,
    /// `--kill-leader` only: leaders SIGKILLed (and restarted) during the run.
    pub leader_kills: Option<u64>,
    /// `--kill-leader` only: kills that no step assignment followed before the run ended.
    pub kills_without_assignment: Option<u64>,
    /// `--kill-leader` only: from the kill (bench clock) to the next step assignment proposed
    /// (leader clock; one machine, one clock).
    pub kill_to_assignment: Option<LatencySummary>,
    /// `--compare-etcd` only: the same load as puts into a three-member etcd.
    pub etcd: Option<EtcdReport>,
}

/// What the etcd run measured.
#[derive(Clone, Debug, Serialize)]
pub struct EtcdReport {
    pub binary: String,
    pub version: String,
    pub puts: u64,
    pub put_errors: u64,
    pub first_put_error: Option<String>,
    pub seconds: f64,
    pub puts_per_second: f64,
    pub put_ack: LatencySummary,
    pub members: Vec<NodeUsage>,
    /// Baton's accepted workflows/s over etcd's puts/s in the same run.
    pub baton_to_etcd_ratio: f64,
}

/// `part / seconds`, 0 when no time passed.
pub fn per_second(part: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        part as f64 / seconds
    } else {
        0.0
    }
}

pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let rate = report
        .rate
        .map_or("unbounded".to_string(), |r| format!("{r}/s"));
    let _ = writeln!(
        out,
        "shape {} ({} steps{}), {} clients{}, rate {rate}",
        report.shape,
        report.steps_per_workflow,
        if report.distinct_specs {
            ", every spec distinct"
        } else {
            ""
        },
        report.clients,
        if report.batch > 1 {
            format!(" submitting batches of {}", report.batch)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "submitted {}, accepted {}, errors {}{}",
        report.submitted,
        report.accepted,
        report.submit_errors,
        report
            .first_submit_error
            .as_deref()
            .map_or(String::new(), |e| format!(" (first: {e})")),
    );
    let _ = writeln!(
        out,
        "workflows accepted/s  {:>10.1}   ({} in {:.2} s)",
        report.workflows_accepted_per_second, report.accepted, report.submit_seconds
    );
    let _ = writeln!(
        out,
        "steps completed/s     {:>10.1}   ({} in {:.2} s)",
        report.steps_completed_per_second, report.steps_completed, report.run_seconds
    );
    let _ = writeln!(
        out,
        "workflows succeeded {}, failed {}, unfinished {}",
        report.workflows_succeeded, report.workflows_failed, report.workflows_unfinished
    );
    let _ = writeln!(
        out,
        "\nlatency (ms)          p50       p99       max     count"
    );
    // With --batch, one acknowledgement per call, not per workflow.
    let ack = if report.batch > 1 {
        "batch ack"
    } else {
        "submit ack"
    };
    for (name, s) in [
        (ack, &report.submit_ack),
        ("submit to start", &report.submit_to_start),
        ("submit to end", &report.submit_to_end),
    ] {
        let _ = writeln!(
            out,
            "{name:<16} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            s.p50_ms, s.p99_ms, s.max_ms, s.count
        );
    }
    if !report.nodes.is_empty() {
        let _ = writeln!(out, "\nnode   cpu %   rss MiB   peak rss MiB");
        for n in &report.nodes {
            let _ = writeln!(
                out,
                "{:<4} {:>7.1} {:>9.1} {:>14.1}",
                n.node_id, n.cpu_percent, n.rss_mib, n.rss_peak_mib
            );
        }
    }
    if let (Some(kills), Some(missed), Some(f)) = (
        report.leader_kills,
        report.kills_without_assignment,
        &report.kill_to_assignment,
    ) {
        let _ = writeln!(
            out,
            "\nleader kills {kills} ({missed} with no assignment after them); kill to next \
             assignment ms: p50 {:.0}, p99 {:.0}, max {:.0}",
            f.p50_ms, f.p99_ms, f.max_ms
        );
    }
    if let Some(etcd) = &report.etcd {
        let _ = writeln!(
            out,
            "\netcd ({}): {} puts, {} errors{}, {:.1} puts/s; put ack ms p50 {:.2}, p99 {:.2}, \
             max {:.2}",
            etcd.version,
            etcd.puts,
            etcd.put_errors,
            etcd.first_put_error
                .as_deref()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            etcd.puts_per_second,
            etcd.put_ack.p50_ms,
            etcd.put_ack.p99_ms,
            etcd.put_ack.max_ms
        );
        let members: Vec<String> = etcd
            .members
            .iter()
            .map(|m| format!("{} {:.1}% {:.1} MiB", m.node_id, m.cpu_percent, m.rss_mib))
            .collect();
        let _ = writeln!(out, "etcd members (cpu, rss): {}", members.join("; "));
        let _ = writeln!(
            out,
            "baton accepted workflows/s : etcd puts/s = {:.2}",
            etcd.baton_to_etcd_ratio
        );
    }
    let agents = report
        .agents_cpu_percent
        .map_or(String::new(), |cpu| format!("agents {cpu:.1}, "));
    let _ = writeln!(
        out,
        "cpu % of the rest: {agents}bench {:.1} (100 = one core)",
        report.bench_cpu_percent
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_known_values() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            record(&mut h, ms * 1000);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 100);
        // 3 significant digits: within 0.1%.
        assert!((s.p50_ms - 50.0).abs() < 0.05, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn empty_and_out_of_range_values() {
        assert_eq!(LatencySummary::of(&new_histogram()).count, 0);
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 2);
        assert_eq!(s.p50_ms, 0.001);
        assert!(s.max_ms >= 3_599_000.0, "{s:?}");
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(10, 2.0), 5.0);
        assert_eq!(per_second(10, 0.0), 0.0);
    }
}
