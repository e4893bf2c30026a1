//! baton-chaos: real `batond` and `baton agent` processes, faults from a seeded schedule, a
//! recorded history and a checker. See docs/CHAOS.md.
//!
//! `baton-chaos --seed S --duration 60s` runs one schedule; `--profile quick|soak` runs several.
//! Exit status 0 when every run's checker found nothing, 1 otherwise.

mod checker;
mod cluster;
mod history;
mod inject;
mod proxy;
mod run;
mod schedule;

use std::time::Duration;

use clap::Parser;

use crate::run::RunOptions;
use crate::schedule::{Broken, Fault};

#[derive(Parser, Debug)]
#[command(about = "Baton's fault-injection suite")]
struct Cli {
    /// Seed of the fault schedule and workload (random when omitted; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the safety phase (faults), e.g. 60s; the liveness phase follows.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Named set of runs: quick (CI, 15 schedules: 3 fixed seeds x 25 s of every fault, 20 s of
    /// power cuts, 11 new seeds x 15 s), nightly (80 new seeds x 60 s, some on 5 nodes, some of
    /// power cuts only) or soak (20 seeds x 10 min, 5 nodes).
    #[arg(long, value_enum, conflicts_with = "seed")]
    profile: Option<Profile>,
    /// Keep the temporary folder (logs, journal) even when the run passes.
    #[arg(long)]
    keep: bool,
    /// Draw the schedule from these kinds of fault only (e.g. `power-loss-node,power-loss-all`);
    /// all kinds when omitted.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with_all = ["profile", "broken"])]
    faults: Vec<Fault>,
    /// Print the seed's fault schedule (what a run would install, and when) and exit.
    #[arg(long, conflicts_with = "broken")]
    print_schedule: bool,
    /// Run the cluster with `--insecure` (plaintext, no tokens) instead of mutual TLS and tokens.
    #[arg(long)]
    insecure: bool,
    /// Test the checker: run these deliberately broken builds (needs a `batond` built with
    /// `--features baton-node/fault-injection`, e.g. by `scripts/chaos-broken`), each under the
    /// faults that expose it. Passes when the checker catches every one.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "profile")]
    broken: Vec<Broken>,
}

/// The quick profile's fixed seeds: between them, every kind of fault in `schedule::FAULTS`,
/// and overlapping pairs (see `--print-schedule`; a test keeps it so).
const QUICK_SEEDS: [u64; 3] = [7, 11, 66];
/// The quick profile's power-cut run: one node or all at once, with and without torn writes
/// (a test keeps both tears in it).
const QUICK_POWER_SEED: u64 = 4;
const POWER_FAULTS: [Fault; 2] = [Fault::PowerLossNode, Fault::PowerLossAll];
/// The quick profile's runs beyond the fixed ones: new seeds each time (printed), shorter.
const QUICK_RANDOM_RUNS: u64 = 11;
const QUICK_RANDOM_DURATION: Duration = Duration::from_secs(15);
/// The nightly profile: this many new seeds of a minute each; one in four on five nodes, one in
/// eight drawing from power cuts only.
const NIGHTLY_RUNS: u64 = 80;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Profile {
    Quick,
    Nightly,
    Soak,
}

