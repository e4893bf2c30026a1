//! `baton.v1.ScheduleService`: create, read, pause, delete, trigger and backfill schedules. Every
//! change is a command through Raft; the state machine decides (see `state::schedules`).

use std::sync::Arc;

use baton_proto::schedule::{BACKFILL_RUNS_MAX, Calendar, validate_schedule};
use baton_proto::v1 as pb;
use baton_proto::v1::schedule_service_server::ScheduleService;
use prost::Message;
use tonic::{Request, Response, Status};

use baton_security::TokenRole;

use super::{namespace_arg, namespace_exists, node_error, observed, stored_namespace};
use crate::raft::RaftNode;
use crate::security::grants::Grants;
use crate::state::namespaces::{scoped_name, split_scoped};
use crate::state::{
    BackfillScheduleCommand, Command, CreateScheduleCommand, PauseScheduleCommand,
    Response as Applied,
};

/// Nominal times a Get lists ahead.
const UPCOMING: usize = 5;

pub struct ScheduleServiceImpl {
    pub node: Arc<RaftNode>,
}

fn no_schedule(name: &str) -> Status {
    Status::not_found(format!("no schedule named {name:?}"))
}

/// The name field of a request: a schedule name, or INVALID_ARGUMENT naming `name`.
fn checked_name(name: &str) -> Result<(), Status> {
    baton_proto::validate::check_name("name", "schedule name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl ScheduleServiceImpl {
    async fn consistent(&self, consistency: i32) -> Result<(), Status> {
        match pb::ReadConsistency::try_from(consistency) {
            Ok(pb::ReadConsistency::Stale) => Ok(()),
            Ok(_) => self.node.linearize().await.map_err(node_error),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}"
            ))),
        }
    }

    async fn apply(&self, command: Command) -> Result<Applied, Status> {
        Ok(self
            .node
            .propose_client(command)
            .await
            .map_err(node_error)?
            .response)
    }

    async fn create_inner(
        &self,
        grants: Grants,
        req: pb::CreateScheduleRequest,
        actor: String,
    ) -> Result<pb::CreateScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.CreateSchedule",
            &namespace,
            TokenRole::Operator,
        )?;
        namespace_exists(&self.node, &namespace).await?;
        let mut spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: a schedule spec is required"))?;
        let mut params =
            validate_schedule(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let workflow_spec = if !spec.template.is_empty() {
            // Checked against the template now, for an error that names the parameter; each
            // run checks them again against the version it starts.
            let (template, _) = super::template::resolve(
                &self.node,
                &namespace,
                &spec.template,
                spec.template_version,
            )
            .await?;
            params = baton_proto::validate::resolve_params(&template, &spec.params)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(template)
        } else {
            spec.workflow.clone()
        };
        // Its runs' keys, rendered with its values: a key they render badly is refused now.
        if let Some(workflow_spec) = &workflow_spec {
            crate::state::keys::Keys::render(workflow_spec, &params).map_err(|e| {
                Status::invalid_argument(format!("spec.workflow.{}: {}", e.field, e.message))
            })?;
        }
        let workflow = spec
            .workflow
            .take()
            .map(|w| w.encode_to_vec())
            .unwrap_or_default();
        if !req.replace
            && self.node.replica.read(|a| {
                a.state
                    .schedule(&scoped_name(&namespace, &spec.name))
                    .is_some()
            })
        {
            return Err(Status::already_exists(format!(
                "schedule {:?} already exists: delete it first, or replace it (baton schedule \
                 create --replace)",
                spec.name
            )));
        }
        let command = Command::CreateSchedule(CreateScheduleCommand {
            spec: spec.encode_to_vec(),
            workflow,
            params,
            replace: req.replace,
            namespace: stored_namespace(namespace),
        });
        match self.apply(super::audited(actor, command)).await? {
            Applied::ScheduleCreated { created, next_ms } => Ok(pb::CreateScheduleResponse {
                created,
                next_fire_ms: next_ms,
            }),
            Applied::Rejected { reason } if reason.contains("already exists") => {
                Err(Status::already_exists(reason))
            }
            Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
            other => Err(Status::internal(format!("create schedule: {other:?}"))),
        }
    }

    async fn get_inner(
        &self,
        grants: Grants,
        req: pb::GetScheduleRequest,
    ) -> Result<pb::GetScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require("ScheduleService.GetSchedule", &namespace, TokenRole::Reader)?;
        checked_name(&req.name)?;
        self.consistent(req.consistency).await?;
        let schedule = self
            .node
            .replica
            .read(|a| {
                a.state
                    .schedule(&scoped_name(&namespace, &req.name))
                    .cloned()
            })
            .ok_or_else(|| no_schedule(&req.name))?;
        let view = schedule.to_proto(&namespace, true);
        let mut upcoming = Vec::new();
        if !schedule.paused
            && let (Some(next), Ok(calendar)) = (schedule.next_ms, Calendar::new(&schedule.spec()))
        {
            upcoming.push(next);
            while upcoming.len() < UPCOMING {
                match calendar.next_after(*upcoming.last().expect("one at least")) {
                    Some(t) => upcoming.push(t),
                    None => break,
                }
            }
        }
        Ok(pb::GetScheduleResponse {
            schedule: Some(view),
            upcoming_ms: upcoming,
        })
    }

    async fn list_inner(
        &self,
        grants: Grants,
        req: pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.ListSchedules",
            &namespace,
            TokenRole::Reader,
        )?;
        self.consistent(req.consistency).await?;
        let schedules = self.node.replica.read(|a| {
            a.state
                .schedules()
                .filter(|(key, _)| split_scoped(key).0 == namespace)
                .map(|(_, s)| s.to_proto(&namespace, false))
                .collect()
        });
        Ok(pb::ListSchedulesResponse { schedules })
    }

    async fn pause_inner(
        &self,
        grants: Grants,
        req: pb::PauseScheduleRequest,
        actor: String,
    ) -> Result<pb::PauseScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.PauseSchedule",
            &namespace,
            TokenRole::Operator,
        )?;
        checked_name(&req.name)?;
        let command = Command::PauseSchedule(PauseScheduleCommand {
            name: scoped_name(&namespace, &req.name),
            paused: req.paused,
        });
        match self.apply(super::audited(actor, command)).await? {
            Applied::ScheduleChanged { changed } => Ok(pb::PauseScheduleResponse { changed }),
            Applied::NoSchedule { .. } => Err(no_schedule(&req.name)),
            other => Err(Status::internal(format!("pause schedule: {other:?}"))),
        }
    }

    async fn delete_inner(
        &self,
        grants: Grants,
        req: pb::DeleteScheduleRequest,
        actor: String,
    ) -> Result<pb::DeleteScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.DeleteSchedule",
            &namespace,
            TokenRole::Operator,
        )?;
        checked_name(&req.name)?;
        match self
            .apply(super::audited(
                actor,
                Command::DeleteSchedule {
                    name: scoped_name(&namespace, &req.name),
                },
            ))
            .await?
        {
            Applied::ScheduleChanged { .. } => Ok(pb::DeleteScheduleResponse {}),
            Applied::NoSchedule { .. } => Err(no_schedule(&req.name)),
            other => Err(Status::internal(format!("delete schedule: {other:?}"))),
        }
    }

    async fn trigger_inner(
        &self,
        grants: Grants,
        req: pb::TriggerScheduleRequest,
        actor: String,
    ) -> Result<pb::TriggerScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.TriggerSchedule",
            &namespace,
            TokenRole::Operator,
        )?;
        checked_name(&req.name)?;
        match self
            .apply(super::audited(
                actor,
                Command::TriggerSchedule {
                    name: scoped_name(&namespace, &req.name),
                },
            ))
            .await?
        {
            Applied::ScheduleFired {
                workflow_id,
                nominal_ms,
                outcome,
            } => Ok(pb::TriggerScheduleResponse {
                workflow_id: workflow_id.map_or(0, |id| id.0),
                nominal_time_ms: nominal_ms,
                outcome,
            }),
            Applied::NoSchedule { .. } => Err(no_schedule(&req.name)),
            Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
            Applied::OverQuota(over) => {
                crate::metrics::quota_refused(&over);
                Err(Status::resource_exhausted(over.to_string()))
            }
            other => Err(Status::internal(format!("trigger schedule: {other:?}"))),
        }
    }

    async fn backfill_inner(
        &self,
        grants: Grants,
        req: pb::BackfillScheduleRequest,
        actor: String,
    ) -> Result<pb::BackfillScheduleResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "ScheduleService.BackfillSchedule",
            &namespace,
            TokenRole::Operator,
        )?;
        checked_name(&req.name)?;
        if req.from_ms == 0 || req.to_ms < req.from_ms {
            return Err(Status::invalid_argument(format!(
                "to_ms: the range [{}, {}] is empty (from_ms is at least 1, to_ms at least from_ms)",
                req.from_ms, req.to_ms
            )));
        }
        let command = Command::BackfillSchedule(BackfillScheduleCommand {
            name: scoped_name(&namespace, &req.name),
            from_ms: req.from_ms,
            to_ms: req.to_ms,
        });
        match self.apply(super::audited(actor, command)).await? {
            Applied::Backfilled {
                started,
                already_run,
                stopped,
            } => Ok(pb::BackfillScheduleResponse {
                stopped: stopped.map(|over| over.to_string()).unwrap_or_default(),
                started: started
                    .into_iter()
                    .map(|(nominal_ms, id)| pb::ScheduleRun {
                        workflow_id: id.0,
                        nominal_time_ms: nominal_ms,
                    })
                    .collect(),
                already_run,
            }),
            Applied::NoSchedule { .. } => Err(no_schedule(&req.name)),
            Applied::Rejected { reason } if reason.contains("backfill it in parts") => Err(
                Status::invalid_argument(format!("to_ms: {reason} (at most {BACKFILL_RUNS_MAX})")),
            ),
            Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
            Applied::OverQuota(over) => {
                crate::metrics::quota_refused(&over);
                Err(Status::resource_exhausted(over.to_string()))
            }
            other => Err(Status::internal(format!("backfill schedule: {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl ScheduleService for ScheduleServiceImpl {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "CreateSchedule",
            self.create_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed("GetSchedule", self.get_inner(grants, request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "ListSchedules",
            self.list_inner(grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "PauseSchedule",
            self.pause_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "DeleteSchedule",
            self.delete_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "TriggerSchedule",
            self.trigger_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn backfill_schedule(
        &self,
        request: Request<pb::BackfillScheduleRequest>,
    ) -> Result<Response<pb::BackfillScheduleResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "BackfillSchedule",
            self.backfill_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }
}
