//! What an agent says when it opens a session: the first message must be `Register`, every
//! field within its bounds, and the name one its certificate may use.

use baton_proto::limits::{
    AGENT_TASK_TYPES_MAX, LABEL_KEY_LEN_MAX, LABEL_VALUE_LEN_MAX, LABELS_MAX, NAME_LEN_MAX,
};
use baton_proto::v1 as pb;
use futures::StreamExt;
use tonic::{Status, Streaming};

use crate::api::inbound_error;
use crate::limits::{AGENT_SLOTS_MAX, REGISTER_WAIT_MAX, RUNNING_ATTEMPTS_PER_MESSAGE_MAX};

/// Reads a session's first message, which must be `Register`, within `REGISTER_WAIT_MAX`.
pub(super) async fn first_register(
    inbound: &mut Streaming<pb::AgentMessage>,
) -> Result<pb::Register, Status> {
    // A session that never registers must not hold its slot.
    let first = tokio::time::timeout(REGISTER_WAIT_MAX, inbound.next())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no register message within {REGISTER_WAIT_MAX:?} of opening the session"
            ))
        })?;
    let register = match first {
        Some(Ok(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(r)),
        })) => r,
        Some(Ok(_)) => {
            return Err(Status::failed_precondition(
                "the first message of a session must be register: heartbeats and reports come from registered agents only",
            ));
        }
        Some(Err(status)) => return Err(inbound_error(status)),
        None => return Err(Status::invalid_argument("empty session")),
    };
    Ok(register)
}

pub(super) fn validate_register(r: &pb::Register) -> Result<(), Status> {
    let name_ok = !r.name.is_empty()
        && r.name.len() <= NAME_LEN_MAX
        && r.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(Status::invalid_argument(format!(
            "register.name: {:?} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._-]",
            r.name
        )));
    }
    if r.slots == 0 || r.slots > AGENT_SLOTS_MAX {
        return Err(Status::invalid_argument(format!(
            "register.slots: {} is not in 1..={AGENT_SLOTS_MAX}",
            r.slots
        )));
    }
    if r.labels.len() > LABELS_MAX {
        return Err(Status::invalid_argument(format!(
            "register.labels: more than {LABELS_MAX}"
        )));
    }
    for (k, v) in &r.labels {
        if k.is_empty() || k.len() > LABEL_KEY_LEN_MAX || v.len() > LABEL_VALUE_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "register.labels: {k:?} is too long or empty"
            )));
        }
    }
    if r.task_types.len() > AGENT_TASK_TYPES_MAX {
        return Err(Status::invalid_argument(format!(
            "register.task_types: {} types, more than {AGENT_TASK_TYPES_MAX}",
            r.task_types.len()
        )));
    }
    if let Some(bad) = r.task_types.iter().find(|t| {
        t.is_empty()
            || t.len() > NAME_LEN_MAX
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    }) {
        return Err(Status::invalid_argument(format!(
            "register.task_types: {bad:?} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._/-]"
        )));
    }
    if r.namespaces.len() > 64 {
        return Err(Status::invalid_argument(format!(
            "register.namespaces: {} namespaces, more than 64",
            r.namespaces.len()
        )));
    }
    for namespace in &r.namespaces {
        crate::state::namespaces::check_namespace_name(namespace)
            .map_err(|e| Status::invalid_argument(format!("register.namespaces: {e}")))?;
    }
    check_running("register.running_attempts", &r.running_attempts)
}

/// An agent runs at most its slots: a longer list is a broken or hostile agent.
pub(super) fn check_running(field: &str, attempts: &[u64]) -> Result<(), Status> {
    if attempts.len() > RUNNING_ATTEMPTS_PER_MESSAGE_MAX {
        return Err(Status::invalid_argument(format!(
            "{field}: {} attempts, more than {RUNNING_ATTEMPTS_PER_MESSAGE_MAX}",
            attempts.len()
        )));
    }
    Ok(())
}

/// Whether an agent whose certificate names `certified` may register as `name`: the name
/// itself, or a member `certified.SUFFIX` of the pool it names. A certificate name with a dot
/// is refused outright: otherwise the certificate `gpu` could register as `gpu.a`, the name the
/// certificate `gpu.a` owns (`batond certs` refuses such names too).
pub fn agent_name_allowed(certified: &str, name: &str) -> bool {
    !certified.contains('.')
        && (name == certified
            || name
                .strip_prefix(certified)
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')))
}

#[cfg(test)]
mod tests {
    use super::agent_name_allowed;

    #[test]
    fn a_certificate_allows_its_name_and_its_pool_only() {
        assert!(agent_name_allowed("gpu", "gpu"));
        assert!(agent_name_allowed("gpu", "gpu.pod-7f9c"));
        assert!(!agent_name_allowed("gpu", "gpu."));
        assert!(!agent_name_allowed("gpu", "gpu2"));
        assert!(!agent_name_allowed("gpu", "gpu-b"));
        assert!(!agent_name_allowed("gpu", "cpu"));
        assert!(!agent_name_allowed("gpu.a", "gpu"));
        // A dotted certificate name would overlap another certificate's pool.
        assert!(!agent_name_allowed("gpu.a", "gpu.a"));
    }
}
