//! What a running step sees of its workflow: the `BATON_*` environment and `{{ ... }}`
//! templates in its arguments.
//!
//! Four template forms, with optional spaces inside the braces:
//! `{{ input.KEY }}` (a workflow input value), `{{ params.NAME }}` (a parameter's value: the
//! node hands parameters out with the input, so this reads the same map, under the name the
//! spec declared them by), `{{ steps.NAME.output }}` (the output of a dependency) and
//! `{{ secrets.NAME }}` (a secret the agent resolves itself: `agent::secrets`). A template naming an input or step that the assignment does not carry fails
//! the attempt with an error naming it: running a command with a literal `{{ input.name }}` in
//! its arguments would do the wrong thing quietly. Any other `{{ ... }}` is left alone, so that
//! bodies in other template languages pass through.

use std::collections::BTreeMap;

/// A template that could not be filled in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{field}: template {template:?} names unknown workflow input {key:?}")]
    UnknownInput {
        field: String,
        template: String,
        key: String,
    },
    #[error("{field}: template {template:?} names unknown workflow parameter {name:?}")]
    UnknownParam {
        field: String,
        template: String,
        name: String,
    },
    #[error(
        "{field}: template {template:?} names step {step:?}, which is not a dependency of this step"
    )]
    UnknownStep {
        field: String,
        template: String,
        step: String,
    },
    #[error(
        "{field}: template {template:?} names secret {name:?}, which this agent does not have \
         ({looked})"
    )]
    UnknownSecret {
        field: String,
        template: String,
        name: String,
        looked: String,
    },
}

/// The values templates are filled from.
#[derive(Clone, Copy, Debug)]
pub struct TemplateValues<'a> {
    /// The workflow's input, its parameters' values included.
    pub input: &'a BTreeMap<String, String>,
    /// Outputs of the step's dependencies, by step name.
    pub steps: &'a BTreeMap<String, String>,
    /// The secrets the agent resolved for this attempt, by name (see `agent::secrets`).
    pub secrets: &'a BTreeMap<String, String>,
    /// The workflow's namespace (empty: `default`), whose secrets those are.
    pub namespace: &'a str,
}

impl TemplateValues<'_> {
    /// `text` with every template filled in. `field` names where the text came from
    /// (`exec.command[1]`), for the error.
    pub fn render(&self, field: &str, text: &str) -> Result<String, TemplateError> {
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                rest = &rest[open..];
                break;
            };
            let template = &rest[open..open + 2 + close + 2];
            let expression = after_open[..close].trim();
            match self.lookup(field, template, expression)? {
                Some(value) => out.push_str(value),
                None => out.push_str(template),
            }
            rest = &after_open[close + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `Ok(None)`: not one of our templates, left as written.
    fn lookup(
        &self,
        field: &str,
        template: &str,
        expression: &str,
    ) -> Result<Option<&str>, TemplateError> {
        if let Some(key) = expression.strip_prefix("input.") {
            return self
                .input
                .get(key)
                .map(|value| Some(value.as_str()))
                .ok_or_else(|| TemplateError::UnknownInput {
                    field: field.to_string(),
                    template: template.to_string(),
                    key: key.to_string(),
                });
        }
        if let Some(name) = expression.strip_prefix("params.") {
            return self
                .input
                .get(name)
                .map(|value| Some(value.as_str()))
                .ok_or_else(|| TemplateError::UnknownParam {
                    field: field.to_string(),
                    template: template.to_string(),
                    name: name.to_string(),
                });
        }
        if let Some(name) = expression.strip_prefix("secrets.") {
            return self
                .secrets
                .get(name)
                .map(|value| Some(value.as_str()))
                .ok_or_else(|| TemplateError::UnknownSecret {
                    field: field.to_string(),
                    template: template.to_string(),
                    name: name.to_string(),
                    looked: crate::agent::secrets::where_looked(self.namespace, name),
                });
        }
        // Step names may hold dots, so the name is everything between the two fixed parts.
        if let Some(step) = expression
            .strip_prefix("steps.")
            .and_then(|rest| rest.strip_suffix(".output"))
        {
            return self
                .steps
                .get(step)
                .map(|value| Some(value.as_str()))
                .ok_or_else(|| TemplateError::UnknownStep {
                    field: field.to_string(),
                    template: template.to_string(),
                    step: step.to_string(),
                });
        }
        Ok(None)
    }
}

/// `deploy-eu.1` → `DEPLOY_EU_1`: uppercase, anything but ASCII letters and digits becomes `_`,
/// so that every step name and input key makes a portable variable name.
pub fn env_name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Identity of the running attempt, as passed to every step.
#[derive(Clone, Copy, Debug)]
pub struct StepIdentity<'a> {
    pub workflow_id: u64,
    pub step: &'a str,
    pub attempt_id: u64,
    pub attempt_number: u32,
}

