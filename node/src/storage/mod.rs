//! Durable storage: the RocksDB Raft log ([`LogStore`]), snapshot files, and the state machine
//! store ([`StateMachineStore`]), which is the only caller of `state::ClusterState::apply`.

pub mod archive;
pub mod disk;
pub mod durable;
pub mod events;
pub mod identity;
pub mod log_store;
pub mod seed;
pub mod snapshot;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{Applied, Replica, StateMachineStore};
