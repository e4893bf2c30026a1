//! How results look: stable JSON (`-o json`) and aligned human tables, built from the prost types.
//!
//! prost types do not derive `Serialize`, and their derived names would leak wire details
//! (`WORKFLOW_STATE_RUNNING`, `0` for "never"), so the JSON is written by hand here, one
//! function per message. Its shape is an interface for scripts: field names are the proto's,
//! enum values lowercase names (`"running"`), times integers of milliseconds since the Unix
//! epoch (`null` when not set), ids numbers. Add fields freely; never rename or retype one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use baton_proto::v1::{
    AgentInfo, ClusterStatusResponse, EventKind, Member, RunCondition, Step, StepSpec, StepState,
    SubmitResponse, TokenInfo, Workflow, WorkflowEvent, WorkflowSpec, WorkflowState,
    step_spec::Task,
};
use serde_json::{Map, Value, json};

// ---- enum names ----

/// `running`, `succeeded`, ...; `unspecified` for 0 and `unknown` for a value newer than us.
pub fn workflow_state_name(state: i32) -> &'static str {
    match WorkflowState::try_from(state) {
        Ok(WorkflowState::Unspecified) => "unspecified",
        Ok(WorkflowState::Running) => "running",
        Ok(WorkflowState::Succeeded) => "succeeded",
        Ok(WorkflowState::Failed) => "failed",
        Ok(WorkflowState::Cancelled) => "cancelled",
        Err(_) => "unknown",
    }
}

/// Parses a name printed by [`workflow_state_name`] (for `baton list --state`).
pub fn parse_workflow_state(name: &str) -> Option<WorkflowState> {
    match name.trim().to_ascii_lowercase().as_str() {
        "running" => Some(WorkflowState::Running),
        "succeeded" => Some(WorkflowState::Succeeded),
        "failed" => Some(WorkflowState::Failed),
        "cancelled" | "canceled" => Some(WorkflowState::Cancelled),
        _ => None,
    }
}

pub fn step_state_name(state: i32) -> &'static str {
    match StepState::try_from(state) {
        Ok(StepState::Unspecified) => "unspecified",
        Ok(StepState::Waiting) => "waiting",
        Ok(StepState::Ready) => "ready",
        Ok(StepState::Running) => "running",
        Ok(StepState::Backoff) => "backoff",
        Ok(StepState::Succeeded) => "succeeded",
        Ok(StepState::Failed) => "failed",
        Ok(StepState::Skipped) => "skipped",
        Ok(StepState::Cancelled) => "cancelled",
        Err(_) => "unknown",
    }
}

pub fn event_kind_name(kind: i32) -> &'static str {
    match EventKind::try_from(kind) {
        Ok(EventKind::Unspecified) => "unspecified",
        Ok(EventKind::WorkflowSubmitted) => "workflow_submitted",
        Ok(EventKind::WorkflowFinished) => "workflow_finished",
        Ok(EventKind::StepReady) => "step_ready",
        Ok(EventKind::StepAssigned) => "step_assigned",
        Ok(EventKind::StepFinished) => "step_finished",
        Ok(EventKind::StepRetrying) => "step_retrying",
        Ok(EventKind::StepLeaseExpired) => "step_lease_expired",
        Ok(EventKind::StepSkipped) => "step_skipped",
        Ok(EventKind::CancelRequested) => "cancel_requested",
        Err(_) => "unknown",
    }
}

/// `success` for 0 too, since that is what the server runs it as.
pub fn run_condition_name(condition: i32) -> &'static str {
    match RunCondition::try_from(condition) {
        Ok(RunCondition::Unspecified | RunCondition::Success) => "success",
        Ok(RunCondition::Failure) => "failure",
        Ok(RunCondition::Always) => "always",
        Err(_) => "unknown",
    }
}

// ---- JSON ----

/// A time field: 0 means "not yet" on the wire, `null` here.
fn time_json(ms: u64) -> Value {
    if ms == 0 { Value::Null } else { json!(ms) }
}

