//! The JSON API's routes: the table ([`ROUTES`]) and one handler per route. Each handler turns
//! the HTTP request into its gRPC method's request, calls the service, and answers with the JSON
//! shape `baton ... -o json` prints. Bad input is refused here, before any call, with a 400 that
//! names the parameter, header or body field.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use baton_proto::json as shapes;
use baton_proto::names::parse_workflow_state;
use baton_proto::spec::{SpecFormat, parse_spec};
use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_server::AdminService;
use baton_proto::v1::schedule_service_server::ScheduleService;
use baton_proto::v1::template_service_server::TemplateService;
use baton_proto::v1::trigger_service_server::TriggerService;
use baton_proto::v1::workflow_service_server::WorkflowService;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Status;

use super::error::{ApiError, error_body};
use super::{Api, Caller};

type Answer = Result<Response, ApiError>;

/// One route: what the OpenAPI document says of it, the gRPC method whose authorization it
/// takes, and its handler.
pub struct Route {
    pub method: &'static str,
    /// axum's pattern, which is also OpenAPI's: `/api/v1/workflows/{id}`.
    pub path: &'static str,
    /// The gRPC method path whose roles may call it; empty: anyone (the OpenAPI document).
    pub rpc: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// Request headers it reads (besides `Authorization` and `Content-Type`).
    pub headers: &'static [Param],
    pub body: Body,
    /// The success status and what its body is (a schema of [`super::openapi`]).
    pub ok: u16,
    pub answer: &'static str,
    pub handler: fn() -> MethodRouter<Api>,
}

/// A query parameter or a request header.
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub repeated: bool,
    pub about: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Boolean,
}

/// What a route reads from the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    /// A workflow spec, YAML or JSON (`Content-Type` says which; YAML when it does not).
    Spec,
    /// A schedule, YAML or JSON.
    Schedule,
    /// A webhook's payload: any JSON (or none, when the trigger takes nothing from it).
    Webhook,
    /// A JSON object of this schema; `optional`: an empty body is the empty object.
    Json {
        schema: &'static str,
        optional: bool,
    },
}

const CONSISTENCY: Param = Param {
    name: "consistency",
    kind: Kind::String,
    repeated: false,
    about: "`linearizable` (the default: sees every write acknowledged before the call) or \
            `stale` (this node's applied state; never waits on a quorum)",
};

const NAMESPACE: Param = Param {
    name: "namespace",
    kind: Kind::String,
    repeated: false,
    about: "The namespace; `default` when absent.",
};

const ALL_NAMESPACES: Param = Param {
    name: "all_namespaces",
    kind: Kind::Boolean,
    repeated: false,
    about: "`true`: every namespace the caller may read (without `namespace`).",
};

/// Routes of an object of a namespace (templates, schedules, triggers) that read nothing else.
const NS_QUERY: &[Param] = &[NAMESPACE];

const NS_READ_QUERY: &[Param] = &[NAMESPACE, CONSISTENCY];

const SUBMIT_QUERY: &[Param] = &[
    Param {
        name: "param",
        kind: Kind::String,
        repeated: true,
        about: "`key=value`: a value for the spec's parameter `key` (`?param=env=prod`); repeat \
                for more.",
    },
    NAMESPACE,
];

const LIST_QUERY: &[Param] = &[
    Param {
        name: "state",
        kind: Kind::String,
        repeated: true,
        about: "Only workflows in these states (`running`, `succeeded`, `failed`, `cancelled`, \
                `timed_out`); repeat it or separate with commas.",
    },
    Param {
        name: "name",
        kind: Kind::String,
        repeated: false,
        about: "Only workflows whose name starts with this.",
    },
    Param {
        name: "label",
        kind: Kind::String,
        repeated: true,
        about: "`key=value`: only workflows carrying this label; repeat for more.",
    },
    Param {
        name: "schedule",
        kind: Kind::String,
        repeated: false,
        about: "Only the runs of this schedule.",
    },
    Param {
        name: "page_size",
        kind: Kind::Integer,
        repeated: false,
        about: "1 to 1000 workflows per page; 100 when absent.",
    },
    Param {
        name: "page_token",
        kind: Kind::String,
        repeated: false,
        about: "`next_page_token` of the previous page.",
    },
    NAMESPACE,
    ALL_NAMESPACES,
    CONSISTENCY,
];

const GET_QUERY: &[Param] = &[
    Param {
        name: "attempts_of",
        kind: Kind::String,
        repeated: false,
        about: "Fill `earlier_attempts` (with their output and error) of this step.",
    },
    CONSISTENCY,
];

const FROM_INDEX: Param = Param {
    name: "from_index",
    kind: Kind::Integer,
    repeated: false,
    about: "Only events at or after this log index (a `Last-Event-ID` header takes precedence: \
            the stream resumes right after that event).",
};

const WATCH_QUERY: &[Param] = &[FROM_INDEX];

const WATCH_ALL_QUERY: &[Param] = &[FROM_INDEX, NAMESPACE, ALL_NAMESPACES];

const READ_QUERY: &[Param] = &[CONSISTENCY];

const AUDIT_QUERY: &[Param] = &[
    Param {
        name: "since_ms",
        kind: Kind::Integer,
        repeated: false,
        about: "Only changes at or after this time (ms since the Unix epoch); all kept when \
                absent.",
    },
    Param {
        name: "limit",
        kind: Kind::Integer,
        repeated: false,
        about: "At most this many, newest first: 1 to 10000; 100 when absent.",
    },
    Param {
        name: "namespace",
        kind: Kind::String,
        repeated: false,
        about: "Only this namespace's changes; every namespace the caller may read (and the \
                cluster's own changes, for a cluster-wide token) when absent.",
    },
    CONSISTENCY,
];

const IDEMPOTENCY_HEADER: &[Param] = &[Param {
    name: "Idempotency-Key",
    kind: Kind::String,
    repeated: false,
    about: "Submitting again with the same key returns the first workflow (200) instead of \
            creating another; send it again with the same key after an unknown outcome (500, \
            503, 504, a lost connection).",
}];

const DELIVERY_HEADERS: &[Param] = &[
    Param {
        name: "X-Baton-Signature-256",
        kind: Kind::String,
        repeated: false,
        about: "`sha256=` and the hex HMAC-SHA256 of the body under the trigger's secret \
                (GitHub's `X-Hub-Signature-256` is read too).",
    },
    Param {
        name: "X-Baton-Delivery",
        kind: Kind::String,
        repeated: false,
        about: "The delivery's id (GitHub's `X-GitHub-Delivery` is read too): a redelivery with \
                the same id returns the first run. Printable ASCII, at most 128 bytes.",
    },
];

const LAST_EVENT_HEADER: &[Param] = &[Param {
    name: "Last-Event-ID",
    kind: Kind::String,
    repeated: false,
    about: "The id of the last event received (`INDEX.N`): the stream resumes right after it. \
            Browsers' EventSource sends it when it reconnects.",
}];

