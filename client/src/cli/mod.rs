//! The `baton` CLI: arguments (`args`), what each command does (`commands`), and how a failure
//! becomes a message and an exit code (`failure`).

pub mod args;
pub mod commands;
pub mod failure;
