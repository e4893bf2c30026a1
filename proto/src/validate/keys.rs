//! Concurrency keys and rate limits (`concurrency: {key, limit}` on a workflow or a step,
//! `rate_limit: {key, per_second | per_minute, burst}` on a step): their rules, and how a key's
//! template is rendered. A key may use `{{ params.NAME }}` (a declared parameter) and
//! `{{ input.KEY }}` (an input key of the spec); it is rendered once, when the workflow is
//! submitted, by [`render_key`], which the server's state machine calls (so it is deterministic
//! and reads nothing but its arguments).

use std::collections::BTreeMap;

use super::SpecError;
use crate::text::quoted;
use crate::v1::{Concurrency, RateLimit, WorkflowSpec};

/// The longest key, in bytes, as written and once rendered.
pub const KEY_BYTES_MAX: usize = 200;
/// The most holders a concurrency key may allow.
pub const CONCURRENCY_LIMIT_MAX: u32 = 10_000;
/// The highest rate: tokens per second (or per minute), and tokens a bucket holds.
pub const RATE_MAX: u32 = 100_000;

/// The workflow's `concurrency` and each step's `concurrency` and `rate_limit`.
pub(super) fn check_keys(spec: &WorkflowSpec) -> Result<(), SpecError> {
    if let Some(concurrency) = &spec.concurrency {
        check_concurrency("concurrency", "workflow", concurrency, spec)?;
    }
    for (i, step) in spec.steps.iter().enumerate() {
        let what = format!("step {}", quoted(&step.name));
        let waits = matches!(step.task, Some(crate::v1::step_spec::Task::Wait(_)));
        if let Some(concurrency) = &step.concurrency {
            let field = format!("steps[{i}].concurrency");
            if waits {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{what} waits for a signal and runs on no agent: it takes no concurrency key"
                    ),
                ));
            }
            check_concurrency(&field, &what, concurrency, spec)?;
        }
        if let Some(rate) = &step.rate_limit {
            let field = format!("steps[{i}].rate_limit");
            if waits {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{what} waits for a signal and runs on no agent: it takes no rate limit"
                    ),
                ));
            }
            check_rate(&field, &what, rate, spec)?;
        }
    }
    Ok(())
}

fn check_concurrency(
    field: &str,
    what: &str,
    concurrency: &Concurrency,
    spec: &WorkflowSpec,
) -> Result<(), SpecError> {
    check_key_template(&format!("{field}.key"), what, &concurrency.key, spec)?;
    if concurrency.limit == 0 || concurrency.limit > CONCURRENCY_LIMIT_MAX {
        return Err(SpecError::new(
            format!("{field}.limit"),
            format!(
                "{what}'s concurrency limit is {}: give 1..={CONCURRENCY_LIMIT_MAX} holders at once",
                concurrency.limit
            ),
        ));
    }
    Ok(())
}

fn check_rate(
    field: &str,
    what: &str,
    rate: &RateLimit,
    spec: &WorkflowSpec,
) -> Result<(), SpecError> {
    check_key_template(&format!("{field}.key"), what, &rate.key, spec)?;
    match (rate.per_second, rate.per_minute) {
        (0, 0) => {
            return Err(SpecError::new(
                field,
                format!("{what}'s rate limit has no rate: give per_second or per_minute"),
            ));
        }
        (s, m) if s != 0 && m != 0 => {
            return Err(SpecError::new(
                field,
                format!("{what}'s rate limit gives both per_second and per_minute: give one"),
            ));
        }
        (s, m) if s.max(m) > RATE_MAX => {
            let name = if s != 0 { "per_second" } else { "per_minute" };
            return Err(SpecError::new(
                format!("{field}.{name}"),
                format!("{what}'s rate is {}, more than {RATE_MAX}", s.max(m)),
            ));
        }
        _ => {}
    }
    if rate.burst > RATE_MAX {
        return Err(SpecError::new(
            format!("{field}.burst"),
            format!("{what}'s burst is {}, more than {RATE_MAX}", rate.burst),
        ));
    }
    Ok(())
}

/// A key as written: 1..=KEY_BYTES_MAX bytes, no control characters, and templates that name
/// only declared parameters and the spec's input keys.
fn check_key_template(
    field: &str,
    what: &str,
    key: &str,
    spec: &WorkflowSpec,
) -> Result<(), SpecError> {
    check_key_text(key).map_err(|why| SpecError::new(field, format!("{what}'s key {why}")))?;
    for expression in templates(key) {
        let known = match expression {
            Template::Param(name) => spec.params.iter().any(|p| p.name == name),
            Template::Input(name) => spec.input.contains_key(name),
            Template::Other(_) => false,
        };
        if !known {
            let text = match expression {
                Template::Param(name) => format!("names undeclared parameter {}", quoted(name)),
                Template::Input(name) => {
                    format!("names input key {}, which the spec has not", quoted(name))
                }
                Template::Other(text) => format!(
                    "uses {}: a key may use only {{{{ params.NAME }}}} and {{{{ input.KEY }}}}",
                    quoted(text)
                ),
            };
            return Err(SpecError::new(field, format!("{what}'s key {text}")));
        }
    }
    Ok(())
}