fn map_json(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect(),
    )
}

pub fn submit_json(response: &SubmitResponse) -> Value {
    json!({
        "workflow_id": response.workflow_id,
        "created": response.created,
        "log_index": response.log_index,
    })
}

/// A workflow, with its spec and steps when the server sent them (Get does, List does not).
pub fn workflow_json(workflow: &Workflow) -> Value {
    json!({
        "id": workflow.id,
        "name": workflow.name,
        "state": workflow_state_name(workflow.state),
        "labels": map_json(&workflow.labels),
        "idempotency_key": workflow.idempotency_key,
        "created_at_ms": time_json(workflow.created_at_ms),
        "finished_at_ms": time_json(workflow.finished_at_ms),
        "reason": workflow.reason,
        "revision": workflow.revision,
        "steps": workflow.steps.iter().map(step_json).collect::<Vec<_>>(),
        "spec": workflow.spec.as_ref().map(spec_json),
    })
}

pub fn step_json(step: &Step) -> Value {
    json!({
        "name": step.name,
        "state": step_state_name(step.state),
        "attempts": step.attempts,
        "attempt_id": if step.attempt_id == 0 { Value::Null } else { json!(step.attempt_id) },
        "agent": if step.agent.is_empty() { Value::Null } else { json!(step.agent) },
        "ready_at_ms": time_json(step.ready_at_ms),
        "started_at_ms": time_json(step.started_at_ms),
        "finished_at_ms": time_json(step.finished_at_ms),
        "retry_at_ms": time_json(step.retry_at_ms),
        "pending_reason": step.pending_reason,
        "output": step.output,
        "error": step.error,
        "exit_code": step.exit_code,
    })
}

/// The spec as the server stored it, in the proto's field names (durations in `_ms` fields).
pub fn spec_json(spec: &WorkflowSpec) -> Value {
    json!({
        "name": spec.name,
        "labels": map_json(&spec.labels),
        "priority": spec.priority,
        "input": map_json(&spec.input),
        "steps": spec.steps.iter().map(step_spec_json).collect::<Vec<_>>(),
    })
}

fn step_spec_json(step: &StepSpec) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), json!(step.name));
    object.insert("depends_on".into(), json!(step.depends_on));
    object.insert("when".into(), json!(run_condition_name(step.when)));
    // The task under its own key, as in the YAML a user writes.
    match &step.task {
        Some(Task::Exec(exec)) => object.insert(
            "exec".into(),
            json!({
                "command": exec.command,
                "env": map_json(&exec.env),
                "working_dir": exec.working_dir,
            }),
        ),
        Some(Task::Http(http)) => object.insert(
            "http".into(),
            json!({
                "method": http.method,
                "url": http.url,
                "headers": map_json(&http.headers),
                "body": http.body,
                "success_statuses": http.success_statuses,
            }),
        ),
        Some(Task::Noop(_)) => object.insert("noop".into(), json!({})),
        Some(Task::Sleep(sleep)) => {
            object.insert("sleep".into(), json!({ "duration_ms": sleep.duration_ms }))
        }
        Some(Task::Custom(custom)) => object.insert(
            "custom".into(),
            json!({ "type": custom.r#type, "payload": custom.payload }),
        ),
        None => None,
    };
    let retry = step.retry.as_ref().map(|retry| {
        json!({
            "max_attempts": retry.max_attempts,
            "backoff": retry.backoff.as_ref().map(|backoff| json!({
                "initial_ms": backoff.initial_ms,
                "multiplier": backoff.multiplier,
                "max_ms": backoff.max_ms,
            })),
        })
    });
    object.insert("retry".into(), json!(retry));
    object.insert("timeout_ms".into(), json!(step.timeout_ms));
    let resources = step.resources.as_ref().map(
        |resources| json!({ "cpu_millis": resources.cpu_millis, "memory_mb": resources.memory_mb }),
    );
    object.insert("resources".into(), json!(resources));
    object.insert("constraints".into(), map_json(&step.constraints));
    object.insert("priority".into(), json!(step.priority));
    object.insert("lease_ttl_ms".into(), json!(step.lease_ttl_ms));
    object.insert(
        "schedule_to_start_timeout_ms".into(),
        json!(step.schedule_to_start_timeout_ms),
    );
    Value::Object(object)
}

pub fn event_json(event: &WorkflowEvent) -> Value {
    json!({
        "index": event.index,
        "workflow_id": event.workflow_id,
        "time_ms": time_json(event.time_ms),
        "kind": event_kind_name(event.kind),
        "step": if event.step.is_empty() { Value::Null } else { json!(event.step) },
        "attempt_id": if event.attempt_id == 0 { Value::Null } else { json!(event.attempt_id) },
        "agent": if event.agent.is_empty() { Value::Null } else { json!(event.agent) },
        "workflow_state": workflow_state_name(event.workflow_state),
        "step_state": step_state_name(event.step_state),
        "message": event.message,
    })
}

pub fn member_json(member: &Member) -> Value {
    json!({
        "node_id": member.node_id,
        "address": member.address,
        "voter": member.voter,
        "matched_index": member.matched_index,
    })
}

pub fn members_json(members: &[Member]) -> Value {
    json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() })
}

