//! Deliberately broken behaviours, for proving the chaos checker (docs/CHAOS.md, "Broken
//! builds"). They are compiled in only with the `fault-injection` feature and chosen when the
//! node starts, by `BATON_FAULT_INJECTION=<name>`. Without the feature [`active`] is a constant
//! `false`, every broken branch folds away, and `batond` refuses to start if the variable is set
//! (so a harness cannot believe it runs a broken build when it does not).

#[cfg(feature = "fault-injection")]
mod apply;

use baton_proto::v1 as pb;

use crate::state::{Applied, ApplyCtx, ClusterState, LogEntry};

/// The environment variable that names the broken behaviour.
pub const ENV: &str = "BATON_FAULT_INJECTION";

/// The bugs a broken build can carry, one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A report is applied to its step without checking its fencing token: a stale attempt's
    /// result replaces the current attempt's (or overwrites the step's accepted result).
    UnfencedReports,
    /// A lease expiry takes effect on the leader that decided it and nowhere else, as if the
    /// leader had expired the lease in its own memory instead of through the log.
    ExpireOffLog,
    /// Appended log entries are acknowledged as soon as they are written to the WAL file, before
    /// any fsync: they sit in the kernel's page cache, which a process kill keeps and a power cut
    /// loses, so a power cut loses acknowledged entries.
    AckBeforeSync,
    /// An operator's rejection of a `wait` step is applied as an approval (a decision read
    /// backwards): the gate opens, with the rejection's words as its output, and the steps
    /// behind it run.
    RejectApproves,
    /// A retry reruns its workflow from the first step instead of from what failed: steps that
    /// had succeeded run again, with new fencing tokens (a rerun scope computed wrongly).
    RetryFromStart,
    /// A linearizable read is served from the node's own applied state, without ReadIndex: a
    /// follower that is behind (cut off, restarted) answers with what it has.
    StaleReads,
    /// An agent's heartbeat is acknowledged, renewing its leases, without the leader checking
    /// that a quorum still follows it: a deposed leader that does not know it keeps promising
    /// leases the new leader has already expired, and the agent runs on.
    LeaseWithoutQuorum,
    /// A call whose outcome the node does not know (its forward's connection to the leader
    /// broke, leadership changed under its proposal) is answered as refused (ABORTED), which a
    /// client reads as "certainly not applied" and may send again.
    AmbiguousRefused,
    /// A watch of every workflow resumed from an index sends only new events, as if it were
    /// opened fresh: the events committed while the watcher was away are never sent.
    WatchNoReplay,
    /// Idempotency keys are remembered by each node process only from what it applied since it
    /// started (as an in-memory table would be): a key submitted again after the node
    /// restarted from a snapshot makes a second workflow.
    DedupForgotten,
}

impl Broken {
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

    pub fn name(self) -> &'static str {
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

    pub fn parse(text: &str) -> Result<Broken, String> {
        Broken::ALL
            .into_iter()
            .find(|b| b.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Broken::ALL.iter().map(|b| b.name()).collect();
                format!("{ENV}={text:?}: not one of {}", names.join(", "))
            })
    }
}

/// What the environment asks for, checked once at start: an error when the variable names no
/// known behaviour, or when this build has no fault injection compiled in.
pub fn chosen() -> Result<Option<Broken>, String> {
    chosen_from(std::env::var_os(ENV))
}

fn chosen_from(value: Option<std::ffi::OsString>) -> Result<Option<Broken>, String> {
    let Some(text) = value else {
        return Ok(None);
    };
    let text = text
        .into_string()
        .map_err(|_| format!("{ENV} is not UTF-8"))?;
    let broken = Broken::parse(&text)?;
    if cfg!(feature = "fault-injection") {
        Ok(Some(broken))
    } else {
        Err(format!(
            "{ENV}={text} is set, but this batond was built without the fault-injection feature"
        ))
    }
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, OnceLock};

    use super::Broken;

    static CHOSEN: OnceLock<Option<Broken>> = OnceLock::new();
    static EXPIRED_HERE: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

    pub fn active(broken: Broken) -> bool {
        *CHOSEN.get_or_init(|| super::chosen().ok().flatten()) == Some(broken)
    }

    pub fn expiring_here(attempts: impl IntoIterator<Item = u64>) {
        EXPIRED_HERE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(attempts);
    }

    pub fn expired_here(attempt: u64) -> bool {
        EXPIRED_HERE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&attempt)
    }
}

/// Whether this node runs with `broken`. Always `false` without the `fault-injection` feature.
#[inline]
pub fn active(broken: Broken) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        enabled::active(broken)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = broken;
        false
    }
}

/// [`Broken::ExpireOffLog`]: the leader notes the attempts whose expiry it decided...
pub fn expiring_here(attempts: impl IntoIterator<Item = u64>) {
    #[cfg(feature = "fault-injection")]
    enabled::expiring_here(attempts);
    #[cfg(not(feature = "fault-injection"))]
    let _ = attempts.into_iter();
}

/// ...and only that node applies those expiries.
pub fn expired_here(attempt: u64) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        enabled::expired_here(attempt)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = attempt;
        false
    }
}

/// Applies a committed entry: [`ClusterState::apply`] itself, or in a broken build the broken
/// behaviour wrapped around it (`apply.rs`). The state never knows which.
#[inline]
pub fn apply(state: &mut ClusterState, ctx: ApplyCtx, entry: LogEntry) -> Applied {
    #[cfg(feature = "fault-injection")]
    {
        apply::apply(state, ctx, entry)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        state.apply(ctx, entry)
    }
}

/// [`Broken::UnfencedReports`]: a workflow as the node serves it, with the stale results it
/// accepted for steps that had already succeeded. Nothing changes in any other build.
#[inline]
pub fn serve(workflow: &mut pb::Workflow) {
    #[cfg(feature = "fault-injection")]
    apply::serve(workflow);
    #[cfg(not(feature = "fault-injection"))]
    let _ = workflow;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for broken in Broken::ALL {
            assert_eq!(Broken::parse(broken.name()), Ok(broken));
        }
        let err = Broken::parse("drop-everything").unwrap_err();
        assert!(
            err.contains("drop-everything") && err.contains("ack-before-sync"),
            "{err}"
        );
    }

    #[test]
    fn the_variable_chooses_only_in_a_build_with_the_feature() {
        assert_eq!(chosen_from(None), Ok(None));
        let chosen = chosen_from(Some("ack-before-sync".into()));
        if cfg!(feature = "fault-injection") {
            assert_eq!(chosen, Ok(Some(Broken::AckBeforeSync)));
        } else {
            let err = chosen.unwrap_err();
            assert!(err.contains("without the fault-injection feature"), "{err}");
        }
        assert!(chosen_from(Some("nonsense".into())).is_err());
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_build_without_the_feature_is_never_broken() {
        // The variable set or not: nothing reads it in this build.
        for broken in Broken::ALL {
            assert!(!active(broken));
        }
        expiring_here([1]);
        assert!(!expired_here(1));
    }
}
