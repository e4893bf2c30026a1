//! Webhook triggers: a name, the template a signed delivery starts, and the secret deliveries
//! are signed with. The HTTP listener checks a delivery's signature against the secret in this
//! node's applied state and submits the run with a key made of the trigger's name and the
//! delivery id, so a redelivery is deduplicated by the ordinary idempotency window.
//!
//! The secret is replicated (every node must check signatures), so it sits in the Raft log,
//! snapshots and backups, as a Kubernetes Secret sits in etcd; no API returns it and no `Debug`
//! output shows it.

use std::sync::Arc;

use baton_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::Response;
use super::namespaces::{or_default, scoped_name};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// A `baton.v1.TriggerSpec`, validated by the API.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    pub secret: String,
    pub created_at_ms: u64,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("spec", &self.spec)
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

impl Trigger {
    pub fn spec(&self) -> pb::TriggerSpec {
        pb::TriggerSpec::decode(self.spec.as_slice()).unwrap_or_default()
    }

    /// The API view: never the secret.
    pub fn to_proto(&self, namespace: &str) -> pb::Trigger {
        pb::Trigger {
            spec: Some(self.spec()),
            created_at_ms: self.created_at_ms,
            namespace: namespace.to_string(),
        }
    }
}

/// See [`super::Command::CreateTrigger`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTriggerCommand {
    /// A `baton.v1.TriggerSpec`; its name is the trigger's.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    pub secret: String,
    pub replace: bool,
    /// Its namespace; empty: `default` (left out, so it encodes as before namespaces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl std::fmt::Debug for CreateTriggerCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTriggerCommand")
            .field("spec", &self.spec)
            .field("secret", &"<redacted>")
            .field("replace", &self.replace)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl ClusterState {
    pub fn trigger(&self, name: &str) -> Option<&Arc<Trigger>> {
        self.triggers.get(name)
    }

    pub fn triggers(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Trigger>)> {
        self.triggers.iter()
    }

    /// [`super::Command::CreateTrigger`].
    pub(super) fn create_trigger(&mut self, create: CreateTriggerCommand) -> Response {
        let Ok(spec) = pb::TriggerSpec::decode(create.spec.as_slice()) else {
            return Response::Rejected {
                reason: "the trigger's spec does not decode".into(),
            };
        };
        if spec.name.is_empty() {
            return Response::Rejected {
                reason: "a trigger needs a name".into(),
            };
        }
        if !self.namespace_exists(or_default(&create.namespace)) {
            return Response::Rejected {
                reason: format!("namespace {} does not exist", create.namespace),
            };
        }
        let key = scoped_name(&create.namespace, &spec.name);
        let exists = self.triggers.contains_key(key.as_str());
        if exists && !create.replace {
            return Response::TriggerExists { name: spec.name };
        }
        self.triggers.insert(
            Arc::from(key),
            Arc::new(Trigger {
                spec: create.spec,
                secret: create.secret,
                created_at_ms: self.now_ms,
            }),
        );
        Response::TriggerCreated { created: !exists }
    }

    /// [`super::Command::DeleteTrigger`].
    pub(super) fn delete_trigger(&mut self, name: &str) -> Response {
        match self.triggers.remove(name) {
            Some(_) => Response::Done,
            None => Response::NoTrigger { name: name.into() },
        }
    }
}
