//! The `baton` CLI: arguments (`args`), what each command does (`commands`), and how a failure
//! becomes a message and an exit code (`failure`); `bench` is the load generator. How answers
//! look (`output/`) is here too, but compiled into the library (public as
//! `baton_client::output`), so the CLI reaches it by that path and declares no module for it.

pub mod args;
pub mod bench;
pub mod commands;
pub mod failure;
