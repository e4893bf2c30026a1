//! WorkflowService: Submit, Get, List, Cancel (Watch arrives with the scheduler).

use std::sync::Arc;

use baton_proto::limits::{
    LABEL_KEY_LEN_MAX, LABEL_VALUE_LEN_MAX, LABELS_MAX, LIST_PAGE_SIZE_DEFAULT, LIST_PAGE_SIZE_MAX,
    NAME_LEN_MAX, SUBMIT_BATCH_BYTES_MAX, SUBMIT_BATCH_ITEMS_MAX,
};
use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_server::WorkflowService;
use baton_proto::validate::{SpecError, resolve_params, validate_idempotency_key, validate_spec};
use prost::Message;
use tonic::{Request, Response, Status};

use baton_security::TokenRole;

use super::{namespace_arg, namespace_exists, node_error, observed, stored_namespace};
use crate::faults;
use crate::limits::{CANCEL_REASON_BYTES_MAX, LIST_FILTER_STATES_MAX, WATCHES_MAX};
use crate::raft::{RaftNode, outcome};
use crate::security::grants::{self, Grants};
use crate::state::outcome::{Cancelled, Paused, Retried, Signalled, Submitted};
use crate::state::{
    CancelCommand, Command, ListQuery, PauseCommand, Response as Applied, RetryCommand,
    SignalCommand, StepIndex, SubmitCommand, WorkflowId, WorkflowState,
};
use crate::storage::events::NotHeld;
use baton_proto::status::EVENTS_FROM_METADATA;

type WatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WorkflowEvent, Status>> + Send>>;

pub struct WorkflowServiceImpl {
    pub node: Arc<RaftNode>,
}

/// Idempotency keys beginning with this are webhook deliveries' (`api::trigger`): a caller's
/// submit cannot take one, so none can claim a delivery's run in advance.
pub const DELIVERY_KEY_PREFIX: &str = "trigger:";

fn not_reserved(field: &str, key: &str) -> Result<(), Status> {
    if key.starts_with(DELIVERY_KEY_PREFIX) {
        return Err(Status::invalid_argument(format!(
            "{field}: keys beginning with {DELIVERY_KEY_PREFIX:?} are reserved for webhook \
             deliveries"
        )));
    }
    Ok(())
}

impl WorkflowServiceImpl {
    /// A webhook delivery's submit (`api::trigger`): as [`WorkflowService::submit`], with the
    /// delivery's key in the reserved `trigger:` space; `actor` names the trigger.
    pub async fn submit_delivery(
        &self,
        request: pb::SubmitRequest,
        actor: String,
    ) -> Result<pb::SubmitResponse, Status> {
        observed("Submit", self.submit_inner(&Grants::All, request, actor)).await
    }

    /// Checks the caller may do what `needed` may in workflow `id`'s namespace. Cluster-wide
    /// tokens (and `--insecure` calls) were decided by the method table already. A workflow of
    /// a namespace the caller may not read answers NOT_FOUND, as one that does not exist.
    async fn check_workflow(
        &self,
        grants: &Grants,
        method: &str,
        id: WorkflowId,
        needed: TokenRole,
    ) -> Result<(), Status> {
        if !matches!(grants, Grants::Namespaces(_)) {
            return Ok(());
        }
        let namespace_of = || {
            self.node
                .replica
                .read(|a| a.state.workflow(id).map(|w| w.namespace.clone()))
        };
        let mut namespace = namespace_of();
        if namespace.is_none() {
            // Submitted a moment ago through another node, perhaps.
            self.node.linearize().await.map_err(node_error)?;
            namespace = namespace_of();
        }
        // Nothing about a workflow it may not read, not even when it was purged.
        let Some(namespace) = namespace else {
            return Err(Status::not_found(format!("workflow {id} not found")));
        };
        if !grants.allows(&namespace, TokenRole::Reader) {
            return Err(Status::not_found(format!("workflow {id} not found")));
        }
        grants.require(method, &namespace, needed)
    }

