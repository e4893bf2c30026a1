//! Checks a workflow spec against Baton's rules and [`crate::limits`] before anything is
//! committed, and the graph helpers the server uses on specs that passed.
//!
//! The server calls [`validate_spec`] on every submit (INVALID_ARGUMENT naming
//! [`SpecError::field`]), the CLI calls it before sending. It returns the first problem found, in
//! this order: encoded size, workflow fields, step count, step names, each step's fields, then
//! the dependency graph (duplicate step names; unknown, self and duplicate dependencies; edge
//! count; cycles; depth). Every check is linear in the spec's size and iterative (no recursion),
//! so a hostile spec can neither panic the validator nor overflow its stack; the size check
//! comes first so that the rest is bounded.
//!
//! Error tree: one type, [`SpecError`] `{ field, message }`; `field` is a path inside the spec
//! using the proto field names (`steps[2].depends_on[0]`, `labels["team"]`), empty for the
//! spec as a whole.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use prost::Message;

use crate::limits::*;
use crate::text::{format_duration_ms, quoted};
use crate::v1::{
    Backoff, CustomTask, ExecTask, HttpTask, Resources, RetryPolicy, RunCondition, StepSpec,
    WorkflowSpec, step_spec::Task,
};

/// A spec that breaks a rule. `field` is where (empty for the whole spec), `message` says what
/// in lowercase, naming the object: `step "deploy" depends on unknown step "build"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field_prefix(field))]
pub struct SpecError {
    /// Path of the offending field inside the spec, e.g. `steps[2].depends_on[0]`.
    pub field: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `"{field}: "`, or nothing when the error is about the whole spec.
fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Checks every rule a submitted workflow must satisfy; `Ok` means the server may commit it.
pub fn validate_spec(spec: &WorkflowSpec) -> Result<(), SpecError> {
    // First, so that every later check works on a bounded input.
    let encoded_bytes = spec.encoded_len();
    if encoded_bytes > SPEC_BYTES_MAX {
        return Err(SpecError::new(
            "",
            format!("workflow spec is {encoded_bytes} bytes encoded, more than {SPEC_BYTES_MAX}"),
        ));
    }
    check_name("name", "workflow name", &spec.name)?;
    check_priority("priority", "workflow", spec.priority)?;
    check_labels(spec)?;
    check_input(spec)?;

    if spec.steps.is_empty() {
        return Err(SpecError::new("steps", "workflow has no steps"));
    }
    if spec.steps.len() > STEPS_PER_WORKFLOW_MAX {
        return Err(SpecError::new(
            "steps",
            format!(
                "workflow has {} steps, more than {STEPS_PER_WORKFLOW_MAX}",
                spec.steps.len()
            ),
        ));
    }
    for (i, step) in spec.steps.iter().enumerate() {
        check_name(&format!("steps[{i}].name"), "step name", &step.name)?;
    }
    for (i, step) in spec.steps.iter().enumerate() {
        check_step(i, step)?;
    }

    let graph = StepGraph::new(spec)?;
    let edges = graph.edge_count();
    if edges > EDGES_PER_WORKFLOW_MAX {
        return Err(SpecError::new(
            "steps",
            format!("workflow has {edges} dependencies in all, more than {EDGES_PER_WORKFLOW_MAX}"),
        ));
    }
    let depths = graph.depths();
    for &i in graph.topological_order() {
        let depth = depths.get(i).copied().unwrap_or(0);
        if depth > DAG_DEPTH_MAX {
            return Err(SpecError::new(
                format!("steps[{i}]"),
                format!(
                    "step {} ends a chain of {depth} dependent steps, more than {DAG_DEPTH_MAX}",
                    quoted(&spec.steps[i].name)
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a submit's idempotency key: empty (no deduplication) or 1..=128 printable ASCII
/// characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), SpecError> {
    const FIELD: &str = "idempotency_key";
    if key.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(SpecError::new(
            FIELD,
            format!(
                "idempotency key is {} bytes long, more than {IDEMPOTENCY_KEY_LEN_MAX}",
                key.len()
            ),
        ));
    }
    if let Some(at) = key.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(SpecError::new(
            FIELD,
            format!("idempotency key has a character that is not printable ascii at byte {at}"),
        ));
    }
    Ok(())
}

/// The priority a step is queued with: its own when set, else its workflow's; clamped to the
/// valid range so that an unvalidated spec cannot escape it.
pub fn effective_priority(step: &StepSpec, spec: &WorkflowSpec) -> i32 {
    step.priority
        .unwrap_or(spec.priority)
        .clamp(PRIORITY_MIN, PRIORITY_MAX)
}

/// The lease TTL of each attempt of `step`: its own, or [`LEASE_TTL_MS_DEFAULT`] when 0.
pub fn effective_lease_ttl_ms(step: &StepSpec) -> u64 {
    match step.lease_ttl_ms {
        0 => LEASE_TTL_MS_DEFAULT,
        ttl_ms => ttl_ms.clamp(LEASE_TTL_MS_MIN, LEASE_TTL_MS_MAX),
    }
}

/// Attempts `step` may have in all, the first included (at least 1).
pub fn effective_max_attempts(step: &StepSpec) -> u32 {
    let max_attempts = step.retry.as_ref().map_or(0, |retry| retry.max_attempts);
    max_attempts.clamp(1, MAX_ATTEMPTS_MAX)
}

/// How long to wait before the retry that follows failed attempt number `failed_attempts`
/// (1 for the first failure): `initial * multiplier^(failed_attempts - 1)`, capped at `max`,
/// with the defaults of [`crate::limits`] for fields left at 0.
///
/// Deterministic (plain IEEE multiplications in a fixed order), so the state machine can use
/// it inside `apply`.
pub fn backoff_delay_ms(step: &StepSpec, failed_attempts: u32) -> u64 {
    let backoff = step.retry.as_ref().and_then(|retry| retry.backoff.as_ref());
    let initial_ms = match backoff.map_or(0, |b| b.initial_ms) {
        0 => BACKOFF_INITIAL_MS_DEFAULT,
        ms => ms.min(BACKOFF_MS_MAX),
    };
    let max_ms = match backoff.map_or(0, |b| b.max_ms) {
        0 => BACKOFF_MAX_MS_DEFAULT.max(initial_ms),
        ms => ms.min(BACKOFF_MS_MAX),
    };
    let multiplier = backoff.map_or(0.0, |b| b.multiplier);
    // 0 is proto3's "not set"; NaN and infinities cannot pass validation but must not leak here.
    let multiplier = if multiplier == 0.0 || !multiplier.is_finite() {
        BACKOFF_MULTIPLIER_DEFAULT
    } else {
        multiplier.clamp(1.0, BACKOFF_MULTIPLIER_MAX)
    };
    let mut delay_ms = initial_ms as f64;
    // Bounded by MAX_ATTEMPTS_MAX iterations, and stops as soon as the cap is reached.
    for _ in 1..failed_attempts.min(MAX_ATTEMPTS_MAX) {
        if delay_ms >= max_ms as f64 {
            break;
        }
        delay_ms *= multiplier;
    }
    // `as` saturates on out-of-range floats; the cap keeps it in range anyway.
    (delay_ms as u64).min(max_ms)
}

/// The steps of a spec resolved to indices: who depends on whom, and an order to visit them in.
/// Built only from a spec with unique names, known dependencies and no cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepGraph {
    /// `dependencies[i][j]` is the index of `steps[i].depends_on[j]`.
    dependencies: Vec<Vec<usize>>,
    /// Steps that depend on step `i`, in increasing index order.
    dependents: Vec<Vec<usize>>,
    /// Every step after all its dependencies; among steps ready at once, spec order.
    order: Vec<usize>,
}

impl StepGraph {
    /// Resolves names and sorts the steps; fails on a duplicate step name, an unknown, self or
    /// duplicate dependency, or a cycle (reported as `a -> b -> a`, `b` depending on `a`).
    /// It checks no limit: [`validate_spec`] does that.
    pub fn new(spec: &WorkflowSpec) -> Result<StepGraph, SpecError> {
        let steps = &spec.steps;
        let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            if let Some(&first) = index_of.get(step.name.as_str()) {
                return Err(SpecError::new(
                    format!("steps[{i}].name"),
                    format!(
                        "step {} is defined twice, as steps[{first}] and steps[{i}]",
                        quoted(&step.name)
                    ),
                ));
            }
            index_of.insert(&step.name, i);
        }

        let mut dependencies = Vec::with_capacity(steps.len());
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            let mut resolved = Vec::with_capacity(step.depends_on.len());
            for (j, dependency) in step.depends_on.iter().enumerate() {
                let field = || format!("steps[{i}].depends_on[{j}]");
                let Some(&d) = index_of.get(dependency.as_str()) else {
                    return Err(SpecError::new(
                        field(),
                        format!(
                            "step {} depends on unknown step {}",
                            quoted(&step.name),
                            quoted(dependency)
                        ),
                    ));
                };
                if d == i {
                    return Err(SpecError::new(
                        field(),
                        format!("step {} depends on itself", quoted(&step.name)),
                    ));
                }
                // Dependency lists are short (DEPENDENCIES_PER_STEP_MAX), and `dependents[d]`
                // ends with `i` exactly when `i` already listed `d`: a constant-time check.
                if dependents[d].last() == Some(&i) {
                    return Err(SpecError::new(
                        field(),
                        format!(
                            "step {} depends on {} twice",
                            quoted(&step.name),
                            quoted(dependency)
                        ),
                    ));
                }
                resolved.push(d);
                dependents[d].push(i);
            }
            dependencies.push(resolved);
        }

        // Kahn's algorithm; the heap keeps spec order among ready steps, so the order is stable.
        let mut waiting_on: Vec<usize> = dependencies.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = (0..steps.len())
            .filter(|&i| waiting_on[i] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(steps.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &dependent in &dependents[i] {
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.push(Reverse(dependent));
                }
            }
        }
        if order.len() < steps.len() {
            return Err(cycle_error(spec, &dependencies, &waiting_on));
        }
        Ok(StepGraph {
            dependencies,
            dependents,
            order,
        })
    }

    /// Indices of the steps `step` depends on, in `depends_on` order; empty for a bad index.
    pub fn dependencies(&self, step: usize) -> &[usize] {
        self.dependencies.get(step).map_or(&[], Vec::as_slice)
    }

    /// Indices of the steps that depend on `step`, increasing; empty for a bad index.
    pub fn dependents(&self, step: usize) -> &[usize] {
        self.dependents.get(step).map_or(&[], Vec::as_slice)
    }

    /// Every step index, each after all its dependencies; ties in spec order.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    /// Dependency edges in all.
    pub fn edge_count(&self) -> usize {
        self.dependencies.iter().map(Vec::len).sum()
    }

    /// For each step, the number of steps on the longest chain ending at it (itself included).
    pub fn depths(&self) -> Vec<usize> {
        let mut depths = vec![1; self.order.len()];
        for &i in &self.order {
            let deepest = self.dependencies[i]
                .iter()
                .map(|&d| depths[d])
                .max()
                .unwrap_or(0);
            depths[i] = deepest + 1;
        }
        depths
    }
}

/// The steps of `spec` in an order where each comes after all its dependencies (ties in spec
/// order), or the first graph error [`StepGraph::new`] finds.
pub fn topological_order(spec: &WorkflowSpec) -> Result<Vec<usize>, SpecError> {
    StepGraph::new(spec).map(|graph| graph.order)
}

/// Finds one cycle among the steps Kahn's algorithm could not sort and reports it in run order,
/// starting at its step listed first in the spec.
fn cycle_error(
    spec: &WorkflowSpec,
    dependencies: &[Vec<usize>],
    waiting_on: &[usize],
) -> SpecError {
    let unsorted = |i: usize| waiting_on.get(i).is_some_and(|&w| w > 0);
    // Every unsorted step has an unsorted dependency, so walking dependencies from any of them
    // must come back to a step already on the walk: that closes a cycle. Each step is entered
    // at most once, so the walk is linear.
    let mut position_on_walk: Vec<Option<usize>> = vec![None; dependencies.len()];
    let mut walk: Vec<usize> = Vec::new();
    let mut current = (0..dependencies.len()).find(|&i| unsorted(i));
    while let Some(step) = current {
        if let Some(start) = position_on_walk[step] {
            // `walk[start..]` follows dependencies; reversed it is the order the steps would run.
            let mut cycle: Vec<usize> = walk[start..].iter().rev().copied().collect();
            let first_at = cycle
                .iter()
                .enumerate()
                .min_by_key(|&(_, &s)| s)
                .map_or(0, |(at, _)| at);
            cycle.rotate_left(first_at);
            let (Some(&first), Some(&last)) = (cycle.first(), cycle.last()) else {
                break;
            };
            let mut names: Vec<&str> = cycle.iter().map(|&s| spec.steps[s].name.as_str()).collect();
            names.push(&spec.steps[first].name);
            let closing = dependencies[first]
                .iter()
                .position(|&d| d == last)
                .unwrap_or(0);
            return SpecError::new(
                format!("steps[{first}].depends_on[{closing}]"),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
        position_on_walk[step] = Some(walk.len());
        walk.push(step);
        current = dependencies[step].iter().copied().find(|&d| unsorted(d));
    }
    // Unreachable when Kahn's algorithm left steps unsorted; kept as an error, not a panic.
    SpecError::new("steps", "dependency cycle")
}

/// Workflow and step names: 1..=NAME_LEN_MAX characters of `[A-Za-z0-9._-]`.
fn check_name(field: &str, what: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, format!("{what} is empty")));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "{what} {} is {} bytes long, more than {NAME_LEN_MAX}",
                quoted(name),
                name.len()
            ),
        ));
    }
    if !name.bytes().all(is_name_byte) {
        return Err(SpecError::new(
            field,
            format!(
                "{what} {} has a character outside [A-Za-z0-9._-]",
                quoted(name)
            ),
        ));
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn check_priority(field: &str, owner: &str, priority: i32) -> Result<(), SpecError> {
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        return Err(SpecError::new(
            field,
            format!("{owner} priority {priority} is outside {PRIORITY_MIN}..={PRIORITY_MAX}"),
        ));
    }
    Ok(())
}

