//! `{{ secrets.NAME }}` references: a spec names secrets, an agent resolves them from a source
//! of its own (a file `NAME` in a folder, or a variable), so a name must be one file name and
//! never a path.

use super::SpecError;
use crate::text::quoted;

/// Whether `name` may name a secret: 1-128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The names `text` refers to as `{{ secrets.NAME }}` (spaces inside the braces optional).
pub fn secret_references(text: &str) -> impl Iterator<Item = &str> {
    text.split("{{").skip(1).filter_map(|rest| {
        let (expression, _) = rest.split_once("}}")?;
        expression.trim().strip_prefix("secrets.")
    })
}

/// Every secret `text` (at `field` of step `step`) names must have a valid name.
pub(super) fn check_secret_references(
    field: &str,
    step: &str,
    text: &str,
) -> Result<(), SpecError> {
    for name in secret_references(text) {
        if !valid_secret_name(name) {
            return Err(SpecError::new(
                field,
                format!(
                    "step {step} names secret {}: a secret name is 1-128 of A-Z a-z 0-9 . _ - \
                     (the file an agent reads it from)",
                    quoted(name)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_and_names_checked() {
        let text =
            "curl -H 'Authorization: {{ secrets.api-token }}' {{secrets.host}} {{ input.x }}";
        assert_eq!(
            secret_references(text).collect::<Vec<_>>(),
            ["api-token", "host"]
        );
        assert!(check_secret_references("f", "s", text).is_ok());
        let bad = check_secret_references("steps[0].exec.env[\"T\"]", "s", "{{ secrets.../x }}")
            .unwrap_err();
        assert_eq!(bad.field, "steps[0].exec.env[\"T\"]");
        assert!(
            bad.message.contains("names secret \"../x\""),
            "{}",
            bad.message
        );
        for name in ["", ".", "..", "a/b", &"x".repeat(129)] {
            assert!(!valid_secret_name(name), "{name:?}");
        }
    }
}