    /// Waits until a read here sees every write acknowledged before it, unless the caller chose
    /// a stale read.
    async fn consistent(&self, consistency: i32) -> Result<(), Status> {
        match pb::ReadConsistency::try_from(consistency) {
            Ok(pb::ReadConsistency::Stale) => Ok(()),
            Ok(_) => self.node.linearize().await.map_err(node_error),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}"
            ))),
        }
    }

    async fn submit_inner(
        &self,
        grants: &Grants,
        mut req: pb::SubmitRequest,
        actor: String,
    ) -> Result<pb::SubmitResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require("WorkflowService.Submit", &namespace, TokenRole::Submitter)?;
        namespace_exists(&self.node, &namespace).await?;
        let mut template = None;
        if !req.template.is_empty() {
            if req.spec.is_some() {
                return Err(Status::invalid_argument(
                    "template: a submit names a spec or a template, not both",
                ));
            }
            let (spec, reference) = super::template::resolve(
                &self.node,
                &namespace,
                &req.template,
                req.template_version,
            )
            .await?;
            req.spec = Some(spec);
            template = Some(reference);
        } else if req.template_version != 0 {
            return Err(Status::invalid_argument(
                "template_version: set without a template",
            ));
        }
        let mut command =
            submit_command(req, actor).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Command::Submit(submit) = &mut command {
            submit.template = template;
        }
        let proposed = self
            .node
            .propose_client(command)
            .await
            .map_err(node_error)?;
        submitted(proposed.index, proposed.response)?.map_err(Refused::into_status)
    }

    /// Every item checked before any is proposed; then all in one entry.
    async fn submit_batch_inner(
        &self,
        grants: &Grants,
        req: pb::SubmitBatchRequest,
        actor: String,
    ) -> Result<pb::SubmitBatchResponse, Status> {
        if req.submits.len() > SUBMIT_BATCH_ITEMS_MAX {
            return Err(Status::invalid_argument(format!(
                "submits: {} items, more than {SUBMIT_BATCH_ITEMS_MAX}; split the batch",
                req.submits.len()
            )));
        }
        let bytes: usize = req
            .submits
            .iter()
            .map(|item| {
                baton_proto::limits::submit_batch_item_bytes(
                    item.spec.as_ref().map_or(0, Message::encoded_len),
                    &item.idempotency_key,
                    &item.params,
                )
            })
            .sum();
        if bytes > SUBMIT_BATCH_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "submits: {bytes} bytes of specs, keys and parameters, more than \
                 {SUBMIT_BATCH_BYTES_MAX}; split the batch"
            )));
        }
        if req.submits.is_empty() {
            return Ok(pb::SubmitBatchResponse::default());
        }
        match self.node.commands_per_entry_max {
            1 => {
                return Err(Status::failed_precondition(
                    "SubmitBatch is off: this node runs with --max-commands-per-entry 1 (no \
                     batched log entries); submit one at a time",
                ));
            }
            max if req.submits.len() > max => {
                return Err(Status::invalid_argument(format!(
                    "submits: {} items, more than this node's --max-commands-per-entry {max}",
                    req.submits.len()
                )));
            }
            _ => {}
        }
        let mut namespaces = std::collections::BTreeSet::new();
        for (i, item) in req.submits.iter().enumerate() {
            namespaces.insert(namespace_arg(
                &format!("submits[{i}].namespace"),
                &item.namespace,
            )?);
        }
        for namespace in &namespaces {
            grants.require(
                "WorkflowService.SubmitBatch",
                namespace,
                TokenRole::Submitter,
            )?;
            namespace_exists(&self.node, namespace).await?;
        }
        let commands = req
            .submits
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                if !item.template.is_empty() || item.template_version != 0 {
                    return Err(Status::invalid_argument(format!(
                        "submits[{i}].template: a batch takes specs; submit a template alone"
                    )));
                }
                submit_command(item, actor.clone()).map_err(|e| {
                    Status::invalid_argument(format!("submits[{i}].{}", request_path(&e)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (index, responses) = self
            .node
            .propose_client_batch(commands)
            .await
            .map_err(node_error)?;
        let results = responses
            .into_iter()
            .map(|response| {
                let outcome = match submitted(index, response)? {
                    Ok(response) => pb::submit_batch_result::Outcome::Submitted(response),
                    Err(refused) => pb::submit_batch_result::Outcome::Rejected(refused.message()),
                };
                Ok(pb::SubmitBatchResult {
                    outcome: Some(outcome),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(pb::SubmitBatchResponse { results })
    }

    async fn get_inner(
        &self,
        grants: Grants,
        req: pb::GetRequest,
    ) -> Result<pb::GetResponse, Status> {
        self.consistent(req.consistency).await?;
        let id = WorkflowId(req.workflow_id);
        self.check_workflow(&grants, "WorkflowService.Get", id, TokenRole::Reader)
            .await?;
        let workflow = self.node.replica.read(|a| {
            let workflow = a.state.workflow(id)?;
            let attempts_of = Some(req.attempts_of_step.as_str()).filter(|s| !s.is_empty());
            let mut view = workflow.to_proto(true, attempts_of);
            faults::serve(&mut view);
            for (i, step) in view.steps.iter_mut().enumerate() {
                step.pending_reason = a
                    .state
                    .pending_reason(workflow, StepIndex(i as u32))
                    .unwrap_or_default();
            }
            Some(view)
        });
        let workflow = workflow.ok_or_else(|| self.missing(id))?;
        Ok(pb::GetResponse {
            workflow: Some(workflow),
        })
    }

    /// NOT_FOUND for a workflow that is not in the state, saying so when it was purged.
    fn missing(&self, id: WorkflowId) -> Status {
        self.node.replica.read(|a| missing(&a.state, id))
    }

    async fn get_history_inner(
        &self,
        grants: Grants,
        req: pb::GetHistoryRequest,
    ) -> Result<pb::GetHistoryResponse, Status> {
        self.consistent(req.consistency).await?;
        let id = WorkflowId(req.workflow_id);
        self.check_workflow(&grants, "WorkflowService.GetHistory", id, TokenRole::Reader)
            .await?;
        let events = self
            .node
            .replica
            .read(|a| a.state.history(id))
            .ok_or_else(|| self.missing(id))?;
        Ok(pb::GetHistoryResponse { events })
    }

    async fn list_inner(
        &self,
        grants: Grants,
        req: pb::ListRequest,
    ) -> Result<pb::ListResponse, Status> {
        let namespaces = grants::scope(
            &grants,
            "WorkflowService.List",
            &namespace_arg_or_all(&req.namespace, req.all_namespaces)?,
            req.all_namespaces,
        )?;
        let limit = match req.page_size as usize {
            0 => LIST_PAGE_SIZE_DEFAULT,
            n if n > LIST_PAGE_SIZE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "page_size: {n} is more than {LIST_PAGE_SIZE_MAX}"
                )));
            }
            n => n,
        };
        let before = if req.page_token.is_empty() {
            None
        } else {
            let id = req.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token: {:?} is not a page token",
                    req.page_token
                ))
            })?;
            Some(WorkflowId(id))
        };
        check_list_filters(&req)?;
        let mut states = Vec::with_capacity(req.states.len());
        for (i, &raw) in req.states.iter().enumerate() {
            states.push(match pb::WorkflowState::try_from(raw) {
                Ok(pb::WorkflowState::Running) => WorkflowState::Running,
                Ok(pb::WorkflowState::Succeeded) => WorkflowState::Succeeded,
                Ok(pb::WorkflowState::Failed) => WorkflowState::Failed,
                Ok(pb::WorkflowState::Cancelled) => WorkflowState::Cancelled,
                Ok(pb::WorkflowState::TimedOut) => WorkflowState::TimedOut,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "states[{i}]: {raw} is not a workflow state"
                    )));
                }
            });
        }
        self.consistent(req.consistency).await?;
        let query = ListQuery {
            states,
            name_prefix: req.name_prefix,
            labels: req.labels,
            before,
            limit,
            schedule: (!req.schedule.is_empty()).then_some(req.schedule),
            namespaces,
        };
        let (page, next) = self.node.replica.read(|a| a.state.list(&query));
        Ok(pb::ListResponse {
            workflows: page.iter().map(|w| w.to_proto(false, None)).collect(),
            next_page_token: next.map(|id| id.0.to_string()).unwrap_or_default(),
        })
    }

    async fn cancel_inner(
        &self,
        grants: Grants,
        req: pb::CancelRequest,
        actor: String,
    ) -> Result<pb::CancelResponse, Status> {
        if req.reason.len() > CANCEL_REASON_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "reason: {} bytes, more than {CANCEL_REASON_BYTES_MAX}",
                req.reason.len()
            )));
        }
        let id = WorkflowId(req.workflow_id);
        self.check_workflow(&grants, "WorkflowService.Cancel", id, TokenRole::Submitter)
            .await?;
        let cancel = CancelCommand {
            workflow_id: id,
            reason: req.reason,
            actor,
        };
        let decided = self
            .node
            .propose_client_for(cancel)
            .await
            .map_err(node_error)?;
        match decided.outcome {
            Cancelled::Workflow(state) => Ok(pb::CancelResponse {
                state: state.to_proto() as i32,
            }),
            Cancelled::NotFound => Err(self.missing(id)),
        }
    }
}

