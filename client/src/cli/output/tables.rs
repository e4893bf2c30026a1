//! The human views of workflows (`baton get`, `baton list`), tokens and agents.

use std::fmt::Write as _;

use baton_proto::v1::{AgentInfo, Step, TokenInfo, Workflow};

use super::text::{Table, format_time_ms, labels_text, one_line, or_dash};
use baton_proto::names::{step_state_name, workflow_state_name};

/// The `baton get` view: a header of key/value lines, then one row per step.
pub fn render_workflow(workflow: &Workflow) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workflow {}  {}  {}{}",
        workflow.id,
        workflow.name,
        workflow_state_name(workflow.state),
        if workflow.paused { " (paused)" } else { "" }
    );
    let mut header = Table::new(["labels:", &labels_text(&workflow.labels)]);
    // Another namespace than `default` is said; `default` goes without saying.
    let namespace = baton_proto::json::namespace_json(&workflow.namespace);
    if namespace != "default" {
        header.row(["namespace:", namespace]);
    }
    header.row(["created:", &format_time_ms(workflow.created_at_ms)]);
    header.row(["finished:", &format_time_ms(workflow.finished_at_ms)]);
    if workflow.deadline_ms != 0 && workflow.finished_at_ms == 0 {
        header.row(["times out:", &format_time_ms(workflow.deadline_ms)]);
    }
    if !workflow.reason.is_empty() {
        header.row(["reason:".to_string(), one_line(&workflow.reason, 200)]);
    }
    if !workflow.idempotency_key.is_empty() {
        header.row(["key:", workflow.idempotency_key.as_str()]);
    }
    if !workflow.schedule.is_empty() {
        header.row([
            "schedule:".to_string(),
            format!(
                "{}, the run for {}",
                workflow.schedule,
                format_time_ms(workflow.nominal_time_ms)
            ),
        ]);
    }
    if !workflow.template.is_empty() {
        header.row([
            "template:".to_string(),
            format!(
                "{} version {}",
                workflow.template, workflow.template_version
            ),
        ]);
    }
    if !workflow.params.is_empty() {
        header.row(["params:".to_string(), labels_text(&workflow.params)]);
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

/// How a step's last attempt ended (`exit 3: oops`: a non-zero exit code and the last line of
/// its error), or why a ready step has not started yet, or "-".
fn step_detail(step: &Step) -> String {
    let exit = step
        .exit_code
        .filter(|&code| code != 0)
        .map(|code| format!("exit {code}"));
    // The last line, as the events say it: where a failure usually ends up (and the agent's
    // own note, such as a killing signal).
    let error = step
        .error
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(|line| one_line(line, 60));
    match (exit, error) {
        (Some(exit), Some(error)) => return format!("{exit}: {error}"),
        (Some(exit), None) => return exit,
        (None, Some(error)) => return error,
        (None, None) => {}
    }
    if !step.pending_reason.is_empty() {
        format!("waiting: {}", one_line(&step.pending_reason, 80))
    } else {
        "-".to_string()
    }
}

/// The `baton list` view.
pub fn render_namespaces(namespaces: &[baton_proto::v1::Namespace]) -> String {
    let mut table = Table::new([
        "NAME",
        "WORKFLOWS",
        "RUNNING",
        "ACTIVE STEPS",
        "SUBMIT RATE",
        "WEIGHT",
        "CREATED",
        "DESCRIPTION",
    ]);
    for namespace in namespaces {
        let quotas = namespace.quotas.unwrap_or_default();
        // Each count against its quota, when it has one.
        let of = |count: u64, quota: u64| match quota {
            0 => count.to_string(),
            quota => format!("{count}/{quota}"),
        };
        let rate = match quotas.submits_per_second {
            0 => "-".to_string(),
            per_second => format!(
                "{per_second}/s, burst {}",
                quotas.submit_burst.max(per_second)
            ),
        };
        table.row([
            namespace.name.clone(),
            namespace.workflows.to_string(),
            of(namespace.running, quotas.max_running_workflows),
            of(namespace.active_steps, quotas.max_active_steps),
            rate,
            namespace.weight.max(1).to_string(),
            format_time_ms(namespace.created_ms),
            namespace.description.clone(),
        ]);
    }
    table.render()
}

/// The audit trail, newest first.
pub fn render_audit(records: &[baton_proto::v1::AuditRecord]) -> String {
    let mut table = Table::new(["TIME", "ACTOR", "NAMESPACE", "ACTION", "TARGET", "DETAIL"]);
    let or_dash = |text: &str| match text {
        "" => "-".to_string(),
        text => text.to_string(),
    };
    for record in records {
        table.row([
            format_time_ms(record.time_ms),
            or_dash(&record.actor),
            or_dash(&record.namespace),
            record.action.clone(),
            record.target.clone(),
            record.detail.clone(),
        ]);
    }
    table.render()
}

/// Workflows of one namespace; [`render_workflow_list_namespaced`] adds a NAMESPACE column.
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

/// Workflows of several namespaces (`baton list -A`).
pub fn render_workflow_list_namespaced(workflows: &[Workflow]) -> String {
    let mut table = Table::new([
        "ID",
        "NAMESPACE",
        "NAME",
        "STATE",
        "CREATED",
        "FINISHED",
        "LABELS",
    ]);
    for workflow in workflows {
        table.row([
            workflow.id.to_string(),
            baton_proto::json::namespace_json(&workflow.namespace).to_string(),
            workflow.name.clone(),
            workflow_state_name(workflow.state).to_string(),
            format_time_ms(workflow.created_at_ms),
            format_time_ms(workflow.finished_at_ms),
            labels_text(&workflow.labels),
        ]);
    }
    table.render()
}

pub fn render_tokens(tokens: &[TokenInfo]) -> String {
    let mut table = Table::new(["ID", "NAME", "ROLE", "CREATED", "REVOKED"]);
    for token in tokens {
        // A namespaced token: its role in each of its namespaces.
        let role = match token.namespaces.is_empty() {
            true => token.role.clone(),
            false => token
                .namespaces
                .iter()
                .map(|(ns, role)| format!("{role} in {ns}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        table.row([
            token.id.clone(),
            token.name.clone(),
            role,
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

/// The `baton agents` view: one row per agent, usage as used/total, running steps as
/// `WORKFLOW/STEP`.
/// The task types beyond the built-in ones every `baton agent` runs (`exec`, `http`, `noop`,
/// `sleep`): what tells one agent from another (`-o json` lists them all).
fn custom_types(types: &[String]) -> Vec<&str> {
    const BUILT_IN: [&str; 4] = ["exec", "http", "noop", "sleep"];
    types
        .iter()
        .map(String::as_str)
        .filter(|t| !BUILT_IN.contains(t))
        .collect()
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
        "NAMESPACES",
        "CUSTOM TASK TYPES",
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
            // Empty: it takes every namespace's steps.
            match agent.namespaces.is_empty() {
                true => "all".to_string(),
                false => one_line(&agent.namespaces.join(","), 60),
            },
            or_dash(&one_line(&custom_types(&agent.task_types).join(","), 60)),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::sample_workflow;
    use baton_proto::v1::StepState;

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
    fn a_failed_step_shows_its_exit_code_and_the_first_line_of_its_error() {
        let detail = |exit_code: Option<i32>, error: &str| {
            step_detail(&Step {
                state: StepState::Failed as i32,
                exit_code,
                error: error.into(),
                ..Default::default()
            })
        };
        assert_eq!(detail(Some(3), "starting\noops\n"), "exit 3: oops");
        assert_eq!(detail(Some(3), ""), "exit 3");
        assert_eq!(detail(Some(3), "late\nend\n  \n"), "exit 3: end");
        assert_eq!(
            detail(None, "baton: process killed by signal 9\n"),
            "baton: process killed by signal 9"
        );
        assert_eq!(detail(Some(0), ""), "-");
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
    fn the_agent_table_names_custom_task_types_only() {
        let agent = |name: &str, types: &[&str]| AgentInfo {
            name: name.into(),
            task_types: types.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        let text = render_agents(&[
            agent(
                "billing",
                &["exec", "http", "noop", "sleep", "billing/charge"],
            ),
            agent("plain", &["exec", "http", "noop", "sleep"]),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("CUSTOM TASK TYPES"), "{text}");
        assert!(
            lines[1].starts_with("billing") && lines[1].ends_with("billing/charge"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("plain") && lines[2].trim_end().ends_with('-'),
            "{text}"
        );
    }
}