const TEMPLATE_QUERY: &[Param] = &[
    Param {
        name: "version",
        kind: Kind::Integer,
        repeated: false,
        about: "This version; the latest when absent.",
    },
    NAMESPACE,
    CONSISTENCY,
];

const SCHEDULE_CREATE_QUERY: &[Param] = &[
    Param {
        name: "replace",
        kind: Kind::Boolean,
        repeated: false,
        about: "`true`: replace a schedule of the same name (its run history stays).",
    },
    NAMESPACE,
];

/// Every route of the JSON API. The router and the OpenAPI document are both built from this.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
        rpc: "",
        summary: "This API's OpenAPI 3.1 document.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "OpenApi",
        handler: || get(openapi),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows",
        rpc: "/baton.v1.WorkflowService/Submit",
        summary: "Submit a workflow: the body is its spec (YAML or JSON). An `Idempotency-Key` \
                  header makes a retry return the first submit's workflow (200) instead of \
                  creating another (201).",
        query: SUBMIT_QUERY,
        headers: IDEMPOTENCY_HEADER,
        body: Body::Spec,
        ok: 201,
        answer: "Submitted",
        handler: || post(submit),
    },
    Route {
        method: "GET",
        path: "/api/v1/workflows",
        rpc: "/baton.v1.WorkflowService/List",
        summary: "List workflows, newest first, without their steps.",
        query: LIST_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "WorkflowPage",
        handler: || get(list),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/batch",
        rpc: "/baton.v1.WorkflowService/SubmitBatch",
        summary: "Submit up to 256 workflows in one Raft entry: all are committed, or none is.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "BatchRequest",
            optional: false,
        },
        ok: 200,
        answer: "BatchResult",
        handler: || post(submit_batch),
    },
    Route {
        method: "GET",
        path: "/api/v1/workflows/{id}",
        rpc: "/baton.v1.WorkflowService/Get",
        summary: "One workflow with its spec and steps (the fields of `baton get -o json`).",
        query: GET_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Workflow",
        handler: || get(get_workflow),
    },
    Route {
        method: "GET",
        path: "/api/v1/workflows/{id}/history",
        rpc: "/baton.v1.WorkflowService/GetHistory",
        summary: "Every event of one workflow since it was submitted, oldest first.",
        query: READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "History",
        handler: || get(history),
    },
    Route {
        method: "GET",
        path: "/api/v1/workflows/{id}/events",
        rpc: "/baton.v1.WorkflowService/Watch",
        summary: "One workflow's events as Server-Sent Events (`event: workflow_event`, JSON \
                  data, id `INDEX.N`): its history first, then live; ends when it ends.",
        query: WATCH_QUERY,
        headers: LAST_EVENT_HEADER,
        body: Body::None,
        ok: 200,
        answer: "EventStream",
        handler: || get(watch_one),
    },
    Route {
        method: "GET",
        path: "/api/v1/events",
        rpc: "/baton.v1.WorkflowService/Watch",
        summary: "Every workflow's events as Server-Sent Events, from `from_index` on.",
        query: WATCH_ALL_QUERY,
        headers: LAST_EVENT_HEADER,
        body: Body::None,
        ok: 200,
        answer: "EventStream",
        handler: || get(watch_all),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/{id}/cancel",
        rpc: "/baton.v1.WorkflowService/Cancel",
        summary: "Cancel a workflow: pending steps never start, running attempts are told to \
                  stop. A finished workflow stays as it was.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "CancelRequest",
            optional: true,
        },
        ok: 200,
        answer: "Cancelled",
        handler: || post(cancel),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/{id}/pause",
        rpc: "/baton.v1.WorkflowService/Pause",
        summary: "Pause a workflow: no new step starts; running steps finish.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Changed",
        handler: || post(pause),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/{id}/resume",
        rpc: "/baton.v1.WorkflowService/Resume",
        summary: "Resume a paused workflow.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Changed",
        handler: || post(resume),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/{id}/retry",
        rpc: "/baton.v1.WorkflowService/Retry",
        summary: "Rerun a finished workflow's failed, cancelled and timed-out steps (or \
                  `from_step`) and every step after them.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "RetryRequest",
            optional: true,
        },
        ok: 200,
        answer: "Retried",
        handler: || post(retry),
    },
    Route {
        method: "POST",
        path: "/api/v1/workflows/{id}/signal",
        rpc: "/baton.v1.WorkflowService/Signal",
        summary: "Complete a waiting `wait` step: it succeeds with `data` as its output, or \
                  fails when `reject` is true.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "SignalRequest",
            optional: false,
        },
        ok: 200,
        answer: "Empty",
        handler: || post(signal),
    },
    Route {
        method: "GET",
        path: "/api/v1/templates",
        rpc: "/baton.v1.TemplateService/ListTemplates",
        summary: "Every template, its latest version, without the spec's steps.",
        query: NS_READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "TemplateList",
        handler: || get(list_templates),
    },
    Route {
        method: "POST",
        path: "/api/v1/templates",
        rpc: "/baton.v1.TemplateService/ApplyTemplate",
        summary: "Register a template: the body is a workflow spec (YAML or JSON) whose name \
                  names the template. A changed spec makes a new version (201); the same spec \
                  keeps the latest (200).",
        query: NS_QUERY,
        headers: &[],
        body: Body::Spec,
        ok: 201,
        answer: "TemplateApplied",
        handler: || post(apply_template),
    },
    Route {
        method: "GET",
        path: "/api/v1/templates/{name}",
        rpc: "/baton.v1.TemplateService/GetTemplate",
        summary: "One template version with its spec.",
        query: TEMPLATE_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Template",
        handler: || get(get_template),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/templates/{name}",
        rpc: "/baton.v1.TemplateService/DeleteTemplate",
        summary: "Delete a template and all its versions; its runs keep its name and version.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Empty",
        handler: || delete(delete_template),
    },
    Route {
        method: "POST",
        path: "/api/v1/templates/{name}/runs",
        rpc: "/baton.v1.WorkflowService/Submit",
        summary: "Start a run of a template with parameters; `Idempotency-Key` as for a submit.",
        query: NS_QUERY,
        headers: IDEMPOTENCY_HEADER,
        body: Body::Json {
            schema: "RunRequest",
            optional: true,
        },
        ok: 201,
        answer: "Submitted",
        handler: || post(run_template),
    },
    Route {
        method: "GET",
        path: "/api/v1/schedules",
        rpc: "/baton.v1.ScheduleService/ListSchedules",
        summary: "Every schedule, by name.",
        query: NS_READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "ScheduleList",
        handler: || get(list_schedules),
    },
    Route {
        method: "POST",
        path: "/api/v1/schedules",
        rpc: "/baton.v1.ScheduleService/CreateSchedule",
        summary: "Create a schedule: the body is its YAML or JSON (as `baton schedule create` \
                  reads). 409 when one of that name exists, unless `replace=true`.",
        query: SCHEDULE_CREATE_QUERY,
        headers: &[],
        body: Body::Schedule,
        ok: 201,
        answer: "ScheduleCreated",
        handler: || post(create_schedule),
    },
    Route {
        method: "GET",
        path: "/api/v1/schedules/{name}",
        rpc: "/baton.v1.ScheduleService/GetSchedule",
        summary: "One schedule, its counters and its next few times (`upcoming_ms`).",
        query: NS_READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Schedule",
        handler: || get(get_schedule),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/schedules/{name}",
        rpc: "/baton.v1.ScheduleService/DeleteSchedule",
        summary: "Delete a schedule; its runs go on.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Empty",
        handler: || delete(delete_schedule),
    },
    Route {
        method: "POST",
        path: "/api/v1/schedules/{name}/pause",
        rpc: "/baton.v1.ScheduleService/PauseSchedule",
        summary: "Pause a schedule: it starts nothing until resumed.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Changed",
        handler: || post(pause_schedule),
    },
    Route {
        method: "POST",
        path: "/api/v1/schedules/{name}/resume",
        rpc: "/baton.v1.ScheduleService/PauseSchedule",
        summary: "Resume a paused schedule.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Changed",
        handler: || post(resume_schedule),
    },
    Route {
        method: "POST",
        path: "/api/v1/schedules/{name}/trigger",
        rpc: "/baton.v1.ScheduleService/TriggerSchedule",
        summary: "Start a run now, subject to the overlap policy.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Triggered",
        handler: || post(trigger_schedule),
    },
    Route {
        method: "POST",
        path: "/api/v1/schedules/{name}/backfill",
        rpc: "/baton.v1.ScheduleService/BackfillSchedule",
        summary: "Start a run for every time of the schedule in [from_ms, to_ms] that has none.",
        query: NS_QUERY,
        headers: &[],
        body: Body::Json {
            schema: "BackfillRequest",
            optional: false,
        },
        ok: 200,
        answer: "Backfilled",
        handler: || post(backfill_schedule),
    },
    Route {
        method: "GET",
        path: "/api/v1/triggers",
        rpc: "/baton.v1.TriggerService/ListTriggers",
        summary: "Every webhook trigger, by name (never their secrets). Create them with `baton \
                  trigger create`.",
        query: NS_READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "TriggerList",
        handler: || get(list_triggers),
    },
    Route {
        method: "GET",
        path: "/api/v1/triggers/{name}",
        rpc: "/baton.v1.TriggerService/GetTrigger",
        summary: "One webhook trigger (never its secret).",
        query: NS_READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Trigger",
        handler: || get(get_trigger),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/triggers/{name}",
        rpc: "/baton.v1.TriggerService/DeleteTrigger",
        summary: "Delete a webhook trigger; the runs it started go on.",
        query: NS_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Empty",
        handler: || delete(delete_trigger),
    },
    Route {
        method: "POST",
        path: "/api/v1/triggers/{name}",
        rpc: "",
        summary: "A webhook delivery: starts a run of the trigger's template with parameters \
                  from the JSON body. No bearer token: the body must be signed with the \
                  trigger's secret (HMAC-SHA256, `sha256=HEX`, as GitHub signs). 401 and no run \
                  for a missing or wrong signature; a repeated delivery id answers 200 with the \
                  first run.",
        query: NS_QUERY,
        headers: DELIVERY_HEADERS,
        body: Body::Webhook,
        ok: 201,
        answer: "Delivered",
        handler: || post(deliver),
    },
    Route {
        method: "GET",
        path: "/api/v1/agents",
        rpc: "/baton.v1.AdminService/ListAgents",
        summary: "The agents the leader knows: capacity, use, labels and running steps.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "AgentList",
        handler: || get(agents),
    },
    Route {
        method: "GET",
        path: "/api/v1/audit",
        rpc: "/baton.v1.AdminService/ListAudit",
        summary: "Who changed what, newest first: submits, cancels, pauses, retries and \
                  signals of the workflows held, and changes to tokens, namespaces, members, \
                  templates, schedules and triggers.",
        query: AUDIT_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "AuditList",
        handler: || get(list_audit),
    },
    Route {
        method: "GET",
        path: "/api/v1/namespaces",
        rpc: "/baton.v1.AdminService/ListNamespaces",
        summary: "The namespaces the caller may read, with how many workflows each holds.",
        query: READ_QUERY,
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "NamespaceList",
        handler: || get(list_namespaces),
    },
    Route {
        method: "POST",
        path: "/api/v1/namespaces",
        rpc: "/baton.v1.AdminService/CreateNamespace",
        summary: "Create a namespace (a cluster-wide admin token). 409 when it exists.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "NamespaceRequest",
            optional: false,
        },
        ok: 201,
        answer: "Empty",
        handler: || post(create_namespace),
    },
    Route {
        method: "PATCH",
        path: "/api/v1/namespaces/{name}",
        rpc: "/baton.v1.AdminService/UpdateNamespace",
        summary: "Change a namespace's description or quotas (a cluster-wide admin token): the \
                  fields given; 0 lifts a quota. Answers the namespace after.",
        query: &[],
        headers: &[],
        body: Body::Json {
            schema: "NamespaceUpdate",
            optional: false,
        },
        ok: 200,
        answer: "Namespace",
        handler: || patch(update_namespace),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/namespaces/{name}",
        rpc: "/baton.v1.AdminService/DeleteNamespace",
        summary: "Delete an empty namespace (a cluster-wide admin token); 409 naming what it \
                  still holds otherwise.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "Empty",
        handler: || delete(delete_namespace),
    },
    Route {
        method: "GET",
        path: "/api/v1/cluster",
        rpc: "/baton.v1.AdminService/ClusterStatus",
        summary: "This node's view of the cluster: members, leader, term, indexes, state hash.",
        query: &[],
        headers: &[],
        body: Body::None,
        ok: 200,
        answer: "ClusterStatus",
        handler: || get(cluster),
    },
];

