//! openraft glue, and the node's only door to it: the type config (`types`), the transport
//! (client in `network`, server in `service`, who is who in `envelope`), the running member
//! (`node`: start, propose, linearizable reads, halting), how a node joins (`bootstrap`),
//! leadership (`leadership`), the leader's clock (`clock`) and group commit (`batcher`), and what
//! the rest of the node may see of it (`status`, `error`). The rest of the node reaches openraft
//! only through this module and `storage`, so an openraft bump stays here.

mod batcher;
mod bootstrap;
pub mod clock;
pub mod envelope;
mod error;
mod leadership;
pub mod network;
pub mod node;
pub mod service;
pub mod status;
pub mod types;

pub use error::{NodeError, REFUSAL_DISK_LOW, REFUSAL_METADATA, overloaded};
pub use leadership::{DISK_HANDOFF_RETRY, TransferError};
pub use node::{Decided, Proposed, RaftNode, RaftTiming, StorageSettings, outcome};
pub use status::{Member, MembershipError, RaftStatus, Role, SnapshotError, StatusWatch};
