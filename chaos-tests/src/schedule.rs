//! The fault schedule: a pure function of the seed, printed before the run, so a seed replays
//! the same sequence of faults at the same offsets (targets that depend on the moment, such as
//! "the leader", are resolved when the fault is installed and recorded).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::history;

/// The key-less load of a run: two lanes, each submitting every 100 ms.
pub const KEYLESS_LOAD: (usize, Duration) = (2, Duration::from_millis(100));

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    /// SIGKILL an agent while it runs steps; restarted on heal.
    KillAgent,
    PauseLeader,
    /// SIGSTOP an agent: its steps keep running (a zombie lease holder).
    PauseAgent,
    /// Every link to and from the leader blackholed.
    IsolateLeader,
    /// One node cut from the others (a minority partition; the rest is the majority).
    IsolateFollower,
    /// One directed link (from -> to) drops connections; the reverse direction works.
    OneWayDrop,
    /// Every link between nodes delayed.
    DelayAll,
    /// A follower is cut off while the leader snapshots and purges, then rejoins: it must catch
    /// up by snapshot.
    SnapshotCatchUp,
    /// Every link between one agent and the nodes blackholed: the agent is cut off while its
    /// steps keep running (it must stop them when its leases run out).
    IsolateAgent,
    /// What one agent sends delayed past the lease TTL (assignments still reach it at once):
    /// its heartbeats and reports arrive after the lease lapsed, and such a report is stale.
    DelayAgent,
    /// Membership change under load: a spare node is added (learner, then voter) and a member,
    /// perhaps the leader, removed and stopped for good.
    ReplaceNode,
    /// SIGKILL of every node at once, restarted on the same data after the hold. The kernel
    /// keeps what the processes wrote: a crash of every process, not a power cut.
    KillAll,
    /// A power cut of one node (any, the leader included): killed, then every write it had not
    /// synced is discarded (and, for an even pick, the first one after the synced part torn),
    /// then restarted on what is left (see `cluster::Cluster::power_cut`).
    PowerLossNode,
    /// A power cut of every node at once, each losing what it had not synced.
    PowerLossAll,
}

pub const FAULTS: [Fault; 16] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillAgent,
    Fault::PauseLeader,
    Fault::PauseAgent,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::OneWayDrop,
    Fault::DelayAll,
    Fault::SnapshotCatchUp,
    Fault::IsolateAgent,
    Fault::DelayAgent,
    Fault::ReplaceNode,
    Fault::KillAll,
    Fault::PowerLossNode,
    Fault::PowerLossAll,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at_ms: u64,
    pub fault: Fault,
    pub hold_ms: u64,
    /// Chooses among candidates when installed (follower, agent, link): index mod count.
    pub pick: u64,
}

impl Planned {
    /// Whether a power cut tears the first write it loses: on even picks.
    pub fn torn(&self) -> bool {
        self.pick.is_multiple_of(2)
    }
}

/// Faults that a second one may join while they hold: single processes, links and single
/// power cuts. A whole-cluster kill or power cut leaves nothing to overlap with, a membership
/// change runs to its end when installed, and a snapshot catch-up steers its own follower.
const FIRSTS: [Fault; 12] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillAgent,
    Fault::PauseLeader,
    Fault::PauseAgent,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::OneWayDrop,
    Fault::DelayAll,
    Fault::IsolateAgent,
    Fault::DelayAgent,
    Fault::PowerLossNode,
];

/// Whether `second` may join `first` (one of [`FIRSTS`]): any of those, or a membership change
/// or a snapshot catch-up while an agent is down, paused or cut off. (Those two run for seconds
/// when installed, and would hold a node fault past its time.)
fn may_join(first: Fault, second: Fault) -> bool {
    let agent_fault = matches!(
        first,
        Fault::KillAgent | Fault::PauseAgent | Fault::IsolateAgent | Fault::DelayAgent
    );
    FIRSTS.contains(&second)
        || (agent_fault && matches!(second, Fault::ReplaceNode | Fault::SnapshotCatchUp))
}

