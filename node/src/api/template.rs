//! `baton.v1.TemplateService`: register, read and delete versioned workflow templates. Every
//! change is a command through Raft (see `state::templates`); a submit naming a template is
//! resolved here, in `workflow.rs`, with [`resolve`].

use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_proto::v1::template_service_server::TemplateService;
use baton_proto::validate::validate_spec;
use prost::Message;
use tonic::{Request, Response, Status};

use super::node_error;
use super::observed;
use crate::raft::RaftNode;
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
    name: &str,
    version: u32,
) -> Result<(pb::WorkflowSpec, TemplateRef), Status> {
    baton_proto::validate::check_name("template", "template name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    node.linearize().await.map_err(node_error)?;
    node.replica
        .read(|a| {
            let (key, template) = a.state.templates().find(|(k, _)| &***k == name)?;
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
        req: pb::ApplyTemplateRequest,
    ) -> Result<pb::ApplyTemplateResponse, Status> {
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
        let command = Command::ApplyTemplate(ApplyTemplateCommand {
            spec: spec.encode_to_vec(),
        });
        match self
            .node
            .propose_client(command)
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
        req: pb::GetTemplateRequest,
    ) -> Result<pb::GetTemplateResponse, Status> {
        checked_name(&req.name)?;
        if pb::ReadConsistency::try_from(req.consistency) != Ok(pb::ReadConsistency::Stale) {
            self.node.linearize().await.map_err(node_error)?;
        }
        let template = self
            .node
            .replica
            .read(|a| {
                let template = a.state.template(&req.name)?;
                let version = template.version(req.version)?;
                Some(template.to_proto(&req.name, version, true))
            })
            .ok_or_else(|| no_template(&req.name, req.version))?;
        Ok(pb::GetTemplateResponse {
            template: Some(template),
        })
    }

    async fn list_inner(
        &self,
        req: pb::ListTemplatesRequest,
    ) -> Result<pb::ListTemplatesResponse, Status> {
        if pb::ReadConsistency::try_from(req.consistency) != Ok(pb::ReadConsistency::Stale) {
            self.node.linearize().await.map_err(node_error)?;
        }
        let templates = self.node.replica.read(|a| {
            a.state
                .templates()
                .map(|(name, t)| t.to_proto(name, t.latest(), false))
                .collect()
        });
        Ok(pb::ListTemplatesResponse { templates })
    }

    async fn delete_inner(
        &self,
        req: pb::DeleteTemplateRequest,
    ) -> Result<pb::DeleteTemplateResponse, Status> {
        checked_name(&req.name)?;
        match self
            .node
            .propose_client(Command::DeleteTemplate {
                name: req.name.clone(),
            })
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
        observed("ApplyTemplate", self.apply_inner(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        observed("GetTemplate", self.get_inner(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        observed("ListTemplates", self.list_inner(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn delete_template(
        &self,
        request: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<pb::DeleteTemplateResponse>, Status> {
        observed("DeleteTemplate", self.delete_inner(request.into_inner()))
            .await
            .map(Response::new)
    }
}
