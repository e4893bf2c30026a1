//! Namespaces: every workflow, template, schedule and trigger belongs to one, and tokens act
//! only in the namespaces they are given (see `security::grants`).
//!
//! `default` always exists and is never recorded, so a state from before namespaces (every
//! object in `default`) encodes, decodes and hashes exactly as it did. Objects of another
//! namespace are told apart inside the state by their keys:
//! - templates, schedules and triggers are keyed by [`scoped_name`] (`team-a/nightly`; names
//!   never hold a `/`), and commands naming one carry that scoped name;
//! - idempotency keys are indexed by [`scoped_key`] (the namespace and the key joined by a
//!   newline, which a key, printable ASCII, never holds), so two teams may use the same key.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::Response;

/// The namespace of everything that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest namespace name (a DNS label, as in Kubernetes).
pub const NAMESPACE_LEN_MAX: usize = 63;

/// Namespaces besides `default` a cluster may hold.
pub const NAMESPACES_MAX: usize = 1_000;

/// Longest description of a namespace, in bytes.
pub const NAMESPACE_DESCRIPTION_MAX: usize = 512;

static DEFAULT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(DEFAULT_NAMESPACE));

/// `default`, shared: workflows of the default namespace hold this one allocation.
pub fn default_namespace() -> Arc<str> {
    DEFAULT.clone()
}

/// The namespace a request names: its own, or `default` when empty.
pub fn or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

pub fn is_default(namespace: &str) -> bool {
    namespace == DEFAULT_NAMESPACE
}