fn check_labels(spec: &WorkflowSpec) -> Result<(), SpecError> {
    if spec.labels.len() > LABELS_MAX {
        return Err(SpecError::new(
            "labels",
            format!(
                "workflow has {} labels, more than {LABELS_MAX}",
                spec.labels.len()
            ),
        ));
    }
    for (key, value) in &spec.labels {
        check_label(&format!("labels[{}]", quoted(key)), "label", key, value)?;
    }
    Ok(())
}

/// Labels and constraints share their rules: constraints match agent labels exactly.
fn check_label(field: &str, what: &str, key: &str, value: &str) -> Result<(), SpecError> {
    if key.is_empty() {
        return Err(SpecError::new(field, format!("{what} key is empty")));
    }
    if key.len() > LABEL_KEY_LEN_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "{what} key {} is {} bytes long, more than {LABEL_KEY_LEN_MAX}",
                quoted(key),
                key.len()
            ),
        ));
    }
    if !key.bytes().all(|b| is_name_byte(b) || b == b'/') {
        return Err(SpecError::new(
            field,
            format!(
                "{what} key {} has a character outside [A-Za-z0-9._/-]",
                quoted(key)
            ),
        ));
    }
    if value.len() > LABEL_VALUE_LEN_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "{what} {} has a value of {} bytes, more than {LABEL_VALUE_LEN_MAX}",
                quoted(key),
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(SpecError::new(
            field,
            format!(
                "{what} {} has a control character in its value",
                quoted(key)
            ),
        ));
    }
    Ok(())
}

fn check_input(spec: &WorkflowSpec) -> Result<(), SpecError> {
    if spec.input.len() > INPUT_ENTRIES_MAX {
        return Err(SpecError::new(
            "input",
            format!(
                "workflow has {} input entries, more than {INPUT_ENTRIES_MAX}",
                spec.input.len()
            ),
        ));
    }
    let mut total_bytes = 0usize;
    for (key, value) in &spec.input {
        let field = format!("input[{}]", quoted(key));
        // `{{ input.KEY }}` must be unambiguous, so no dots in keys.
        if key.is_empty()
            || key.len() > NAME_LEN_MAX
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(SpecError::new(
                field,
                format!(
                    "input key {} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9_-]",
                    quoted(key)
                ),
            ));
        }
        total_bytes = total_bytes
            .saturating_add(key.len())
            .saturating_add(value.len());
    }
    if total_bytes > INPUT_BYTES_MAX {
        return Err(SpecError::new(
            "input",
            format!("workflow input is {total_bytes} bytes, more than {INPUT_BYTES_MAX}"),
        ));
    }
    Ok(())
}

