//! The bodies of the fuzz targets (`fuzz/`, run with `cargo +nightly fuzz`), here so that a plain
//! stable test replays every committed corpus file through exactly the same code (see the tests
//! below and docs/LIMITS.md). Each function takes arbitrary bytes and panics only on a bug:
//! a decoder that panics, a validated spec the state machine refuses, a broken invariant, a
//! report refused before proposing that the state machine would have accepted.
//!
//! Pure: no Raft, no storage, no clock. Built without the `server` feature too, so the fuzz
//! build compiles no RocksDB.

use baton_proto::spec::{SpecFormat, parse_spec};
use baton_proto::v1 as pb;
use baton_proto::validate::validate_spec;
use prost::Message;

use crate::state::{
    AgentId, ApplyCtx, Assignment, AttemptId, CancelCommand, ClusterState, Command,
    CompleteCommand, LogEntry, NodeId, PauseCommand, PurgeCommand, RegisterAgentCommand, Response,
    RetryCommand, SignalCommand, StepIndex, SubmitCommand, WorkflowId,
};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every fuzz target, by the name of its folder under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec_text", spec_text),
    ("spec_proto", spec_proto),
    ("requests", requests),
    ("log_entry", log_entry),
    ("snapshot", snapshot),
    ("commands", commands),
];

/// YAML (first byte even) or JSON (odd) spec text: parse, validate, and a spec that passes
/// must be accepted by the state machine.
pub fn spec_text(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first % 2 == 0 {
        SpecFormat::Yaml
    } else {
        SpecFormat::Json
    };
    if let Ok(spec) = parse_spec(text, format) {
        check_spec(&spec);
    }
}

/// A protobuf-encoded `WorkflowSpec`, as a Submit carries it.
pub fn spec_proto(data: &[u8]) {
    if let Ok(spec) = pb::WorkflowSpec::decode(data) {
        check_spec(&spec);
    }
}

/// Validation is linear and total; a spec that passes it is one the state machine takes.
fn check_spec(spec: &pb::WorkflowSpec) {
    reencodes(spec);
    if validate_spec(spec).is_err() {
        return;
    }
    let mut state = ClusterState::default();
    let applied = state.apply(
        ApplyCtx { index: 1 },
        LogEntry {
            time_ms: 1,
            command: Command::Submit(SubmitCommand {
                actor: String::new(),
                spec: spec.encode_to_vec(),
                idempotency_key: String::new(),
                params: Default::default(),
                template: None,
                namespace: String::new(),
            }),
        },
    );
    assert!(
        matches!(applied.response, Response::Submitted { created: true, .. }),
        "a validated spec was refused by the state machine: {:?}",
        applied.response
    );
    state.check_invariants();
}

/// Decoded, re-encoded and decoded again, a message encodes to the same bytes.
fn reencodes<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("an encoded message decodes");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "re-encoding changed a message"
    );
}

/// Every request type a node decodes from the network, chosen by the first byte.
pub fn requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    fn decode<M: Message + Default>(body: &[u8]) -> Option<M> {
        let message = M::decode(body).ok()?;
        reencodes(&message);
        Some(message)
    }
    use baton_proto::raft::v1 as raft;
    match which % 17 {
        0 => {
            if let Some(pb::SubmitRequest {
                spec: Some(spec), ..
            }) = decode(body)
            {
                check_spec(&spec);
            }
        }
        1 => drop(decode::<pb::GetRequest>(body)),
        2 => drop(decode::<pb::ListRequest>(body)),
        3 => drop(decode::<pb::CancelRequest>(body)),
        4 => drop(decode::<pb::WatchRequest>(body)),
        5 => drop(decode::<pb::AgentMessage>(body)),
        6 => drop(decode::<pb::ClusterStatusRequest>(body)),
        7 => drop(decode::<pb::AddMemberRequest>(body)),
        8 => drop(decode::<pb::RemoveMemberRequest>(body)),
        9 => drop(decode::<pb::TransferLeaderRequest>(body)),
        10 => drop(decode::<pb::TriggerSnapshotRequest>(body)),
        11 => drop(decode::<pb::ListAgentsRequest>(body)),
        12 => {
            // A forwarded proposal: the payload inside is a Raft log command.
            if let Some(payload) = decode::<raft::RaftPayload>(body) {
                log_entry(&payload.data);
            }
        }
        13 => drop(decode::<raft::SnapshotChunk>(body)),
        14 => drop(decode::<raft::ReadIndexRequest>(body)),
        15 => drop(decode::<raft::HelloRequest>(body)),
        _ => {
            if let Some(batch) = decode::<pb::SubmitBatchRequest>(body) {
                for spec in batch.submits.iter().filter_map(|s| s.spec.as_ref()) {
                    check_spec(spec);
                }
            }
        }
    }
}