// ---- Input --------------------------------------------------------------------------------

/// The query string, checked against the parameters a route declares: an unknown or repeated
/// (where not allowed) parameter is a 400 naming it.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri, declared: &[Param]) -> Result<Params, ApiError> {
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::invalid(format!("query string: {}", e.body_text())))?
            .0;
        let declared_for = |name: &str| declared.iter().find(|p| p.name == name);
        let mut seen = HashMap::new();
        for (name, _) in &pairs {
            let Some(param) = declared_for(name) else {
                let known: Vec<&str> = declared.iter().map(|p| p.name).collect();
                return Err(ApiError::invalid(if known.is_empty() {
                    format!("query parameter {name}: this route takes none")
                } else {
                    format!(
                        "query parameter {name}: unknown; this route takes {}",
                        known.join(", ")
                    )
                }));
            };
            let count = seen.entry(name.as_str()).or_insert(0);
            *count += 1;
            if *count > 1 && !param.repeated {
                return Err(ApiError::invalid(format!(
                    "query parameter {name}: given more than once"
                )));
            }
        }
        Ok(Params(pairs))
    }

    /// `?namespace=`, empty when absent (the service takes `default`).
    fn namespace(&self) -> String {
        self.one("namespace").unwrap_or_default().to_string()
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.one(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "query parameter {name}: {text:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    fn boolean(&self, name: &str) -> Result<bool, ApiError> {
        match self.one(name) {
            None | Some("false") => Ok(false),
            Some("true" | "") => Ok(true),
            Some(other) => Err(ApiError::invalid(format!(
                "query parameter {name}: {other:?} is not true or false"
            ))),
        }
    }

    fn consistency(&self) -> Result<i32, ApiError> {
        match self.one("consistency") {
            None | Some("linearizable") => Ok(pb::ReadConsistency::Linearizable as i32),
            Some("stale") => Ok(pb::ReadConsistency::Stale as i32),
            Some(other) => Err(ApiError::invalid(format!(
                "query parameter consistency: {other:?} is not linearizable or stale"
            ))),
        }
    }

    /// The `key=value` pairs of a repeated parameter, as a map; a repeated key is an error.
    fn pairs(&self, name: &str) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let mut map = std::collections::BTreeMap::new();
        for pair in self.all(name) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ApiError::invalid(format!("query parameter {name}: {pair:?} is not key=value"))
            })?;
            if map.insert(key.to_string(), value.to_string()).is_some() {
                return Err(ApiError::invalid(format!(
                    "query parameter {name}: {key} given more than once"
                )));
            }
        }
        Ok(map)
    }
}

