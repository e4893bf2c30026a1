//! The fault schedule: a pure function of the seed, printed before the run, so a seed replays
//! the same sequence of faults at the same offsets (targets that depend on the moment, such as
//! "the leader", are resolved when the fault is installed and recorded).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

pub const FAULTS: [Fault; 10] = [
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
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at_ms: u64,
    pub fault: Fault,
    pub hold_ms: u64,
    /// Chooses among candidates when installed (follower, agent, link): index mod count.
    pub pick: u64,
}

/// Faults one after another over `safety_ms`, each held 1-4 s, 0.5-2 s of calm between.
pub fn plan(seed: u64, safety_ms: u64) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at_ms = rng.random_range(1_000..2_000);
    let mut out = Vec::new();
    while at_ms + 1_000 < safety_ms {
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(plan(7, 60_000), plan(7, 60_000));
        assert_ne!(plan(7, 60_000), plan(8, 60_000));
        let faults = plan(7, 60_000);
        assert!(faults.len() > 5);
        assert!(
            faults
                .windows(2)
                .all(|w| w[0].at_ms + w[0].hold_ms < w[1].at_ms)
        );
    }
}