/// A Raft log entry as stored and replicated: decodes or errs, round-trips, and applies to a
/// state with workflows, agents and live attempts without breaking an invariant.
pub fn log_entry(data: &[u8]) {
    let Ok(mut entry) = LogEntry::decode(data) else {
        return;
    };
    let again = LogEntry::decode(&entry.encode()).expect("an encoded entry decodes");
    assert_eq!(
        again, entry,
        "a log entry changed through encode and decode"
    );
    let mut state = seeded_state();
    if matches!(entry.command, Command::Complete(_)) {
        // Still clock, so that "a refused report changes nothing" can be checked exactly.
        entry.time_ms = state.now_ms();
    }
    let before = state.clone();
    let refusal = match &entry.command {
        Command::Complete(c) => state.report_refusal(c.attempt_id, c.agent_id),
        _ => None,
    };
    let applied = state.apply(ApplyCtx { index: 100 }, entry);
    state.check_invariants();
    if refusal.is_some() {
        assert!(
            matches!(applied.response, Response::ReportRefused { .. }),
            "report_refusal predicted a refusal that apply did not make"
        );
    }
    if matches!(applied.response, Response::ReportRefused { .. }) {
        assert_eq!(state, before, "a refused report changed the state");
    }
}

/// A snapshot payload (`ClusterState::encode`): decodes or errs, and round-trips. (Snapshot
/// files and chunks are checksummed before this; a decoded but inconsistent state is not
/// applied to.)
pub fn snapshot(data: &[u8]) {
    let Ok(state) = ClusterState::decode(data) else {
        return;
    };
    let bytes = state.encode();
    let again = ClusterState::decode(&bytes).expect("an encoded state decodes");
    assert_eq!(
        again.encode(),
        bytes,
        "a state changed through encode and decode"
    );
}

/// A state with two workflows, two agents and live attempts, for entries to apply to.
fn seeded_state() -> ClusterState {
    let mut replica = Replica::default();
    // Programs of the `commands` interpreter: op, time step, then the op's bytes.
    replica.run(&[
        OP_REGISTER,
        1,
        0,
        2, // agent 1 "x", 2 slots, zone=z1
        OP_REGISTER,
        1,
        1,
        3, // agent 2 "y", 3 slots
        OP_SUBMIT,
        1,
        1,
        1,
        0, // retention: the cluster default
        0, // timeout: none
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0, // workflow 1: a, b after a
        OP_SUBMIT,
        1,
        0,
        1,
        0, // retention: the cluster default
        0, // timeout: none
        0,
        0,
        0,
        1, // workflow 2: a, key "k1"
        OP_ASSIGN,
        1,
        0,
        1,
        0,
        1, // workflow 1 step a to agent 1
        OP_ASSIGN,
        1,
        0,
        2,
        0,
        2, // workflow 2 step a to agent 2
    ]);
    replica.state
}

const OP_SUBMIT: u8 = 0;
const OP_CANCEL: u8 = 1;
const OP_REGISTER: u8 = 2;
const OP_ASSIGN: u8 = 3;
const OP_COMPLETE: u8 = 4;
const OP_EXPIRE: u8 = 5;
const OP_TICK: u8 = 6;
const OP_INIT: u8 = 7;
const OP_RESERVE: u8 = 8;
const OP_SNAPSHOT: u8 = 9;
const OP_MEMBERSHIP: u8 = 10;
const OP_PURGE: u8 = 11;
const OP_PAUSE: u8 = 12;
const OP_RETRY: u8 = 13;
const OP_SIGNAL: u8 = 14;
const OP_NAMESPACE: u8 = 15;
const OPS: u8 = 16;

