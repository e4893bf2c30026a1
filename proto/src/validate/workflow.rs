//! Rules for the workflow's own fields: name, priority, labels and input. Steps and constraints
//! share the rules for names, priorities and labels, so `step` uses these checks too.

use super::SpecError;
use crate::limits::*;
use crate::text::quoted;
use crate::v1::WorkflowSpec;

/// Workflow and step names: 1..=NAME_LEN_MAX characters of `[A-Za-z0-9._-]`.
pub fn check_name(field: &str, what: &str, name: &str) -> Result<(), SpecError> {
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

pub(super) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

pub(super) fn check_priority(field: &str, owner: &str, priority: i32) -> Result<(), SpecError> {
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        return Err(SpecError::new(
            field,
            format!("{owner} priority {priority} is outside {PRIORITY_MIN}..={PRIORITY_MAX}"),
        ));
    }
    Ok(())
}

pub(super) fn check_labels(spec: &WorkflowSpec) -> Result<(), SpecError> {
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
pub(super) fn check_label(
    field: &str,
    what: &str,
    key: &str,
    value: &str,
) -> Result<(), SpecError> {
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

pub(super) fn check_input(spec: &WorkflowSpec) -> Result<(), SpecError> {
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

/// `retention` (0: the cluster default) and `timeout` (0: none), each within its bounds.
pub(super) fn check_durations(spec: &WorkflowSpec) -> Result<(), SpecError> {
    check_duration(
        "retention",
        "retention",
        spec.retention_ms,
        RETENTION_MS_MIN..=RETENTION_MS_MAX,
        "the cluster default",
    )?;
    check_duration(
        "timeout",
        "timeout",
        spec.timeout_ms,
        WORKFLOW_TIMEOUT_MS_MIN..=WORKFLOW_TIMEOUT_MS_MAX,
        "no timeout",
    )
}

fn check_duration(
    field: &str,
    what: &str,
    ms: u64,
    bounds: std::ops::RangeInclusive<u64>,
    zero_means: &str,
) -> Result<(), SpecError> {
    use crate::text::format_duration_ms as shown;
    if ms != 0 && !bounds.contains(&ms) {
        return Err(SpecError::new(
            field,
            format!(
                "workflow {what} {} is outside {}..={} (0 or leaving it out: {zero_means})",
                shown(ms),
                shown(*bounds.start()),
                shown(*bounds.end())
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::validate::test_support::*;

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
}