/// A workflow id from the path.
fn workflow_id(text: &str) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::invalid(format!(
            "workflow id: {text:?} is not a workflow id (a positive integer)"
        ))),
    }
}

/// The body as text, in the format its `Content-Type` names (JSON for `application/json` or
/// `+json`; YAML for YAML types, text, or none).
fn text_body<'a>(headers: &HeaderMap, body: &'a Bytes) -> Result<(&'a str, SpecFormat), ApiError> {
    let format = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }) {
        Some(t) if t == "application/json" || t.ends_with("+json") => SpecFormat::Json,
        Some(t)
            if t.is_empty()
                || t.contains("yaml")
                || t.starts_with("text/")
                || t == "application/octet-stream" =>
        {
            SpecFormat::Yaml
        }
        None => SpecFormat::Yaml,
        Some(other) => {
            return Err(ApiError(Status::invalid_argument(format!(
                "Content-Type: {other} is neither JSON (application/json) nor YAML \
                 (application/yaml)"
            ))));
        }
    };
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("body: not UTF-8 text ({e})")))?;
    Ok((text, format))
}

/// A workflow spec from the body.
fn spec_body(headers: &HeaderMap, body: &Bytes) -> Result<pb::WorkflowSpec, ApiError> {
    let (text, format) = text_body(headers, body)?;
    parse_spec(text, format).map_err(|e| ApiError::invalid(format!("body: {e}")))
}

/// A JSON body of shape `T`; an empty body is `T::default()` when `optional`.
fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
    optional: bool,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(T::default())
        } else {
            Err(ApiError::invalid(
                "body: empty; this route takes a JSON object",
            ))
        };
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("body: {e}")))
}

/// The `Idempotency-Key` header.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(String::new()),
        Some(value) => value
            .to_str()
            .map(str::to_string)
            .map_err(|_| ApiError::invalid("Idempotency-Key: not visible ASCII text".to_string())),
    }
}

fn ok(value: Value) -> Answer {
    Ok(Json(value).into_response())
}

/// 201 with a `Location` when `created`, else 200.
fn created(created: bool, location: String, value: Value) -> Answer {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [(header::LOCATION, location)], Json(value)).into_response())
}

// ---- Workflows ----------------------------------------------------------------------------

async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

async fn submit(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let params = Params::parse(&uri, SUBMIT_QUERY)?;
    let request = pb::SubmitRequest {
        spec: Some(spec_body(&headers, &body)?),
        idempotency_key: idempotency_key(&headers)?,
        params: params.pairs("param")?,
        namespace: params.namespace(),
        ..Default::default()
    };
    let submitted = WorkflowService::submit(&api.workflows, caller.request(request))
        .await?
        .into_inner();
    created(
        submitted.created,
        format!("/api/v1/workflows/{}", submitted.workflow_id),
        shapes::submit_json(&submitted),
    )
}

/// One item of a batch: a spec (a JSON object, or YAML or JSON text) or a template.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    template: String,
    #[serde(default)]
    template_version: u32,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    submits: Vec<BatchItem>,
}

async fn submit_batch(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let batch: BatchRequest = json_body(&body, false)?;
    let mut submits = Vec::with_capacity(batch.submits.len());
    for (i, item) in batch.submits.into_iter().enumerate() {
        let spec = match item.spec {
            None => None,
            Some(Value::String(text)) => Some(parse_spec(&text, SpecFormat::Yaml)),
            Some(object) => Some(parse_spec(&object.to_string(), SpecFormat::Json)),
        }
        .transpose()
        .map_err(|e| ApiError::invalid(format!("submits[{i}].spec: {e}")))?;
        submits.push(pb::SubmitRequest {
            spec,
            idempotency_key: item.idempotency_key,
            params: item.params,
            template: item.template,
            template_version: item.template_version,
            namespace: item.namespace,
        });
    }
    let results = WorkflowService::submit_batch(
        &api.workflows,
        caller.request(pb::SubmitBatchRequest { submits }),
    )
    .await?
    .into_inner()
    .results;
    let results: Vec<Value> = results
        .iter()
        .map(|result| match &result.outcome {
            Some(pb::submit_batch_result::Outcome::Submitted(s)) => shapes::submit_json(s),
            Some(pb::submit_batch_result::Outcome::Rejected(why)) => json!({"rejected": why}),
            None => json!({"rejected": "no outcome"}),
        })
        .collect();
    ok(json!({ "results": results }))
}

async fn list(State(api): State<Api>, Extension(caller): Extension<Caller>, uri: Uri) -> Answer {
    let params = Params::parse(&uri, LIST_QUERY)?;
    let mut states = Vec::new();
    for name in params.all("state").flat_map(|v| v.split(',')) {
        let state = parse_workflow_state(name.trim()).ok_or_else(|| {
            ApiError::invalid(format!(
                "query parameter state: {name:?} is not a workflow state (running, succeeded, \
                 failed, cancelled, timed_out)"
            ))
        })?;
        states.push(state as i32);
    }
    let labels = params.pairs("label")?;
    let request = pb::ListRequest {
        states,
        name_prefix: params.one("name").unwrap_or_default().to_string(),
        labels,
        page_size: params.number("page_size")?.unwrap_or(0),
        page_token: params.one("page_token").unwrap_or_default().to_string(),
        consistency: params.consistency()?,
        schedule: params.one("schedule").unwrap_or_default().to_string(),
        namespace: params.namespace(),
        all_namespaces: params.boolean("all_namespaces")?,
    };
    let page = WorkflowService::list(&api.workflows, caller.request(request))
        .await?
        .into_inner();
    ok(json!({
        "workflows": page.workflows.iter().map(shapes::workflow_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    }))
}

async fn get_workflow(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, GET_QUERY)?;
    let request = pb::GetRequest {
        workflow_id: workflow_id(&id)?,
        consistency: params.consistency()?,
        attempts_of_step: params.one("attempts_of").unwrap_or_default().to_string(),
    };
    let workflow = WorkflowService::get(&api.workflows, caller.request(request))
        .await?
        .into_inner()
        .workflow
        .unwrap_or_default();
    ok(shapes::workflow_json(&workflow))
}

