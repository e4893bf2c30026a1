//! The deterministic simulation of the core (`baton_node::sim`), many seeds at a time: the
//! nightly profile, and the replay of one seed.
//!
//! ```text
//! cargo run --release -p baton-node --example sim -- --seeds 100000 [--from 0] [--threads 2]
//! cargo run --release -p baton-node --example sim -- --seed 1234     # one seed, its report
//! ```
//!
//! Prints seeds per second and what the seeds did; exits 1 naming every seed that broke a
//! property (each replays exactly with `--seed`).

use std::time::Instant;

use baton_node::sim;

fn arg(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    let value = args.get(at + 1).unwrap_or_else(|| {
        eprintln!("{name} needs a number");
        std::process::exit(2)
    });
    Some(value.parse().unwrap_or_else(|_| {
        eprintln!("{name} {value}: not a number");
        std::process::exit(2)
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(seed) = arg(&args, "--seed") {
        match sim::run(seed) {
            Ok(report) => println!("{report:#?}"),
            Err(violation) => {
                eprintln!("{violation}");
                std::process::exit(1);
            }
        }
        return;
    }
    let seeds = arg(&args, "--seeds").unwrap_or(1_000);
    let from = arg(&args, "--from").unwrap_or(0);
    let threads = arg(&args, "--threads").unwrap_or(2).max(1);
    let started = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (failures, done) = (&failures, &done);
            scope.spawn(move || {
                let mut seed = from + t;
                while seed < from + seeds {
                    if let Err(violation) = sim::run(seed) {
                        eprintln!("{violation}");
                        failures.lock().expect("not poisoned").push(seed);
                    }
                    let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if finished.is_multiple_of(10_000) {
                        eprintln!(
                            "{finished} seeds, {:.0} a second",
                            finished as f64 / started.elapsed().as_secs_f64()
                        );
                    }
                    seed += threads;
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().expect("not poisoned");
    println!(
        "{seeds} seeds from {from} in {seconds:.1} s ({:.0} a second, {threads} threads): {} failed",
        seeds as f64 / seconds,
        failures.len()
    );
    if !failures.is_empty() {
        println!("failed seeds: {failures:?}");
        std::process::exit(1);
    }
}