impl WorkflowServiceImpl {
    async fn pause_inner(
        &self,
        grants: Grants,
        req: pb::PauseRequest,
        paused: bool,
        actor: String,
    ) -> Result<pb::PauseResponse, Status> {
        let id = WorkflowId(req.workflow_id);
        let method = match paused {
            true => "WorkflowService.Pause",
            false => "WorkflowService.Resume",
        };
        self.check_workflow(&grants, method, id, TokenRole::Submitter)
            .await?;
        let decided = self
            .node
            .propose_client_for(PauseCommand {
                workflow_id: id,
                paused,
                actor,
            })
            .await
            .map_err(node_error)?;
        match decided.outcome {
            Paused::Changed(changed) => Ok(pb::PauseResponse { changed }),
            Paused::NotFound => Err(self.missing(id)),
            Paused::Refused(reason) => Err(Status::failed_precondition(reason)),
        }
    }

    async fn signal_inner(
        &self,
        grants: Grants,
        req: pb::SignalRequest,
        actor: String,
    ) -> Result<pb::SignalResponse, Status> {
        use baton_proto::limits::OUTPUT_BYTES_MAX;
        if req.step.is_empty() || req.step.len() > NAME_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "step: a step name is 1..={NAME_LEN_MAX} bytes"
            )));
        }
        if req.data.len() > OUTPUT_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "data: {} bytes, more than {OUTPUT_BYTES_MAX} (it becomes the step's output)",
                req.data.len()
            )));
        }
        let id = WorkflowId(req.workflow_id);
        self.check_workflow(&grants, "WorkflowService.Signal", id, TokenRole::Operator)
            .await?;
        let decided = self
            .node
            .propose_client_for(SignalCommand {
                workflow_id: id,
                step: req.step,
                data: req.data,
                reject: req.reject,
                actor,
            })
            .await
            .map_err(node_error)?;
        match decided.outcome {
            Signalled::Done => Ok(pb::SignalResponse {}),
            Signalled::NotFound => Err(self.missing(id)),
            Signalled::Refused(reason) => Err(Status::failed_precondition(reason)),
        }
    }

    async fn retry_inner(
        &self,
        grants: Grants,
        req: pb::RetryRequest,
        actor: String,
    ) -> Result<pb::RetryResponse, Status> {
        if req.from_step.len() > NAME_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "from_step: {} bytes, more than {NAME_LEN_MAX}",
                req.from_step.len()
            )));
        }
        let id = WorkflowId(req.workflow_id);
        self.check_workflow(&grants, "WorkflowService.Retry", id, TokenRole::Submitter)
            .await?;
        let decided = self
            .node
            .propose_client_for(RetryCommand {
                workflow_id: id,
                from_step: req.from_step,
                actor,
            })
            .await
            .map_err(node_error)?;
        match decided.outcome {
            Retried::Steps(steps, state) => {
                tracing::info!(workflow = %id, steps = steps.join(","), "workflow retried");
                Ok(pb::RetryResponse {
                    steps,
                    state: state.to_proto() as i32,
                })
            }
            Retried::NotFound => Err(self.missing(id)),
            Retried::Refused(reason) => Err(Status::failed_precondition(reason)),
            Retried::OverQuota(over) => {
                crate::metrics::quota_refused(&over);
                Err(Status::resource_exhausted(over.to_string()))
            }
        }
    }
}

