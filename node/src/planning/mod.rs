//! The scheduler's decisions as pure functions, built without the `server` feature: one round's
//! [`plan`] (lapsed leases, attempts to stop, whether time-driven work is due, what to assign)
//! and its [`placement`] policy. The leader's loop (`scheduler`) carries them out with Raft
//! proposals and agent messages; the deterministic simulation (`sim`) runs them against
//! simulated agents and replicas.

pub mod placement;
pub mod plan;