/// Sequences of state-machine commands, decoded from the bytes by a small interpreter so that
/// they interact (few names, small ids). Two replicas apply the same log, one of them restarting
/// from a snapshot of itself when asked; after every command the invariants hold, a report the
/// session layer would refuse early is refused by apply and changes nothing, and at the end both
/// replicas are equal.
pub fn commands(data: &[u8]) {
    let mut a = Replica::default();
    let mut b = Replica::default();
    let mut bytes = Bytes(data);
    for _ in 0..COMMANDS_MAX {
        let Some(op) = bytes.next() else {
            break;
        };
        if op % OPS == OP_SNAPSHOT {
            b.state = ClusterState::decode(&b.state.encode()).expect("a snapshot decodes");
            continue;
        }
        let Some((time_ms, command)) = a.command(op, &mut bytes) else {
            continue;
        };
        let ra = a.apply(time_ms, command.clone());
        let rb = b.apply(time_ms, command);
        assert_eq!(ra, rb, "replicas disagree on a response");
    }
    assert_eq!(a.state, b.state, "replicas diverged");
    assert_eq!(a.state.state_hash(), b.state.state_hash());
}

/// Commands per `commands` input: enough for long interactions, bounded per run.
const COMMANDS_MAX: usize = 512;

/// Reads small numbers from the fuzzer's bytes; None at the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// A number below `n` (0 at the end of the input).
    fn below(&mut self, n: u8) -> u8 {
        self.next().unwrap_or(0) % n
    }
}

/// One replica: a state and its log position.
#[derive(Default)]
struct Replica {
    state: ClusterState,
    index: u64,
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const AGENTS: [&str; 3] = ["x", "y", "z"];
const KEYS: [&str; 3] = ["", "k1", "k2"];

impl Replica {
    /// Runs an interpreter program (see [`commands`]) on this replica alone.
    fn run(&mut self, program: &[u8]) {
        let mut bytes = Bytes(program);
        while let Some(op) = bytes.next() {
            if let Some((time_ms, command)) = self.command(op, &mut bytes) {
                self.apply(time_ms, command);
            }
        }
    }

    fn apply(&mut self, time_ms: u64, command: Command) -> Response {
        self.index += 1;
        let before = self.state.clone();
        let refusal = match &command {
            Command::Complete(c) => self.state.report_refusal(c.attempt_id, c.agent_id),
            _ => None,
        };
        let applied = self.state.apply(
            ApplyCtx { index: self.index },
            LogEntry { time_ms, command },
        );
        self.state.check_invariants();
        if refusal.is_some() {
            assert!(
                matches!(applied.response, Response::ReportRefused { .. }),
                "report_refusal predicted a refusal that apply did not make: {:?}",
                applied.response
            );
        }
        if matches!(applied.response, Response::ReportRefused { .. }) {
            assert!(applied.events.is_empty());
            assert_eq!(self.state, before, "a refused report changed the state");
        }
        applied.response
    }