pub fn cluster_status_json(status: &ClusterStatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "cluster_id": status.cluster_id,
        "role": status.role,
        "leader_id": if status.leader_id == 0 { Value::Null } else { json!(status.leader_id) },
        "term": status.term,
        "last_log_index": status.last_log_index,
        "committed_index": status.committed_index,
        "applied_index": status.applied_index,
        "snapshot_index": status.snapshot_index,
        "purged_index": status.purged_index,
        "state_hash": status.state_hash,
        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

pub fn agent_json(agent: &AgentInfo) -> Value {
    json!({
        "agent_id": agent.agent_id,
        "name": agent.name,
        "labels": map_json(&agent.labels),
        "connected": agent.connected,
        "slots": agent.slots,
        "slots_used": agent.slots_used,
        "cpu_millis": agent.cpu_millis,
        "cpu_millis_used": agent.cpu_millis_used,
        "memory_mb": agent.memory_mb,
        "memory_mb_used": agent.memory_mb_used,
        "running": agent.running.iter().map(|attempt| json!({
            "workflow_id": attempt.workflow_id,
            "step": attempt.step,
            "attempt_id": attempt.attempt_id,
        })).collect::<Vec<_>>(),
    })
}

// ---- human output ----

/// Columns padded to their widest cell, two spaces apart, no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (index, cell) in line.iter().enumerate() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (index, cell) in line.iter().enumerate() {
                if index > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths[index] - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `2024-05-01 12:30:05` (UTC) for milliseconds since the epoch; `-` for 0 ("not yet").
pub fn format_time_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let seconds = ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`), so the CLI needs no date library for one column.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The first line of `text`, cut to `chars_max` characters with `…`: keeps table rows one line.
fn one_line(text: &str, chars_max: usize) -> String {
    let first = text.lines().next().unwrap_or("").trim_end();
    let cut: String = first.chars().take(chars_max).collect();
    if cut.len() < first.len() || text.trim_end().contains('\n') {
        format!(
            "{}…",
            cut.chars()
                .take(chars_max.saturating_sub(1))
                .collect::<String>()
        )
    } else {
        cut
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// The `baton get` view: a header of key/value lines, then one row per step.
pub fn render_workflow(workflow: &Workflow) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workflow {}  {}  {}",
        workflow.id,
        workflow.name,
        workflow_state_name(workflow.state)
    );
    let mut header = Table::new(["labels:", &labels_text(&workflow.labels)]);
    header.row(["created:", &format_time_ms(workflow.created_at_ms)]);
    header.row(["finished:", &format_time_ms(workflow.finished_at_ms)]);
    if !workflow.reason.is_empty() {
        header.row(["reason:".to_string(), one_line(&workflow.reason, 200)]);
    }
    if !workflow.idempotency_key.is_empty() {
        header.row(["key:", workflow.idempotency_key.as_str()]);
    }
    header.row(["revision:".to_string(), workflow.revision.to_string()]);
    out.push_str(&header.render());
    if !workflow.steps.is_empty() {
        out.push('\n');
        let mut steps = Table::new([
            "STEP", "STATE", "ATTEMPTS", "AGENT", "STARTED", "FINISHED", "DETAIL",
        ]);
        for step in &workflow.steps {
            steps.row([
                step.name.clone(),
                step_state_name(step.state).to_string(),
                step.attempts.to_string(),
                or_dash(&step.agent),
                format_time_ms(step.started_at_ms),
                format_time_ms(step.finished_at_ms),
                step_detail(step),
            ]);
        }
        out.push_str(&steps.render());
    }
    out
}

/// The last error of a step, or why a ready step has not started yet, or "-".
fn step_detail(step: &Step) -> String {
    if !step.error.is_empty() {
        one_line(&step.error, 60)
    } else if !step.pending_reason.is_empty() {
        format!("waiting: {}", one_line(&step.pending_reason, 80))
    } else {
        "-".to_string()
    }
}

/// The `baton list` view.
pub fn render_workflow_list(workflows: &[Workflow]) -> String {
    let mut table = Table::new(["ID", "NAME", "STATE", "CREATED", "FINISHED", "LABELS"]);
    for workflow in workflows {
        table.row([
            workflow.id.to_string(),
            workflow.name.clone(),
            workflow_state_name(workflow.state).to_string(),
            format_time_ms(workflow.created_at_ms),
            format_time_ms(workflow.finished_at_ms),
            labels_text(&workflow.labels),
        ]);
    }
    table.render()
}

pub fn render_members(members: &[Member]) -> String {
    let mut table = Table::new(["MEMBER", "ADDRESS", "VOTER", "MATCHED"]);
    for member in members {
        table.row([
            member.node_id.to_string(),
            member.address.clone(),
            if member.voter { "yes" } else { "no" }.to_string(),
            if member.matched_index == 0 {
                "-".to_string()
            } else {
                member.matched_index.to_string()
            },
        ]);
    }
    table.render()
}

/// The `baton cluster status` view of one node's answer.
pub fn render_cluster_status(status: &ClusterStatusResponse) -> String {
    let leader = if status.leader_id == 0 {
        "none known".to_string()
    } else {
        status.leader_id.to_string()
    };
    let mut header = Table::new(["cluster:".to_string(), or_dash(&status.cluster_id)]);
    header.row([
        "leader:".to_string(),
        format!("{leader} (term {})", status.term),
    ]);
    header.row([
        "answered by:".to_string(),
        format!("node {} ({})", status.node_id, or_dash(&status.role)),
    ]);
    header.row([
        "log:".to_string(),
        format!(
            "last {}, committed {}, applied {}, snapshot {}, purged {}",
            status.last_log_index,
            status.committed_index,
            status.applied_index,
            status.snapshot_index,
            status.purged_index
        ),
    ]);
    header.row(["state hash:".to_string(), or_dash(&status.state_hash)]);
    let mut out = header.render();
    out.push('\n');
    out.push_str(&render_members(&status.members));
    out
}

/// One node's answer in `baton cluster status --all`: its status or why it did not answer.
pub type NodeStatus<'a> = (String, Result<&'a ClusterStatusResponse, String>);

/// The `baton cluster status --all` view: one row per endpoint, so that state hashes at equal
/// applied indexes can be compared at a glance; a closing line says whether they agree.
pub fn render_cluster_statuses(nodes: &[NodeStatus<'_>]) -> String {
    let mut table = Table::new([
        "ENDPOINT",
        "NODE",
        "ROLE",
        "LEADER",
        "TERM",
        "COMMITTED",
        "APPLIED",
        "SNAPSHOT",
        "STATE HASH",
    ]);
    for (endpoint, answer) in nodes {
        match answer {
            Ok(status) => table.row([
                endpoint.clone(),
                status.node_id.to_string(),
                or_dash(&status.role),
                if status.leader_id == 0 {
                    "-".to_string()
                } else {
                    status.leader_id.to_string()
                },
                status.term.to_string(),
                status.committed_index.to_string(),
                status.applied_index.to_string(),
                status.snapshot_index.to_string(),
                or_dash(&status.state_hash),
            ]),
            Err(error) => table.row([endpoint.clone(), format!("error: {}", one_line(error, 100))]),
        }
    }
    let mut out = table.render();
    if let Some(line) = hash_agreement(nodes) {
        out.push('\n');
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Compares state hashes of nodes that report the same applied index: only those must agree.
fn hash_agreement(nodes: &[NodeStatus<'_>]) -> Option<String> {
    let mut by_index: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for status in nodes.iter().filter_map(|(_, answer)| answer.as_ref().ok()) {
        if !status.state_hash.is_empty() {
            by_index
                .entry(status.applied_index)
                .or_default()
                .push(&status.state_hash);
        }
    }
    let mut differing: Vec<u64> = Vec::new();
    let mut compared = false;
    for (index, hashes) in &by_index {
        if hashes.len() > 1 {
            compared = true;
            if hashes.iter().any(|hash| hash != &hashes[0]) {
                differing.push(*index);
            }
        }
    }
    if !differing.is_empty() {
        let indexes = differing
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Some(format!(
            "STATE HASHES DIFFER at applied index {indexes}: replicas have diverged"
        ))
    } else if compared {
        Some("state hashes agree at equal applied indexes".to_string())
    } else {
        None
    }
}

/// The `baton agents` view: one row per agent, usage as used/total, running steps as
/// `WORKFLOW/STEP`.
pub fn token_json(token: &TokenInfo) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "created_at_ms": time_json(token.created_ms),
        "revoked_at_ms": time_json(token.revoked_ms),
    })
}

pub fn render_tokens(tokens: &[TokenInfo]) -> String {
    let mut table = Table::new(["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
    for token in tokens {
        table.row([
            token.id.clone(),
            token.name.clone(),
            token.role.clone(),
            format_time_ms(token.created_ms),
            if token.revoked_ms == 0 {
                "-".to_owned()
            } else {
                format_time_ms(token.revoked_ms)
            },
        ]);
    }
    table.render()
}

pub fn render_agents(agents: &[AgentInfo]) -> String {
    let mut table = Table::new([
        "NAME",
        "ID",
        "CONNECTED",
        "SLOTS",
        "CPU (m)",
        "MEMORY (MB)",
        "RUNNING",
        "LABELS",
    ]);
    for agent in agents {
        let running: Vec<String> = agent
            .running
            .iter()
            .map(|attempt| format!("{}/{}", attempt.workflow_id, attempt.step))
            .collect();
        table.row([
            agent.name.clone(),
            agent.agent_id.to_string(),
            if agent.connected { "yes" } else { "no" }.to_string(),
            format!("{}/{}", agent.slots_used, agent.slots),
            format!("{}/{}", agent.cpu_millis_used, agent.cpu_millis),
            format!("{}/{}", agent.memory_mb_used, agent.memory_mb),
            or_dash(&one_line(&running.join(" "), 60)),
            labels_text(&agent.labels),
        ]);
    }
    table.render()
}

/// One line per event for `baton watch` and `baton submit --wait`:
/// `TIME  STEP  KIND  attempt N  AGENT  MESSAGE`, with `-` for what the event lacks.
pub fn render_event_line(event: &WorkflowEvent) -> String {
    let attempt = if event.attempt_id == 0 {
        "-".to_string()
    } else {
        format!("attempt {}", event.attempt_id)
    };
    let kind = event_kind_name(event.kind);
    // A workflow's own events say how it stands; step events say how the step does.
    let message = match EventKind::try_from(event.kind) {
        Ok(EventKind::WorkflowFinished) => {
            let state = workflow_state_name(event.workflow_state);
            if event.message.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", one_line(&event.message, 200))
            }
        }
        Ok(EventKind::StepFinished) => {
            let state = step_state_name(event.step_state);
            if event.message.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", one_line(&event.message, 200))
            }
        }
        _ => one_line(&event.message, 200),
    };
    let line = format!(
        "{}  {:<20}  {:<18}  {:<14}  {:<16}  {}",
        format_time_ms(event.time_ms),
        or_dash(&event.step),
        kind,
        attempt,
        or_dash(&event.agent),
        message
    );
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::{ExecTask, RetryPolicy};

    fn sample_workflow() -> Workflow {
        Workflow {
            id: 42,
            name: "onboard-employee".into(),
            labels: BTreeMap::from([("team".to_string(), "it".to_string())]),
            state: WorkflowState::Running as i32,
            idempotency_key: "k-1".into(),
            created_at_ms: 1_714_566_605_123,
            finished_at_ms: 0,
            spec: Some(WorkflowSpec {
                name: "onboard-employee".into(),
                labels: BTreeMap::from([("team".to_string(), "it".to_string())]),
                steps: vec![StepSpec {
                    name: "create-account".into(),
                    task: Some(Task::Exec(ExecTask {
                        command: vec!["/opt/it/create-user".into()],
                        ..Default::default()
                    })),
                    retry: Some(RetryPolicy {
                        max_attempts: 3,
                        backoff: None,
                    }),
                    timeout_ms: 300_000,
                    ..Default::default()
                }],
                priority: 0,
                input: BTreeMap::new(),
            }),
            steps: vec![
                Step {
                    name: "create-account".into(),
                    state: StepState::Succeeded as i32,
                    attempts: 1,
                    attempt_id: 7,
                    agent: "agent-eu-1".into(),
                    ready_at_ms: 1_714_566_605_200,
                    started_at_ms: 1_714_566_605_300,
                    finished_at_ms: 1_714_566_606_000,
                    output: "uid=1001".into(),
                    error: String::new(),
                    exit_code: Some(0),
                    retry_at_ms: 0,
                    pending_reason: String::new(),
                },
                Step {
                    name: "order-laptop".into(),
                    state: StepState::Waiting as i32,
                    ..Default::default()
                },
            ],
            reason: String::new(),
            revision: 17,
        }
    }

    #[test]
    fn workflow_json_has_the_documented_shape() {
        let value = workflow_json(&sample_workflow());
        let expected = json!({
            "id": 42,
            "name": "onboard-employee",
            "state": "running",
            "labels": {"team": "it"},
            "idempotency_key": "k-1",
            "created_at_ms": 1_714_566_605_123u64,
            "finished_at_ms": null,
            "reason": "",
            "revision": 17,
            "steps": [
                {
                    "name": "create-account", "state": "succeeded", "attempts": 1,
                    "attempt_id": 7, "agent": "agent-eu-1",
                    "ready_at_ms": 1_714_566_605_200u64, "started_at_ms": 1_714_566_605_300u64,
                    "finished_at_ms": 1_714_566_606_000u64, "retry_at_ms": null, "pending_reason": "",
                    "output": "uid=1001", "error": "", "exit_code": 0
                },
                {
                    "name": "order-laptop", "state": "waiting", "attempts": 0,
                    "attempt_id": null, "agent": null, "ready_at_ms": null,
                    "started_at_ms": null, "finished_at_ms": null, "retry_at_ms": null, "pending_reason": "",
                    "output": "", "error": "", "exit_code": null
                }
            ],
            "spec": {
                "name": "onboard-employee",
                "labels": {"team": "it"},
                "priority": 0,
                "input": {},
                "steps": [{
                    "name": "create-account",
                    "depends_on": [],
                    "when": "success",
                    "exec": {"command": ["/opt/it/create-user"], "env": {}, "working_dir": ""},
                    "retry": {"max_attempts": 3, "backoff": null},
                    "timeout_ms": 300_000,
                    "resources": null,
                    "constraints": {},
                    "priority": null,
                    "lease_ttl_ms": 0,
                    "schedule_to_start_timeout_ms": 0
                }]
            }
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn the_step_table_says_why_a_ready_step_waits() {
        let mut workflow = sample_workflow();
        workflow.steps[1].state = StepState::Ready as i32;
        workflow.steps[1].pending_reason = "no registered agent has labels gpu=a100".into();
        let text = render_workflow(&workflow);
        let row = text
            .lines()
            .find(|l| l.starts_with("order-laptop"))
            .unwrap();
        assert!(
            row.ends_with("waiting: no registered agent has labels gpu=a100"),
            "{row}"
        );
        workflow.steps[1].error = "exit code 3".into();
        let text = render_workflow(&workflow);
        let row = text
            .lines()
            .find(|l| l.starts_with("order-laptop"))
            .unwrap();
        assert!(row.ends_with("exit code 3"), "an error comes first: {row}");
    }

    #[test]
    fn submit_json_names_the_id_and_whether_it_was_created() {
        let response = SubmitResponse {
            workflow_id: 9,
            created: false,
            log_index: 120,
        };
        assert_eq!(
            serde_json::to_string(&submit_json(&response)).unwrap(),
            r#"{"created":false,"log_index":120,"workflow_id":9}"#
        );
    }

    #[test]
    fn enum_names_are_lowercase_and_tolerate_new_values() {
        assert_eq!(
            workflow_state_name(WorkflowState::Succeeded as i32),
            "succeeded"
        );
        assert_eq!(workflow_state_name(99), "unknown");
        assert_eq!(step_state_name(StepState::Backoff as i32), "backoff");
        assert_eq!(
            event_kind_name(EventKind::StepLeaseExpired as i32),
            "step_lease_expired"
        );
        assert_eq!(
            parse_workflow_state("Cancelled"),
            Some(WorkflowState::Cancelled)
        );
        assert_eq!(parse_workflow_state("done"), None);
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1), "1970-01-01 00:00:00");
        assert_eq!(format_time_ms(1_714_566_605_123), "2024-05-01 12:30:05");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(["A", "LONG HEADER", "C"]);
        table.row(["wide cell", "x", ""]);
        assert_eq!(table.render(), "A          LONG HEADER  C\nwide cell  x\n");
    }

    #[test]
    fn workflow_view_shows_header_and_steps() {
        let text = render_workflow(&sample_workflow());
        assert!(
            text.starts_with("workflow 42  onboard-employee  running\n"),
            "{text}"
        );
        assert!(text.contains("labels:    team=it"), "{text}");
        assert!(text.contains("created:   2024-05-01 12:30:05"), "{text}");
        let step_line = text
            .lines()
            .find(|line| line.starts_with("create-account"))
            .unwrap();
        assert!(
            step_line.contains("succeeded") && step_line.contains("agent-eu-1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|line| line.starts_with("STEP  ") || line.starts_with("STEP "))
        );
    }

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn diverged_hashes_are_called_out() {
        let a = ClusterStatusResponse {
            node_id: 1,
            applied_index: 10,
            state_hash: "aa".into(),
            ..Default::default()
        };
        let b = ClusterStatusResponse {
            node_id: 2,
            applied_index: 10,
            state_hash: "bb".into(),
            ..Default::default()
        };
        let c = ClusterStatusResponse {
            node_id: 3,
            applied_index: 9,
            state_hash: "cc".into(),
            ..Default::default()
        };
        let nodes: Vec<NodeStatus<'_>> = vec![
            ("a:1".into(), Ok(&a)),
            ("b:2".into(), Ok(&b)),
            ("c:3".into(), Ok(&c)),
        ];
        assert!(
            render_cluster_statuses(&nodes).contains("STATE HASHES DIFFER at applied index 10")
        );
        let nodes: Vec<NodeStatus<'_>> = vec![
            ("a:1".into(), Ok(&a)),
            ("c:3".into(), Err("refused".into())),
        ];
        let text = render_cluster_statuses(&nodes);
        assert!(text.contains("error: refused"), "{text}");
        assert!(!text.contains("agree"), "{text}");
    }
}
