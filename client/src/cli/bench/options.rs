//! `baton bench`'s flags (`BenchArgs`) and their checked form (`Plan`): every check of the
//! arguments happens here, before anything starts, each error naming its flag.

use std::time::Duration;

use clap::Args;

use super::shape::{self, Shape};

/// Concurrent clients at most: each is a task with a submit in flight.
const CLIENTS_MAX: u32 = 10_000;
/// Self-started agents at most (each is a process).
const AGENTS_MAX: u32 = 64;
/// Without `--count` or `--duration`, submit for this long.
const DURATION_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Start a throwaway cluster for the run (3 batond processes from the binary beside baton,
    /// on free loopback ports, data in a temporary folder, plus agents), instead of using
    /// --endpoints; everything is stopped and removed at the end.
    #[arg(long)]
    pub start_cluster: bool,

    /// With --start-cluster: secure the cluster as in production (mutual TLS on every link,
    /// bearer tokens checked on every call) instead of plaintext, to measure what that costs.
    #[arg(long, requires = "start_cluster")]
    pub tls: bool,

    /// Agents to start with --start-cluster [default: 2].
    #[arg(long, value_name = "N")]
    pub agents: Option<u32>,

    /// Slots of each started agent [default: 64].
    #[arg(long, value_name = "N")]
    pub agent_slots: Option<u32>,

    /// What each workflow looks like (all steps are noop).
    #[arg(long, value_enum, default_value_t = Shape::Single)]
    pub shape: Shape,

    /// K: the chain's length, or the fan-out's width (after one root step) [default: 4].
    #[arg(long, value_name = "K")]
    pub steps: Option<u32>,

    /// Give every workflow its own spec (an `input` value `run: N`), so the cluster shares no
    /// decoded spec between them: what workflows that all differ cost. By default every
    /// workflow is submitted with the same spec, as runs of one definition are.
    #[arg(long)]
    pub distinct_specs: bool,

    /// Concurrent clients, each with one submit in flight.
    #[arg(short = 'c', long, default_value_t = 16, value_name = "C")]
    pub clients: u32,

    /// Workflows per call: above 1, each client sends SubmitBatch calls of this many (one log
    /// entry each) instead of one Submit per workflow.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: u32,

    /// Submit this many workflows in all, then stop.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Submit for this long, e.g. 30s, 2m [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Fixed arrival rate: workflows per second across all clients (default: as fast as the
    /// clients go).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,

    /// With --start-cluster: every --kill-every, SIGKILL the leader and restart it, and report
    /// the time from each kill to the next committed step assignment (node CPU is then not
    /// reported: the killed nodes are new processes).
    #[arg(long)]
    pub kill_leader: bool,

    /// How often --kill-leader kills the leader.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub kill_every: Duration,

    /// After the run, start a three-member etcd on this machine (free loopback ports, a
    /// temporary folder) and put keys into it with the same clients, count or duration and
    /// rate; report both and Baton's accepted workflows/s over etcd's puts/s.
    #[arg(long, conflicts_with = "kill_leader")]
    pub compare_etcd: bool,

    /// The etcd binary for --compare-etcd (Debian: the etcd-server package).
    #[arg(long, default_value = "etcd", value_name = "PATH")]
    pub etcd_binary: std::path::PathBuf,

    /// After the last submit, how long to wait for the workflows to finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let ms = baton_proto::spec::parse_duration_ms(text).map_err(|error| error.to_string())?;
    if ms == 0 {
        return Err("must be more than 0".to_string());
    }
    Ok(Duration::from_millis(ms))
}

/// When the submitting stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Count(u64),
    Duration(Duration),
}

/// The checked arguments of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub shape: Shape,
    pub steps_per_workflow: u32,
    /// Every workflow's spec differs (`--distinct-specs`).
    pub distinct_specs: bool,
    pub clients: u32,
    /// Workflows per submit call (`--batch`).
    pub batch: u32,
    pub stop: Stop,
    pub rate: Option<f64>,
    pub drain_timeout: Duration,
    /// `(agents, slots each)` when the bench starts its own cluster.
    pub local_cluster: Option<(u32, u32)>,
    /// The started cluster is secured (`--tls`).
    pub tls: bool,
    /// With `--kill-leader`: how often.
    pub kill_every: Option<Duration>,
    /// With `--compare-etcd`: the etcd binary.
    pub compare_etcd: Option<std::path::PathBuf>,
}