fn check_step(i: usize, step: &StepSpec) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].{field}");
    let name = quoted(&step.name);

    if step.depends_on.len() > DEPENDENCIES_PER_STEP_MAX {
        return Err(SpecError::new(
            at("depends_on"),
            format!(
                "step {name} has {} dependencies, more than {DEPENDENCIES_PER_STEP_MAX}",
                step.depends_on.len()
            ),
        ));
    }
    match RunCondition::try_from(step.when) {
        Ok(RunCondition::Failure) if step.depends_on.is_empty() => {
            // "at least one dependency failed" can never hold: the step would always be skipped.
            return Err(SpecError::new(
                at("when"),
                format!("step {name} runs on failure but has no dependencies"),
            ));
        }
        Ok(_) => {}
        Err(_) => {
            return Err(SpecError::new(
                at("when"),
                format!("step {name} has unknown run condition {}", step.when),
            ));
        }
    }

    match &step.task {
        None => {
            return Err(SpecError::new(
                at("task"),
                format!("step {name} has no task"),
            ));
        }
        Some(Task::Exec(exec)) => check_exec(i, &name, exec)?,
        Some(Task::Http(http)) => check_http(i, &name, http)?,
        Some(Task::Noop(_)) => {}
        Some(Task::Sleep(sleep)) => {
            if sleep.duration_ms > SLEEP_MS_MAX {
                return Err(SpecError::new(
                    at("sleep.duration_ms"),
                    format!(
                        "step {name} sleeps {}, longer than the maximum {}",
                        format_duration_ms(sleep.duration_ms),
                        format_duration_ms(SLEEP_MS_MAX)
                    ),
                ));
            }
        }
        Some(Task::Custom(custom)) => check_custom(i, &name, custom)?,
    }

    if let Some(retry) = &step.retry {
        check_retry(i, &name, retry)?;
    }
    check_duration_max(
        &at("timeout_ms"),
        &name,
        "timeout",
        step.timeout_ms,
        TIMEOUT_MS_MAX,
    )?;
    check_duration_max(
        &at("schedule_to_start_timeout_ms"),
        &name,
        "schedule-to-start timeout",
        step.schedule_to_start_timeout_ms,
        TIMEOUT_MS_MAX,
    )?;
    if step.lease_ttl_ms != 0 {
        let ttl = format_duration_ms(step.lease_ttl_ms);
        if step.lease_ttl_ms < LEASE_TTL_MS_MIN {
            return Err(SpecError::new(
                at("lease_ttl_ms"),
                format!(
                    "step {name} lease ttl {ttl} is shorter than the minimum {}",
                    format_duration_ms(LEASE_TTL_MS_MIN)
                ),
            ));
        }
        check_duration_max(
            &at("lease_ttl_ms"),
            &name,
            "lease ttl",
            step.lease_ttl_ms,
            LEASE_TTL_MS_MAX,
        )?;
    }
    if let Some(priority) = step.priority {
        check_priority(&at("priority"), &format!("step {name}"), priority)?;
    }
    if let Some(resources) = &step.resources {
        check_resources(i, &name, resources)?;
    }
    if step.constraints.len() > CONSTRAINTS_PER_STEP_MAX {
        return Err(SpecError::new(
            at("constraints"),
            format!(
                "step {name} has {} constraints, more than {CONSTRAINTS_PER_STEP_MAX}",
                step.constraints.len()
            ),
        ));
    }
    for (key, value) in &step.constraints {
        check_label(
            &at(&format!("constraints[{}]", quoted(key))),
            "constraint",
            key,
            value,
        )?;
    }
    Ok(())
}

fn check_duration_max(
    field: &str,
    name: &str,
    what: &str,
    ms: u64,
    max_ms: u64,
) -> Result<(), SpecError> {
    if ms > max_ms {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} {what} {} is longer than the maximum {}",
                format_duration_ms(ms),
                format_duration_ms(max_ms)
            ),
        ));
    }
    Ok(())
}

/// Bytes an exec argument, environment entry or path may never hold: execve takes C strings.
fn check_c_string(
    field: &str,
    name: &str,
    what: &str,
    text: &str,
    max_bytes: usize,
) -> Result<(), SpecError> {
    if text.len() > max_bytes {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} {what} is {} bytes, more than {max_bytes}",
                text.len()
            ),
        ));
    }
    if text.contains('\0') {
        return Err(SpecError::new(
            field,
            format!("step {name} {what} contains a nul byte"),
        ));
    }
    Ok(())
}

fn check_exec(i: usize, name: &str, exec: &ExecTask) -> Result<(), SpecError> {
    let field = format!("steps[{i}].exec.command");
    if exec.command.is_empty() {
        return Err(SpecError::new(
            field,
            format!("step {name} exec command is empty"),
        ));
    }
    if exec.command.len() > ARGV_LEN_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} exec command has {} arguments, more than {ARGV_LEN_MAX}",
                exec.command.len()
            ),
        ));
    }
    if exec.command[0].is_empty() {
        return Err(SpecError::new(
            format!("{field}[0]"),
            format!("step {name} exec program name is empty"),
        ));
    }
    for (k, arg) in exec.command.iter().enumerate() {
        check_c_string(
            &format!("{field}[{k}]"),
            name,
            &format!("exec argument {k}"),
            arg,
            ARG_BYTES_MAX,
        )?;
    }
    if exec.env.len() > ENV_VARS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].exec.env"),
            format!(
                "step {name} sets {} environment variables, more than {ENV_VARS_MAX}",
                exec.env.len()
            ),
        ));
    }
    for (key, value) in &exec.env {
        let field = format!("steps[{i}].exec.env[{}]", quoted(key));
        if key.is_empty() || key.len() > ENV_KEY_LEN_MAX || key.contains(['=', '\0']) {
            return Err(SpecError::new(
                field,
                format!(
                    "step {name} environment variable name {} must be 1..={ENV_KEY_LEN_MAX} bytes without \"=\" or nul",
                    quoted(key)
                ),
            ));
        }
        check_c_string(
            &field,
            name,
            &format!("environment variable {}", quoted(key)),
            value,
            ARG_BYTES_MAX,
        )?;
    }
    check_c_string(
        &format!("steps[{i}].exec.working_dir"),
        name,
        "working directory",
        &exec.working_dir,
        PATH_BYTES_MAX,
    )
}

/// Methods an http task may use; empty means GET.
const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn check_http(i: usize, name: &str, http: &HttpTask) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].http.{field}");
    if !http.method.is_empty() && !HTTP_METHODS.contains(&http.method.as_str()) {
        return Err(SpecError::new(
            at("method"),
            format!(
                "step {name} http method {} is not one of {}",
                quoted(&http.method),
                HTTP_METHODS.join(", ")
            ),
        ));
    }
    if http.url.len() > URL_LEN_MAX {
        return Err(SpecError::new(
            at("url"),
            format!(
                "step {name} url is {} bytes long, more than {URL_LEN_MAX}",
                http.url.len()
            ),
        ));
    }
    if let Err(reason) = check_url(&http.url) {
        return Err(SpecError::new(
            at("url"),
            format!("step {name} url {} {reason}", quoted(&http.url)),
        ));
    }
    if http.headers.len() > HTTP_HEADERS_MAX {
        return Err(SpecError::new(
            at("headers"),
            format!(
                "step {name} has {} http headers, more than {HTTP_HEADERS_MAX}",
                http.headers.len()
            ),
        ));
    }
    for (header, value) in &http.headers {
        let field = at(&format!("headers[{}]", quoted(header)));
        if header.is_empty()
            || header.len() > HTTP_HEADER_NAME_LEN_MAX
            || !header.bytes().all(is_header_name_byte)
        {
            return Err(SpecError::new(
                field,
                format!(
                    "step {name} http header name {} must be 1..={HTTP_HEADER_NAME_LEN_MAX} token characters",
                    quoted(header)
                ),
            ));
        }
        if value.len() > HTTP_HEADER_VALUE_BYTES_MAX {
            return Err(SpecError::new(
                field,
                format!(
                    "step {name} http header {} is {} bytes, more than {HTTP_HEADER_VALUE_BYTES_MAX}",
                    quoted(header),
                    value.len()
                ),
            ));
        }
        // A CR or LF would let a value inject headers of its own.
        if value.contains(['\r', '\n', '\0']) {
            return Err(SpecError::new(
                field,
                format!(
                    "step {name} http header {} has a line break or nul in its value",
                    quoted(header)
                ),
            ));
        }
    }
    if http.body.len() > HTTP_BODY_BYTES_MAX {
        return Err(SpecError::new(
            at("body"),
            format!(
                "step {name} http body is {} bytes, more than {HTTP_BODY_BYTES_MAX}",
                http.body.len()
            ),
        ));
    }
    if http.success_statuses.len() > HTTP_SUCCESS_STATUSES_MAX {
        return Err(SpecError::new(
            at("success_statuses"),
            format!(
                "step {name} lists {} success statuses, more than {HTTP_SUCCESS_STATUSES_MAX}",
                http.success_statuses.len()
            ),
        ));
    }
    for (k, status) in http.success_statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            return Err(SpecError::new(
                at(&format!("success_statuses[{k}]")),
                format!("step {name} success status {status} is not an http status (100..=599)"),
            ));
        }
    }
    Ok(())
}

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An absolute http or https URL with a host; the reason completes "url "..." ...".
///
/// A URL holding a template (`{{ input.host }}`) is only checked for its scheme: the agent
/// checks it again once the template is filled in.
fn check_url(url: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("is not an absolute http or https url");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("must use the http or https scheme");
    }
    if rest.contains("{{") {
        return if rest.is_empty() {
            Err("has no host")
        } else {
            Ok(())
        };
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("has an unterminated ipv6 address");
        };
        if !host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("has an invalid ipv6 address");
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("has characters after its ipv6 address"),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("has a host with a character outside letters, digits, \"-\", \".\" and \"_\"");
    }
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err("has an invalid port");
    }
    Ok(())
}

