//! Typed identifiers. Every id is a counter in the replicated state, never a random number, so all
//! replicas hand out the same ids.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A workflow, numbered from 1 in submit order.
    WorkflowId
);
id_type!(
    /// A Raft member. Chosen by the operator, recorded in the state, never reused.
    NodeId
);
id_type!(
    /// A registered agent, numbered from 1; its name maps to the same id on every registration.
    AgentId
);
id_type!(
    /// One attempt at running a step. Monotonic across the cluster, and the fencing token: a
    /// report carrying an attempt that is not the step's current one is refused.
    AttemptId
);

/// A step's position in its workflow's spec and in `Workflow::steps`: users name steps, the
/// state keys them by position. Encoded as the bare number, like the ids above.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StepIndex(pub u32);

impl StepIndex {
    /// The position, for indexing the workflow's steps.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for StepIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
