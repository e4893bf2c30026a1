//! A spec's declared `params` and a submit's values for them.
//!
//! Parameters share the workflow input's namespace and bounds: their values join the input the
//! steps read (the server adds them when it hands a step out), so a parameter may not be named
//! like an input key, and input plus parameters stay within INPUT_ENTRIES_MAX and
//! INPUT_BYTES_MAX.

use std::collections::{BTreeMap, BTreeSet};

use super::SpecError;
use crate::limits::*;
use crate::text::quoted;
use crate::v1::WorkflowSpec;

/// The declarations: names, uniqueness, a default or `required` (not both), bounds.
pub(super) fn check_params(spec: &WorkflowSpec) -> Result<(), SpecError> {
    if spec.params.is_empty() {
        return Ok(());
    }
    let entries = spec.input.len() + spec.params.len();
    if entries > INPUT_ENTRIES_MAX {
        return Err(SpecError::new(
            "params",
            format!(
                "workflow has {} parameters and {} input entries, more than {INPUT_ENTRIES_MAX} \
                 together",
                spec.params.len(),
                spec.input.len()
            ),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, param) in spec.params.iter().enumerate() {
        let field = format!("params[{i}]");
        if !is_param_name(&param.name) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!(
                    "parameter name {} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9_-]",
                    quoted(&param.name)
                ),
            ));
        }
        if !names.insert(param.name.as_str()) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!("parameter {} is declared twice", quoted(&param.name)),
            ));
        }
        if spec.input.contains_key(&param.name) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!(
                    "parameter {} is also an input key: steps read both as input, so one name \
                     would mean two values",
                    quoted(&param.name)
                ),
            ));
        }
        if param.required && param.default.is_some() {
            return Err(SpecError::new(
                field,
                format!(
                    "parameter {} is required and has a default: a default makes it optional, \
                     keep one of the two",
                    quoted(&param.name)
                ),
            ));
        }
        if param.description.len() > PARAM_DESCRIPTION_BYTES_MAX {
            return Err(SpecError::new(
                format!("{field}.description"),
                format!(
                    "description is {} bytes, more than {PARAM_DESCRIPTION_BYTES_MAX}",
                    param.description.len()
                ),
            ));
        }
    }
    let defaults = spec
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.default.as_deref().unwrap_or_default()));
    check_bytes(spec, defaults, "params")
}

/// The values a submit gives `spec`'s parameters, checked and completed: every declared
/// parameter gets the value given, else its default, else (when not required) the empty string.
/// An error names the parameter as `params["NAME"]` (a field of the submit request).
pub fn resolve_params(
    spec: &WorkflowSpec,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    let declared: BTreeMap<&str, _> = spec.params.iter().map(|p| (p.name.as_str(), p)).collect();
    if let Some(unknown) = given.keys().find(|k| !declared.contains_key(k.as_str())) {
        let names: Vec<&str> = declared.keys().copied().collect();
        return Err(SpecError::new(
            format!("params[{}]", quoted(unknown)),
            if names.is_empty() {
                format!("workflow {} declares no parameters", quoted(&spec.name))
            } else {
                format!(
                    "workflow {} declares no parameter {}; it declares {}",
                    quoted(&spec.name),
                    quoted(unknown),
                    names.join(", ")
                )
            },
        ));
    }
    let mut values = BTreeMap::new();
    for param in &spec.params {
        let value = match (given.get(&param.name), &param.default) {
            (Some(value), _) => value.clone(),
            (None, Some(default)) => default.clone(),
            (None, None) if param.required => {
                let about = if param.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", param.description)
                };
                return Err(SpecError::new(
                    format!("params[{}]", quoted(&param.name)),
                    format!(
                        "required parameter{about} has no value: give one with -p {}=VALUE",
                        param.name
                    ),
                ));
            }
            (None, None) => String::new(),
        };
        values.insert(param.name.clone(), value);
    }
    check_bytes(
        spec,
        values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        "params",
    )?;
    Ok(values)
}

