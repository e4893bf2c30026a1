//! The `baton` CLI: arguments (`args`), what each command does (`commands`), and how a failure
//! becomes a message and an exit code (`failure`); `bench` is the load generator.

pub mod args;
pub mod bench;
pub mod commands;
pub mod failure;
