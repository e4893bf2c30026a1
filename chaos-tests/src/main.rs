//! baton-chaos: real `batond` and `baton agent` processes, faults from a seeded schedule, a
//! recorded history and a checker. See docs/CHAOS.md.
//!
//! `baton-chaos --seed S --duration 60s` runs one schedule; `--profile quick|soak` runs several.
//! Exit status 0 when every run's checker found nothing, 1 otherwise.

mod checker;
mod cluster;
mod procs;
mod proxy;
mod run;
mod schedule;

use std::time::Duration;

use clap::Parser;

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
    /// Named set of runs: quick (CI: 3 seeds x 25 s) or soak (20 seeds x 10 min, 5 nodes).
    #[arg(long, value_enum, conflicts_with = "seed")]
    profile: Option<Profile>,
    /// Keep the temporary folder (logs, journal) even when the run passes.
    #[arg(long)]
    keep: bool,
    /// Run the cluster with `--insecure` (plaintext, no tokens) instead of mutual TLS and tokens.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Profile {
    Quick,
    Soak,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runs: Vec<(u64, Duration, u64)> = match cli.profile {
        Some(Profile::Quick) => [11, 22, 33]
            .map(|seed| (seed, Duration::from_secs(25), 3))
            .to_vec(),
        Some(Profile::Soak) => (1..=20)
            .map(|seed| (seed, Duration::from_secs(600), 5))
            .collect(),
        None => vec![(
            cli.seed.unwrap_or_else(rand::random),
            cli.duration,
            cli.nodes,
        )],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = Vec::new();
    for (seed, duration, nodes) in runs {
        let security = if cli.insecure {
            "insecure"
        } else {
            "mTLS+tokens"
        };
        println!("=== baton-chaos seed {seed} duration {duration:?} nodes {nodes} ({security})");
        let passed = runtime.block_on(async {
            tokio::select! {
                result = run::run(seed, duration, nodes, !cli.insecure, cli.keep) => result,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        });
        match passed {
            Ok(true) => println!("=== seed {seed}: PASS"),
            Ok(false) => {
                println!(
                    "=== seed {seed}: FAIL (replay: baton-chaos --seed {seed} --duration {}s --nodes {nodes})",
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