fn check_custom(i: usize, name: &str, custom: &CustomTask) -> Result<(), SpecError> {
    let field = format!("steps[{i}].custom.type");
    if custom.r#type.is_empty()
        || custom.r#type.len() > NAME_LEN_MAX
        || !custom.r#type.bytes().all(|b| is_name_byte(b) || b == b'/')
    {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} custom task type {} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._/-]",
                quoted(&custom.r#type)
            ),
        ));
    }
    if custom.payload.len() > CUSTOM_PAYLOAD_BYTES_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].custom.payload"),
            format!(
                "step {name} custom payload is {} bytes, more than {CUSTOM_PAYLOAD_BYTES_MAX}",
                custom.payload.len()
            ),
        ));
    }
    Ok(())
}

fn check_retry(i: usize, name: &str, retry: &RetryPolicy) -> Result<(), SpecError> {
    if retry.max_attempts > MAX_ATTEMPTS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].retry.max_attempts"),
            format!(
                "step {name} retry max_attempts {} is more than {MAX_ATTEMPTS_MAX}",
                retry.max_attempts
            ),
        ));
    }
    if let Some(backoff) = &retry.backoff {
        check_backoff(i, name, backoff)?;
    }
    Ok(())
}

fn check_backoff(i: usize, name: &str, backoff: &Backoff) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].retry.backoff.{field}");
    let multiplier = backoff.multiplier;
    // 0 is proto3's "not set": the default multiplier applies.
    if multiplier != 0.0 {
        if !multiplier.is_finite() {
            return Err(SpecError::new(
                at("multiplier"),
                format!("step {name} backoff multiplier {multiplier} is not a finite number"),
            ));
        }
        if !(1.0..=BACKOFF_MULTIPLIER_MAX).contains(&multiplier) {
            return Err(SpecError::new(
                at("multiplier"),
                format!(
                    "step {name} backoff multiplier {multiplier} is outside 1..={BACKOFF_MULTIPLIER_MAX}"
                ),
            ));
        }
    }
    check_duration_max(
        &at("initial_ms"),
        name,
        "backoff initial",
        backoff.initial_ms,
        BACKOFF_MS_MAX,
    )?;
    check_duration_max(
        &at("max_ms"),
        name,
        "backoff max",
        backoff.max_ms,
        BACKOFF_MS_MAX,
    )?;
    if backoff.max_ms != 0 && backoff.initial_ms > backoff.max_ms {
        return Err(SpecError::new(
            at("initial_ms"),
            format!(
                "step {name} backoff initial {} is longer than its max {}",
                format_duration_ms(backoff.initial_ms),
                format_duration_ms(backoff.max_ms)
            ),
        ));
    }
    Ok(())
}

