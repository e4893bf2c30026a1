//! openraft glue: the type config, the transport (client in `network`, server in `service`), and
//! the running member (`node`: bootstrap, propose, linearizable reads), and the leader's group
//! commit of proposals into entries (`batcher`). The rest of the node
//! reaches openraft only through this module and `storage`, so an openraft bump stays here.

mod batcher;
pub mod clock;
pub mod envelope;
pub mod network;
pub mod node;
pub mod service;
pub mod types;

pub use node::{NodeError, Proposed, RaftNode, RaftTiming};
