//! baton-client's integration tests, one binary: the client against scripted servers
//! (`common`), the agent's session protocol, the CLI and `baton bench` against real processes.

mod agent_session;
mod bench;
mod cli;
mod common;
mod failover;
mod watch;