/// The kinds a schedule draws from: those given, or all.
fn kinds(given: &[Fault]) -> Vec<Fault> {
    if given.is_empty() {
        schedule::FAULTS.to_vec()
    } else {
        given.to_vec()
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not like 60s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// A run ended by SIGINT or SIGTERM: the suite stops (exit status 130) rather than going on.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT or SIGTERM: the run is abandoned and its processes and folder cleaned up.
async fn interrupted() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = async { terminate.as_mut()?.recv().await } => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_schedule {
        let seed = cli.seed.unwrap_or(1);
        let plan = schedule::plan(seed, cli.duration.as_millis() as u64, &kinds(&cli.faults));
        println!("seed {seed}, {:?} of faults:", cli.duration);
        schedule::print(&plan);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let security = if cli.insecure {
        "insecure"
    } else {
        "mTLS+tokens"
    };
    let run = |options: RunOptions| {
        let result = runtime.block_on(async {
            tokio::select! {
                result = run::run(&options) => result,
                _ = interrupted() => Err(Interrupted.into()),
            }
        });
        if let Err(error) = &result
            && error.is::<Interrupted>()
        {
            eprintln!("baton-chaos: interrupted; stopped everything it started");
            std::process::exit(130);
        }
        result
    };
    if !cli.broken.is_empty() {
        let mut missed = Vec::new();
        let mut controls: std::collections::BTreeMap<String, Vec<&'static str>> =
            Default::default();
        for broken in cli.broken {
            println!(
                "=== baton-chaos broken build {} duration {:?} nodes {} ({security})",
                broken.env_value(),
                cli.duration,
                cli.nodes
            );
            let options = |inject| RunOptions {
                seed: cli.seed.unwrap_or(1),
                duration: cli.duration,
                nodes: cli.nodes,
                secure: !cli.insecure,
                keep: cli.keep,
                faults: schedule::FAULTS.to_vec(),
                targeted: Some(broken),
                inject,
            };
            // The control: the same schedule on the same binary, nothing injected, must pass, or
            // a catch below would prove nothing. Broken builds exposed by the same faults and
            // load share one.
            let exposure = format!(
                "{:?} {:?}",
                broken.plan(cli.duration.as_millis() as u64),
                broken.keyless_load()
            );
            let control = match controls.get(&exposure) {
                Some(passed) => {
                    println!(
                        "--- control run: the one of an earlier build (the same faults and load)"
                    );
                    Ok(passed.clone())
                }
                None => {
                    println!("--- control run: the same faults, nothing injected");
                    run(options(false))
                }
            };
            if let Ok(violated) = &control
                && violated.is_empty()
            {
                controls.insert(exposure, violated.clone());
            }
            match control {
                Ok(violated) if violated.is_empty() => println!("--- control run: PASS"),
                Ok(violated) => {
                    println!(
                        "=== broken build {}: CONTROL RUN FAILED {violated:?}",
                        broken.env_value()
                    );
                    missed.push(broken.env_value());
                    continue;
                }
                Err(error) => {
                    println!(
                        "=== broken build {}: CONTROL RUN ERROR {error:#}",
                        broken.env_value()
                    );
                    missed.push(broken.env_value());
                    continue;
                }
            }
            println!(
                "--- broken run: BATON_FAULT_INJECTION={}",
                broken.env_value()
            );
            match run(options(true)) {
                Ok(violated) if violated.iter().any(|v| broken.caught_by().contains(v)) => {
                    println!(
                        "=== broken build {}: CAUGHT by {violated:?}",
                        broken.env_value()
                    );
                }
                Ok(violated) => {
                    println!(
                        "=== broken build {}: NOT CAUGHT (expected one of {:?}, violated {violated:?})",
                        broken.env_value(),
                        broken.caught_by()
                    );
                    missed.push(broken.env_value());
                }
                Err(error) => {
                    println!("=== broken build {}: ERROR {error:#}", broken.env_value());
                    missed.push(broken.env_value());
                }
            }
        }
        if missed.is_empty() {
            return Ok(());
        }
        eprintln!("broken builds the checker did not catch: {missed:?}");
        std::process::exit(1);
    }
    let all = schedule::FAULTS.to_vec();
    // New seeds come from one base, printed, so a whole profile's draw can be told apart from
    // another's; each run prints its own seed and a replay line when it fails.
    let base: u64 = rand::random::<u64>() >> 16;
    let runs: Vec<(u64, Duration, u64, Vec<Fault>)> = match cli.profile {
        Some(Profile::Quick) => {
            println!(
                "=== quick profile: seeds {QUICK_SEEDS:?} and power seed {QUICK_POWER_SEED}, then \
                 {QUICK_RANDOM_RUNS} new seeds from {base}"
            );
            QUICK_SEEDS
                .iter()
                .map(|&seed| (seed, Duration::from_secs(25), 3, all.clone()))
                .chain([(
                    QUICK_POWER_SEED,
                    Duration::from_secs(20),
                    3,
                    POWER_FAULTS.to_vec(),
                )])
                .chain(
                    (0..QUICK_RANDOM_RUNS)
                        .map(|i| (base + i, QUICK_RANDOM_DURATION, 3, all.clone())),
                )
                .collect()
        }
        Some(Profile::Nightly) => {
            println!("=== nightly profile: {NIGHTLY_RUNS} new seeds from {base}");
            (0..NIGHTLY_RUNS)
                .map(|i| {
                    let nodes = if i % 4 == 3 { 5 } else { 3 };
                    let faults = if i % 8 == 5 {
                        POWER_FAULTS.to_vec()
                    } else {
                        all.clone()
                    };
                    (base + i, Duration::from_secs(60), nodes, faults)
                })
                .collect()
        }
        Some(Profile::Soak) => (1..=20)
            .map(|seed| (seed, Duration::from_secs(600), 5, all.clone()))
            .collect(),
        None => vec![(
            cli.seed.unwrap_or_else(rand::random),
            cli.duration,
            cli.nodes,
            kinds(&cli.faults),
        )],
    };
    let mut failed = Vec::new();
    for (seed, duration, nodes, faults) in runs {
        println!("=== baton-chaos seed {seed} duration {duration:?} nodes {nodes} ({security})");
        let narrowed = faults.len() < schedule::FAULTS.len();
        let replay_faults = if narrowed {
            let names: Vec<String> = faults
                .iter()
                .map(|f| {
                    clap::ValueEnum::to_possible_value(f)
                        .map_or_else(|| format!("{f:?}"), |v| v.get_name().to_owned())
                })
                .collect();
            format!(" --faults {}", names.join(","))
        } else {
            String::new()
        };
        let violated = run(RunOptions {
            seed,
            duration,
            nodes,
            secure: !cli.insecure,
            keep: cli.keep,
            faults,
            targeted: None,
            inject: false,
        });
        match violated {
            Ok(violated) if violated.is_empty() => println!("=== seed {seed}: PASS"),
            Ok(_) => {
                println!(
                    "=== seed {seed}: FAIL (replay: baton-chaos --seed {seed} --duration {}s --nodes {nodes}{replay_faults})",
                    duration.as_secs()
                );
                failed.push(seed);
            }
            Err(error) => {
                println!("=== seed {seed}: ERROR {error:#}");
                failed.push(seed);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        eprintln!("failing seeds: {failed:?}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_quick_power_run_cuts_one_node_and_all_with_and_without_tears() {
        let plan = schedule::plan(QUICK_POWER_SEED, 20_000, &POWER_FAULTS);
        for fault in POWER_FAULTS {
            for torn in [true, false] {
                assert!(
                    plan.iter().any(|p| p.fault == fault && p.torn() == torn),
                    "{fault:?} torn {torn} missing from {plan:?}"
                );
            }
        }
    }

    #[test]
    fn the_quick_profile_installs_every_kind_of_fault() {
        let planned: BTreeSet<String> = QUICK_SEEDS
            .iter()
            .flat_map(|seed| schedule::plan(*seed, 25_000, &schedule::FAULTS))
            .map(|p| format!("{:?}", p.fault))
            .collect();
        let all: BTreeSet<String> = schedule::FAULTS.iter().map(|f| format!("{f:?}")).collect();
        assert_eq!(planned, all);
        let overlapping: usize = QUICK_SEEDS
            .iter()
            .map(|seed| {
                let plan = schedule::plan(*seed, 25_000, &schedule::FAULTS);
                (0..plan.len())
                    .filter(|&i| schedule::overlaps_earlier(&plan, i))
                    .count()
            })
            .sum();
        assert!(overlapping >= 10, "{overlapping} overlapping faults");
    }
}