async fn history(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, READ_QUERY)?;
    let request = pb::GetHistoryRequest {
        workflow_id: workflow_id(&id)?,
        consistency: params.consistency()?,
    };
    let events = WorkflowService::get_history(&api.workflows, caller.request(request))
        .await?
        .into_inner()
        .events;
    ok(json!({"events": events.iter().map(shapes::event_json).collect::<Vec<_>>()}))
}

/// Where a watch starts: `Last-Event-ID` (`INDEX.N`: resume after the N-th event of INDEX) over
/// `from_index`. Returns the index to ask from and how many events of it to skip.
fn watch_start(headers: &HeaderMap, params: &Params) -> Result<(u64, usize), ApiError> {
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default();
        let parsed = text
            .split_once('.')
            .and_then(|(index, n)| Some((index.parse().ok()?, n.parse::<usize>().ok()?)));
        return match parsed.and_then(|(index, n): (u64, usize)| Some((index, n.checked_add(1)?))) {
            Some((index, skip)) => Ok((index, skip)),
            None => Err(ApiError::invalid(format!(
                "Last-Event-ID: {text:?} is not an event id of this API (INDEX.N)"
            ))),
        };
    }
    Ok((params.number("from_index")?.unwrap_or(0), 0))
}

/// The watch as Server-Sent Events: each event's id is `INDEX.N` (its log index, and its place
/// among that index's events), so a reconnecting `EventSource` resumes exactly after the last
/// event it saw. An error ends the stream with an `event: error` carrying the error body.
fn event_stream(
    events: impl Stream<Item = Result<pb::WorkflowEvent, Status>> + Send + 'static,
    (from_index, skip): (u64, usize),
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
    let mut place: Option<(u64, usize)> = None;
    let stream = events
        .scan(false, |ended, item| {
            let out = if *ended { None } else { Some(item) };
            if matches!(out, Some(Err(_))) {
                *ended = true;
            }
            std::future::ready(out)
        })
        .filter_map(move |item| {
            let event = match item {
                Ok(event) => {
                    let n = match place {
                        Some((index, n)) if index == event.index => n + 1,
                        _ => 0,
                    };
                    place = Some((event.index, n));
                    if event.index == from_index && n < skip {
                        None
                    } else {
                        Some(
                            Event::default()
                                .event("workflow_event")
                                .id(format!("{}.{n}", event.index))
                                .data(shapes::event_json(&event).to_string()),
                        )
                    }
                }
                Err(status) => Some(
                    Event::default()
                        .event("error")
                        .data(error_body(status.code(), status.message()).to_string()),
                ),
            };
            std::future::ready(event.map(Ok))
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(crate::limits::SSE_KEEPALIVE))
}

async fn watch(
    api: &Api,
    caller: &Caller,
    workflow: u64,
    uri: &Uri,
    headers: &HeaderMap,
) -> Answer {
    let params = Params::parse(
        uri,
        match workflow {
            0 => WATCH_ALL_QUERY,
            _ => WATCH_QUERY,
        },
    )?;
    let start = watch_start(headers, &params)?;
    // Resuming inside an index whose first events the node no longer holds (or before what it
    // holds) is refused by the watch itself (OUT_OF_RANGE naming where it can start).
    let request = pb::WatchRequest {
        workflow_id: workflow,
        from_index: start.0,
        namespace: params.namespace(),
        all_namespaces: params.boolean("all_namespaces")?,
    };
    let events = WorkflowService::watch(&api.workflows, caller.request(request))
        .await?
        .into_inner();
    Ok(event_stream(events, start).into_response())
}

async fn watch_one(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    watch(&api, &caller, workflow_id(&id)?, &uri, &headers).await
}

async fn watch_all(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Answer {
    watch(&api, &caller, 0, &uri, &headers).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: String,
}

async fn cancel(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let workflow_id = workflow_id(&id)?;
    let CancelBody { reason } = json_body(&body, true)?;
    let state = WorkflowService::cancel(
        &api.workflows,
        caller.request(pb::CancelRequest {
            workflow_id,
            reason,
        }),
    )
    .await?
    .into_inner()
    .state;
    ok(json!({
        "workflow_id": workflow_id,
        "state": baton_proto::names::workflow_state_name(state),
    }))
}

async fn pause(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    Params::parse(&uri, &[])?;
    let request = pb::PauseRequest {
        workflow_id: workflow_id(&id)?,
    };
    let changed = WorkflowService::pause(&api.workflows, caller.request(request))
        .await?
        .into_inner()
        .changed;
    ok(json!({ "changed": changed }))
}

async fn resume(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    Params::parse(&uri, &[])?;
    let request = pb::PauseRequest {
        workflow_id: workflow_id(&id)?,
    };
    let changed = WorkflowService::resume(&api.workflows, caller.request(request))
        .await?
        .into_inner()
        .changed;
    ok(json!({ "changed": changed }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    from_step: String,
}

async fn retry(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let workflow_id = workflow_id(&id)?;
    let RetryBody { from_step } = json_body(&body, true)?;
    let steps = WorkflowService::retry(
        &api.workflows,
        caller.request(pb::RetryRequest {
            workflow_id,
            from_step,
        }),
    )
    .await?
    .into_inner()
    .steps;
    ok(json!({ "workflow_id": workflow_id, "steps": steps }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    step: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    reject: bool,
}

async fn signal(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let workflow_id = workflow_id(&id)?;
    let SignalBody { step, data, reject } = json_body(&body, false)?;
    WorkflowService::signal(
        &api.workflows,
        caller.request(pb::SignalRequest {
            workflow_id,
            step,
            data,
            reject,
        }),
    )
    .await?;
    ok(json!({}))
}

// ---- Templates ----------------------------------------------------------------------------

async fn list_templates(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_READ_QUERY)?;
    let request = pb::ListTemplatesRequest {
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let templates = TemplateService::list_templates(&api.templates, caller.request(request))
        .await?
        .into_inner()
        .templates;
    ok(json!({"templates": templates.iter().map(shapes::template_json).collect::<Vec<_>>()}))
}

async fn apply_template(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    let spec = spec_body(&headers, &body)?;
    let name = spec.name.clone();
    let applied = TemplateService::apply_template(
        &api.templates,
        caller.request(pb::ApplyTemplateRequest {
            spec: Some(spec),
            namespace: params.namespace(),
        }),
    )
    .await?
    .into_inner();
    created(
        applied.created,
        format!("/api/v1/templates/{name}?version={}", applied.version),
        json!({"name": name, "version": applied.version, "created": applied.created}),
    )
}

async fn get_template(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, TEMPLATE_QUERY)?;
    let request = pb::GetTemplateRequest {
        name,
        version: params.number("version")?.unwrap_or(0),
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let template = TemplateService::get_template(&api.templates, caller.request(request))
        .await?
        .into_inner()
        .template
        .unwrap_or_default();
    ok(shapes::template_json(&template))
}

async fn delete_template(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    TemplateService::delete_template(
        &api.templates,
        caller.request(pb::DeleteTemplateRequest {
            name,
            namespace: params.namespace(),
        }),
    )
    .await?;
    ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    version: u32,
}

async fn run_template(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    let RunBody {
        params: values,
        version,
    } = json_body(&body, true)?;
    let request = pb::SubmitRequest {
        spec: None,
        idempotency_key: idempotency_key(&headers)?,
        params: values,
        template: name,
        template_version: version,
        namespace: params.namespace(),
    };
    let submitted = WorkflowService::submit(&api.workflows, caller.request(request))
        .await?
        .into_inner();
    created(
        submitted.created,
        format!("/api/v1/workflows/{}", submitted.workflow_id),
        shapes::submit_json(&submitted),
    )
}

// ---- Schedules ----------------------------------------------------------------------------

async fn list_schedules(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_READ_QUERY)?;
    let request = pb::ListSchedulesRequest {
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let schedules = ScheduleService::list_schedules(&api.schedules, caller.request(request))
        .await?
        .into_inner()
        .schedules;
    ok(json!({"schedules": schedules.iter().map(shapes::schedule_json).collect::<Vec<_>>()}))
}

async fn create_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let params = Params::parse(&uri, SCHEDULE_CREATE_QUERY)?;
    let (text, format) = text_body(&headers, &body)?;
    let spec = baton_proto::schedule::parse_schedule(text, format)
        .map_err(|e| ApiError::invalid(format!("body: {e}")))?;
    let name = spec.name.clone();
    let made = ScheduleService::create_schedule(
        &api.schedules,
        caller.request(pb::CreateScheduleRequest {
            spec: Some(spec),
            replace: params.boolean("replace")?,
            namespace: params.namespace(),
        }),
    )
    .await?
    .into_inner();
    created(
        made.created,
        format!("/api/v1/schedules/{name}"),
        json!({"name": name, "created": made.created, "next_fire_ms": made.next_fire_ms}),
    )
}

async fn get_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_READ_QUERY)?;
    let request = pb::GetScheduleRequest {
        name,
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let got = ScheduleService::get_schedule(&api.schedules, caller.request(request))
        .await?
        .into_inner();
    let mut value = shapes::schedule_json(&got.schedule.unwrap_or_default());
    value["upcoming_ms"] = json!(got.upcoming_ms);
    ok(value)
}

async fn delete_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    ScheduleService::delete_schedule(
        &api.schedules,
        caller.request(pb::DeleteScheduleRequest {
            name,
            namespace: params.namespace(),
        }),
    )
    .await?;
    ok(json!({}))
}

async fn set_schedule_paused(
    api: &Api,
    caller: &Caller,
    params: &Params,
    name: String,
    paused: bool,
) -> Answer {
    let changed = ScheduleService::pause_schedule(
        &api.schedules,
        caller.request(pb::PauseScheduleRequest {
            name,
            paused,
            namespace: params.namespace(),
        }),
    )
    .await?
    .into_inner()
    .changed;
    ok(json!({ "changed": changed }))
}

async fn pause_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    set_schedule_paused(&api, &caller, &params, name, true).await
}

async fn resume_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    set_schedule_paused(&api, &caller, &params, name, false).await
}

async fn trigger_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    let fired = ScheduleService::trigger_schedule(
        &api.schedules,
        caller.request(pb::TriggerScheduleRequest {
            name,
            namespace: params.namespace(),
        }),
    )
    .await?
    .into_inner();
    ok(json!({
        "workflow_id": (fired.workflow_id != 0).then_some(fired.workflow_id),
        "nominal_time_ms": fired.nominal_time_ms,
        "outcome": fired.outcome,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    from_ms: u64,
    to_ms: u64,
}

async fn backfill_schedule(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    let BackfillBody { from_ms, to_ms } = json_body(&body, false)?;
    let filled = ScheduleService::backfill_schedule(
        &api.schedules,
        caller.request(pb::BackfillScheduleRequest {
            name: name.clone(),
            from_ms,
            to_ms,
            namespace: params.namespace(),
        }),
    )
    .await?
    .into_inner();
    ok(json!({
        "name": name,
        "started": filled.started.iter().map(shapes::run_json).collect::<Vec<_>>(),
        "already_run": filled.already_run,
        "stopped": (!filled.stopped.is_empty()).then_some(&filled.stopped),
    }))
}

// ---- Webhook triggers ---------------------------------------------------------------------

async fn list_triggers(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_READ_QUERY)?;
    let request = pb::ListTriggersRequest {
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let triggers = TriggerService::list_triggers(&api.triggers, caller.request(request))
        .await?
        .into_inner()
        .triggers;
    ok(json!({"triggers": triggers.iter().map(shapes::trigger_json).collect::<Vec<_>>()}))
}

async fn get_trigger(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_READ_QUERY)?;
    let request = pb::GetTriggerRequest {
        name,
        consistency: params.consistency()?,
        namespace: params.namespace(),
    };
    let trigger = TriggerService::get_trigger(&api.triggers, caller.request(request))
        .await?
        .into_inner()
        .trigger
        .unwrap_or_default();
    ok(shapes::trigger_json(&trigger))
}

async fn delete_trigger(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, NS_QUERY)?;
    TriggerService::delete_trigger(
        &api.triggers,
        caller.request(pb::DeleteTriggerRequest {
            name,
            namespace: params.namespace(),
        }),
    )
    .await?;
    ok(json!({}))
}

/// The first of `names` the request carries, with its value.
fn first_header<'a>(
    headers: &'a HeaderMap,
    names: &[&'static str],
) -> (&'static str, Option<&'a str>) {
    for name in names {
        if let Some(value) = headers.get(*name) {
            return (name, Some(value.to_str().unwrap_or("")));
        }
    }
    (names[0], None)
}

/// A webhook delivery: checked against the trigger's secret, then submitted as a run of its
/// template. Counted by trigger and outcome.
async fn deliver(
    State(api): State<Api>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let result = deliver_inner(&api, &name, &uri, &headers, &body).await;
    let outcome = match &result {
        Ok((_, true)) => "started",
        Ok((_, false)) => "duplicate",
        Err(e) if e.0.code() == tonic::Code::Unauthenticated => "bad_signature",
        Err(e) if e.0.code() == tonic::Code::NotFound => "unknown_trigger",
        Err(_) => "failed",
    };
    // An unknown name is not a label: anyone can post to any name.
    let label = if outcome == "unknown_trigger" {
        ""
    } else {
        name.as_str()
    };
    crate::metrics::trigger_delivery(label, outcome);
    let (response, _) = result?;
    Ok(response)
}

async fn deliver_inner(
    api: &Api,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Response, bool), ApiError> {
    let params = Params::parse(uri, NS_QUERY)?;
    let (header, signature) =
        first_header(headers, &["x-baton-signature-256", "x-hub-signature-256"]);
    // A name is one path segment of [A-Za-z0-9._-]: never a scoped name (`%2F` decodes to a
    // slash), so a delivery reaches only the trigger of the namespace it names.
    baton_proto::validate::check_name("name", "trigger name", name)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let namespace = crate::api::namespace_arg("namespace", &params.namespace())?;
    let scoped = crate::state::namespaces::scoped_name(&namespace, name);
    // The trigger and its secret as of this node's applied state: known, and signed for.
    let check = || -> Result<Arc<crate::state::Trigger>, ApiError> {
        let trigger = api
            .node
            .replica
            .read(|a| a.state.trigger(&scoped).cloned())
            .ok_or_else(|| crate::api::trigger::no_trigger(name))?;
        crate::api::trigger::verify_signature(header, signature, &trigger.secret, body)?;
        Ok(trigger)
    };
    // A delivery is decided on a linearizable read: a trigger deleted, or its secret replaced,
    // before the delivery arrived is seen as such on every node (a follower may lag). The read
    // costs a quorum round, so an unauthenticated caller gets one only for a delivery signed
    // with the secret this node knows, or, a few at a time, for a name or secret it does not
    // know yet (a trigger created or replaced a moment ago); past those, this node's answer.
    let _permit = match check() {
        Ok(_) => None,
        Err(refused) => match api.unknown_trigger_reads.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => return Err(refused),
        },
    };
    api.node.linearize().await.map_err(crate::api::node_error)?;
    let trigger = check()?;
    let (delivery_header, delivery) =
        first_header(headers, &["x-baton-delivery", "x-github-delivery"]);
    if let Some(id) = delivery
        && (id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (b'!'..=b'~').contains(&b)))
    {
        return Err(ApiError::invalid(format!(
            "{delivery_header}: {id:?} is not a delivery id (1 to 128 printable ASCII characters)"
        )));
    }
    let spec = trigger.spec();
    let document = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(document) => document,
            Err(e) if !spec.params_from_body.is_empty() => {
                return Err(ApiError::invalid(format!(
                    "body: not JSON ({e}); trigger {name:?} takes parameters from it"
                )));
            }
            Err(_) => Value::Null,
        }
    };
    let request = crate::api::trigger::delivery_request(
        &crate::api::stored_namespace(namespace),
        &spec,
        &document,
        delivery,
    );
    // Signed with the trigger's secret: the delivery acts as the trigger.
    let actor = format!("trigger {name}");
    let submitted = api.workflows.submit_delivery(request, actor).await?;
    let mut value = shapes::submit_json(&submitted);
    value["trigger"] = json!(name);
    value["delivery"] = json!(delivery);
    let response = created(
        submitted.created,
        format!("/api/v1/workflows/{}", submitted.workflow_id),
        value,
    )?;
    Ok((response, submitted.created))
}

