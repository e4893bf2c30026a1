//! The cluster client: one lazily connected channel per endpoint, failover, bounded retries.
//!
//! Every call goes to the preferred endpoint (the last one that answered) and, when that fails
//! in a way another attempt could fix (connection refused, UNAVAILABLE, DEADLINE_EXCEEDED, our
//! own timeout), moves on to the next endpoint after an exponential, jittered backoff, within
//! [`ClientConfig::attempts_max`] attempts and [`ClientConfig::retry_budget`] of time.
//!
//! Architecture invariant: every call made here is safe to repeat, which is what allows retrying
//! after an unknown outcome. Reads are; `submit` always carries an idempotency key (generated
//! when the caller has none), so a repeat returns the first workflow instead of a second one, and
//! `submit_batch` gives every item one; `cancel` and the admin calls name a target state
//! (cancelled, member present, member absent, leader elsewhere, a fresh snapshot), so doing them
//! twice leaves the same state as once. A new call that is not idempotent must not go through
//! `Client::unary` as it is.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::tls::{Credentials, TokenInterceptor, Transport};
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::schedule_service_client::ScheduleServiceClient;
use baton_proto::v1::template_service_client::TemplateServiceClient;
use baton_proto::v1::trigger_service_client::TriggerServiceClient;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use baton_proto::v1::{
    AddMemberRequest, AddMemberResponse, CancelRequest, CancelResponse, ClusterStatusRequest,
    ClusterStatusResponse, CreateTokenRequest, CreateTokenResponse, GetHistoryRequest, GetRequest,
    ListAgentsRequest, ListAgentsResponse, ListRequest, ListResponse, ListTokensRequest,
    ListTokensResponse, PauseRequest, PauseResponse, ReadConsistency, RemoveMemberRequest,
    RemoveMemberResponse, RetryRequest, RetryResponse, RevokeTokenRequest, RevokeTokenResponse,
    SaveSnapshotRequest, SignalRequest, SnapshotInfo, SubmitBatchRequest, SubmitBatchResult,
    SubmitRequest, SubmitResponse, TransferLeaderRequest, TransferLeaderResponse,
    TriggerSnapshotRequest, TriggerSnapshotResponse, WatchRequest, Workflow, WorkflowEvent,
    WorkflowSpec,
};
use baton_proto::v1::{
    ApplyTemplateRequest, ApplyTemplateResponse, DeleteTemplateRequest, GetTemplateRequest,
    ListTemplatesRequest, Template,
};
use baton_proto::v1::{
    BackfillScheduleRequest, BackfillScheduleResponse, CreateScheduleRequest,
    CreateScheduleResponse, CreateTriggerRequest, CreateTriggerResponse, DeleteScheduleRequest,
    DeleteTriggerRequest, GetScheduleRequest, GetScheduleResponse, GetTriggerRequest,
    ListSchedulesRequest, ListTriggersRequest, PauseScheduleRequest, Schedule, ScheduleSpec,
    Trigger, TriggerScheduleRequest, TriggerScheduleResponse, TriggerSpec,
};
use baton_proto::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, ListNamespacesRequest, Namespace,
    NamespaceQuotas, UpdateNamespaceRequest,
};
use futures::Stream;

use crate::endpoints::{Endpoint, Endpoints};
use crate::error::{ClientError, Outcome, is_plaintext_answer};

/// Largest response the client decodes: a Get of a workflow at the step limit with outputs.
pub const DECODE_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest request the client sends: a spec is at most 1 MiB encoded (`limits::SPEC_BYTES_MAX`),
/// so this leaves room and still fails fast, locally, on anything absurd.
pub const ENCODE_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(baton_proto::limits::SPEC_BYTES_MAX < ENCODE_MESSAGE_BYTES_MAX);

/// How the client times and retries calls. `Default` suits a CLI and most programs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Deadline of one attempt of one call; for `watch`, of opening the stream only.
    pub call_timeout: Duration,
    /// Deadline of establishing a TCP connection: shorter than a call, so a dead host costs
    /// little before failover.
    pub connect_timeout: Duration,
    /// Attempts of one call in all, the first included (at least 1).
    pub attempts_max: u32,
    /// Backoff before the second attempt; doubled per attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// No new attempt starts once this much time has passed since the call began.
    pub retry_budget: Duration,
    /// TLS and token; the default is plaintext without a token.
    pub credentials: Credentials,
    /// The namespace submits, listings, watches of every workflow, templates, schedules and
    /// triggers act in; empty: `default`.
    pub namespace: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            // With the backoff below, 8 attempts span about 4-5 s of waiting, longer than a leader
            // election (about 1.5 s with conservative Raft timeouts) plus a new leader's first
            // refused writes.
            attempts_max: 8,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            retry_budget: Duration::from_secs(30),
            credentials: Credentials::default(),
            namespace: String::new(),
        }
    }
}