/// The share of faults of [`FIRSTS`] that a second fault joins while they hold.
const OVERLAP_CHANCE: f64 = 0.4;

/// Faults over `safety_ms`, each held 1-4 s, 0.5-2 s of calm between, each drawn from `kinds`
/// (all of [`FAULTS`] unless a run narrows them with `--faults`). Two in five of those of
/// [`FIRSTS`] held 1.5 s or more (about one fault in four) are joined by a second fault that
/// starts while the first holds (a partition during a leader
/// kill, an agent pause during a membership change, two nodes down at once...): the list is in
/// order of start, and such a pair overlaps.
pub fn plan(seed: u64, safety_ms: u64, kinds: &[Fault]) -> Vec<Planned> {
    assert!(
        !kinds.is_empty(),
        "a schedule needs at least one kind of fault"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at_ms = rng.random_range(1_000..2_000);
    let mut out = Vec::new();
    while at_ms + 1_000 < safety_ms {
        let fault = kinds[rng.random_range(0..kinds.len())];
        let hold_ms = rng.random_range(1_000..4_000).min(safety_ms - at_ms);
        out.push(Planned {
            at_ms,
            fault,
            hold_ms,
            pick: rng.random(),
        });
        let mut end_ms = at_ms + hold_ms;
        let joiners: Vec<Fault> = kinds
            .iter()
            .copied()
            .filter(|k| may_join(fault, *k))
            .collect();
        if FIRSTS.contains(&fault)
            && !joiners.is_empty()
            && hold_ms >= 1_500
            && rng.random_bool(OVERLAP_CHANCE)
        {
            let second_at = at_ms + rng.random_range(300..hold_ms - 500);
            let second_hold = rng.random_range(1_000..4_000).min(safety_ms - second_at);
            out.push(Planned {
                at_ms: second_at,
                fault: joiners[rng.random_range(0..joiners.len())],
                hold_ms: second_hold,
                pick: rng.random(),
            });
            end_ms = end_ms.max(second_at + second_hold);
        }
        at_ms = end_ms + rng.random_range(500..2_000);
    }
    out
}

/// Prints a schedule, one fault a line, marking those that start while another holds.
pub fn print(plan: &[Planned]) {
    for (i, planned) in plan.iter().enumerate() {
        println!(
            "  +{:>6} ms  {:?} for {} ms (pick {}){}",
            planned.at_ms,
            planned.fault,
            planned.hold_ms,
            planned.pick,
            if overlaps_earlier(plan, i) {
                ", overlapping the one before"
            } else {
                ""
            }
        );
    }
}

/// Whether `planned[i]` starts while an earlier fault of the list still holds.
pub fn overlaps_earlier(planned: &[Planned], i: usize) -> bool {
    planned[..i]
        .iter()
        .any(|p| p.at_ms + p.hold_ms > planned[i].at_ms)
}

/// The deliberately broken builds of `batond` (node/src/faults/, feature `fault-injection`):
/// each is run under the fault that exposes its bug, and the checker must catch it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Reports applied without checking their fencing token. Exposed by an agent's links
    /// delayed past its lease: its reports arrive after the step was run again elsewhere.
    UnfencedReports,
    /// Lease expiries applied only on the leader that decided them. Exposed by agents killed
    /// mid-step: their leases lapse, and the replicas part ways.
    ExpireOffLog,
    /// Appends acknowledged before they are synced. Exposed by a power cut of every node.
    AckBeforeSync,
    /// A rejected `wait` step opens as if approved. Exposed by the workload's rejections (any
    /// schedule; followers killed meanwhile).
    RejectApproves,
    /// A retry reruns from the first step. Exposed by the workload's retries of rejected runs.
    RetryFromStart,
    /// Linearizable reads served without ReadIndex. Exposed by a follower cut off from the
    /// others while the readers, who reach it directly, ask it for workflows acknowledged since.
    StaleReads,
    /// Heartbeats acknowledged without the leader checking its quorum. Exposed by the leader
    /// isolated past the lease: its agents' steps longer than the lease run on after the new
    /// leader expired them.
    LeaseWithoutQuorum,
    /// Unknown outcomes answered as refused. Exposed by leader kills under a heavier key-less
    /// load than usual (see [`Broken::keyless_load`]): a forward cut short is answered "not
    /// applied" though it was.
    AmbiguousRefused,
    /// A resumed watch of every workflow sends only new events. Exposed by the hopping watch,
    /// which resumes on another node every 1.8 s, after events were committed meanwhile (a
    /// follower killed now and then keeps the run a fault run).
    WatchNoReplay,
    /// Idempotency keys remembered in each process's memory only. Exposed by kills of every
    /// node: acknowledged submits sent again afterwards make second workflows.
    DedupForgotten,
}