/// Why `key` cannot be a key, as a phrase after "key", or Ok.
fn check_key_text(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("is empty".into());
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(format!("is {} bytes, more than {KEY_BYTES_MAX}", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Template<'a> {
    Param(&'a str),
    Input(&'a str),
    Other(&'a str),
}

/// The `{{ ... }}` expressions in `text`, trimmed, in order.
fn templates(text: &str) -> impl Iterator<Item = Template<'_>> {
    text.split("{{").skip(1).filter_map(|rest| {
        let expression = rest.split_once("}}")?.0.trim();
        Some(if let Some(name) = expression.strip_prefix("params.") {
            Template::Param(name)
        } else if let Some(name) = expression.strip_prefix("input.") {
            Template::Input(name)
        } else {
            Template::Other(expression)
        })
    })
}

/// `template` with each `{{ params.NAME }}` and `{{ input.KEY }}` filled in from the workflow's
/// parameter values and input, checked as a key. Deterministic. An error says why, after "key".
pub fn render_key(
    template: &str,
    input: &BTreeMap<String, String>,
    params: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some((expression, tail)) = after.split_once("}}") else {
            rest = &rest[open..];
            break;
        };
        let expression = expression.trim();
        let value = if let Some(name) = expression.strip_prefix("params.") {
            params.get(name).ok_or_else(|| {
                format!(
                    "{} names parameter {}, which has no value",
                    quoted(template),
                    quoted(name)
                )
            })?
        } else if let Some(name) = expression.strip_prefix("input.") {
            input.get(name).ok_or_else(|| {
                format!(
                    "{} names input key {}, which the workflow has not",
                    quoted(template),
                    quoted(name)
                )
            })?
        } else {
            return Err(format!(
                "{} uses {}, which is not a key template",
                quoted(template),
                quoted(expression)
            ));
        };
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    check_key_text(&out).map_err(|why| {
        format!(
            "{} renders to {}, which {why}",
            quoted(template),
            quoted(&out)
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ParamSpec, StepSpec, WaitTask, step_spec::Task};
    use crate::validate::test_support::*;
    use crate::validate::validate_spec;

    fn keyed(key: &str, limit: u32) -> WorkflowSpec {
        let mut spec = spec(vec![step("a", &[])]);
        spec.params.push(ParamSpec {
            name: "env".into(),
            default: Some("prod".into()),
            ..Default::default()
        });
        spec.input.insert("region".into(), "eu".into());
        spec.steps[0].concurrency = Some(Concurrency {
            key: key.into(),
            limit,
        });
        spec
    }

    #[test]
    fn keys_may_name_params_and_input() {
        assert_valid(&keyed("deploy-{{ params.env }}-{{input.region}}", 1));
        let mut spec = keyed("k", 1);
        spec.concurrency = Some(Concurrency {
            key: "nightly".into(),
            limit: 3,
        });
        assert_valid(&spec);
    }

    #[test]
    fn bad_keys_and_limits_name_the_field() {
        let err = validate_spec(&keyed("deploy-{{ params.nope }}", 1)).unwrap_err();
        assert_eq!(err.field, "steps[0].concurrency.key");
        assert!(
            err.message.contains("undeclared parameter \"nope\""),
            "{err}"
        );
        let err = validate_spec(&keyed("{{ steps.a.output }}", 1)).unwrap_err();
        assert!(err.message.contains("may use only"), "{err}");
        let err = validate_spec(&keyed("  ", 1)).unwrap_err();
        assert!(err.message.contains("is empty"), "{err}");
        let err = validate_spec(&keyed(&"k".repeat(201), 1)).unwrap_err();
        assert!(err.message.contains("more than 200"), "{err}");
        let err = validate_spec(&keyed("a\nb", 1)).unwrap_err();
        assert!(err.message.contains("control character"), "{err}");
        let err = validate_spec(&keyed("k", 0)).unwrap_err();
        assert_eq!(err.field, "steps[0].concurrency.limit");
    }

    #[test]
    fn rate_limits_need_exactly_one_rate() {
        let mut spec = spec(vec![step("a", &[])]);
        let rate = |s, m, b| RateLimit {
            key: "api".into(),
            per_second: s,
            per_minute: m,
            burst: b,
        };
        for (limit, ok) in [
            (rate(5, 0, 0), true),
            (rate(0, 30, 10), true),
            (rate(0, 0, 1), false),
            (rate(1, 1, 1), false),
            (rate(RATE_MAX + 1, 0, 0), false),
            (rate(1, 0, RATE_MAX + 1), false),
        ] {
            spec.steps[0].rate_limit = Some(limit);
            assert_eq!(
                validate_spec(&spec).is_ok(),
                ok,
                "{:?}",
                spec.steps[0].rate_limit
            );
        }
    }

    #[test]
    fn wait_steps_take_no_key() {
        let mut spec = spec(vec![StepSpec {
            name: "approve".into(),
            task: Some(Task::Wait(WaitTask {
                signal: "go".into(),
                timeout_ms: 0,
            })),
            ..Default::default()
        }]);
        spec.steps[0].concurrency = Some(Concurrency {
            key: "k".into(),
            limit: 1,
        });
        let err = validate_spec(&spec).unwrap_err();
        assert!(err.message.contains("runs on no agent"), "{err}");
    }

    #[test]
    fn rendering_fills_params_and_input_and_checks_the_result() {
        let input = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        let params = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        assert_eq!(
            render_key("deploy-{{ params.env }}-{{input.region}}", &input, &params).unwrap(),
            "deploy-prod-eu"
        );
        assert_eq!(render_key("plain", &input, &params).unwrap(), "plain");
        assert!(
            render_key("{{ params.x }}", &input, &params)
                .unwrap_err()
                .contains("\"x\"")
        );
        let empty = BTreeMap::from([("env".to_owned(), String::new())]);
        assert!(
            render_key("{{ params.env }}", &input, &empty)
                .unwrap_err()
                .contains("is empty")
        );
        let long = BTreeMap::from([("env".to_owned(), "x".repeat(300))]);
        assert!(render_key("{{ params.env }}", &input, &long).is_err());
    }
}
