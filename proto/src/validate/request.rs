//! Rules for the fields of a submit request beyond its spec: the idempotency key.

use super::SpecError;
use crate::limits::IDEMPOTENCY_KEY_LEN_MAX;

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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

    proptest! {
        #[test]
        fn idempotency_key_check_never_panics(key in ".{0,200}") {
            let _ = validate_idempotency_key(&key);
        }
    }
}
