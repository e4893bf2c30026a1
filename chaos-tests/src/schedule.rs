//! The fault schedule: a pure function of the seed, printed before the run, so a seed replays
//! the same sequence of faults at the same offsets (targets that depend on the moment, such as
//! "the leader", are resolved when the fault is installed and recorded).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// Faults one after another over `safety_ms`, each held 1-4 s, 0.5-2 s of calm between, each
/// drawn from `kinds` (all of [`FAULTS`] unless a run narrows them with `--faults`).
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
        at_ms += hold_ms + rng.random_range(500..2_000);
    }
    out
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
}

impl Broken {
    #[cfg(test)]
    pub const ALL: [Broken; 5] = [
        Broken::UnfencedReports,
        Broken::ExpireOffLog,
        Broken::AckBeforeSync,
        Broken::RejectApproves,
        Broken::RetryFromStart,
    ];

    /// The value of `BATON_FAULT_INJECTION` that selects it in `batond`.
    pub fn env_value(self) -> &'static str {
        match self {
            Broken::UnfencedReports => "unfenced-reports",
            Broken::ExpireOffLog => "expire-off-log",
            Broken::AckBeforeSync => "ack-before-sync",
            Broken::RejectApproves => "reject-approves",
            Broken::RetryFromStart => "retry-from-start",
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
            Broken::RejectApproves | Broken::RetryFromStart => {
                repeated(Fault::KillFollower, 1_500, safety_ms)
            }
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
        assert!(
            faults
                .windows(2)
                .all(|w| w[0].at_ms + w[0].hold_ms < w[1].at_ms)
        );
    }
}
