//! `baton.v1.TemplateService`: register, read and delete versioned workflow templates. Every
//! change is a command through Raft (see `state::templates`); a submit naming a template is
//! resolved here, in `workflow.rs`, with [`resolve`].

use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_proto::v1::template_service_server::TemplateService;
use baton_proto::validate::validate_spec;
use prost::Message;
use tonic::{Request, Response, Status};

use baton_security::TokenRole;

use super::{namespace_arg, namespace_exists, node_error, observed, stored_namespace};
use crate::raft::RaftNode;
use crate::security::grants::Grants;
use crate::state::namespaces::{scoped_name, split_scoped};
use crate::state::{ApplyTemplateCommand, Command, Response as Applied, TemplateRef};

pub struct TemplateServiceImpl {
    pub node: Arc<RaftNode>,
}

fn checked_name(name: &str) -> Result<(), Status> {
    baton_proto::validate::check_name("name", "template name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn no_template(name: &str, version: u32) -> Status {
    match version {
        0 => Status::not_found(format!("no template named {name:?}")),
        v => Status::not_found(format!("template {name:?} has no version {v}")),
    }
}

/// The spec of template `name` at `version` (0: the latest), read after a linearizable read so
/// that a version applied a moment ago is seen: the spec and the reference a submit records.
pub async fn resolve(
    node: &RaftNode,
    namespace: &str,
    name: &str,
    version: u32,
) -> Result<(pb::WorkflowSpec, TemplateRef), Status> {
    baton_proto::validate::check_name("template", "template name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    node.linearize().await.map_err(node_error)?;
    let key = scoped_name(namespace, name);
    node.replica
        .read(|a| {
            let (key, template) = a.state.template_entry(&key)?;
            let found = template.version(version)?;
            let spec = pb::WorkflowSpec::decode(found.spec.as_slice()).ok()?;
            Some((
                spec,
                TemplateRef {
                    name: key.clone(),
                    version: found.version,
                },
            ))
        })
        .ok_or_else(|| no_template(name, version))
}

impl TemplateServiceImpl {
    async fn apply_inner(
        &self,
        grants: Grants,
        req: pb::ApplyTemplateRequest,
        actor: String,
    ) -> Result<pb::ApplyTemplateResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "TemplateService.ApplyTemplate",
            &namespace,
            TokenRole::Submitter,
        )?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: a workflow spec is required"))?;
        validate_spec(&spec).map_err(|e| {
            Status::invalid_argument(if e.field.is_empty() {
                format!("spec: {}", e.message)
            } else {
                format!("spec.{}: {}", e.field, e.message)
            })
        })?;
        namespace_exists(&self.node, &namespace).await?;
        let command = Command::ApplyTemplate(ApplyTemplateCommand {
            spec: spec.encode_to_vec(),
            namespace: stored_namespace(namespace),
        });
        match self
            .node
            .propose_client(super::audited(actor, command))
            .await
            .map_err(node_error)?
            .response
        {
            Applied::TemplateApplied { version, created } => {
                Ok(pb::ApplyTemplateResponse { version, created })
            }
            Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
            other => Err(Status::internal(format!("apply template: {other:?}"))),
        }
    }

    async fn get_inner(
        &self,
        grants: Grants,
        req: pb::GetTemplateRequest,
    ) -> Result<pb::GetTemplateResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require("TemplateService.GetTemplate", &namespace, TokenRole::Reader)?;
        checked_name(&req.name)?;
        if pb::ReadConsistency::try_from(req.consistency) != Ok(pb::ReadConsistency::Stale) {
            self.node.linearize().await.map_err(node_error)?;
        }
        let template = self
            .node
            .replica
            .read(|a| {
                let template = a.state.template(&scoped_name(&namespace, &req.name))?;
                let version = template.version(req.version)?;
                Some(template.to_proto(&namespace, &req.name, version, true))
            })
            .ok_or_else(|| no_template(&req.name, req.version))?;
        Ok(pb::GetTemplateResponse {
            template: Some(template),
        })
    }

    async fn list_inner(
        &self,
        grants: Grants,
        req: pb::ListTemplatesRequest,
    ) -> Result<pb::ListTemplatesResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "TemplateService.ListTemplates",
            &namespace,
            TokenRole::Reader,
        )?;
        if pb::ReadConsistency::try_from(req.consistency) != Ok(pb::ReadConsistency::Stale) {
            self.node.linearize().await.map_err(node_error)?;
        }
        let templates = self.node.replica.read(|a| {
            a.state
                .templates()
                .filter_map(|(key, t)| {
                    let (of, name) = split_scoped(key);
                    (of == namespace).then(|| t.to_proto(of, name, t.latest(), false))
                })
                .collect()
        });
        Ok(pb::ListTemplatesResponse { templates })
    }

    async fn delete_inner(
        &self,
        grants: Grants,
        req: pb::DeleteTemplateRequest,
        actor: String,
    ) -> Result<pb::DeleteTemplateResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "TemplateService.DeleteTemplate",
            &namespace,
            TokenRole::Submitter,
        )?;
        checked_name(&req.name)?;
        match self
            .node
            .propose_client(super::audited(
                actor,
                Command::DeleteTemplate {
                    name: scoped_name(&namespace, &req.name),
                },
            ))
            .await
            .map_err(node_error)?
            .response
        {
            Applied::Done => Ok(pb::DeleteTemplateResponse {}),
            Applied::NoTemplate { .. } => Err(no_template(&req.name, 0)),
            other => Err(Status::internal(format!("delete template: {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl TemplateService for TemplateServiceImpl {
    async fn apply_template(
        &self,
        request: Request<pb::ApplyTemplateRequest>,
    ) -> Result<Response<pb::ApplyTemplateResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "ApplyTemplate",
            self.apply_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed("GetTemplate", self.get_inner(grants, request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "ListTemplates",
            self.list_inner(grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn delete_template(
        &self,
        request: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<pb::DeleteTemplateResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "DeleteTemplate",
            self.delete_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }
}