/// A checked submit request as the command to propose. The error names the field as
/// `baton_proto::validate` paths it: inside the spec (`steps[0].name`; empty for the spec as a
/// whole), or `spec` / `idempotency_key` / `params["NAME"]` of the request.
fn submit_command(req: pb::SubmitRequest, actor: String) -> Result<Command, Invalid> {
    let spec = req.spec.ok_or_else(|| {
        Invalid::Request(SpecError {
            field: "spec".into(),
            message: "missing".into(),
        })
    })?;
    validate_spec(&spec).map_err(Invalid::Spec)?;
    validate_idempotency_key(&req.idempotency_key).map_err(Invalid::Request)?;
    let params = resolve_params(&spec, &req.params).map_err(Invalid::Request)?;
    // A key that renders to nothing or too much with these values: refused here, by its field.
    crate::state::keys::Keys::render(&spec, &params).map_err(Invalid::Spec)?;
    Ok(Command::Submit(SubmitCommand {
        actor,
        spec: spec.encode_to_vec(),
        idempotency_key: req.idempotency_key,
        params,
        template: None,
        namespace: stored_namespace(crate::state::namespaces::or_default(&req.namespace).into()),
    }))
}

/// A submit request that breaks a rule.
enum Invalid {
    /// A field of the spec (paths relative to the spec).
    Spec(SpecError),
    /// A field of the request itself.
    Request(SpecError),
}