    /// Decodes one command after its op byte, with the leader time to stamp it with.
    fn command(&self, op: u8, bytes: &mut Bytes) -> Option<(u64, Command)> {
        let now_ms = self.state.now_ms();
        // Mostly forward, sometimes backwards (a new leader's clock may lag).
        let step = bytes.next().unwrap_or(0);
        let time_ms = if step == 255 {
            now_ms.saturating_sub(5_000)
        } else {
            now_ms + u64::from(step) * 100
        };
        let command = match op % OPS {
            OP_SUBMIT => Command::Submit(SubmitCommand {
                actor: String::new(),
                spec: fuzz_spec(bytes).encode_to_vec(),
                idempotency_key: KEYS[bytes.below(3) as usize].into(),
                params: Default::default(),
                template: None,
                namespace: String::new(),
            }),
            OP_CANCEL => Command::Cancel(CancelCommand {
                workflow_id: WorkflowId(u64::from(bytes.below(6))),
                reason: String::new(),
                actor: String::new(),
            }),
            OP_REGISTER => {
                let name = AGENTS[bytes.below(3) as usize];
                let slots = u32::from(bytes.below(4));
                Command::RegisterAgent(RegisterAgentCommand {
                    namespaces: Default::default(),
                    name: name.into(),
                    labels: if slots % 2 == 0 {
                        [("zone".to_owned(), "z1".to_owned())].into()
                    } else {
                        Default::default()
                    },
                    slots,
                    cpu_millis: 2000,
                    memory_mb: 2048,
                    task_types: Vec::new(),
                })
            }
            OP_ASSIGN => {
                let n = 1 + bytes.below(3);
                Command::Assign {
                    assignments: (0..n)
                        .map(|_| Assignment {
                            workflow_id: WorkflowId(u64::from(bytes.below(6))),
                            step: StepIndex(u32::from(bytes.below(6))),
                            agent_id: AgentId(u64::from(bytes.below(5))),
                        })
                        .collect(),
                }
            }
            OP_COMPLETE => Command::Complete(CompleteCommand {
                attempt_id: AttemptId(u64::from(bytes.below(16))),
                agent_id: AgentId(u64::from(bytes.below(5))),
                success: bytes.below(2) == 0,
                output: "o".repeat(bytes.below(4) as usize),
                error: "e\nlast".into(),
                exit_code: Some(i32::from(bytes.below(3))),
            }),
            OP_EXPIRE => Command::ExpireLeases {
                attempts: (0..1 + bytes.below(2))
                    .map(|_| AttemptId(u64::from(bytes.below(16))))
                    .collect(),
            },
            OP_TICK => Command::Tick,
            OP_INIT => Command::InitCluster {
                cluster_id: AGENTS[bytes.below(3) as usize].into(),
            },
            OP_RESERVE => Command::ReserveNodeId {
                node_id: NodeId(u64::from(bytes.below(8))),
            },
            OP_PURGE => Command::Purge(PurgeCommand {
                workflows: (1..=6u64)
                    .filter(|_| bytes.below(2) == 0)
                    .map(WorkflowId)
                    .collect(),
                // Seconds, so that times the interpreter reaches (steps of up to 25.5 s) make
                // workflows and their records due.
                default_retention_ms: 1_000 * (1 + u64::from(bytes.below(8))),
                idempotency_window_ms: 1_000 * (1 + u64::from(bytes.below(8))),
            }),
            OP_PAUSE => Command::Pause(PauseCommand {
                workflow_id: WorkflowId(u64::from(bytes.below(6))),
                paused: bytes.below(2) == 0,
                actor: String::new(),
            }),
            OP_RETRY => Command::Retry(RetryCommand {
                workflow_id: WorkflowId(u64::from(bytes.below(6))),
                // The failed ones, or a step by a name that may not exist.
                from_step: match bytes.below(3) {
                    0 => String::new(),
                    _ => NAMES[bytes.below(5) as usize].into(),
                },
                actor: String::new(),
            }),
            OP_SIGNAL => Command::Signal(SignalCommand {
                workflow_id: WorkflowId(u64::from(bytes.below(6))),
                step: NAMES[bytes.below(5) as usize].into(),
                data: String::new(),
                reject: bytes.below(2) == 0,
                actor: String::new(),
            }),
            // A second namespace comes and goes; submits to it use the same keys as
            // `default`'s (two workflows), or are refused while it does not exist.
            OP_NAMESPACE => match bytes.below(3) {
                0 => Command::CreateNamespace(crate::state::CreateNamespaceCommand {
                    weight: Default::default(),
                    quotas: Default::default(),
                    name: "team-a".into(),
                    description: String::new(),
                }),
                1 => Command::DeleteNamespace {
                    name: "team-a".into(),
                },
                _ => Command::Submit(SubmitCommand {
                    actor: String::new(),
                    spec: fuzz_spec(bytes).encode_to_vec(),
                    idempotency_key: KEYS[bytes.below(3) as usize].into(),
                    params: Default::default(),
                    template: None,
                    namespace: "team-a".into(),
                }),
            },
            OP_MEMBERSHIP => {
                let ids = |bytes: &mut Bytes| -> Vec<NodeId> {
                    (1..=5u64)
                        .filter(|_| bytes.below(2) == 0)
                        .map(NodeId)
                        .collect()
                };
                Command::Membership {
                    previous: ids(bytes),
                    members: ids(bytes),
                }
            }
            _ => return None,
        };
        // A report carries the time it is proposed at, but a refused one must leave the state
        // exactly as it was: keep the clock still for reports so that this can be checked.
        let time_ms = if matches!(command, Command::Complete(_)) {
            now_ms
        } else {
            time_ms
        };
        Some((time_ms, command))
    }
}

/// A small spec, valid or not (the state machine must cope with what validation refuses too:
/// a log written by another release). Unknown and duplicate names, cycles, odd conditions,
/// retries, constraints and deadlines all come up.
fn fuzz_spec(bytes: &mut Bytes) -> pb::WorkflowSpec {
    let steps = 1 + bytes.below(5);
    pb::WorkflowSpec {
        name: "w".into(),
        priority: i32::from(bytes.below(3)) - 1,
        // The cluster default (0), or seconds of its own.
        retention_ms: u64::from(bytes.below(3)) * 2_000,
        // None, or a few seconds: some workflows time out.
        timeout_ms: u64::from(bytes.below(3)) * 3_000,
        steps: (0..steps)
            .map(|i| {
                let deps = bytes.below(3);
                let flags = bytes.next().unwrap_or(0);
                pb::StepSpec {
                    name: NAMES[(i + bytes.below(2)) as usize % NAMES.len()].into(),
                    depends_on: (0..deps)
                        .map(|_| NAMES[bytes.below(5) as usize].into())
                        .collect(),
                    when: i32::from(flags % 5),
                    priority: Some(i32::from(flags / 5 % 3) - 1),
                    retry: (flags & 0x10 != 0).then(|| pb::RetryPolicy {
                        max_attempts: u32::from(bytes.below(4)),
                        backoff: Some(pb::Backoff {
                            initial_ms: u64::from(bytes.below(4)) * 500,
                            max_ms: u64::from(bytes.below(4)) * 1000,
                            multiplier: f64::from(bytes.below(4)),
                        }),
                    }),
                    constraints: if flags & 0x20 != 0 {
                        [("zone".to_owned(), "z1".to_owned())].into()
                    } else {
                        Default::default()
                    },
                    schedule_to_start_timeout_ms: if flags & 0x40 != 0 { 2_000 } else { 0 },
                    resources: (flags & 0x80 != 0).then_some(pb::Resources {
                        cpu_millis: 1500,
                        memory_mb: 512,
                    }),
                    // Some steps wait for a signal (with a timeout or not), on no agent.
                    task: Some(if flags % 7 == 3 {
                        pb::step_spec::Task::Wait(pb::WaitTask {
                            signal: "go".into(),
                            timeout_ms: if flags & 0x40 != 0 { 3_000 } else { 0 },
                        })
                    } else {
                        pb::step_spec::Task::Noop(pb::NoopTask {})
                    }),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed corpus file (seeds and the crashers found so far) through its
    /// target, on stable, in the normal test run.
    #[test]
    fn every_corpus_file_replays_without_a_finding() {
        // The manifest folder of this run (cargo sets it), not the one this test was built in: a
        // target folder shared by two checkouts may run a binary built in the other.
        let corpus = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../fuzz/corpus");
        let mut replayed = 0;
        for (target, run) in TARGETS {
            let dir = corpus.join(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut files = 0;
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(result.is_ok(), "{target}: {} fails", path.display());
                files += 1;
            }
            assert!(files > 0, "{target}: empty corpus in {}", dir.display());
            replayed += files;
        }
        assert!(replayed >= TARGETS.len());
    }

    /// Writes the seed corpora (run by hand after a format change:
    /// `cargo test -p baton-node --lib write_seed_corpus -- --ignored`).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        let root = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("..");
        let corpus = root.join("fuzz/corpus");
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        };
        let mut specs = Vec::new();
        // In name order, so that the seeds made from the first spec do not depend on the
        // order the file system lists them in.
        let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        examples.sort();
        for path in examples {
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let spec = parse_spec(&text, SpecFormat::Yaml).unwrap();
            let mut yaml = vec![0];
            yaml.extend_from_slice(text.as_bytes());
            write("spec_text", &format!("{name}.yaml"), &yaml);
            let mut json = vec![1];
            json.extend_from_slice(
                serde_json::to_string_pretty(
                    &serde_norway::from_str::<serde_json::Value>(&text).unwrap(),
                )
                .unwrap()
                .as_bytes(),
            );
            write("spec_text", &format!("{name}.json"), &json);
            write("spec_proto", &name, &spec.encode_to_vec());
            specs.push(spec);
        }
        let spec = specs[0].clone();
        let requests: Vec<(u8, Vec<u8>)> = vec![
            (
                0,
                pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(spec.clone()),
                    idempotency_key: "k".into(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                }
                .encode_to_vec(),
            ),
            (
                1,
                pb::GetRequest {
                    workflow_id: 3,
                    consistency: 1,
                    attempts_of_step: String::new(),
                }
                .encode_to_vec(),
            ),
            (
                2,
                pb::ListRequest {
                    page_size: 10,
                    name_prefix: "n".into(),
                    states: vec![1, 2],
                    labels: [("team".into(), "a".into())].into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                3,
                pb::CancelRequest {
                    workflow_id: 2,
                    reason: "r".into(),
                }
                .encode_to_vec(),
            ),
            (
                4,
                pb::WatchRequest {
                    all_namespaces: Default::default(),
                    namespace: Default::default(),
                    workflow_id: 1,
                    from_index: 5,
                }
                .encode_to_vec(),
            ),
            (
                5,
                pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Register(pb::Register {
                        name: "x".into(),
                        slots: 2,
                        running_attempts: vec![1, 2],
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
            ),
            (
                5,
                pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Report(pb::Report {
                        attempt_id: 1,
                        success: true,
                        output: "o".into(),
                        exit_code: Some(0),
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
            ),
            (
                7,
                pb::AddMemberRequest {
                    node_id: 4,
                    address: "127.0.0.1:7000".into(),
                }
                .encode_to_vec(),
            ),
            (8, pb::RemoveMemberRequest { node_id: 4 }.encode_to_vec()),
            (
                16,
                pb::SubmitBatchRequest {
                    submits: vec![
                        pb::SubmitRequest {
                            namespace: Default::default(),
                            spec: Some(spec.clone()),
                            idempotency_key: "k1".into(),
                            params: Default::default(),
                            template: String::new(),
                            template_version: 0,
                        },
                        pb::SubmitRequest {
                            namespace: Default::default(),
                            spec: Some(spec.clone()),
                            idempotency_key: String::new(),
                            params: Default::default(),
                            template: String::new(),
                            template_version: 0,
                        },
                    ],
                }
                .encode_to_vec(),
            ),
            (
                12,
                baton_proto::raft::v1::RaftPayload {
                    data: LogEntry {
                        time_ms: 5,
                        command: Command::Tick,
                    }
                    .encode(),
                }
                .encode_to_vec(),
            ),
        ];
        for (i, (which, body)) in requests.into_iter().enumerate() {
            let mut data = vec![which];
            data.extend(body);
            write("requests", &format!("{i}-{which}"), &data);
        }
        let entries = vec![
            Command::Submit(SubmitCommand {
                actor: String::new(),
                namespace: Default::default(),
                spec: spec.encode_to_vec(),
                idempotency_key: "k9".into(),
                params: Default::default(),
                template: None,
            }),
            Command::Cancel(CancelCommand {
                workflow_id: WorkflowId(1),
                reason: "r".into(),
                actor: String::new(),
            }),
            Command::RegisterAgent(RegisterAgentCommand {
                namespaces: Default::default(),
                name: "x".into(),
                labels: Default::default(),
                slots: 1,
                cpu_millis: 1,
                memory_mb: 1,
                task_types: Vec::new(),
            }),
            Command::Assign {
                assignments: vec![Assignment {
                    workflow_id: WorkflowId(1),
                    step: StepIndex(1),
                    agent_id: AgentId(1),
                }],
            },
            Command::Complete(CompleteCommand {
                attempt_id: AttemptId(1),
                agent_id: AgentId(1),
                success: true,
                output: "o".into(),
                error: String::new(),
                exit_code: Some(0),
            }),
            Command::Complete(CompleteCommand {
                attempt_id: AttemptId(1),
                agent_id: AgentId(2),
                success: true,
                output: "forged".into(),
                error: String::new(),
                exit_code: None,
            }),
            Command::ExpireLeases {
                attempts: vec![AttemptId(2)],
            },
            Command::Tick,
            Command::InitCluster {
                cluster_id: "c".into(),
            },
            Command::ReserveNodeId { node_id: NodeId(4) },
            Command::Purge(PurgeCommand {
                workflows: vec![WorkflowId(1)],
                default_retention_ms: 1_000,
                idempotency_window_ms: 1_000,
            }),
            Command::Pause(PauseCommand {
                workflow_id: WorkflowId(1),
                paused: true,
                actor: String::new(),
            }),
            Command::Retry(RetryCommand {
                workflow_id: WorkflowId(1),
                from_step: "a".into(),
                actor: String::new(),
            }),
            Command::Signal(SignalCommand {
                workflow_id: WorkflowId(1),
                step: "a".into(),
                data: "{}".into(),
                reject: false,
                actor: String::new(),
            }),
        ];
        for (i, command) in entries.into_iter().enumerate() {
            let kind = command.kind();
            let entry = LogEntry {
                time_ms: 1_000_000,
                command,
            };
            write("log_entry", &format!("{i}-{kind}"), &entry.encode());
        }
        write("snapshot", "empty", &ClusterState::default().encode());
        write("snapshot", "seeded", &seeded_state().encode());
        write(
            "commands",
            "seeded",
            &[
                OP_REGISTER,
                1,
                0,
                2,
                OP_REGISTER,
                1,
                1,
                3,
                OP_SUBMIT,
                1,
                1,
                1,
                0, // retention: the cluster default
                0, // timeout: none
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                OP_SUBMIT,
                1,
                0,
                1,
                0, // retention: the cluster default
                0, // timeout: none
                0,
                0,
                0,
                1,
                OP_ASSIGN,
                1,
                0,
                1,
                0,
                1,
                OP_ASSIGN,
                1,
                0,
                2,
                0,
                2,
                OP_COMPLETE,
                1,
                1,
                2,
                0,
                1,
                0, // agent 2 reports agent 1's attempt
                OP_SNAPSHOT,
                OP_COMPLETE,
                1,
                1,
                1,
                1,
                0,
                0, // attempt 1 fails
                OP_TICK,
                200,
                OP_EXPIRE,
                1,
                0,
                2,
                OP_CANCEL,
                1,
                1,
            ],
        );
        write(
            "commands",
            "retries",
            &[
                OP_REGISTER,
                1,
                0,
                1,
                OP_SUBMIT,
                1,
                0,
                1,
                0, // retention: the cluster default
                0, // timeout: none
                0,
                0x10,
                0,
                3,
                1,
                1,
                2,
                0,
                OP_ASSIGN,
                1,
                0,
                1,
                0,
                1,
                OP_COMPLETE,
                1,
                1,
                1,
                1,
                0,
                0,
                OP_TICK,
                50,
                OP_ASSIGN,
                1,
                0,
                1,
                0,
                1,
                OP_COMPLETE,
                1,
                2,
                1,
                0,
                0,
                0,
            ],
        );
    }

    #[test]
    fn the_seeded_state_has_live_attempts_of_two_agents() {
        let state = seeded_state();
        let agents: std::collections::BTreeSet<_> =
            state.live_attempts().map(|(_, l)| l.agent_id).collect();
        assert_eq!(agents.len(), 2, "{agents:?}");
        assert_eq!(state.workflow_count(), 2);
    }
}