impl Plan {
    /// Every check of the arguments, each error naming its flag.
    pub fn from_args(args: &BenchArgs) -> Result<Plan, String> {
        let steps_per_workflow = shape::steps_per_workflow(args.shape, args.steps)?;
        if args.clients == 0 || args.clients > CLIENTS_MAX {
            return Err(format!(
                "--clients must be 1..={CLIENTS_MAX}, not {}",
                args.clients
            ));
        }
        let batch_max = baton_proto::limits::SUBMIT_BATCH_ITEMS_MAX as u32;
        if args.batch == 0 || args.batch > batch_max {
            return Err(format!(
                "--batch must be 1..={batch_max}, not {}",
                args.batch
            ));
        }
        let stop = match (args.count, args.duration) {
            (Some(0), _) => return Err("--count must be at least 1".to_string()),
            (Some(n), _) => Stop::Count(n),
            (None, Some(d)) => Stop::Duration(d),
            (None, None) => Stop::Duration(DURATION_DEFAULT),
        };
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("--rate must be a positive number, not {rate}"));
        }
        let local_cluster = if args.start_cluster {
            let agents = args.agents.unwrap_or(2);
            let slots = args.agent_slots.unwrap_or(64);
            if agents == 0 || agents > AGENTS_MAX {
                return Err(format!("--agents must be 1..={AGENTS_MAX}, not {agents}"));
            }
            if slots == 0 {
                return Err("--agent-slots must be at least 1".to_string());
            }
            Some((agents, slots))
        } else {
            if args.agents.is_some() || args.agent_slots.is_some() {
                return Err(
                    "--agents and --agent-slots need --start-cluster (against --endpoints, \
                     start the agents yourself)"
                        .to_string(),
                );
            }
            None
        };
        if args.kill_leader && local_cluster.is_none() {
            return Err("--kill-leader needs --start-cluster".to_string());
        }
        Ok(Plan {
            kill_every: args.kill_leader.then_some(args.kill_every),
            compare_etcd: args.compare_etcd.then(|| args.etcd_binary.clone()),
            shape: args.shape,
            steps_per_workflow,
            distinct_specs: args.distinct_specs,
            clients: args.clients,
            batch: args.batch,
            stop,
            rate: args.rate,
            drain_timeout: args.drain_timeout,
            local_cluster,
            tls: args.tls,
        })
    }
}

/// The plan of `baton bench ARGS`, or the error (clap's or [`Plan::from_args`]'s): for tests.
#[cfg(test)]
pub fn test_plan(args: &[&str]) -> Result<Plan, String> {
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    let cli =
        Cli::try_parse_from(["baton", "bench"].iter().chain(args)).map_err(|e| e.to_string())?;
    let Command::Bench(bench) = cli.command else {
        panic!("not a bench")
    };
    Plan::from_args(&bench)
}

#[cfg(test)]
mod tests {
    use super::test_plan as plan;
    use super::*;

    #[test]
    fn defaults() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.shape, Shape::Single);
        assert_eq!(p.steps_per_workflow, 1);
        assert_eq!(p.clients, 16);
        assert_eq!(p.batch, 1);
        assert_eq!(p.stop, Stop::Duration(DURATION_DEFAULT));
        assert_eq!(p.rate, None);
        assert_eq!(p.local_cluster, None);
        let p = plan(&["--start-cluster", "--count", "50", "--shape", "fanout"]).unwrap();
        assert_eq!(p.local_cluster, Some((2, 64)));
        assert_eq!(p.stop, Stop::Count(50));
        assert_eq!(p.steps_per_workflow, 5);
    }

    #[test]
    fn every_flag_is_read() {
        let p = plan(&[
            "--start-cluster",
            "--agents",
            "3",
            "--agent-slots",
            "8",
            "--shape",
            "chain",
            "--steps",
            "6",
            "-c",
            "4",
            "--batch",
            "20",
            "--duration",
            "2m",
            "--rate",
            "250.5",
            "--drain-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(
            p,
            Plan {
                shape: Shape::Chain,
                steps_per_workflow: 6,
                distinct_specs: false,
                clients: 4,
                batch: 20,
                stop: Stop::Duration(Duration::from_secs(120)),
                rate: Some(250.5),
                drain_timeout: Duration::from_secs(5),
                local_cluster: Some((3, 8)),
                tls: false,
                kill_every: None,
                compare_etcd: None,
            }
        );
    }

    #[test]
    fn bad_arguments_name_their_flag() {
        for (args, flag) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--batch", "0"], "--batch"),
            (&["--batch", "257"], "--batch"),
            (&["--count", "0"], "--count"),
            (&["--count", "5", "--duration", "1s"], "--duration"),
            (&["--duration", "0s"], "--duration"),
            (&["--rate", "0"], "--rate"),
            (&["--rate=-3"], "--rate"),
            (&["--rate", "NaN"], "--rate"),
            (&["--steps", "3"], "--steps"),
            (&["--shape", "chain", "--steps", "0"], "--steps"),
            (&["--shape", "tree"], "--shape"),
            (&["--agents", "2"], "--agents"),
            (&["--kill-leader"], "--kill-leader"),
            (
                &["--start-cluster", "--kill-leader", "--compare-etcd"],
                "--compare-etcd",
            ),
            (
                &["--start-cluster", "--kill-leader", "--kill-every", "0s"],
                "--kill-every",
            ),
            (&["--start-cluster", "--agents", "0"], "--agents"),
            (&["--start-cluster", "--agent-slots", "0"], "--agent-slots"),
        ] {
            let error = plan(args).unwrap_err();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn compare_etcd_plan() {
        let p = plan(&["--compare-etcd", "--etcd-binary", "/opt/etcd"]).unwrap();
        assert_eq!(p.compare_etcd, Some(std::path::PathBuf::from("/opt/etcd")));
        assert_eq!(plan(&[]).unwrap().compare_etcd, None);
    }
}