/// Whether `name` may name a namespace: 1-63 of `a-z 0-9 -`, starting with a letter and not
/// ending with `-`. The error names what is wrong.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a namespace name is empty".into());
    }
    if name.len() > NAMESPACE_LEN_MAX {
        return Err(format!(
            "namespace {name:?} is {} bytes long, more than {NAMESPACE_LEN_MAX}",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return Err(format!(
            "namespace {name:?} must start with a letter a-z and not end with -"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("namespace {name:?} has {bad:?}, outside a-z 0-9 -"));
    }
    Ok(())
}

/// The state's key for object `name` of `namespace`: the name itself in `default`,
/// `namespace/name` elsewhere.
pub fn scoped_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() || is_default(namespace) {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// A scoped name's namespace and name.
pub fn split_scoped(scoped: &str) -> (&str, &str) {
    scoped
        .split_once('/')
        .unwrap_or((DEFAULT_NAMESPACE, scoped))
}

/// The idempotency index's key for `key` submitted in `namespace`.
pub fn scoped_key(namespace: &str, key: &str) -> Arc<str> {
    if is_default(namespace) {
        Arc::from(key)
    } else {
        Arc::from(format!("{namespace}\n{key}"))
    }
}

/// A namespace other than `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created_ms: u64,
}

/// See [`super::Command::CreateNamespace`]. The API has checked the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNamespaceCommand {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// What a namespace holds (see [`ClusterState::namespace_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub workflows: u64,
    pub running: u64,
    pub templates: u64,
    pub schedules: u64,
    pub triggers: u64,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

impl ClusterState {
    pub fn namespace_exists(&self, name: &str) -> bool {
        is_default(name) || self.namespaces.contains_key(name)
    }

    /// The shared name of namespace `name`, if it exists (workflows hold it, so a namespace's
    /// name is allocated once).
    pub(super) fn namespace_arc(&self, name: &str) -> Option<Arc<str>> {
        if is_default(name) {
            return Some(default_namespace());
        }
        self.namespaces.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// Every namespace by name, `default` (which has no record) included.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, Option<&Namespace>)> {
        let mut all: Vec<(&str, Option<&Namespace>)> = self
            .namespaces
            .iter()
            .map(|(name, ns)| (&**name, Some(ns)))
            .collect();
        all.push((DEFAULT_NAMESPACE, None));
        all.sort_by_key(|(name, _)| *name);
        all.into_iter()
    }

    /// What each namespace holds, by a walk of the whole state: for listings and for a delete,
    /// both rare.
    pub fn namespace_usage(&self) -> BTreeMap<&str, Usage> {
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        for workflow in self.workflows.values() {
            let entry = usage.entry(&workflow.namespace).or_default();
            entry.workflows += 1;
            entry.running += u64::from(!workflow.state.is_terminal());
        }
        for key in self.templates.keys() {
            usage.entry(split_scoped(key).0).or_default().templates += 1;
        }
        for key in self.schedules.keys() {
            usage.entry(split_scoped(key).0).or_default().schedules += 1;
        }
        for key in self.triggers.keys() {
            usage.entry(split_scoped(key).0).or_default().triggers += 1;
        }
        usage
    }

    /// [`super::Command::CreateNamespace`].
    pub(super) fn create_namespace(&mut self, create: CreateNamespaceCommand) -> Response {
        if let Err(reason) = check_namespace_name(&create.name) {
            return Response::Rejected { reason };
        }
        if self.namespace_exists(&create.name) {
            return Response::NamespaceExists { name: create.name };
        }
        if self.namespaces.len() >= NAMESPACES_MAX {
            return Response::Rejected {
                reason: format!("the cluster holds {NAMESPACES_MAX} namespaces, its most"),
            };
        }
        self.namespaces.insert(
            Arc::from(create.name),
            Namespace {
                description: create.description,
                created_ms: self.now_ms,
            },
        );
        Response::Done
    }

    /// [`super::Command::DeleteNamespace`]: only an empty one, and never `default`.
    pub(super) fn delete_namespace(&mut self, name: &str) -> Response {
        if is_default(name) {
            return Response::Rejected {
                reason: "the default namespace cannot be deleted".into(),
            };
        }
        if !self.namespaces.contains_key(name) {
            return Response::NoNamespace { name: name.into() };
        }
        let usage = self
            .namespace_usage()
            .get(name)
            .copied()
            .unwrap_or_default();
        // A live token naming it would act in a namespace created again under the name.
        let tokens = self
            .tokens
            .values()
            .filter(|t| t.revoked_ms.is_none() && t.namespaces.contains_key(name))
            .count() as u64;
        if !usage.is_empty() || tokens > 0 {
            let held: Vec<String> = [
                (usage.workflows, "workflows"),
                (usage.templates, "templates"),
                (usage.schedules, "schedules"),
                (usage.triggers, "triggers"),
                (tokens, "live tokens"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            return Response::Rejected {
                reason: format!(
                    "namespace {name} is not empty: it holds {} (delete them, revoke the \
                     tokens, or wait for finished workflows' retention to end)",
                    held.join(", ")
                ),
            };
        }
        self.namespaces.remove(name);
        Response::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_labels() {
        for good in ["a", "team-a", "prod2", &"x".repeat(63)] {
            assert_eq!(check_namespace_name(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("Team", "start with a letter"),
            ("2team", "start with a letter"),
            ("team-", "not end with -"),
            ("team_a", "outside a-z 0-9 -"),
            ("team/a", "outside a-z 0-9 -"),
            (&"x".repeat(64), "more than 63"),
        ] {
            let err = check_namespace_name(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn scoped_names_and_keys_keep_default_unchanged_and_others_apart() {
        assert_eq!(scoped_name("default", "nightly"), "nightly");
        assert_eq!(scoped_name("", "nightly"), "nightly");
        assert_eq!(scoped_name("team-a", "nightly"), "team-a/nightly");
        assert_eq!(split_scoped("team-a/nightly"), ("team-a", "nightly"));
        assert_eq!(split_scoped("nightly"), ("default", "nightly"));
        assert_eq!(&*scoped_key("default", "k/1"), "k/1");
        // A default key that looks like another namespace's scoped key cannot be one: keys are
        // printable ASCII, the separator is a newline.
        assert_ne!(scoped_key("team-a", "k"), scoped_key("default", "team-a/k"));
        assert_eq!(&*scoped_key("team-a", "k"), "team-a\nk");
    }
}
