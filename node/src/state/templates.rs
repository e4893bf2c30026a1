//! Templates: registered, versioned workflow specs in the replicated state.
//!
//! Applying a spec under its name makes version 1, or a new version when the spec differs from
//! the latest; an equal spec keeps the latest. A run started from a template (a submit naming it,
//! or a schedule's fire) records the name and the version it ran. Runs of one version share
//! their decoded spec (`specs.rs`: equal bytes, one `Arc`). The last
//! [`TEMPLATE_VERSIONS_KEPT`] versions are kept.

use std::sync::Arc;

use baton_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::Response;
use super::namespaces::{or_default, scoped_name};

/// Versions kept per template; older ones are forgotten (their runs keep their number).
pub const TEMPLATE_VERSIONS_KEPT: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// Oldest first; the last is the latest.
    pub versions: Vec<TemplateVersion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub version: u32,
    /// A `baton.v1.WorkflowSpec`, encoded as a submit carries it.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    pub created_at_ms: u64,
}

impl Template {
    pub fn latest(&self) -> &TemplateVersion {
        self.versions.last().expect("a template has a version")
    }

    /// Version `version`, or the latest for 0.
    pub fn version(&self, version: u32) -> Option<&TemplateVersion> {
        match version {
            0 => self.versions.last(),
            v => self.versions.iter().find(|t| t.version == v),
        }
    }

    /// The API view of `version`; `with_steps`: the whole spec.
    pub fn to_proto(
        &self,
        namespace: &str,
        name: &str,
        version: &TemplateVersion,
        with_steps: bool,
    ) -> pb::Template {
        let mut spec = pb::WorkflowSpec::decode(version.spec.as_slice()).unwrap_or_default();
        if !with_steps {
            spec.steps.clear();
        }
        pb::Template {
            name: name.into(),
            version: version.version,
            spec: Some(spec),
            created_at_ms: version.created_at_ms,
            versions: self.versions.iter().map(|v| v.version).collect(),
            namespace: namespace.to_string(),
        }
    }
}

/// See [`super::Command::ApplyTemplate`]. The API has validated the spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyTemplateCommand {
    /// A `baton.v1.WorkflowSpec`; its name is the template's.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    /// Its namespace; empty: `default` (left out, so it encodes as before namespaces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Which template version a run was started from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Its scoped name (`team-a/deploy` outside `default`).
    pub name: Arc<str>,
    pub version: u32,
}

impl ClusterState {
    pub fn template(&self, name: &str) -> Option<&Arc<Template>> {
        self.templates.get(name)
    }

    /// The template with this scoped name, and the name as the state shares it.
    pub fn template_entry(&self, name: &str) -> Option<(&Arc<str>, &Arc<Template>)> {
        self.templates.get_key_value(name)
    }

    pub fn templates(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Template>)> {
        self.templates.iter()
    }

    /// [`super::Command::ApplyTemplate`].
    pub(super) fn apply_template(&mut self, apply: ApplyTemplateCommand) -> Response {
        let Ok(spec) = pb::WorkflowSpec::decode(apply.spec.as_slice()) else {
            return Response::Rejected {
                reason: "the template's spec does not decode".into(),
            };
        };
        if spec.name.is_empty() {
            return Response::Rejected {
                reason: "a template needs a name".into(),
            };
        }
        if !self.namespace_exists(or_default(&apply.namespace)) {
            return Response::Rejected {
                reason: format!("namespace {} does not exist", apply.namespace),
            };
        }
        let now_ms = self.now_ms;
        let key = scoped_name(&apply.namespace, &spec.name);
        let name: Arc<str> = match self.templates.get_key_value(key.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(key),
        };
        let template = self.templates.entry(name).or_insert_with(|| {
            Arc::new(Template {
                versions: Vec::new(),
            })
        });
        if let Some(latest) = template.versions.last()
            && latest.spec == apply.spec
        {
            return Response::TemplateApplied {
                version: latest.version,
                created: false,
            };
        }
        let template = Arc::make_mut(template);
        let version = template.versions.last().map_or(1, |v| v.version + 1);
        template.versions.push(TemplateVersion {
            version,
            spec: apply.spec,
            created_at_ms: now_ms,
        });
        if template.versions.len() > TEMPLATE_VERSIONS_KEPT {
            template.versions.remove(0);
        }
        Response::TemplateApplied {
            version,
            created: true,
        }
    }

    /// [`super::Command::DeleteTemplate`].
    pub(super) fn delete_template(&mut self, name: &str) -> Response {
        match self.templates.remove(name) {
            Some(_) => Response::Done,
            None => Response::NoTemplate { name: name.into() },
        }
    }
}