impl Broken {
    #[cfg(test)]
    pub const ALL: [Broken; 10] = [
        Broken::UnfencedReports,
        Broken::ExpireOffLog,
        Broken::AckBeforeSync,
        Broken::RejectApproves,
        Broken::RetryFromStart,
        Broken::StaleReads,
        Broken::LeaseWithoutQuorum,
        Broken::AmbiguousRefused,
        Broken::WatchNoReplay,
        Broken::DedupForgotten,
    ];

    /// The value of `BATON_FAULT_INJECTION` that selects it in `batond`.
    pub fn env_value(self) -> &'static str {
        match self {
            Broken::UnfencedReports => "unfenced-reports",
            Broken::ExpireOffLog => "expire-off-log",
            Broken::AckBeforeSync => "ack-before-sync",
            Broken::RejectApproves => "reject-approves",
            Broken::RetryFromStart => "retry-from-start",
            Broken::StaleReads => "stale-reads",
            Broken::LeaseWithoutQuorum => "lease-without-quorum",
            Broken::AmbiguousRefused => "ambiguous-refused",
            Broken::WatchNoReplay => "watch-no-replay",
            Broken::DedupForgotten => "dedup-forgotten",
        }
    }

    /// The schedule that exposes it. Pauses and kills outlast the chaos workload's 2 s lease
    /// plus the leader's 1 s margin.
    pub fn plan(self, safety_ms: u64) -> Vec<Planned> {
        match self {
            Broken::UnfencedReports => repeated(Fault::DelayAgent, 5_000, safety_ms),
            Broken::ExpireOffLog => repeated(Fault::KillAgent, 4_000, safety_ms),
            Broken::AckBeforeSync => repeated(Fault::PowerLossAll, 1_000, safety_ms),
            // The workload's own gates expose these; a follower killed now and then keeps the
            // run a fault run.
            // (The hopping watch exposes `WatchNoReplay` whatever the faults: it resumes every
            // 1.8 s after events were committed.)
            Broken::RejectApproves | Broken::RetryFromStart | Broken::WatchNoReplay => {
                repeated(Fault::KillFollower, 1_500, safety_ms)
            }
            Broken::StaleReads => repeated(Fault::IsolateFollower, 3_000, safety_ms),
            // Past the new leader's election and its lease of 2 s plus 1 s of margin.
            Broken::LeaseWithoutQuorum => repeated(Fault::IsolateLeader, 6_000, safety_ms),
            // Every node link delayed 80 ms a chunk all along, so that a follower's forward is
            // in flight for a while when the leader is killed.
            Broken::AmbiguousRefused => {
                let mut plan = vec![Planned {
                    at_ms: 1_000,
                    fault: Fault::DelayAll,
                    hold_ms: safety_ms.saturating_sub(2_000),
                    pick: 60,
                }];
                plan.extend(repeated(Fault::KillLeader, 500, safety_ms));
                plan
            }
            // Every process starts with its memory empty.
            Broken::DedupForgotten => repeated(Fault::KillAll, 1_000, safety_ms),
        }
    }

    /// The key-less load its runs (the broken one and its control) carry: lanes, and the pause
    /// between one lane's submits. More than usual where the bug needs a submit in flight at
    /// the very moment of a fault.
    pub fn keyless_load(self) -> (usize, Duration) {
        match self {
            Broken::AmbiguousRefused => (6, Duration::from_millis(20)),
            _ => KEYLESS_LOAD,
        }
    }

    /// The invariants that must report it (at least one of them).
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Broken::UnfencedReports => &[
                "accepted result carries the current token",
                "no stale report accepted",
            ],
            Broken::ExpireOffLog => &["replicas agree (same index and hash)"],
            Broken::AckBeforeSync => &[
                "no acknowledged workflow lost",
                "one workflow per idempotency key",
            ],
            Broken::RejectApproves => &["a gate opens only on its approval"],
            Broken::RetryFromStart => &["a retry reruns no succeeded step"],
            Broken::StaleReads => &[history::READ_SEES_ACK, history::READ_MONOTONIC],
            Broken::LeaseWithoutQuorum => {
                &[history::LEASE_RESPECTED, "no overlap of two live leases"]
            }
            Broken::AmbiguousRefused => &[history::KEYLESS],
            Broken::WatchNoReplay => &[history::WATCH_WHOLE],
            Broken::DedupForgotten => &[
                "one workflow per idempotency key",
                "replicas agree (same index and hash)",
            ],
        }
    }
}