// ---- Namespaces ---------------------------------------------------------------------------

async fn list_audit(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, AUDIT_QUERY)?;
    let request = pb::ListAuditRequest {
        since_ms: params.number("since_ms")?.unwrap_or(0),
        limit: params.number("limit")?.unwrap_or(0),
        namespace: params.namespace(),
        consistency: params.consistency()?,
    };
    let records = AdminService::list_audit(&api.admin, caller.request(request))
        .await?
        .into_inner()
        .records;
    ok(json!({
        "records": records.iter().map(shapes::audit_record_json).collect::<Vec<_>>(),
    }))
}

async fn list_namespaces(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Answer {
    let params = Params::parse(&uri, READ_QUERY)?;
    let request = pb::ListNamespacesRequest {
        consistency: params.consistency()?,
    };
    let namespaces = AdminService::list_namespaces(&api.admin, caller.request(request))
        .await?
        .into_inner()
        .namespaces;
    ok(json!({
        "namespaces": namespaces.iter().map(shapes::namespace_info_json).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NamespaceBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    quotas: Option<QuotasBody>,
    #[serde(default)]
    weight: u32,
}

/// A namespace's quotas as JSON; 0 is no limit.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QuotasBody {
    #[serde(default)]
    max_running_workflows: u64,
    #[serde(default)]
    max_active_steps: u64,
    #[serde(default)]
    submits_per_second: u32,
    #[serde(default)]
    submit_burst: u32,
}

/// The fields of a namespace to change; those absent stay.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NamespaceUpdateBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    max_running_workflows: Option<u64>,
    #[serde(default)]
    max_active_steps: Option<u64>,
    #[serde(default)]
    submits_per_second: Option<u32>,
    #[serde(default)]
    submit_burst: Option<u32>,
    #[serde(default)]
    weight: Option<u32>,
}

async fn update_namespace(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let update: NamespaceUpdateBody = json_body(&body, false)?;
    let namespace = AdminService::update_namespace(
        &api.admin,
        caller.request(pb::UpdateNamespaceRequest {
            name,
            description: update.description,
            max_running_workflows: update.max_running_workflows,
            max_active_steps: update.max_active_steps,
            submits_per_second: update.submits_per_second,
            submit_burst: update.submit_burst,
            weight: update.weight,
        }),
    )
    .await?
    .into_inner()
    .namespace
    .unwrap_or_default();
    ok(shapes::namespace_info_json(&namespace))
}

async fn create_namespace(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    Params::parse(&uri, &[])?;
    let NamespaceBody {
        name,
        description,
        quotas,
        weight,
    } = json_body(&body, false)?;
    AdminService::create_namespace(
        &api.admin,
        caller.request(pb::CreateNamespaceRequest {
            name: name.clone(),
            description,
            quotas: quotas.map(|q| pb::NamespaceQuotas {
                max_running_workflows: q.max_running_workflows,
                max_active_steps: q.max_active_steps,
                submits_per_second: q.submits_per_second,
                submit_burst: q.submit_burst,
            }),
            weight,
        }),
    )
    .await?;
    created(true, format!("/api/v1/namespaces/{name}"), json!({}))
}

async fn delete_namespace(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
) -> Answer {
    Params::parse(&uri, &[])?;
    AdminService::delete_namespace(
        &api.admin,
        caller.request(pb::DeleteNamespaceRequest { name }),
    )
    .await?;
    ok(json!({}))
}

// ---- Cluster ------------------------------------------------------------------------------

async fn agents(State(api): State<Api>, Extension(caller): Extension<Caller>, uri: Uri) -> Answer {
    Params::parse(&uri, &[])?;
    let agents = AdminService::list_agents(&api.admin, caller.request(pb::ListAgentsRequest {}))
        .await?
        .into_inner()
        .agents;
    ok(json!({"agents": agents.iter().map(shapes::agent_json).collect::<Vec<_>>()}))
}

async fn cluster(State(api): State<Api>, Extension(caller): Extension<Caller>, uri: Uri) -> Answer {
    Params::parse(&uri, &[])?;
    let status =
        AdminService::cluster_status(&api.admin, caller.request(pb::ClusterStatusRequest {}))
            .await?
            .into_inner();
    ok(shapes::cluster_status_json(&status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn query_strings_are_checked_against_the_route() {
        let params = Params::parse(
            &uri("/x?state=running,failed&state=succeeded&label=a=b&page_size=5"),
            LIST_QUERY,
        )
        .unwrap();
        assert_eq!(
            params.all("state").collect::<Vec<_>>(),
            ["running,failed", "succeeded"]
        );
        assert_eq!(params.number::<u32>("page_size").unwrap(), Some(5));
        let message = |q: &str, declared: &[Param]| {
            Params::parse(&uri(q), declared)
                .err()
                .map(|e| e.0.message().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            message("/x?stat=running", LIST_QUERY),
            "query parameter stat: unknown; this route takes state, name, label, schedule, \
             page_size, page_token, namespace, all_namespaces, consistency"
        );
        assert_eq!(
            message("/x?name=a&name=b", LIST_QUERY),
            "query parameter name: given more than once"
        );
        assert_eq!(
            message("/x?a=1", &[]),
            "query parameter a: this route takes none"
        );
        let submit = Params::parse(&uri("/x?param=env=prod&param=v=1%3D2"), SUBMIT_QUERY).unwrap();
        let pairs = submit.pairs("param").unwrap();
        assert_eq!(pairs["env"], "prod");
        assert_eq!(pairs["v"], "1=2");
        let twice = Params::parse(&uri("/x?param=a=1&param=a=2"), SUBMIT_QUERY).unwrap();
        assert_eq!(
            twice.pairs("param").unwrap_err().0.message(),
            "query parameter param: a given more than once"
        );
        let bad = Params::parse(&uri("/x?page_size=-1"), LIST_QUERY).unwrap();
        assert_eq!(
            bad.number::<u32>("page_size").unwrap_err().0.message(),
            "query parameter page_size: \"-1\" is not a non-negative integer"
        );
    }

    #[test]
    fn a_resumed_watch_starts_after_the_last_event_seen() {
        let params = Params::parse(&uri("/x?from_index=9"), WATCH_QUERY).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(watch_start(&headers, &params).unwrap(), (9, 0));
        headers.insert("last-event-id", "42.3".parse().unwrap());
        assert_eq!(watch_start(&headers, &params).unwrap(), (42, 4));
        headers.insert("last-event-id", "42".parse().unwrap());
        assert!(watch_start(&headers, &params).is_err());
    }

    #[test]
    fn bodies_name_their_format_and_problems() {
        let mut headers = HeaderMap::new();
        let body = Bytes::from_static(b"name: x\nsteps: []\n");
        assert_eq!(text_body(&headers, &body).unwrap().1, SpecFormat::Yaml);
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(text_body(&headers, &body).unwrap().1, SpecFormat::Json);
        headers.insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
        assert!(
            text_body(&headers, &body)
                .unwrap_err()
                .0
                .message()
                .starts_with("Content-Type: image/png")
        );
        let empty: Result<SignalBody, _> = json_body(&Bytes::new(), false);
        assert_eq!(
            empty.err().unwrap().0.message(),
            "body: empty; this route takes a JSON object"
        );
        let unknown: Result<CancelBody, _> = json_body(&Bytes::from_static(b"{\"reasn\":1}"), true);
        assert!(
            unknown
                .err()
                .unwrap()
                .0
                .message()
                .contains("unknown field `reasn`")
        );
        assert_eq!(workflow_id("12").unwrap(), 12);
        assert!(workflow_id("0").is_err());
        assert!(workflow_id("abc").is_err());
    }

    /// No two routes share a method and a path, and every path is under /api/v1/.
    #[test]
    fn the_route_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(route.path.starts_with("/api/v1/"), "{}", route.path);
            assert!(
                seen.insert((route.method, route.path)),
                "{} {}",
                route.method,
                route.path
            );
            if !route.rpc.is_empty() {
                // Every named method is in the table with a client role below admin, or is one
                // of the cluster's own admin calls: none falls to the admin-only default
                // through a typo.
                use crate::security::auth::Access;
                let access = crate::security::auth::access(route.rpc);
                let own = route.rpc.ends_with("/CreateNamespace")
                    || route.rpc.ends_with("/UpdateNamespace")
                    || route.rpc.ends_with("/DeleteNamespace");
                assert!(
                    match access {
                        Access::Client(role) => role != baton_security::TokenRole::Admin,
                        Access::Cluster(role) => own && role == baton_security::TokenRole::Admin,
                        _ => false,
                    },
                    "{}",
                    route.rpc
                );
            }
        }
    }

    /// The OpenAPI document's request schemas are the handlers' own types: each example reads,
    /// and an object with every documented property reads too (the types refuse unknown fields).
    #[test]
    fn request_schemas_are_what_the_handlers_read() {
        fn reads(name: &str, body: &Value) -> Result<(), ApiError> {
            let bytes = Bytes::from(body.to_string());
            match name {
                "BatchRequest" => json_body::<BatchRequest>(&bytes, false).map(drop),
                "CancelRequest" => json_body::<CancelBody>(&bytes, false).map(drop),
                "RetryRequest" => json_body::<RetryBody>(&bytes, false).map(drop),
                "SignalRequest" => json_body::<SignalBody>(&bytes, false).map(drop),
                "RunRequest" => json_body::<RunBody>(&bytes, false).map(drop),
                "BackfillRequest" => json_body::<BackfillBody>(&bytes, false).map(drop),
                "NamespaceRequest" => json_body::<NamespaceBody>(&bytes, false).map(drop),
                "NamespaceUpdate" => json_body::<NamespaceUpdateBody>(&bytes, false).map(drop),
                other => panic!("no handler type for {other}"),
            }
        }
        let schemas = super::super::openapi::request_schemas();
        for route in ROUTES {
            if let Body::Json { schema, .. } = route.body {
                assert!(schemas.iter().any(|(name, _)| *name == schema), "{schema}");
            }
        }
        for (name, schema) in schemas {
            let example = &schema["examples"][0];
            reads(name, example).unwrap_or_else(|e| panic!("{name} example: {}", e.0.message()));
            let every: serde_json::Map<String, Value> = schema["properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(property, s)| {
                    let value = match s["type"].as_str() {
                        Some("string") => json!("x"),
                        Some("integer") => json!(1),
                        Some("boolean") => json!(true),
                        Some("array") => json!([]),
                        _ => json!({}),
                    };
                    (property.clone(), value)
                })
                .collect();
            reads(name, &Value::Object(every))
                .unwrap_or_else(|e| panic!("{name} properties: {}", e.0.message()));
        }
    }
}