impl std::fmt::Display for Invalid {
    /// As a Submit answers: `steps[0].name: ...`, `spec: missing`, `idempotency_key: ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Spec(e) | Invalid::Request(e) => e.fmt(f),
        }
    }
}

/// The field's path from the request: `spec.steps[0].name: ...`, `spec: too large`.
fn request_path(invalid: &Invalid) -> String {
    match invalid {
        Invalid::Spec(e) if e.field.is_empty() => format!("spec: {}", e.message),
        Invalid::Spec(e) => format!("spec.{}: {}", e.field, e.message),
        Invalid::Request(e) => e.to_string(),
    }
}

/// The answer to one applied submit, committed at `index`: the workflow, or (inside) the reason
/// apply refused it.
/// Why the state machine wrote nothing for a submit.
enum Refused {
    /// FAILED_PRECONDITION: the state cannot take it.
    Rejected(String),
    /// RESOURCE_EXHAUSTED: a quota of its namespace.
    OverQuota(crate::state::OverQuota),
}

impl Refused {
    fn message(self) -> String {
        match self {
            Refused::Rejected(reason) => reason,
            Refused::OverQuota(over) => over.to_string(),
        }
    }

    fn into_status(self) -> Status {
        match self {
            Refused::Rejected(reason) => Status::failed_precondition(reason),
            Refused::OverQuota(over) => Status::resource_exhausted(over.to_string()),
        }
    }
}

fn submitted(index: u64, response: Applied) -> Result<Result<pb::SubmitResponse, Refused>, Status> {
    match outcome::<Submitted>(response).map_err(node_error)? {
        Submitted::Workflow {
            workflow_id,
            created,
        } => {
            if created {
                tracing::info!(workflow = %workflow_id, index, "workflow submitted");
            }
            Ok(Ok(pb::SubmitResponse {
                workflow_id: workflow_id.0,
                created,
                log_index: index,
            }))
        }
        Submitted::Rejected(reason) => Ok(Err(Refused::Rejected(reason))),
        Submitted::OverQuota(over) => {
            crate::metrics::quota_refused(&over);
            Ok(Err(Refused::OverQuota(over)))
        }
    }
}