/// One fault over and over, for a broken build (`--broken`): each held `hold_ms`, 2 s apart,
/// with the pick moving on each time (another agent, another follower).
pub fn repeated(fault: Fault, hold_ms: u64, safety_ms: u64) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut at_ms = 2_000;
    while at_ms + hold_ms < safety_ms {
        out.push(Planned {
            at_ms,
            fault,
            hold_ms,
            pick: out.len() as u64,
        });
        at_ms += hold_ms + 2_000;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_builds_are_caught_by_invariants_the_checker_has() {
        for broken in Broken::ALL {
            assert!(broken.plan(20_000).len() >= 2, "{broken:?}");
            for name in broken.caught_by() {
                assert!(crate::checker::INVARIANTS.contains(name), "{name}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(plan(7, 60_000, &FAULTS), plan(7, 60_000, &FAULTS));
        assert_ne!(plan(7, 60_000, &FAULTS), plan(8, 60_000, &FAULTS));
        let narrowed = plan(7, 60_000, &[Fault::PowerLossNode]);
        assert!(narrowed.iter().all(|p| p.fault == Fault::PowerLossNode));
        let faults = plan(7, 60_000, &FAULTS);
        assert!(faults.len() > 5);
        assert!(faults.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    #[test]
    fn some_faults_overlap_and_only_two_at_a_time() {
        let mut pairs = 0;
        for seed in 0..50 {
            let faults = plan(seed, 60_000, &FAULTS);
            for (i, fault) in faults.iter().enumerate() {
                assert!(fault.at_ms + fault.hold_ms <= 60_000, "{fault:?}");
                if overlaps_earlier(&faults, i) {
                    pairs += 1;
                    let first = &faults[i - 1];
                    assert!(FIRSTS.contains(&first.fault), "{first:?} joined");
                    assert!(may_join(first.fault, fault.fault), "{fault:?} joins");
                    assert!(first.at_ms < fault.at_ms && fault.at_ms < first.at_ms + first.hold_ms);
                    assert!(
                        !overlaps_earlier(&faults, i - 1),
                        "three at once: {faults:?}"
                    );
                }
            }
        }
        assert!(pairs > 50, "{pairs} overlapping pairs in 50 schedules");
    }
}