/// Input plus parameters within INPUT_BYTES_MAX.
fn check_bytes<'a>(
    spec: &WorkflowSpec,
    params: impl Iterator<Item = (&'a str, &'a str)>,
    field: &str,
) -> Result<(), SpecError> {
    let input: usize = spec.input.iter().map(|(k, v)| k.len() + v.len()).sum();
    let params: usize = params.map(|(k, v)| k.len() + v.len()).sum();
    let total = input.saturating_add(params);
    if total > INPUT_BYTES_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "parameters ({params} bytes) and input ({input} bytes) come to {total} bytes, \
                 more than {INPUT_BYTES_MAX}"
            ),
        ));
    }
    Ok(())
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ParamSpec;
    use crate::validate::test_support::{spec, step};
    use crate::validate::validate_spec;

    fn param(name: &str, default: Option<&str>, required: bool) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            default: default.map(Into::into),
            required,
            description: "where to deploy".into(),
        }
    }

    fn with_params(params: Vec<ParamSpec>) -> WorkflowSpec {
        let mut spec = spec(vec![step("a", &[])]);
        spec.params = params;
        spec
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn declarations_are_checked_with_the_spec() {
        let error = |params| {
            let e = validate_spec(&with_params(params)).unwrap_err();
            (e.field, e.message)
        };
        assert_eq!(
            validate_spec(&with_params(vec![param("env", Some("eu"), false)])),
            Ok(())
        );
        assert_eq!(error(vec![param("a.b", None, false)]).0, "params[0].name");
        assert_eq!(
            error(vec![param("env", None, false), param("env", None, true)]),
            (
                "params[1].name".into(),
                "parameter \"env\" is declared twice".into()
            )
        );
        assert_eq!(error(vec![param("env", Some("eu"), true)]).0, "params[0]");
        let mut clash = with_params(vec![param("env", None, false)]);
        clash.input.insert("env".into(), "x".into());
        assert_eq!(validate_spec(&clash).unwrap_err().field, "params[0].name");
        let mut long = param("env", None, false);
        long.description = "x".repeat(PARAM_DESCRIPTION_BYTES_MAX + 1);
        assert_eq!(error(vec![long]).0, "params[0].description");
        let mut big = param("env", None, false);
        big.default = Some("x".repeat(INPUT_BYTES_MAX));
        assert_eq!(error(vec![big]).0, "params");
    }

    #[test]
    fn values_are_given_or_defaulted_and_mistakes_name_the_parameter() {
        let spec = with_params(vec![
            param("env", Some("staging"), false),
            param("version", None, true),
            param("note", None, false),
        ]);
        assert_eq!(
            resolve_params(&spec, &given(&[("version", "1.2")])),
            Ok(given(&[
                ("env", "staging"),
                ("note", ""),
                ("version", "1.2")
            ]))
        );
        assert_eq!(
            resolve_params(&spec, &given(&[("version", "1.2"), ("env", "prod")])).unwrap()["env"],
            "prod"
        );
        let missing = resolve_params(&spec, &given(&[])).unwrap_err();
        assert_eq!(missing.field, "params[\"version\"]");
        assert_eq!(
            missing.message,
            "required parameter (where to deploy) has no value: give one with -p version=VALUE"
        );
        let unknown =
            resolve_params(&spec, &given(&[("version", "1"), ("colour", "red")])).unwrap_err();
        assert_eq!(
            (unknown.field.as_str(), unknown.message.as_str()),
            (
                "params[\"colour\"]",
                "workflow \"wf\" declares no parameter \"colour\"; it declares env, note, version"
            )
        );
        let none = resolve_params(&with_params(vec![]), &given(&[("x", "1")])).unwrap_err();
        assert_eq!(none.message, "workflow \"wf\" declares no parameters");
        let too_big = resolve_params(&spec, &given(&[("version", &"x".repeat(INPUT_BYTES_MAX))]))
            .unwrap_err();
        assert_eq!(too_big.field, "params");
    }
}
