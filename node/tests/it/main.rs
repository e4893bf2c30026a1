//! baton-node's integration tests, one binary (linking RocksDB once instead of once per file):
//! each module is one former test file, numbered by what it tries (see README.md here). Run one
//! with `cargo test --workspace --test it t30_scheduler::`.

mod common;
mod t01_map;
mod t10_replicated_core;
mod t11_shared_specs;
mod t16_retention_and_history;
mod t20_membership_and_snapshots;
mod t30_scheduler;
mod t31_schedules;
mod t32_agent_follows_leader;
mod t34_isolated_leader;
mod t50_processes;
mod t52_agent_processes;
mod t56_lost_data_folder;
mod t58_full_disk;
mod t59_clock_jumps;
mod t60_observability;
mod t70_health_and_reflection;
mod t70_limits_and_binding;
mod t70_security;
mod t72_graceful_stop;
mod t74_backup_and_recovery;
mod t76_secure_processes;
mod t80_tutorial;
mod t82_cli_errors;
mod t84_http_api;
mod t86_namespaces;
mod t88_secrets;
mod t89_keys;
mod t90_audit;