/// The `BATON_*` variables of a step, in a stable order: identity first, then
/// `BATON_INPUT_<STEP>` per dependency output, then `BATON_PARAM_<KEY>` per workflow input.
/// Two names that normalise alike (`a-b`, `a_b`) collide; the later in name order wins, which
/// is at least the same on every agent.
pub fn step_env(identity: StepIdentity<'_>, values: TemplateValues<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "BATON_WORKFLOW_ID".to_string(),
            identity.workflow_id.to_string(),
        ),
        ("BATON_STEP".to_string(), identity.step.to_string()),
        // The fencing token: outside systems compare it to refuse a stale attempt's writes.
        ("BATON_ATTEMPT".to_string(), identity.attempt_id.to_string()),
        (
            "BATON_ATTEMPT_NUMBER".to_string(),
            identity.attempt_number.to_string(),
        ),
    ];
    for (step, output) in values.steps {
        env.push((
            format!("BATON_INPUT_{}", env_name_part(step)),
            output.clone(),
        ));
    }
    for (key, value) in values.input {
        env.push((format!("BATON_PARAM_{}", env_name_part(key)), value.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let input = BTreeMap::from([
            ("name".to_string(), "ada".to_string()),
            ("host".to_string(), "db.example".to_string()),
        ]);
        let steps = BTreeMap::from([
            ("build".to_string(), "artifact-42".to_string()),
            ("deploy.eu".to_string(), "ok".to_string()),
        ]);
        (input, steps)
    }

    #[test]
    fn fills_both_forms_with_or_without_spaces() {
        let (input, steps) = maps();
        let values = TemplateValues {
            namespace: Default::default(),
            secrets: &BTreeMap::new(),
            input: &input,
            steps: &steps,
        };
        assert_eq!(
            values
                .render("f", "--name {{ input.name }} --from={{steps.build.output}}")
                .unwrap(),
            "--name ada --from=artifact-42"
        );
        assert_eq!(
            values
                .render("f", "{{ steps.deploy.eu.output }}{{input.host}}")
                .unwrap(),
            "okdb.example"
        );
        assert_eq!(values.render("f", "plain").unwrap(), "plain");
    }

    #[test]
    fn other_braces_pass_through() {
        let (input, steps) = maps();
        let values = TemplateValues {
            namespace: Default::default(),
            secrets: &BTreeMap::new(),
            input: &input,
            steps: &steps,
        };
        for text in [
            "{{ user }}",
            "{\"a\": {{1}}}",
            "open {{ only",
            "{{ steps.build }}",
        ] {
            assert_eq!(values.render("f", text).unwrap(), text);
        }
        assert_eq!(
            values.render("f", "{{ x }} {{ input.name }}").unwrap(),
            "{{ x }} ada"
        );
    }

    #[test]
    fn unknown_names_fail_naming_the_template() {
        let (input, steps) = maps();
        let values = TemplateValues {
            namespace: Default::default(),
            secrets: &BTreeMap::new(),
            input: &input,
            steps: &steps,
        };
        let error = values
            .render("exec.command[2]", "x {{ input.nme }}")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "exec.command[2]: template \"{{ input.nme }}\" names unknown workflow input \"nme\""
        );
        let error = values
            .render("http.url", "{{steps.test.output}}")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "http.url: template \"{{steps.test.output}}\" names step \"test\", which is not a dependency of this step"
        );
    }

    #[test]
    fn params_read_the_input_under_their_own_name() {
        let (input, steps) = maps();
        let values = TemplateValues {
            namespace: Default::default(),
            secrets: &BTreeMap::new(),
            input: &input,
            steps: &steps,
        };
        assert_eq!(
            values.render("f", "deploy-{{ params.name }}").unwrap(),
            "deploy-ada"
        );
        assert_eq!(
            values
                .render("exec.command[0]", "{{params.env}}")
                .unwrap_err()
                .to_string(),
            "exec.command[0]: template \"{{params.env}}\" names unknown workflow parameter \"env\""
        );
    }

    #[test]
    fn env_names_are_uppercase_and_portable() {
        assert_eq!(env_name_part("deploy-eu.1"), "DEPLOY_EU_1");
        assert_eq!(env_name_part("Build"), "BUILD");
        assert_eq!(env_name_part("café"), "CAF_");
        let (input, steps) = maps();
        let env = step_env(
            StepIdentity {
                workflow_id: 42,
                step: "notify",
                attempt_id: 1001,
                attempt_number: 2,
            },
            TemplateValues {
                namespace: Default::default(),
                secrets: &BTreeMap::new(),
                input: &input,
                steps: &steps,
            },
        );
        let names: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("BATON_WORKFLOW_ID", "42"),
                ("BATON_STEP", "notify"),
                ("BATON_ATTEMPT", "1001"),
                ("BATON_ATTEMPT_NUMBER", "2"),
                ("BATON_INPUT_BUILD", "artifact-42"),
                ("BATON_INPUT_DEPLOY_EU", "ok"),
                ("BATON_PARAM_HOST", "db.example"),
                ("BATON_PARAM_NAME", "ada"),
            ]
        );
    }
}