fn check_resources(i: usize, name: &str, resources: &Resources) -> Result<(), SpecError> {
    if resources.cpu_millis > CPU_MILLIS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].resources.cpu_millis"),
            format!(
                "step {name} asks for {} cpu millis, more than {CPU_MILLIS_MAX}",
                resources.cpu_millis
            ),
        ));
    }
    if resources.memory_mb > MEMORY_MB_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].resources.memory_mb"),
            format!(
                "step {name} asks for {} mb of memory, more than {MEMORY_MB_MAX}",
                resources.memory_mb
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::v1::{NoopTask, SleepTask};

    fn noop() -> Option<Task> {
        Some(Task::Noop(NoopTask {}))
    }

    fn step(name: &str, depends_on: &[&str]) -> StepSpec {
        StepSpec {
            name: name.to_string(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            task: noop(),
            ..Default::default()
        }
    }

    fn spec(steps: Vec<StepSpec>) -> WorkflowSpec {
        WorkflowSpec {
            name: "wf".to_string(),
            steps,
            ..Default::default()
        }
    }

    /// A valid one-step spec whose step `edit` changes.
    fn one_step(edit: impl FnOnce(&mut StepSpec)) -> WorkflowSpec {
        let mut only = step("only", &[]);
        edit(&mut only);
        spec(vec![only])
    }

    fn exec(command: &[&str]) -> Option<Task> {
        Some(Task::Exec(ExecTask {
            command: command.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }))
    }

    fn http(method: &str, url: &str) -> HttpTask {
        HttpTask {
            method: method.to_string(),
            url: url.to_string(),
            ..Default::default()
        }
    }

    #[track_caller]
    fn assert_invalid(spec: &WorkflowSpec, field: &str, message: &str) {
        match validate_spec(spec) {
            Ok(()) => panic!("expected {field}: {message}, got ok"),
            Err(error) => {
                assert_eq!(
                    (error.field.as_str(), error.message.as_str()),
                    (field, message)
                );
            }
        }
    }

    #[track_caller]
    fn assert_valid(spec: &WorkflowSpec) {
        if let Err(error) = validate_spec(spec) {
            panic!("expected ok, got {error}");
        }
    }

    #[test]
    fn minimal_spec_is_valid() {
        assert_valid(&spec(vec![step("a", &[])]));
        assert_valid(&spec(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a", "b"]),
        ]));
    }

    #[test]
    fn error_display_is_field_then_message() {
        let error = SpecError::new(
            "steps[2].depends_on[0]",
            "step \"deploy\" depends on unknown step \"build\"",
        );
        assert_eq!(
            error.to_string(),
            "steps[2].depends_on[0]: step \"deploy\" depends on unknown step \"build\""
        );
        assert_eq!(SpecError::new("", "too big").to_string(), "too big");
    }

    #[test]
    fn encoded_size_is_bounded() {
        let body = "x".repeat(HTTP_BODY_BYTES_MAX);
        let steps = (0..5)
            .map(|i| StepSpec {
                task: Some(Task::Http(HttpTask {
                    body: body.clone(),
                    ..http("POST", "http://h/")
                })),
                ..step(&format!("s{i}"), &[])
            })
            .collect();
        let big = spec(steps);
        let bytes = big.encoded_len();
        assert!(bytes > SPEC_BYTES_MAX);
        assert_invalid(
            &big,
            "",
            &format!("workflow spec is {bytes} bytes encoded, more than 1048576"),
        );
    }

    #[test]
    fn workflow_name_rules() {
        let mut s = spec(vec![step("a", &[])]);
        s.name = String::new();
        assert_invalid(&s, "name", "workflow name is empty");
        s.name = "a".repeat(NAME_LEN_MAX);
        assert_valid(&s);
        s.name = "a".repeat(NAME_LEN_MAX + 1);
        assert_invalid(
            &s,
            "name",
            &format!(
                "workflow name {} is 129 bytes long, more than 128",
                quoted(&s.name)
            ),
        );
        s.name = "nightly report".to_string();
        assert_invalid(
            &s,
            "name",
            "workflow name \"nightly report\" has a character outside [A-Za-z0-9._-]",
        );
        s.name = "Nightly_report-2.0".to_string();
        assert_valid(&s);
    }

    #[test]
    fn workflow_priority_range() {
        let mut s = spec(vec![step("a", &[])]);
        s.priority = PRIORITY_MAX;
        assert_valid(&s);
        s.priority = PRIORITY_MIN;
        assert_valid(&s);
        s.priority = 1001;
        assert_invalid(
            &s,
            "priority",
            "workflow priority 1001 is outside -1000..=1000",
        );
        s.priority = i32::MIN;
        assert_invalid(
            &s,
            "priority",
            "workflow priority -2147483648 is outside -1000..=1000",
        );
    }

    #[test]
    fn label_rules() {
        let with_labels = |labels: &[(&str, &str)]| {
            let mut s = spec(vec![step("a", &[])]);
            s.labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            s
        };
        assert_valid(&with_labels(&[
            ("team", "it"),
            ("example.com/tier", ""),
            ("Zone_1", "eu west"),
        ]));
        let many: Vec<(String, String)> = (0..=LABELS_MAX)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let mut s = spec(vec![step("a", &[])]);
        s.labels = many.into_iter().collect();
        assert_invalid(&s, "labels", "workflow has 33 labels, more than 32");
        assert_invalid(
            &with_labels(&[("", "v")]),
            "labels[\"\"]",
            "label key is empty",
        );
        let long_key = "k".repeat(LABEL_KEY_LEN_MAX + 1);
        assert_invalid(
            &with_labels(&[(&long_key, "v")]),
            &format!("labels[{}]", quoted(&long_key)),
            &format!(
                "label key {} is 64 bytes long, more than 63",
                quoted(&long_key)
            ),
        );
        assert_invalid(
            &with_labels(&[("te am", "v")]),
            "labels[\"te am\"]",
            "label key \"te am\" has a character outside [A-Za-z0-9._/-]",
        );
        let long_value = "v".repeat(LABEL_VALUE_LEN_MAX + 1);
        assert_invalid(
            &with_labels(&[("team", &long_value)]),
            "labels[\"team\"]",
            "label \"team\" has a value of 257 bytes, more than 256",
        );
        assert_invalid(
            &with_labels(&[("team", "a\nb")]),
            "labels[\"team\"]",
            "label \"team\" has a control character in its value",
        );
    }

    #[test]
    fn input_rules() {
        let mut s = spec(vec![step("a", &[])]);
        s.input.insert("name".to_string(), "ada".to_string());
        s.input
            .insert("report_date".to_string(), "2025-01-31".to_string());
        assert_valid(&s);
        s.input.insert("a.b".to_string(), "x".to_string());
        assert_invalid(
            &s,
            "input[\"a.b\"]",
            "input key \"a.b\" must be 1..=128 characters of [A-Za-z0-9_-]",
        );
        s.input.clear();
        s.input.insert(String::new(), "x".to_string());
        assert_invalid(
            &s,
            "input[\"\"]",
            "input key \"\" must be 1..=128 characters of [A-Za-z0-9_-]",
        );
        s.input = (0..=INPUT_ENTRIES_MAX)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_invalid(&s, "input", "workflow has 129 input entries, more than 128");
        s.input = BTreeMap::from([("big".to_string(), "x".repeat(INPUT_BYTES_MAX))]);
        assert_invalid(
            &s,
            "input",
            "workflow input is 65539 bytes, more than 65536",
        );
    }

    #[test]
    fn step_count_rules() {
        assert_invalid(&spec(vec![]), "steps", "workflow has no steps");
        let at_max: Vec<StepSpec> = (0..STEPS_PER_WORKFLOW_MAX)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        assert_valid(&spec(at_max.clone()));
        let mut over = at_max;
        over.push(step("one-more", &[]));
        assert_invalid(
            &spec(over),
            "steps",
            "workflow has 1001 steps, more than 1000",
        );
    }

    #[test]
    fn step_name_rules() {
        assert_invalid(
            &spec(vec![step("a", &[]), step("", &[])]),
            "steps[1].name",
            "step name is empty",
        );
        assert_invalid(
            &spec(vec![step("a/b", &[])]),
            "steps[0].name",
            "step name \"a/b\" has a character outside [A-Za-z0-9._-]",
        );
        assert_invalid(
            &spec(vec![
                step("build", &[]),
                step("test", &[]),
                step("build", &[]),
            ]),
            "steps[2].name",
            "step \"build\" is defined twice, as steps[0] and steps[2]",
        );
    }

    #[test]
    fn dependency_rules() {
        assert_invalid(
            &spec(vec![
                step("a", &[]),
                step("b", &[]),
                step("deploy", &["build"]),
            ]),
            "steps[2].depends_on[0]",
            "step \"deploy\" depends on unknown step \"build\"",
        );
        assert_invalid(
            &spec(vec![step("a", &[]), step("b", &["a", "b"])]),
            "steps[1].depends_on[1]",
            "step \"b\" depends on itself",
        );
        assert_invalid(
            &spec(vec![
                step("a", &[]),
                step("c", &[]),
                step("b", &["a", "c", "a"]),
            ]),
            "steps[2].depends_on[2]",
            "step \"b\" depends on \"a\" twice",
        );
        let mut steps: Vec<StepSpec> = (0..=DEPENDENCIES_PER_STEP_MAX)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        let mut join = step("join", &[]);
        join.depends_on = names.clone();
        steps.push(join);
        assert_invalid(
            &spec(steps.clone()),
            "steps[257].depends_on",
            "step \"join\" has 257 dependencies, more than 256",
        );
        steps.last_mut().expect("join").depends_on.pop();
        assert_valid(&spec(steps));
    }

    #[test]
    fn edge_count_is_bounded() {
        // Each step waits on the 11 before it: 10,934 edges in all, each step within its bound.
        let steps: Vec<StepSpec> = (0..STEPS_PER_WORKFLOW_MAX)
            .map(|i| StepSpec {
                depends_on: (i.saturating_sub(11)..i).map(|d| format!("s{d}")).collect(),
                ..step(&format!("s{i}"), &[])
            })
            .collect();
        assert_invalid(
            &spec(steps),
            "steps",
            "workflow has 10934 dependencies in all, more than 10000",
        );
    }

    #[test]
    fn cycle_is_reported_in_run_order() {
        // build waits on deploy, test on build, deploy on test.
        let s = spec(vec![
            step("checkout", &[]),
            step("build", &["checkout", "deploy"]),
            step("test", &["build"]),
            step("deploy", &["test"]),
        ]);
        assert_invalid(
            &s,
            "steps[1].depends_on[1]",
            "dependency cycle: build -> test -> deploy -> build",
        );
        // A step downstream of the cycle, listed first, does not confuse the report.
        let s = spec(vec![
            step("report", &["b"]),
            step("a", &["b"]),
            step("b", &["a"]),
        ]);
        assert_invalid(
            &s,
            "steps[1].depends_on[0]",
            "dependency cycle: a -> b -> a",
        );
    }

    #[test]
    fn depth_is_bounded() {
        let chain = |n: usize| {
            spec(
                (0..n)
                    .map(|i| {
                        let previous = format!("s{}", i.wrapping_sub(1));
                        let depends_on: &[&str] = if i == 0 { &[] } else { &[&previous] };
                        step(&format!("s{i}"), depends_on)
                    })
                    .collect(),
            )
        };
        assert_valid(&chain(DAG_DEPTH_MAX));
        assert_invalid(
            &chain(DAG_DEPTH_MAX + 1),
            "steps[256]",
            "step \"s256\" ends a chain of 257 dependent steps, more than 256",
        );
        // Long chains and long cycles are handled without recursion.
        assert_invalid(
            &chain(STEPS_PER_WORKFLOW_MAX),
            "steps[256]",
            "step \"s256\" ends a chain of 257 dependent steps, more than 256",
        );
        let mut cycle = chain(STEPS_PER_WORKFLOW_MAX);
        cycle.steps[0]
            .depends_on
            .push(format!("s{}", STEPS_PER_WORKFLOW_MAX - 1));
        let error = validate_spec(&cycle).expect_err("a cycle");
        assert_eq!(error.field, "steps[0].depends_on[0]");
        assert!(
            error
                .message
                .starts_with("dependency cycle: s0 -> s1 -> s2 -> "),
            "{error}"
        );
        assert!(error.message.ends_with(" -> s998 -> s999 -> s0"), "{error}");
    }

    #[test]
    fn run_condition_rules() {
        let mut s = spec(vec![step("a", &[]), step("b", &["a"])]);
        s.steps[1].when = RunCondition::Failure as i32;
        assert_valid(&s);
        s.steps[0].when = RunCondition::Always as i32;
        assert_valid(&s);
        s.steps[0].when = RunCondition::Failure as i32;
        assert_invalid(
            &s,
            "steps[0].when",
            "step \"a\" runs on failure but has no dependencies",
        );
        s.steps[0].when = 9;
        assert_invalid(
            &s,
            "steps[0].when",
            "step \"a\" has unknown run condition 9",
        );
    }

    #[test]
    fn task_is_required() {
        assert_invalid(
            &one_step(|s| s.task = None),
            "steps[0].task",
            "step \"only\" has no task",
        );
    }

    #[test]
    fn exec_rules() {
        assert_valid(&one_step(|s| s.task = exec(&["sh", "-c", "echo hi"])));
        assert_invalid(
            &one_step(|s| s.task = exec(&[])),
            "steps[0].exec.command",
            "step \"only\" exec command is empty",
        );
        assert_invalid(
            &one_step(|s| s.task = exec(&["", "x"])),
            "steps[0].exec.command[0]",
            "step \"only\" exec program name is empty",
        );
        let many = vec!["a"; ARGV_LEN_MAX + 1];
        assert_invalid(
            &one_step(|s| s.task = exec(&many)),
            "steps[0].exec.command",
            "step \"only\" exec command has 257 arguments, more than 256",
        );
        let long = "a".repeat(ARG_BYTES_MAX + 1);
        assert_invalid(
            &one_step(|s| s.task = exec(&["echo", &long])),
            "steps[0].exec.command[1]",
            "step \"only\" exec argument 1 is 32769 bytes, more than 32768",
        );
        assert_invalid(
            &one_step(|s| s.task = exec(&["echo", "a\0b"])),
            "steps[0].exec.command[1]",
            "step \"only\" exec argument 1 contains a nul byte",
        );
        let with_exec = |edit: &dyn Fn(&mut ExecTask)| {
            let mut task = ExecTask {
                command: vec!["true".to_string()],
                ..Default::default()
            };
            edit(&mut task);
            one_step(|s| s.task = Some(Task::Exec(task)))
        };
        assert_valid(&with_exec(&|e| {
            e.env.insert("PATH".to_string(), "/bin".to_string());
            e.working_dir = "/tmp".to_string();
        }));
        assert_invalid(
            &with_exec(&|e| {
                e.env = (0..=ENV_VARS_MAX)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect()
            }),
            "steps[0].exec.env",
            "step \"only\" sets 129 environment variables, more than 128",
        );
        assert_invalid(
            &with_exec(&|e| {
                e.env.insert("A=B".to_string(), String::new());
            }),
            "steps[0].exec.env[\"A=B\"]",
            "step \"only\" environment variable name \"A=B\" must be 1..=256 bytes without \"=\" or nul",
        );
        assert_invalid(
            &with_exec(&|e| {
                e.env.insert("A".to_string(), "\0".to_string());
            }),
            "steps[0].exec.env[\"A\"]",
            "step \"only\" environment variable \"A\" contains a nul byte",
        );
        assert_invalid(
            &with_exec(&|e| e.working_dir = "d".repeat(PATH_BYTES_MAX + 1)),
            "steps[0].exec.working_dir",
            "step \"only\" working directory is 4097 bytes, more than 4096",
        );
    }

    #[test]
    fn http_rules() {
        let with_http = |task: HttpTask| one_step(|s| s.task = Some(Task::Http(task)));
        for url in [
            "http://127.0.0.1:8080/health",
            "https://assets.example/api/orders?x=1#y",
            "HTTPS://user:pw@example.com",
            "http://[::1]:9000/",
            "http://localhost",
            "https://{{ input.host }}/api",
        ] {
            assert_valid(&with_http(http("GET", url)));
        }
        assert_valid(&with_http(http("", "http://h")));
        for (url, reason) in [
            ("", "is not an absolute http or https url"),
            ("example.com/path", "is not an absolute http or https url"),
            ("ftp://example.com", "must use the http or https scheme"),
            ("http://", "has no host"),
            ("http:///path", "has no host"),
            ("http://user@:80/", "has no host"),
            (
                "http://exa mple.com",
                "contains whitespace or a control character",
            ),
            (
                "http://ex%61mple.com",
                "has a host with a character outside letters, digits, \"-\", \".\" and \"_\"",
            ),
            ("http://example.com:http/", "has an invalid port"),
            ("http://example.com:99999/", "has an invalid port"),
            ("http://example.com:/", "has an invalid port"),
            ("http://[::1/", "has an unterminated ipv6 address"),
            ("http://[::1]x/", "has characters after its ipv6 address"),
            ("http://[zz]/", "has an invalid ipv6 address"),
        ] {
            assert_invalid(
                &with_http(http("GET", url)),
                "steps[0].http.url",
                &format!("step \"only\" url {} {reason}", quoted(url)),
            );
        }
        assert_invalid(
            &with_http(http("FETCH", "http://h")),
            "steps[0].http.method",
            "step \"only\" http method \"FETCH\" is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        );
        let long_url = format!("http://h/{}", "a".repeat(URL_LEN_MAX));
        assert_invalid(
            &with_http(http("GET", &long_url)),
            "steps[0].http.url",
            "step \"only\" url is 8201 bytes long, more than 8192",
        );
        let mut headers = HttpTask {
            headers: BTreeMap::from([("X-Token".to_string(), "abc".to_string())]),
            ..http("POST", "http://h")
        };
        assert_valid(&with_http(headers.clone()));
        headers
            .headers
            .insert("Bad Header".to_string(), "v".to_string());
        assert_invalid(
            &with_http(headers.clone()),
            "steps[0].http.headers[\"Bad Header\"]",
            "step \"only\" http header name \"Bad Header\" must be 1..=256 token characters",
        );
        headers.headers.remove("Bad Header");
        headers
            .headers
            .insert("X-Evil".to_string(), "a\r\nHost: evil".to_string());
        assert_invalid(
            &with_http(headers),
            "steps[0].http.headers[\"X-Evil\"]",
            "step \"only\" http header \"X-Evil\" has a line break or nul in its value",
        );
        assert_invalid(
            &with_http(HttpTask {
                headers: (0..=HTTP_HEADERS_MAX)
                    .map(|i| (format!("h{i}"), String::new()))
                    .collect(),
                ..http("GET", "http://h")
            }),
            "steps[0].http.headers",
            "step \"only\" has 65 http headers, more than 64",
        );
        assert_invalid(
            &with_http(HttpTask {
                body: "b".repeat(HTTP_BODY_BYTES_MAX + 1),
                ..http("POST", "http://h")
            }),
            "steps[0].http.body",
            "step \"only\" http body is 262145 bytes, more than 262144",
        );
        assert_valid(&with_http(HttpTask {
            success_statuses: vec![200, 404],
            ..http("GET", "http://h")
        }));
        assert_invalid(
            &with_http(HttpTask {
                success_statuses: vec![200, 600],
                ..http("GET", "http://h")
            }),
            "steps[0].http.success_statuses[1]",
            "step \"only\" success status 600 is not an http status (100..=599)",
        );
        assert_invalid(
            &with_http(HttpTask {
                success_statuses: vec![200; HTTP_SUCCESS_STATUSES_MAX + 1],
                ..http("GET", "http://h")
            }),
            "steps[0].http.success_statuses",
            "step \"only\" lists 65 success statuses, more than 64",
        );
    }

    #[test]
    fn sleep_rules() {
        let sleeping =
            |duration_ms| one_step(|s| s.task = Some(Task::Sleep(SleepTask { duration_ms })));
        assert_valid(&sleeping(0));
        assert_valid(&sleeping(SLEEP_MS_MAX));
        assert_invalid(
            &sleeping(SLEEP_MS_MAX + 1),
            "steps[0].sleep.duration_ms",
            "step \"only\" sleeps 24h1ms, longer than the maximum 24h",
        );
    }

    #[test]
    fn custom_rules() {
        let custom = |kind: &str, payload: String| {
            one_step(|s| {
                s.task = Some(Task::Custom(CustomTask {
                    r#type: kind.to_string(),
                    payload,
                }))
            })
        };
        assert_valid(&custom(
            "acme.io/create-user",
            "{\"name\": \"ada\"}".to_string(),
        ));
        assert_invalid(
            &custom("", String::new()),
            "steps[0].custom.type",
            "step \"only\" custom task type \"\" must be 1..=128 characters of [A-Za-z0-9._/-]",
        );
        assert_invalid(
            &custom("create user", String::new()),
            "steps[0].custom.type",
            "step \"only\" custom task type \"create user\" must be 1..=128 characters of [A-Za-z0-9._/-]",
        );
        assert_invalid(
            &custom("t", "p".repeat(CUSTOM_PAYLOAD_BYTES_MAX + 1)),
            "steps[0].custom.payload",
            "step \"only\" custom payload is 262145 bytes, more than 262144",
        );
    }

    #[test]
    fn retry_rules() {
        let retrying = |max_attempts, backoff: Option<Backoff>| {
            one_step(|s| {
                s.retry = Some(RetryPolicy {
                    max_attempts,
                    backoff,
                })
            })
        };
        let backoff = |initial_ms, multiplier, max_ms| {
            Some(Backoff {
                initial_ms,
                multiplier,
                max_ms,
            })
        };
        assert_valid(&retrying(3, backoff(1000, 2.0, 30_000)));
        assert_valid(&retrying(MAX_ATTEMPTS_MAX, None));
        assert_valid(&retrying(0, backoff(0, 0.0, 0)));
        assert_valid(&retrying(2, backoff(5000, 1.0, 0)));
        assert_invalid(
            &retrying(MAX_ATTEMPTS_MAX + 1, None),
            "steps[0].retry.max_attempts",
            "step \"only\" retry max_attempts 101 is more than 100",
        );
        for (multiplier, message) in [
            (
                f64::NAN,
                "step \"only\" backoff multiplier NaN is not a finite number",
            ),
            (
                f64::INFINITY,
                "step \"only\" backoff multiplier inf is not a finite number",
            ),
            (
                0.5,
                "step \"only\" backoff multiplier 0.5 is outside 1..=100",
            ),
            (
                -2.0,
                "step \"only\" backoff multiplier -2 is outside 1..=100",
            ),
            (
                100.5,
                "step \"only\" backoff multiplier 100.5 is outside 1..=100",
            ),
        ] {
            assert_invalid(
                &retrying(3, backoff(0, multiplier, 0)),
                "steps[0].retry.backoff.multiplier",
                message,
            );
        }
        assert_invalid(
            &retrying(3, backoff(60_000, 2.0, 30_000)),
            "steps[0].retry.backoff.initial_ms",
            "step \"only\" backoff initial 1m is longer than its max 30s",
        );
        assert_invalid(
            &retrying(3, backoff(BACKOFF_MS_MAX + 1, 2.0, 0)),
            "steps[0].retry.backoff.initial_ms",
            "step \"only\" backoff initial 24h1ms is longer than the maximum 24h",
        );
        assert_invalid(
            &retrying(3, backoff(0, 2.0, BACKOFF_MS_MAX + 1)),
            "steps[0].retry.backoff.max_ms",
            "step \"only\" backoff max 24h1ms is longer than the maximum 24h",
        );
    }

    #[test]
    fn time_rules() {
        assert_valid(&one_step(|s| {
            s.timeout_ms = TIMEOUT_MS_MAX;
            s.schedule_to_start_timeout_ms = TIMEOUT_MS_MAX;
            s.lease_ttl_ms = LEASE_TTL_MS_MIN;
        }));
        assert_invalid(
            &one_step(|s| s.timeout_ms = TIMEOUT_MS_MAX + 1),
            "steps[0].timeout_ms",
            "step \"only\" timeout 168h1ms is longer than the maximum 168h",
        );
        assert_invalid(
            &one_step(|s| s.schedule_to_start_timeout_ms = u64::MAX),
            "steps[0].schedule_to_start_timeout_ms",
            "step \"only\" schedule-to-start timeout 5124095576030h25m51s615ms is longer than the maximum 168h",
        );
        assert_invalid(
            &one_step(|s| s.lease_ttl_ms = 500),
            "steps[0].lease_ttl_ms",
            "step \"only\" lease ttl 500ms is shorter than the minimum 1s",
        );
        assert_invalid(
            &one_step(|s| s.lease_ttl_ms = LEASE_TTL_MS_MAX + 1000),
            "steps[0].lease_ttl_ms",
            "step \"only\" lease ttl 10m1s is longer than the maximum 10m",
        );
    }

    #[test]
    fn step_priority_range() {
        assert_valid(&one_step(|s| s.priority = Some(-1000)));
        assert_invalid(
            &one_step(|s| s.priority = Some(-1001)),
            "steps[0].priority",
            "step \"only\" priority -1001 is outside -1000..=1000",
        );
    }

    #[test]
    fn resource_rules() {
        let asking = |cpu_millis, memory_mb| {
            one_step(|s| {
                s.resources = Some(Resources {
                    cpu_millis,
                    memory_mb,
                })
            })
        };
        assert_valid(&asking(CPU_MILLIS_MAX, MEMORY_MB_MAX));
        assert_invalid(
            &asking(CPU_MILLIS_MAX + 1, 0),
            "steps[0].resources.cpu_millis",
            "step \"only\" asks for 1024001 cpu millis, more than 1024000",
        );
        assert_invalid(
            &asking(0, MEMORY_MB_MAX + 1),
            "steps[0].resources.memory_mb",
            "step \"only\" asks for 16777217 mb of memory, more than 16777216",
        );
    }

    #[test]
    fn constraint_rules() {
        assert_valid(&one_step(|s| {
            s.constraints.insert("zone".to_string(), "eu".to_string());
        }));
        assert_invalid(
            &one_step(|s| {
                s.constraints = (0..=CONSTRAINTS_PER_STEP_MAX)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect()
            }),
            "steps[0].constraints",
            "step \"only\" has 17 constraints, more than 16",
        );
        assert_invalid(
            &one_step(|s| {
                s.constraints.insert("zone!".to_string(), "eu".to_string());
            }),
            "steps[0].constraints[\"zone!\"]",
            "constraint key \"zone!\" has a character outside [A-Za-z0-9._/-]",
        );
    }

    #[test]
    fn idempotency_key_rules() {
        assert_eq!(validate_idempotency_key(""), Ok(()));
        assert_eq!(validate_idempotency_key("submit-2025-01-31 #1 ~"), Ok(()));
        assert_eq!(
            validate_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_LEN_MAX)),
            Ok(())
        );
        assert_eq!(
            validate_idempotency_key(&"k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1))
                .map_err(|e| e.to_string()),
            Err("idempotency_key: idempotency key is 129 bytes long, more than 128".to_string())
        );
        for (key, at) in [("ab\tc", 2), ("é", 0), ("abc\x7f", 3)] {
            assert_eq!(
                validate_idempotency_key(key).map_err(|e| e.to_string()),
                Err(format!(
                    "idempotency_key: idempotency key has a character that is not printable ascii at byte {at}"
                ))
            );
        }
    }

    #[test]
    fn effective_values() {
        let mut s = spec(vec![step("a", &[]), step("b", &[])]);
        s.priority = 7;
        s.steps[1].priority = Some(-3);
        assert_eq!(effective_priority(&s.steps[0], &s), 7);
        assert_eq!(effective_priority(&s.steps[1], &s), -3);
        s.steps[1].priority = Some(i32::MAX);
        assert_eq!(effective_priority(&s.steps[1], &s), PRIORITY_MAX);

        let mut a = step("a", &[]);
        assert_eq!(effective_lease_ttl_ms(&a), LEASE_TTL_MS_DEFAULT);
        a.lease_ttl_ms = 12_000;
        assert_eq!(effective_lease_ttl_ms(&a), 12_000);
        assert_eq!(effective_max_attempts(&a), 1);
        a.retry = Some(RetryPolicy {
            max_attempts: 4,
            backoff: None,
        });
        assert_eq!(effective_max_attempts(&a), 4);
    }

    #[test]
    fn backoff_delays() {
        let mut a = step("a", &[]);
        // No policy: the defaults, 1s doubling up to 1m.
        let delays: Vec<u64> = (1..=8).map(|n| backoff_delay_ms(&a, n)).collect();
        assert_eq!(
            delays,
            [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        );
        a.retry = Some(RetryPolicy {
            max_attempts: 5,
            backoff: Some(Backoff {
                initial_ms: 500,
                multiplier: 3.0,
                max_ms: 10_000,
            }),
        });
        let delays: Vec<u64> = (0..=5).map(|n| backoff_delay_ms(&a, n)).collect();
        assert_eq!(delays, [500, 500, 1500, 4500, 10_000, 10_000]);
        // An initial delay above the default cap is not cut down to it.
        a.retry = Some(RetryPolicy {
            max_attempts: 5,
            backoff: Some(Backoff {
                initial_ms: 300_000,
                ..Default::default()
            }),
        });
        assert_eq!(backoff_delay_ms(&a, 3), 300_000);
        assert_eq!(backoff_delay_ms(&a, u32::MAX), 300_000);
    }

    #[test]
    fn graph_helpers() {
        let s = spec(vec![
            step("deploy", &["test", "build"]),
            step("test", &["build"]),
            step("build", &[]),
            step("docs", &[]),
        ]);
        let graph = StepGraph::new(&s).expect("acyclic");
        assert_eq!(graph.topological_order(), [2, 1, 0, 3]);
        assert_eq!(topological_order(&s), Ok(vec![2, 1, 0, 3]));
        assert_eq!(graph.dependencies(0), [1, 2]);
        assert_eq!(graph.dependents(2), [0, 1]);
        assert_eq!(graph.dependents(99), [] as [usize; 0]);
        assert_eq!(graph.edge_count(), 3);
        assert_eq!(graph.depths(), [3, 2, 1, 1]);
    }

    // ---- property tests ----

    /// A spec of anything: random names (often clashing or invalid), dependencies on names that
    /// may or may not exist, random tasks and numbers.
    fn arbitrary_spec() -> impl Strategy<Value = WorkflowSpec> {
        let name = prop_oneof![4 => "s[0-9]", 1 => ".{0,12}"];
        let task = prop_oneof![
            Just(None),
            Just(noop()),
            (
                prop::collection::vec(".{0,4}", 0..4),
                prop::collection::btree_map(".{0,3}", ".{0,3}", 0..3),
                ".{0,3}"
            )
                .prop_map(|(command, env, working_dir)| Some(Task::Exec(ExecTask {
                    command,
                    env,
                    working_dir
                }))),
            (
                ".{0,8}",
                ".{0,24}",
                prop::collection::btree_map(".{0,5}", ".{0,5}", 0..3),
                prop::collection::vec(any::<u32>(), 0..3)
            )
                .prop_map(|(method, url, headers, success_statuses)| Some(Task::Http(
                    HttpTask {
                        method,
                        url,
                        headers,
                        body: String::new(),
                        success_statuses
                    }
                ))),
            any::<u64>().prop_map(|duration_ms| Some(Task::Sleep(SleepTask { duration_ms }))),
            (".{0,8}", ".{0,8}")
                .prop_map(|(r#type, payload)| Some(Task::Custom(CustomTask { r#type, payload }))),
        ];
        let retry = prop::option::of((
            any::<u32>(),
            prop::option::of((any::<u64>(), any::<f64>(), any::<u64>())),
        ))
        .prop_map(|retry| {
            retry.map(|(max_attempts, backoff)| RetryPolicy {
                max_attempts,
                backoff: backoff.map(|(initial_ms, multiplier, max_ms)| Backoff {
                    initial_ms,
                    multiplier,
                    max_ms,
                }),
            })
        });
        let step = (
            name,
            prop::collection::vec("s[0-9]|x|.{0,3}", 0..5),
            -1..5i32,
            task,
            retry,
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (
                prop::option::of(any::<i32>()),
                prop::option::of((any::<u32>(), any::<u32>())),
            ),
            prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
        )
            .prop_map(
                |(
                    name,
                    depends_on,
                    when,
                    task,
                    retry,
                    (timeout_ms, lease_ttl_ms, schedule_to_start_timeout_ms),
                    (priority, resources),
                    constraints,
                )| StepSpec {
                    name,
                    depends_on,
                    when,
                    task,
                    retry,
                    timeout_ms,
                    resources: resources.map(|(cpu_millis, memory_mb)| Resources {
                        cpu_millis,
                        memory_mb,
                    }),
                    constraints,
                    priority,
                    lease_ttl_ms,
                    schedule_to_start_timeout_ms,
                },
            );
        (
            prop_oneof!["[a-z]{1,8}", ".{0,10}"],
            prop::collection::vec(step, 0..30),
            any::<i32>(),
            prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
            prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
        )
            .prop_map(|(name, steps, priority, labels, input)| WorkflowSpec {
                name,
                labels,
                steps,
                priority,
                input,
            })
    }

    /// A valid acyclic spec: `dependencies[k]` are positions (in creation order) of earlier
    /// steps; `chain` makes every step also wait on the one created before it; `placement`
    /// shuffles where each step is listed, so dependencies also point forward in the list.
    #[derive(Clone, Debug)]
    struct Dag {
        spec: WorkflowSpec,
        /// `position[k]` = index in `spec.steps` of the k-th created step.
        position: Vec<usize>,
    }

    fn valid_dag(chain: bool) -> impl Strategy<Value = Dag> {
        (2..40usize)
            .prop_flat_map(move |n| {
                (
                    prop::collection::vec(
                        (
                            prop::collection::vec(any::<usize>(), 0..4),
                            0..5u8,
                            -1000..=1000i32,
                            0..=TIMEOUT_MS_MAX,
                        ),
                        n,
                    ),
                    Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                )
            })
            .prop_map(move |(raw, placement)| {
                let n = raw.len();
                let name = |k: usize| format!("step-{k}");
                let mut steps = vec![StepSpec::default(); n];
                for (k, (picks, task_kind, priority, timeout_ms)) in raw.into_iter().enumerate() {
                    let mut depends_on: Vec<String> = Vec::new();
                    if k > 0 {
                        if chain {
                            depends_on.push(name(k - 1));
                        }
                        for pick in picks {
                            let dependency = name(pick % k);
                            if !depends_on.contains(&dependency) {
                                depends_on.push(dependency);
                            }
                        }
                    }
                    let task = match task_kind {
                        0 => exec(&["sh", "-c", "echo hi"]),
                        1 => Some(Task::Http(http("POST", "http://127.0.0.1:8080/hook"))),
                        2 => Some(Task::Sleep(SleepTask {
                            duration_ms: timeout_ms % SLEEP_MS_MAX,
                        })),
                        3 => Some(Task::Custom(CustomTask {
                            r#type: "acme/thing".to_string(),
                            payload: String::new(),
                        })),
                        _ => noop(),
                    };
                    steps[placement[k]] = StepSpec {
                        name: name(k),
                        when: if depends_on.is_empty() {
                            0
                        } else {
                            (k % 4) as i32
                        },
                        depends_on,
                        task,
                        timeout_ms,
                        priority: (k % 2 == 0).then_some(priority),
                        retry: Some(RetryPolicy {
                            max_attempts: (k % 5) as u32,
                            backoff: Some(Backoff {
                                initial_ms: 1000,
                                multiplier: 1.5,
                                max_ms: 60_000,
                            }),
                        }),
                        lease_ttl_ms: if k % 3 == 0 {
                            0
                        } else {
                            LEASE_TTL_MS_MIN + k as u64
                        },
                        ..Default::default()
                    };
                }
                Dag {
                    spec: spec(steps),
                    position: placement,
                }
            })
    }

    proptest! {
        #[test]
        fn validator_never_panics(s in arbitrary_spec()) {
            let _ = validate_spec(&s);
            let _ = topological_order(&s);
            if let Ok(graph) = StepGraph::new(&s) {
                let _ = graph.depths();
            }
            for step in &s.steps {
                let _ = effective_priority(step, &s);
                let _ = effective_lease_ttl_ms(step);
                let _ = effective_max_attempts(step);
                let _ = backoff_delay_ms(step, 3);
            }
        }

        #[test]
        fn idempotency_key_check_never_panics(key in ".{0,200}") {
            let _ = validate_idempotency_key(&key);
        }

        #[test]
        fn valid_dags_pass(dag in valid_dag(false)) {
            prop_assert_eq!(validate_spec(&dag.spec), Ok(()));
            let order = topological_order(&dag.spec).expect("acyclic");
            let mut rank = vec![usize::MAX; order.len()];
            for (at, &i) in order.iter().enumerate() {
                rank[i] = at;
            }
            let graph = StepGraph::new(&dag.spec).expect("acyclic");
            for i in 0..dag.spec.steps.len() {
                for &d in graph.dependencies(i) {
                    prop_assert!(rank[d] < rank[i], "step {} runs before its dependency {}", i, d);
                }
            }
        }

        #[test]
        fn a_back_edge_is_reported_as_a_cycle(dag in valid_dag(true), ends in (any::<usize>(), any::<usize>())) {
            prop_assert_eq!(validate_spec(&dag.spec), Ok(()));
            // With the chain, every earlier step is an ancestor of every later one, so making an
            // earlier step wait on a later one always closes a cycle through that edge.
            let n = dag.position.len();
            let later = 1 + ends.0 % (n - 1);
            let earlier = ends.1 % later;
            let (from, to) = (format!("step-{later}"), format!("step-{earlier}"));
            let mut cyclic = dag.spec.clone();
            cyclic.steps[dag.position[earlier]].depends_on.push(from.clone());
            let error = validate_spec(&cyclic).expect_err("a cycle");
            let cycle = error.message.strip_prefix("dependency cycle: ").expect("a cycle message");
            let names: Vec<&str> = cycle.split(" -> ").collect();
            prop_assert!(names.len() >= 3);
            prop_assert_eq!(names.first(), names.last());
            // Each arrow is a real dependency: the right-hand step waits on the left-hand one.
            for pair in names.windows(2) {
                let waiter = cyclic.steps.iter().find(|s| s.name == pair[1]).expect("a known step");
                prop_assert!(waiter.depends_on.iter().any(|d| d == pair[0]), "{} -> {} is not an edge", pair[0], pair[1]);
            }
            prop_assert!(
                names.windows(2).any(|pair| pair[0] == from && pair[1] == to),
                "cycle {} misses the added edge {} -> {}", cycle, from, to
            );
        }
    }
}
