//! The one error type of validation: [`SpecError`], a field path inside the spec and a
//! lowercase message.

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
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
