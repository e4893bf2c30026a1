//! The load: C concurrent clients, each with one call in flight (a Submit, or with `--batch` a
//! SubmitBatch of N), until `--count` workflows or `--duration`, paced by a shared `--rate` ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::proto::WorkflowSpec;
use baton_client::{Client, ClientError};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::options::{Plan, Stop};
use super::report::{new_histogram, record};
use super::shape;

/// What the submitting clients share.
pub struct Submitters {
    claimed: AtomicU64,
    /// Numbers the specs of `--distinct-specs`.
    sequence: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
    /// Fixed arrival rate: each submit waits for a tick (tokio's lock: it is held across the
    /// tick's await).
    pacer: Option<tokio::sync::Mutex<tokio::time::Interval>>,
}

impl Submitters {
    /// Counts `n` workflows not accepted; the first reason is kept for the report.
    fn failed(&self, n: u64, reason: String) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("not poisoned");
        first.get_or_insert(reason);
    }
}

/// One SubmitBatch item: its workflow id, or why it was not accepted.
fn batch_outcome(result: baton_proto::v1::SubmitBatchResult) -> Result<u64, String> {
    use baton_proto::v1::submit_batch_result::Outcome;
    match result.outcome {
        Some(Outcome::Submitted(response)) => Ok(response.workflow_id),
        Some(Outcome::Rejected(reason)) => Err(format!("rejected: {reason}")),
        None => Err("a batch result without an outcome".to_string()),
    }
}

/// The submitting clients of a run, started.
pub struct Load {
    pub shared: Arc<Submitters>,
    workers: Vec<JoinHandle<Histogram<u64>>>,
}

/// Starts `plan.clients` submitting clients at `started`; each accepted workflow's id is sent
/// to `ids`.
pub fn start(
    client: &Client,
    plan: &Plan,
    started: Instant,
    ids: mpsc::UnboundedSender<u64>,
) -> Load {
    let spec = shape::build_spec(
        plan.shape,
        plan.steps_per_workflow,
        &format!("bench-{:?}", plan.shape).to_lowercase(),
    );
    let shared = Arc::new(Submitters {
        claimed: AtomicU64::new(0),
        sequence: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        pacer: plan.rate.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tokio::sync::Mutex::new(interval)
        }),
    });
    let deadline = match plan.stop {
        Stop::Duration(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let mut workers = Vec::new();
    for _ in 0..plan.clients {
        let worker = Worker {
            client: client.clone(),
            spec: spec.clone(),
            shared: shared.clone(),
            ids: ids.clone(),
            stop: plan.stop,
            deadline,
            distinct_specs: plan.distinct_specs,
            batch: u64::from(plan.batch),
        };
        workers.push(tokio::spawn(worker.run()));
    }
    Load { shared, workers }
}

impl Load {
    /// Waits for every client to stop; their acknowledgement latencies together.
    pub async fn finish(self) -> anyhow::Result<Histogram<u64>> {
        let mut acks = new_histogram();
        for worker in self.workers {
            acks.add(worker.await.context("a bench client panicked")?)
                .expect("histograms of equal bounds add");
        }
        Ok(acks)
    }
}

/// One submitting client.
struct Worker {
    client: Client,
    spec: WorkflowSpec,
    shared: Arc<Submitters>,
    ids: mpsc::UnboundedSender<u64>,
    stop: Stop,
    deadline: Option<Instant>,
    distinct_specs: bool,
    /// Workflows per call.
    batch: u64,
}

impl Worker {
    /// Submits until the run is over; returns the latency of each call's acknowledgement.
    async fn run(self) -> Histogram<u64> {
        let mut acks = new_histogram();
        loop {
            let n = self.claim();
            if n == 0 {
                break;
            }
            if !self.pace(n).await {
                break;
            }
            let specs = self.specs(n);
            let sent = Instant::now();
            match self.send(n, specs).await {
                Ok(outcomes) => {
                    record(&mut acks, sent.elapsed().as_micros() as u64);
                    for outcome in outcomes {
                        match outcome {
                            Ok(id) => {
                                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                                let _ = self.ids.send(id);
                            }
                            Err(reason) => self.shared.failed(1, reason),
                        }
                    }
                }
                Err(error) => self.shared.failed(n, error.to_string()),
            }
        }
        acks
    }

    /// How many workflows the next call carries: 0 when the run is over.
    fn claim(&self) -> u64 {
        match self.stop {
            Stop::Count(n) => {
                let first = self.shared.claimed.fetch_add(self.batch, Ordering::Relaxed);
                n.saturating_sub(first).min(self.batch)
            }
            Stop::Duration(_) => {
                if self.deadline.is_some_and(|d| Instant::now() < d) {
                    self.batch
                } else {
                    0
                }
            }
        }
    }

    /// With `--rate`, waits for `n` ticks; false if the deadline passed meanwhile.
    async fn pace(&self, n: u64) -> bool {
        if let Some(pacer) = &self.shared.pacer {
            let mut pacer = pacer.lock().await;
            for _ in 0..n {
                pacer.tick().await;
            }
            drop(pacer);
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
        true
    }

    /// The next call's `n` specs, each numbered with `--distinct-specs`.
    fn specs(&self, n: u64) -> Vec<WorkflowSpec> {
        (0..n)
            .map(|_| {
                let mut spec = self.spec.clone();
                if self.distinct_specs {
                    let run = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
                    spec.input.insert("run".to_string(), run.to_string());
                }
                spec
            })
            .collect()
    }

    /// One Submit (`--batch 1`) or SubmitBatch call: each workflow's id or why it was refused.
    async fn send(
        &self,
        n: u64,
        specs: Vec<WorkflowSpec>,
    ) -> Result<Vec<Result<u64, String>>, ClientError> {
        if n == 1 && self.batch == 1 {
            let spec = specs.into_iter().next().expect("one spec");
            self.client
                .submit(spec, None)
                .await
                .map(|r| vec![Ok(r.workflow_id)])
        } else {
            let items = specs.into_iter().map(|spec| (spec, None)).collect();
            self.client
                .submit_batch(items)
                .await
                .map(|results| results.into_iter().map(batch_outcome).collect())
        }
    }
}