#[tonic::async_trait]
impl WorkflowService for WorkflowServiceImpl {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let (grants, actor) = Grants::with_actor(&request, &self.node.replica);
        let request = request.into_inner();
        let submit = async {
            not_reserved("idempotency_key", &request.idempotency_key)?;
            self.submit_inner(&grants, request, actor).await
        };
        observed("Submit", submit).await.map(Response::new)
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let (grants, actor) = Grants::with_actor(&request, &self.node.replica);
        let request = request.into_inner();
        let submit = async {
            for (i, item) in request.submits.iter().enumerate() {
                not_reserved(
                    &format!("submits[{i}].idempotency_key"),
                    &item.idempotency_key,
                )?;
            }
            self.submit_batch_inner(&grants, request, actor).await
        };
        observed("SubmitBatch", submit).await.map(Response::new)
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed("Get", self.get_inner(grants, request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed("List", self.list_inner(grants, request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Cancel",
            self.cancel_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Pause",
            self.pause_inner(grants, request.into_inner(), true, actor),
        )
        .await
        .map(Response::new)
    }

    async fn resume(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Resume",
            self.pause_inner(grants, request.into_inner(), false, actor),
        )
        .await
        .map(Response::new)
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Retry",
            self.retry_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn signal(
        &self,
        request: Request<pb::SignalRequest>,
    ) -> Result<Response<pb::SignalResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Signal",
            self.signal_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "GetHistory",
            self.get_history_inner(grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token_id = crate::security::authorized_token_id(&request);
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "Watch",
            self.watch_inner(grants, request.into_inner(), token_id),
        )
        .await
        .map(Response::new)
    }
}

impl WorkflowServiceImpl {
    /// `token_id`: the token the watch was opened with (TLS only); the stream ends, UNAUTHENTICATED,
    /// at the first event after the token's revocation is applied here.
    async fn watch_inner(
        &self,
        grants: Grants,
        req: pb::WatchRequest,
        token_id: Option<String>,
    ) -> Result<WatchStream, Status> {
        // Which namespaces an all-workflows watch covers (None: every one); a one-workflow
        // watch needs to read that workflow's.
        let namespaces = match req.workflow_id {
            0 => grants::scope(
                &grants,
                "WorkflowService.Watch",
                &namespace_arg_or_all(&req.namespace, req.all_namespaces)?,
                req.all_namespaces,
            )?,
            id => {
                if !req.namespace.is_empty() || req.all_namespaces {
                    return Err(Status::invalid_argument(
                        "namespace: a watch of one workflow takes no namespace (its own is used)",
                    ));
                }
                self.check_workflow(
                    &grants,
                    "WorkflowService.Watch",
                    WorkflowId(id),
                    TokenRole::Reader,
                )
                .await?;
                None
            }
        };
        // Held by the stream: dropping the stream (the client went) frees the slot.
        let permit = self.node.admission.watch().ok_or_else(|| {
            Status::resource_exhausted(format!("this node serves {WATCHES_MAX} watches already"))
        })?;
        let only = (req.workflow_id != 0).then_some(WorkflowId(req.workflow_id));
        // For one workflow, where the stream ends: with the last event of `past` when that is
        // its current end, else with `finished_event` (see below), else with a live end.
        let (past, mut live, seen_through) = match only {
            None => {
                let (mut past, live) = self
                    .node
                    .replica
                    .events
                    .subscribe(req.from_index)
                    .map_err(|not_held| events_not_held(req.from_index, not_held))?;
                if crate::faults::active(crate::faults::Broken::WatchNoReplay) {
                    past.clear();
                }
                (past, live, 0)
            }
            Some(id) => {
                // One workflow: its past is its history in the state (complete, the same on
                // every node and across restarts). Subscribed first, then read: an event
                // applied in between is in both, and the live side skips every index the
                // history already holds (an index's events for a workflow are applied, and
                // published, together).
                let live = self.node.replica.events.subscribe_live();
                let history = self
                    .node
                    .replica
                    .read(|a| a.state.history(id))
                    .ok_or_else(|| self.missing(id))?;
                let seen_through = history.last().map_or(0, |e| e.index);
                let past: Vec<_> = history
                    .into_iter()
                    .filter(|e| e.index >= req.from_index)
                    .collect();
                (past, live, seen_through)
            }
        };
        // Every workflow: nothing from before `from_index` either, which a node behind the
        // watcher (a follower that has not yet applied what the watcher saw elsewhere) publishes
        // live. (One workflow's stream ends with its finish, which may come live from below
        // `from_index` on such a node: it is let through.)
        let seen_through = match only {
            None => req.from_index.saturating_sub(1),
            Some(_) => seen_through,
        };
        // A finished workflow's history ends with its current end (a retried workflow's history
        // holds the ends of its earlier runs too: they do not end the stream). When that end is
        // not among the events sent (asked from a later index, or submitted before histories
        // were kept), a final event is made, so the stream ends.
        let mut finished_event = None;
        let mut past_ends = false;
        if let Some(id) = only {
            let workflow = self
                .node
                .replica
                .read(|a| a.state.workflow(id).cloned())
                .ok_or_else(|| self.missing(id))?;
            // Read after the history: a change in between is at a later index than the history
            // holds, so it also comes live (and is sent, as `seen_through` lets it through).
            let current_end = past.last().is_some_and(|e| {
                e.kind == pb::EventKind::WorkflowFinished as i32 && e.index == workflow.revision
            });
            if workflow.state.is_terminal() {
                if current_end {
                    past_ends = true;
                } else {
                    finished_event = Some(pb::WorkflowEvent {
                        index: workflow.revision.max(req.from_index),
                        workflow_id: id.0,
                        namespace: match crate::state::namespaces::is_default(&workflow.namespace) {
                            true => String::new(),
                            false => workflow.namespace.to_string(),
                        },
                        time_ms: workflow.finished_at_ms,
                        kind: pb::EventKind::WorkflowFinished as i32,
                        workflow_state: workflow.state.to_proto() as i32,
                        message: workflow.reason.clone(),
                        ..Default::default()
                    });
                }
            }
            // Running (again): none of the ends in its past ends the stream.
        }
        let namespaces = Arc::new(namespaces);
        let wanted = move |e: &pb::WorkflowEvent| {
            only.is_none_or(|id| e.workflow_id == id.0)
                && namespaces.as_ref().as_ref().is_none_or(|set| {
                    set.contains(crate::state::namespaces::or_default(&e.namespace))
                })
        };
        let wanted_live = wanted.clone();
        let ends = move |e: &pb::WorkflowEvent| {
            only.is_some() && e.kind == pb::EventKind::WorkflowFinished as i32
        };
        let replica = self.node.replica.clone();
        let stream = async_stream_events(
            past,
            past_ends,
            finished_event,
            move |tx| async move {
                loop {
                    match live.recv().await {
                        Ok(_)
                            if token_id
                                .as_deref()
                                .is_some_and(|id| !crate::security::token_live(&replica, id)) =>
                        {
                            let _ = tx
                                .send(Err(Status::unauthenticated("unauthenticated")))
                                .await;
                            return;
                        }
                        Ok(event) if event.index <= seen_through => {}
                        Ok(event) if wanted_live(&event) => {
                            let last = ends(&event);
                            if tx.send(Ok(event)).await.is_err() || last {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx
                            .send(Err(Status::aborted(
                                "watcher fell behind the event stream; resume from the last index seen, skipping its events already received",
                            )))
                            .await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            },
            wanted,
        );
        Ok(Box::pin(futures::StreamExt::map(stream, move |item| {
            let _held = &permit;
            item
        })))
    }
}

/// OUT_OF_RANGE for a watch of every workflow from `from_index`, which this node cannot
/// replay whole, naming (also in `baton-events-from`) where it can.
fn events_not_held(from_index: u64, not_held: NotHeld) -> Status {
    let mut status = Status::out_of_range(format!(
        "from_index: this node no longer holds every event from index {from_index} (it \
         restarted from a snapshot, caught up by one, or dropped them from its recent events); \
         it holds every event from index {} on. Another node may hold more; each workflow's \
         history (GetHistory) holds all of its events",
        not_held.whole_from
    ));
    if let Ok(value) = not_held.whole_from.to_string().parse() {
        status.metadata_mut().insert(EVENTS_FROM_METADATA, value);
    }
    status
}

/// NOT_FOUND for workflow `id`, which `state` does not hold: purged (and when, while its record
/// is kept), or never submitted.
fn missing(state: &crate::state::ClusterState, id: WorkflowId) -> Status {
    use baton_proto::text::format_time_ms;
    if let Some(record) = state.purge_record(id) {
        Status::not_found(format!(
            "workflow {id} was purged at {} UTC: its retention ended (the archive, \
             `batond --archive-dir`, keeps it when the cluster has one)",
            format_time_ms(record.purged_at_ms)
        ))
    } else if state.was_handed_out(id) {
        Status::not_found(format!(
            "workflow {id} was purged: its retention ended, longer ago than the idempotency \
             window (the archive, `batond --archive-dir`, keeps it when the cluster has one)"
        ))
    } else {
        Status::not_found(format!("workflow {id} not found"))
    }
}

/// A listing's or a watch's namespace: checked when named, empty with `all` (the caller's
/// readable ones are taken then).
fn namespace_arg_or_all(namespace: &str, all: bool) -> Result<String, Status> {
    if all && namespace.is_empty() {
        return Ok(String::new());
    }
    namespace_arg("namespace", namespace)
}

/// Bounds a `List` request's filters like the fields they filter on.
fn check_list_filters(req: &pb::ListRequest) -> Result<(), Status> {
    if !req.schedule.is_empty() {
        baton_proto::validate::check_name("schedule", "schedule name", &req.schedule)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    if req.name_prefix.len() > NAME_LEN_MAX {
        return Err(Status::invalid_argument(format!(
            "name_prefix: {} bytes, more than {NAME_LEN_MAX}",
            req.name_prefix.len()
        )));
    }
    if req.states.len() > LIST_FILTER_STATES_MAX {
        return Err(Status::invalid_argument(format!(
            "states: {} states, more than {LIST_FILTER_STATES_MAX}",
            req.states.len()
        )));
    }
    if req.labels.len() > LABELS_MAX {
        return Err(Status::invalid_argument(format!(
            "labels: {} labels, more than {LABELS_MAX}",
            req.labels.len()
        )));
    }
    for (k, v) in &req.labels {
        if k.len() > LABEL_KEY_LEN_MAX || v.len() > LABEL_VALUE_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "labels[{k:?}]: key or value too long (at most {LABEL_KEY_LEN_MAX} and {LABEL_VALUE_LEN_MAX} bytes)"
            )));
        }
    }
    if req.page_token.len() > 20 {
        return Err(Status::invalid_argument("page_token: not a page token"));
    }
    Ok(())
}

/// Sends the retained events, then (unless the last of them is the watched workflow's end,
/// `past_ends`, or `finished` is) hands the channel to `follow` for live ones.
fn async_stream_events<F, Fut>(
    past: Vec<pb::WorkflowEvent>,
    past_ends: bool,
    finished: Option<pb::WorkflowEvent>,
    follow: F,
    wanted: impl Fn(&pb::WorkflowEvent) -> bool + Send + Sync + 'static,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WorkflowEvent, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WorkflowEvent, Status>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        for event in past.into_iter().filter(|e| wanted(e)) {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if past_ends {
            return;
        }
        if let Some(event) = finished {
            let _ = tx.send(Ok(event)).await;
            return;
        }
        follow(tx).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