/// A handle on a Baton cluster. Cheap to clone; clones share channels and the preferred endpoint.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Endpoints,
    /// One per endpoint, same order. Lazily connected: creating the client never blocks or
    /// fails on a down node, and a channel reconnects by itself after a failure.
    channels: Vec<Transport>,
    /// Index of the endpoint the next call tries first.
    preferred: AtomicUsize,
    config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints.to_string())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with the default configuration. Needs a Tokio runtime; connects on first use.
    pub fn new(endpoints: Endpoints) -> Result<Client, ClientError> {
        Client::with_config(endpoints, ClientConfig::default())
    }

    pub fn with_config(endpoints: Endpoints, config: ClientConfig) -> Result<Client, ClientError> {
        if config.attempts_max == 0 {
            return Err(ClientError::InvalidRequest(
                "attempts_max must be at least 1".into(),
            ));
        }
        let channels = endpoints
            .iter()
            .map(|endpoint| channel(endpoint, &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                channels,
                preferred: AtomicUsize::new(0),
                config,
            }),
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Moves this client's calls on to its next endpoint: the node it was using answered, but
    /// cannot serve what is asked (a watch it no longer holds the events of).
    pub(crate) fn prefer_next_endpoint(&self) {
        let count = self.inner.endpoints.len();
        let current = self.inner.preferred.load(Ordering::Relaxed);
        self.inner
            .preferred
            .store((current + 1) % count, Ordering::Relaxed);
    }

    /// The endpoint the next call tries first.
    pub fn preferred_endpoint(&self) -> &Endpoint {
        let index = self.inner.preferred.load(Ordering::Relaxed);
        &self.inner.endpoints.as_slice()[index % self.inner.endpoints.len()]
    }

    // ---- WorkflowService ----

    /// Submits a workflow. Without a key one is generated, so that retrying after an unknown
    /// outcome returns the first workflow rather than creating a second; a caller who wants to
    /// retry across process restarts passes its own (see [`new_idempotency_key`]).
    pub async fn submit(
        &self,
        spec: WorkflowSpec,
        idempotency_key: Option<String>,
    ) -> Result<SubmitResponse, ClientError> {
        self.submit_with_params(spec, idempotency_key, BTreeMap::new())
            .await
    }

    /// [`Client::submit`] with values for the spec's declared parameters (`params`); the node
    /// checks them (INVALID_ARGUMENT `params["NAME"]: ...`) and fills in defaults.
    pub async fn submit_with_params(
        &self,
        spec: WorkflowSpec,
        idempotency_key: Option<String>,
        params: BTreeMap<String, String>,
    ) -> Result<SubmitResponse, ClientError> {
        let idempotency_key = match idempotency_key {
            Some(key) if !key.is_empty() => {
                baton_proto::validate::validate_idempotency_key(&key)
                    .map_err(|error| ClientError::InvalidRequest(error.to_string()))?;
                key
            }
            _ => new_idempotency_key(),
        };
        let request = SubmitRequest {
            spec: Some(spec),
            idempotency_key,
            params,
            template: String::new(),
            template_version: 0,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).submit(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Submits a workflow with no idempotency key, at most once: the call is repeated (on
    /// another node) only after a failure that certainly did not apply it, such as a refused
    /// connection. After any other failure the outcome is unknown
    /// ([`ClientError::outcome`]): the workflow may or may not exist, and nothing can tell
    /// which but a search for it (its labels, say). For callers that would rather lose a
    /// submit than run it twice and keep no key; [`Client::submit`] is exactly-once.
    pub async fn submit_at_most_once(
        &self,
        spec: WorkflowSpec,
    ) -> Result<SubmitResponse, ClientError> {
        let request = SubmitRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
            params: BTreeMap::new(),
            template: String::new(),
            template_version: 0,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary_with(
            move |channel| {
                let request = request.clone();
                async move { workflow_client(channel).submit(request).await }
            },
            Repeat::NotApplied,
        )
        .await
        .map(|(_, response)| response)
    }

    /// Submits many workflows in one call: they are committed together, in one log entry, or
    /// the call fails and none is. Items without a key get one generated, so retrying after an
    /// unknown outcome returns the first call's workflows. One result per item, in order; at most
    /// `limits::SUBMIT_BATCH_ITEMS_MAX` items and `SUBMIT_BATCH_BYTES_MAX` of specs, keys and
    /// parameters (`limits::submit_batch_item_bytes`).
    pub async fn submit_batch(
        &self,
        items: Vec<(WorkflowSpec, Option<String>)>,
    ) -> Result<Vec<SubmitBatchResult>, ClientError> {
        self.submit_batch_with_params(items, BTreeMap::new()).await
    }

    /// [`Client::submit_batch`] with the same parameter values for every item (each spec must
    /// declare every one given).
    pub async fn submit_batch_with_params(
        &self,
        items: Vec<(WorkflowSpec, Option<String>)>,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<SubmitBatchResult>, ClientError> {
        let mut submits = Vec::with_capacity(items.len());
        for (i, (spec, key)) in items.into_iter().enumerate() {
            let idempotency_key = match key {
                Some(key) if !key.is_empty() => {
                    baton_proto::validate::validate_idempotency_key(&key).map_err(|error| {
                        ClientError::InvalidRequest(format!("submits[{i}].{error}"))
                    })?;
                    key
                }
                _ => new_idempotency_key(),
            };
            submits.push(SubmitRequest {
                spec: Some(spec),
                idempotency_key,
                params: params.clone(),
                template: String::new(),
                template_version: 0,
                namespace: self.inner.config.namespace.clone(),
            });
        }
        let request = SubmitBatchRequest { submits };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).submit_batch(request).await }
        })
        .await
        .map(|(_, response)| response.results)
    }

    /// One workflow with its steps. NOT_FOUND when there is no such workflow.
    pub async fn get(
        &self,
        workflow_id: u64,
        consistency: ReadConsistency,
    ) -> Result<Workflow, ClientError> {
        self.get_request(GetRequest {
            workflow_id,
            consistency: consistency as i32,
            attempts_of_step: String::new(),
        })
        .await
    }

    /// [`Client::get`] (linearizable) with the earlier attempts of `step`, their output and
    /// error included: what `baton logs` reads.
    pub async fn get_with_attempts(
        &self,
        workflow_id: u64,
        step: &str,
    ) -> Result<Workflow, ClientError> {
        self.get_request(GetRequest {
            workflow_id,
            consistency: ReadConsistency::Linearizable as i32,
            attempts_of_step: step.to_owned(),
        })
        .await
    }

    /// Every event of a workflow since it was submitted, oldest first (`GetHistory`): kept in the
    /// cluster's state until the workflow is purged.
    pub async fn history(
        &self,
        workflow_id: u64,
        consistency: ReadConsistency,
    ) -> Result<Vec<WorkflowEvent>, ClientError> {
        let request = GetHistoryRequest {
            workflow_id,
            consistency: consistency as i32,
        };
        self.unary(
            move |channel| async move { workflow_client(channel).get_history(request).await },
        )
        .await
        .map(|(_, response)| response.events)
    }

    async fn get_request(&self, request: GetRequest) -> Result<Workflow, ClientError> {
        let workflow_id = request.workflow_id;
        let (endpoint, response) = self
            .unary(move |channel| {
                let request = request.clone();
                async move { workflow_client(channel).get(request).await }
            })
            .await?;
        response
            .workflow
            .ok_or_else(|| ClientError::InvalidResponse {
                endpoint: endpoint.to_string(),
                message: format!("workflow {workflow_id}: the answer has no workflow"),
            })
    }

    /// One page of workflows, newest first; pass `next_page_token` back for the next page.
    pub async fn list(&self, request: ListRequest) -> Result<ListResponse, ClientError> {
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).list(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Every workflow matching `request`, page after page, from `request.page_token` on. Each
    /// page is one call with its own retries; the stream ends after the first error.
    pub fn list_all(
        &self,
        request: ListRequest,
    ) -> impl Stream<Item = Result<Workflow, ClientError>> + Send + 'static {
        use futures::StreamExt;
        let client = self.clone();
        // `None` once the last page has been fetched.
        let pages = futures::stream::try_unfold(Some(request), move |next| {
            let client = client.clone();
            async move {
                let Some(request) = next else { return Ok(None) };
                let template = request.clone();
                let page = client.list(request).await?;
                let next = if page.next_page_token.is_empty() {
                    None
                } else {
                    Some(ListRequest {
                        page_token: page.next_page_token,
                        ..template
                    })
                };
                Ok(Some((page.workflows, next)))
            }
        });
        pages
            .map(|page: Result<Vec<Workflow>, ClientError>| match page {
                Ok(workflows) => futures::stream::iter(workflows.into_iter().map(Ok)).left_stream(),
                Err(error) => futures::stream::once(async { Err(error) }).right_stream(),
            })
            .flatten()
    }

    /// Cancels a workflow; the answer holds its state afterwards (finished ones stay as they were).
    pub async fn cancel(
        &self,
        workflow_id: u64,
        reason: impl Into<String>,
    ) -> Result<CancelResponse, ClientError> {
        let request = CancelRequest {
            workflow_id,
            reason: reason.into(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).cancel(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Pauses (`paused` true) or resumes a running workflow; `changed` false when it already was
    /// so. Safe to repeat.
    pub async fn pause(
        &self,
        workflow_id: u64,
        paused: bool,
    ) -> Result<PauseResponse, ClientError> {
        let request = PauseRequest { workflow_id };
        self.unary(move |channel| async move {
            if paused {
                workflow_client(channel).pause(request).await
            } else {
                workflow_client(channel).resume(request).await
            }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Reruns a finished workflow's failed, cancelled and timed-out steps (`from_step` empty) or
    /// `from_step`, each with the steps after it; answers the steps that run again. Repeating it
    /// after an unknown outcome is safe: a workflow already running again is refused
    /// (FAILED_PRECONDITION).
    pub async fn retry(
        &self,
        workflow_id: u64,
        from_step: impl Into<String>,
    ) -> Result<RetryResponse, ClientError> {
        let request = RetryRequest {
            workflow_id,
            from_step: from_step.into(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).retry(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Starts template `name` (its latest version, or `version`) with `params`. Idempotent per
    /// key, as [`Client::submit_with_params`].
    pub async fn submit_template(
        &self,
        name: &str,
        version: u32,
        idempotency_key: String,
        params: BTreeMap<String, String>,
    ) -> Result<SubmitResponse, ClientError> {
        let request = SubmitRequest {
            spec: None,
            idempotency_key,
            params,
            template: name.into(),
            template_version: version,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).submit(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Registers `spec` as a template (a new version when it changed).
    pub async fn apply_template(
        &self,
        spec: WorkflowSpec,
    ) -> Result<ApplyTemplateResponse, ClientError> {
        let request = ApplyTemplateRequest {
            spec: Some(spec),
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { template_client(channel).apply_template(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    pub async fn get_template(
        &self,
        name: &str,
        version: u32,
        consistency: ReadConsistency,
    ) -> Result<Template, ClientError> {
        let request = GetTemplateRequest {
            name: name.into(),
            version,
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { template_client(channel).get_template(request).await }
        })
        .await
        .map(|(_, response)| response.template.unwrap_or_default())
    }

    pub async fn list_templates(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Vec<Template>, ClientError> {
        let request = ListTemplatesRequest {
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { template_client(channel).list_templates(request).await }
        })
        .await
        .map(|(_, response)| response.templates)
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTemplateRequest {
            name: name.into(),
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { template_client(channel).delete_template(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Creates a schedule (or replaces one of the same name with `replace`).
    pub async fn create_schedule(
        &self,
        spec: ScheduleSpec,
        replace: bool,
    ) -> Result<CreateScheduleResponse, ClientError> {
        let request = CreateScheduleRequest {
            spec: Some(spec),
            replace,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).create_schedule(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    pub async fn get_schedule(
        &self,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<GetScheduleResponse, ClientError> {
        let request = GetScheduleRequest {
            name: name.into(),
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).get_schedule(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    pub async fn list_schedules(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Vec<Schedule>, ClientError> {
        let request = ListSchedulesRequest {
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).list_schedules(request).await }
        })
        .await
        .map(|(_, response)| response.schedules)
    }

    /// Creates a webhook trigger (or replaces one of the same name with `replace`).
    pub async fn create_trigger(
        &self,
        spec: TriggerSpec,
        secret: String,
        replace: bool,
    ) -> Result<CreateTriggerResponse, ClientError> {
        let request = CreateTriggerRequest {
            spec: Some(spec),
            secret,
            replace,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { trigger_client(channel).create_trigger(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    pub async fn get_trigger(
        &self,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<Trigger, ClientError> {
        let request = GetTriggerRequest {
            name: name.into(),
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { trigger_client(channel).get_trigger(request).await }
        })
        .await
        .map(|(_, response)| response.trigger.unwrap_or_default())
    }

    pub async fn list_triggers(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Vec<Trigger>, ClientError> {
        let request = ListTriggersRequest {
            consistency: consistency as i32,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { trigger_client(channel).list_triggers(request).await }
        })
        .await
        .map(|(_, response)| response.triggers)
    }

    pub async fn delete_trigger(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTriggerRequest {
            name: name.into(),
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { trigger_client(channel).delete_trigger(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Pauses (or, with `paused` false, resumes) a schedule. Idempotent.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<bool, ClientError> {
        let request = PauseScheduleRequest {
            name: name.into(),
            paused,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).pause_schedule(request).await }
        })
        .await
        .map(|(_, response)| response.changed)
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteScheduleRequest {
            name: name.into(),
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).delete_schedule(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Runs a schedule now. Not idempotent: a repeat after an unknown outcome may start a
    /// second run (at another nominal time).
    pub async fn trigger_schedule(
        &self,
        name: &str,
    ) -> Result<TriggerScheduleResponse, ClientError> {
        let request = TriggerScheduleRequest {
            name: name.into(),
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).trigger_schedule(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Starts a run for every time of the schedule in [from_ms, to_ms] without one; repeating
    /// it starts nothing more.
    pub async fn backfill_schedule(
        &self,
        name: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BackfillScheduleResponse, ClientError> {
        let request = BackfillScheduleRequest {
            name: name.into(),
            from_ms,
            to_ms,
            namespace: self.inner.config.namespace.clone(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { schedule_client(channel).backfill_schedule(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    /// Completes a `wait` step: it succeeds with `data` as its output, or fails when `reject`.
    /// Repeating it after an unknown outcome is safe: a step no longer waiting is refused
    /// (FAILED_PRECONDITION).
    pub async fn signal(
        &self,
        workflow_id: u64,
        step: impl Into<String>,
        data: impl Into<String>,
        reject: bool,
    ) -> Result<(), ClientError> {
        let request = SignalRequest {
            workflow_id,
            step: step.into(),
            data: data.into(),
            reject,
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).signal(request).await }
        })
        .await
        .map(|_| ())
    }

    /// The events of one workflow (`workflow_id` 0: of all), from log index `from_index` on.
    /// Failover applies to opening the stream; a stream that breaks later is the caller's to
    /// reopen from the last index it saw + 1.
    pub async fn watch(
        &self,
        workflow_id: u64,
        from_index: u64,
    ) -> Result<tonic::Streaming<WorkflowEvent>, ClientError> {
        let request = WatchRequest {
            workflow_id,
            from_index,
            namespace: match workflow_id {
                0 => self.inner.config.namespace.clone(),
                _ => String::new(),
            },
            all_namespaces: false,
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { workflow_client(channel).watch(request).await }
        })
        .await
        .map(|(_, stream)| stream)
    }

    // ---- AdminService ----

    /// The status as seen by the node this client is talking to (the preferred endpoint, or the
    /// next one that answers).
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.unary(|channel| async move {
            admin_client(channel)
                .cluster_status(ClusterStatusRequest {})
                .await
        })
        .await
        .map(|(_, response)| response)
    }

    /// The status as seen by one given node: one attempt, no failover, since the point is to
    /// hear that node (to compare applied indexes and state hashes across replicas).
    pub async fn cluster_status_of(
        &self,
        endpoint: &Endpoint,
    ) -> Result<ClusterStatusResponse, ClientError> {
        let channel = match self
            .inner
            .endpoints
            .iter()
            .position(|known| known == endpoint)
        {
            Some(index) => self.inner.channels[index].clone(),
            None => channel(endpoint, &self.inner.config)?,
        };
        let mut admin = admin_client(channel);
        self.attempt(
            &endpoint.to_string(),
            admin.cluster_status(ClusterStatusRequest {}),
        )
        .await
    }

    /// Adds a started node, known by its id and address, as a voter. Returns the new members.
    pub async fn add_member(
        &self,
        node_id: u64,
        address: impl Into<String>,
    ) -> Result<AddMemberResponse, ClientError> {
        let request = AddMemberRequest {
            node_id,
            address: address.into(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { admin_client(channel).add_member(request).await }
        })
        .await
        .map(|(_, response)| response)
    }

    pub async fn remove_member(&self, node_id: u64) -> Result<RemoveMemberResponse, ClientError> {
        let request = RemoveMemberRequest { node_id };
        self.unary(move |channel| async move { admin_client(channel).remove_member(request).await })
            .await
            .map(|(_, response)| response)
    }

    /// Moves leadership to `to_node_id`, or to any up-to-date voter when `None`.
    pub async fn transfer_leader(
        &self,
        to_node_id: Option<u64>,
    ) -> Result<TransferLeaderResponse, ClientError> {
        let request = TransferLeaderRequest {
            to_node_id: to_node_id.unwrap_or(0),
        };
        self.unary(
            move |channel| async move { admin_client(channel).transfer_leader(request).await },
        )
        .await
        .map(|(_, response)| response)
    }

    /// Builds a snapshot now on the node that answers.
    pub async fn trigger_snapshot(&self) -> Result<TriggerSnapshotResponse, ClientError> {
        self.unary(|channel| async move {
            admin_client(channel)
                .trigger_snapshot(TriggerSnapshotRequest {})
                .await
        })
        .await
        .map(|(_, response)| response)
    }

    /// A backup of the replicated state (`AdminService.SaveSnapshot`): its description and the
    /// bytes of the snapshot file, checked for length (the caller checks the SHA-256 trailer).
    /// Read-only, so a stream that breaks midway is fetched again whole from the next endpoint;
    /// `ClientConfig::call_timeout` bounds each whole transfer.
    pub async fn save_snapshot(&self) -> Result<(SnapshotInfo, Vec<u8>), ClientError> {
        self.unary(|channel| async move {
            let mut stream = admin_client(channel)
                .save_snapshot(SaveSnapshotRequest {})
                .await?
                .into_inner();
            let mut info = None;
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                if info.is_none() {
                    info = chunk.info;
                }
                bytes.extend_from_slice(&chunk.data);
            }
            let info = info.ok_or_else(|| tonic::Status::data_loss("the snapshot had no info"))?;
            if bytes.len() as u64 != info.file_bytes {
                return Err(tonic::Status::data_loss(format!(
                    "the snapshot stream ended after {} of {} bytes",
                    bytes.len(),
                    info.file_bytes
                )));
            }
            Ok(tonic::Response::new((info, bytes)))
        })
        .await
        .map(|(_, answer)| answer)
    }

    pub async fn list_agents(&self) -> Result<ListAgentsResponse, ClientError> {
        self.unary(|channel| async move {
            admin_client(channel)
                .list_agents(ListAgentsRequest {})
                .await
        })
        .await
        .map(|(_, response)| response)
    }

    // ---- tokens (AdminService, admin role) ----

    /// Creates a token; the answer holds its text, shown this once. One attempt only: a token
    /// is not idempotent (a repeat would make a second one), so after an unknown outcome check
    /// `list_tokens` and revoke what is not wanted.
    /// `namespaces` (namespace -> role) makes a token that acts only there; `role` is then
    /// empty.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        namespaces: BTreeMap<String, String>,
    ) -> Result<CreateTokenResponse, ClientError> {
        let inner = &*self.inner;
        let index = inner.preferred.load(Ordering::Relaxed) % inner.endpoints.len();
        let endpoint = inner.endpoints.as_slice()[index].to_string();
        let request = CreateTokenRequest {
            name: name.to_owned(),
            role: role.to_owned(),
            namespaces,
        };
        let channel = inner.channels[index].clone();
        self.attempt(&endpoint, admin_client(channel).create_token(request))
            .await
    }

    pub async fn list_tokens(&self) -> Result<ListTokensResponse, ClientError> {
        self.unary(|channel| async move {
            admin_client(channel)
                .list_tokens(ListTokensRequest {})
                .await
        })
        .await
        .map(|(_, response)| response)
    }

    // ---- namespaces (AdminService) ----

    /// Creates a namespace (a cluster-wide admin token) with its quotas (None: no limits) and
    /// weight (0: 1).
    /// ALREADY_EXISTS when it does.
    pub async fn create_namespace(
        &self,
        name: &str,
        description: &str,
        quotas: Option<NamespaceQuotas>,
        weight: u32,
    ) -> Result<(), ClientError> {
        let request = CreateNamespaceRequest {
            name: name.to_owned(),
            description: description.to_owned(),
            quotas,
            weight,
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { admin_client(channel).create_namespace(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Changes the fields `request` sets (a cluster-wide admin token); the namespace after.
    pub async fn update_namespace(
        &self,
        request: UpdateNamespaceRequest,
    ) -> Result<Namespace, ClientError> {
        self.unary(move |channel| {
            let request = request.clone();
            async move { admin_client(channel).update_namespace(request).await }
        })
        .await
        .map(|(_, response)| response.namespace.unwrap_or_default())
    }

    /// The namespaces this client's token may read.
    pub async fn list_namespaces(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Vec<Namespace>, ClientError> {
        let request = ListNamespacesRequest {
            consistency: consistency as i32,
        };
        self.unary(
            move |channel| async move { admin_client(channel).list_namespaces(request).await },
        )
        .await
        .map(|(_, response)| response.namespaces)
    }

    /// The audit trail the request selects, newest first (`AdminService.ListAudit`).
    pub async fn list_audit(
        &self,
        request: baton_proto::v1::ListAuditRequest,
    ) -> Result<Vec<baton_proto::v1::AuditRecord>, ClientError> {
        self.unary(move |channel| {
            let request = request.clone();
            async move { admin_client(channel).list_audit(request).await }
        })
        .await
        .map(|(_, response)| response.records)
    }

    /// Deletes an empty namespace; FAILED_PRECONDITION naming what a non-empty one holds.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteNamespaceRequest {
            name: name.to_owned(),
        };
        self.unary(move |channel| {
            let request = request.clone();
            async move { admin_client(channel).delete_namespace(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Revokes a token everywhere (through the log); revoking twice is harmless.
    pub async fn revoke_token(&self, id: &str) -> Result<RevokeTokenResponse, ClientError> {
        self.unary(|channel| {
            let id = id.to_owned();
            async move {
                admin_client(channel)
                    .revoke_token(RevokeTokenRequest { id })
                    .await
            }
        })
        .await
        .map(|(_, response)| response)
    }

    // ---- the retry loop ----

    /// Runs `call` on the preferred endpoint, failing over and backing off on retryable errors.
    /// Returns the endpoint that answered with the answer.
    async fn unary<T, F, Fut>(&self, call: F) -> Result<(&Endpoint, T), ClientError>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.unary_with(call, Repeat::Retryable).await
    }

    /// [`Client::unary`], repeating the call only as `repeat` allows.
    async fn unary_with<T, F, Fut>(
        &self,
        mut call: F,
        repeat: Repeat,
    ) -> Result<(&Endpoint, T), ClientError>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &*self.inner;
        let endpoint_count = inner.endpoints.len();
        let started = Instant::now();
        let first = inner.preferred.load(Ordering::Relaxed) % endpoint_count;
        let mut any_unknown = false;
        let mut attempts: u32 = 0;
        loop {
            let index = (first + attempts as usize) % endpoint_count;
            let endpoint = &inner.endpoints.as_slice()[index];
            attempts += 1;
            let result = self
                .attempt(&endpoint.to_string(), call(inner.channels[index].clone()))
                .await;
            let error = match result {
                Ok(answer) => {
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Ok((endpoint, answer));
                }
                Err(error) => self.name_tls_mismatch(endpoint, error).await,
            };
            any_unknown |= error.outcome() == Outcome::Unknown;
            let delay = backoff_delay(&inner.config, attempts);
            let out_of_budget = started.elapsed() + delay > inner.config.retry_budget;
            // A TLS mismatch is one endpoint's: the others are still worth one try each.
            let other_endpoints_left = matches!(error, ClientError::TlsMismatch { .. })
                && (attempts as usize) < endpoint_count;
            let may_have_applied =
                repeat == Repeat::NotApplied && error.outcome() != Outcome::NotApplied;
            if (!error.is_retryable() && !other_endpoints_left)
                || may_have_applied
                || attempts >= inner.config.attempts_max
                || out_of_budget
            {
                return Err(wrap_attempts(error, attempts, any_unknown));
            }
            // Move everyone off the failed endpoint, unless another call already did.
            let _ = inner.preferred.compare_exchange(
                index,
                (index + 1) % endpoint_count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::debug!(
                %endpoint,
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying call"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// A transport failure that is really TLS on one side only, named as such (not retried on
    /// that endpoint; the call still tries the others once). A TLS client recognises a plaintext answer from
    /// its handshake error; a plaintext client whose connection broke asks the node once more,
    /// with [`answers_with_tls`].
    async fn name_tls_mismatch(&self, endpoint: &Endpoint, error: ClientError) -> ClientError {
        let client_tls = self.inner.config.credentials.tls.is_some();
        let mismatch = if client_tls {
            is_plaintext_answer(&error)
        } else {
            matches!(error, ClientError::ConnectionLost { .. }) && answers_with_tls(endpoint).await
        };
        if mismatch {
            ClientError::TlsMismatch {
                endpoint: endpoint.to_string(),
                node_speaks_tls: !client_tls,
            }
        } else {
            error
        }
    }

    /// One attempt under the call timeout.
    async fn attempt<T>(
        &self,
        endpoint: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        // A client-side deadline rather than a `grpc-timeout` header: tonic reports its own
        // header-driven timeout as CANCELLED on both sides, which reads like a cancellation.
        let timeout = self.inner.config.call_timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::from_status(endpoint, status, timeout)),
            Err(_elapsed) => Err(ClientError::Timeout {
                endpoint: endpoint.to_string(),
                timeout,
            }),
        }
    }
}

/// The final error of a call. Wrapped in [`ClientError::Retried`] when the client gave up on a
/// retryable error after several attempts, or when an earlier attempt's unknown outcome makes
/// the whole call unknown although the last attempt was refused; plain otherwise (one attempt,
/// or a failover that ended in a clear answer), so that a refusal reads as itself.
fn wrap_attempts(error: ClientError, attempts: u32, any_unknown: bool) -> ClientError {
    let outcome = if any_unknown {
        Outcome::Unknown
    } else {
        error.outcome()
    };
    if attempts <= 1 || (!error.is_retryable() && outcome == error.outcome()) {
        return error;
    }
    ClientError::Retried {
        attempts,
        outcome,
        last: Box::new(error),
    }
}

/// Whether the node at `endpoint` answers the opening of a plaintext HTTP/2 connection with a
/// TLS record (content type 21, an alert, then version 3.x): it requires TLS. Only asked after a
/// plaintext call's connection broke; a node that says nothing within a second is not judged.
async fn answers_with_tls(endpoint: &Endpoint) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((endpoint.host(), endpoint.port()))
            .await
            .ok()?;
        stream.write_all(PREFACE).await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        Some(head == [0x15, 0x03])
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

pub(crate) fn channel(
    endpoint: &Endpoint,
    config: &ClientConfig,
) -> Result<Transport, ClientError> {
    let uri = endpoint.uri();
    let builder = tonic::transport::Endpoint::from_shared(uri).map_err(|error| {
        ClientError::Endpoint(crate::endpoints::EndpointError::InvalidHost {
            endpoint: format!("{endpoint} ({error})"),
        })
    })?;
    let builder = builder
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // Pings notice a silently dead peer (a paused or partitioned node) on long watches.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = match &config.credentials.tls {
        Some(tls) => builder
            .connect_with_connector_lazy(baton_security::connector::TlsDialer::new(tls.clone())),
        None => builder.connect_lazy(),
    };
    // A bearer token is a password: it never goes over plaintext, whoever built the config.
    if config.credentials.tls.is_none() && config.credentials.token.is_some() {
        return Err(ClientError::InvalidRequest(
            "credentials: a token is sent only over TLS; give a CA, a certificate and a key too"
                .into(),
        ));
    }
    let interceptor = TokenInterceptor::new(config.credentials.token.as_deref())?;
    Ok(Transport::new(channel, interceptor))
}

fn workflow_client(channel: Transport) -> WorkflowServiceClient<Transport> {
    WorkflowServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX)
}

fn template_client(channel: Transport) -> TemplateServiceClient<Transport> {
    TemplateServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX)
}

fn schedule_client(channel: Transport) -> ScheduleServiceClient<Transport> {
    ScheduleServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX)
}

fn trigger_client(channel: Transport) -> TriggerServiceClient<Transport> {
    TriggerServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX)
}

fn admin_client(channel: Transport) -> AdminServiceClient<Transport> {
    AdminServiceClient::new(channel)
        .max_decoding_message_size(DECODE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(ENCODE_MESSAGE_BYTES_MAX)
}

/// The wait before attempt `attempts + 1`: `backoff_initial * 2^(attempts - 1)` capped at
/// `backoff_max`, then jittered to between half and all of it, so that clients that failed
/// together do not retry together, while none retries at once.
fn backoff_delay(config: &ClientConfig, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let base = config
        .backoff_initial
        .saturating_mul(1 << exponent)
        .min(config.backoff_max);
    let half_ms = (base.as_millis() / 2) as u64;
    Duration::from_millis(half_ms + random_u64() % (half_ms + 1))
}

/// Which failed calls [`Client::unary_with`] repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// Every retryable failure: calls that are safe to repeat (reads, keyed submits, idempotent
    /// changes).
    Retryable,
    /// Only failures that certainly did not apply the call (a write with no key).
    NotApplied,
}

/// A fresh random idempotency key: `baton-` and 32 hex digits (128 bits), well within the
/// server's 128 printable characters; two keys collide with negligible probability.
pub fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS refused randomness (practically never): fall back to values that differ
        // between processes (pid, clock) and between calls of one process (a counter).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0);
        let low = u64::from(std::process::id()) << 32
            | (FALLBACK_COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..].copy_from_slice(&low.to_le_bytes());
    }
    let mut key = String::with_capacity(6 + 32);
    key.push_str("baton-");
    for byte in bytes {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

static FALLBACK_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Randomness for jitter only; quality barely matters, so any failure degrades to the clock.
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos() as u64)
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_valid_and_distinct() {
        let first = new_idempotency_key();
        let second = new_idempotency_key();
        assert_ne!(first, second);
        assert_eq!(first.len(), 38);
        assert!(baton_proto::validate::validate_idempotency_key(&first).is_ok());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_half() {
        let config = ClientConfig::default();
        for attempts in 1..=12 {
            let base = config
                .backoff_initial
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(config.backoff_max);
            let delay = backoff_delay(&config, attempts);
            assert!(delay <= base, "attempt {attempts}: {delay:?} > {base:?}");
            assert!(
                delay * 2 + Duration::from_millis(1) >= base,
                "attempt {attempts}: {delay:?}"
            );
        }
    }
}
