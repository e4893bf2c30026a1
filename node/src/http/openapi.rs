//! The OpenAPI 3.1 document of the JSON API, served at `/api/v1/openapi.json`: its paths,
//! parameters, bodies and statuses are written from the route table ([`super::api::ROUTES`]),
//! so a route cannot exist without its entry; the schemas below describe the JSON shapes of
//! `baton_proto::json` and of the request bodies the handlers read (a test checks each request
//! schema's example against the handler's own type, and the integration tests check real answers
//! against the response schemas).

use serde_json::{Map, Value, json};

use super::api::{Body, Kind, Param, ROUTES, Route};
use super::error::http_status;

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Baton JSON API",
            "version": "v1",
            "description": "Baton's workflows, templates, schedules, agents and cluster over \
                HTTPS and JSON: the operations and meanings of the gRPC API `baton.v1`, on the \
                listener `batond --http-listen` opens. Authenticate with a bearer token (`baton \
                token create`); each route needs the role its gRPC method needs. Errors are \
                `{\"error\": {\"code\", \"message\"}}` with the gRPC code's name and the same \
                message as over gRPC. Any node answers; writes are forwarded to the leader.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Baton token (`baton_ID_SECRET`), as `baton token create` \
                        prints it.",
                },
            },
            "responses": error_responses(),
            "schemas": schemas(),
        },
    })
}

fn operation_id(route: &Route) -> String {
    let mut id = route.method.to_ascii_lowercase();
    for segment in route.path.trim_start_matches("/api/v1/").split('/') {
        let segment = segment.trim_matches(|c| c == '{' || c == '}');
        id.push('_');
        id.push_str(&segment.replace('.', "_"));
    }
    id
}

fn param_schema(param: &Param) -> Value {
    let one = match param.kind {
        Kind::String => json!({"type": "string"}),
        Kind::Integer => json!({"type": "integer", "minimum": 0}),
        Kind::Boolean => json!({"type": "boolean"}),
    };
    if param.repeated {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

fn operation(route: &Route) -> Value {
    let mut parameters = Vec::new();
    for segment in route.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (schema, about) = match name {
                "id" => (
                    json!({"type": "integer", "minimum": 1}),
                    "The workflow's id.",
                ),
                _ => (json!({"type": "string"}), "The name."),
            };
            parameters.push(json!({
                "name": name, "in": "path", "required": true, "schema": schema,
                "description": about,
            }));
        }
    }
    for param in route.query {
        let mut p = json!({
            "name": param.name, "in": "query", "required": false,
            "schema": param_schema(param), "description": param.about,
        });
        if param.repeated {
            p["style"] = json!("form");
            p["explode"] = json!(true);
        }
        parameters.push(p);
    }
    for param in route.headers {
        parameters.push(json!({
            "name": param.name, "in": "header", "required": false,
            "schema": param_schema(param), "description": param.about,
        }));
    }
    let mut operation = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses(route),
    });
    if route.rpc.is_empty() {
        operation["security"] = json!([]);
    } else {
        operation["description"] = json!(format!(
            "Authorized as the gRPC method `{}`.",
            route.rpc.trim_start_matches('/').replace('/', ".")
        ));
    }
    let text = |what: &str| {
        json!({
            "required": true,
            "description": format!("The {what} as YAML or JSON; `Content-Type` says which (YAML when absent)."),
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"$ref": format!("#/components/schemas/{}", if what == "schedule" { "ScheduleSpec" } else { "WorkflowSpec" })}},
            },
        })
    };
    match route.body {
        Body::None => {}
        Body::Spec => operation["requestBody"] = text("workflow spec"),
        Body::Schedule => operation["requestBody"] = text("schedule"),
        Body::Webhook => {
            operation["requestBody"] = json!({
                "required": false,
                "description": "The sender's payload, signed as the headers say; the trigger's \
                    `params_from_body` pointers read parameters from it.",
                "content": {"application/json": {"schema": {}}},
            });
        }
        Body::Json { schema, optional } => {
            operation["requestBody"] = json!({
                "required": !optional,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
            });
        }
    }
    operation
}

/// The statuses an error can take, each the `Error` body.
const ERROR_STATUSES: [u16; 8] = [400, 401, 403, 404, 409, 429, 500, 503];

fn responses(route: &Route) -> Value {
    let mut responses = Map::new();
    let content = if route.answer == "EventStream" {
        json!({"text/event-stream": {"schema": {"type": "string", "description":
            "Server-Sent Events: `event: workflow_event`, `id: INDEX.N`, `data:` a WorkflowEvent \
             as JSON; an error ends the stream with `event: error` and an Error as data."}}})
    } else {
        json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", route.answer)}}})
    };
    responses.insert(
        route.ok.to_string(),
        json!({"description": "Done.", "content": content.clone()}),
    );
    if route.ok == 201 {
        responses.insert(
            "200".into(),
            json!({"description": "It existed already (the same idempotency key, or the same spec).", "content": content}),
        );
    }
    if route.answer != "OpenApi" {
        for status in ERROR_STATUSES {
            responses.insert(
                status.to_string(),
                json!({"$ref": format!("#/components/responses/E{status}")}),
            );
        }
    }
    Value::Object(responses)
}

fn error_responses() -> Value {
    let about = |status: u16| match status {
        400 => "The request is malformed: the message names the field, parameter or header.",
        401 => "No valid bearer token (none, malformed, unknown or revoked).",
        403 => "The token's role may not do this; the message names the roles that may.",
        404 => "No such workflow, template or schedule (or route).",
        409 => "The state does not allow it now (FAILED_PRECONDITION, ALREADY_EXISTS).",
        429 => "A limit is full (RESOURCE_EXHAUSTED); back off.",
        500 => {
            "UNKNOWN (the write may have been applied: send it again with the same \
                idempotency key) or INTERNAL."
        }
        503 => "No leader, or leadership moved (UNAVAILABLE): certainly not applied; retry.",
        _ => "An error.",
    };
    let mut map = Map::new();
    for status in ERROR_STATUSES {
        map.insert(
            format!("E{status}"),
            json!({
                "description": about(status),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
    }
    // The mapping is the error module's: the documented statuses are the ones it produces.
    debug_assert!(
        ERROR_STATUSES
            .iter()
            .all(|s| (0..=16).any(|c| http_status(tonic::Code::from_i32(c)).as_u16() == *s))
    );
    Value::Object(map)
}

fn string() -> Value {
    json!({"type": "string"})
}
fn int() -> Value {
    json!({"type": "integer"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}
fn map_of_strings() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}
fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An object with these properties, all present in every answer (`required`), no others
/// documented.
fn object(description: &str, properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(name, schema)| (name.to_string(), schema.clone()))
        .collect();
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
    })
}

/// A request body: properties, the required ones, and an example.
fn request(
    description: &str,
    properties: &[(&str, Value)],
    required: &[&str],
    example: Value,
) -> Value {
    let properties: Map<String, Value> = properties
        .iter()
        .map(|(name, schema)| (name.to_string(), schema.clone()))
        .collect();
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
        "additionalProperties": false,
        "examples": [example],
    })
}

/// The request bodies' schemas, by name; each example is checked against the handler's type.
pub fn request_schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "BatchRequest",
            request(
                "Workflows to submit in one Raft entry. Each item has a `spec` (a JSON object, \
                 or YAML text) or a `template`.",
                &[(
                    "submits",
                    array(json!({
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "spec": {"oneOf": [reference("WorkflowSpec"), string()]},
                            "template": string(),
                            "template_version": int(),
                            "idempotency_key": string(),
                            "params": map_of_strings(),
                            "namespace": string(),
                        },
                    })),
                )],
                &["submits"],
                json!({"submits": [
                    {"spec": {"name": "hello", "steps": [{"name": "say", "run": ["echo", "hi"]}]},
                     "idempotency_key": "hello-1"},
                    {"template": "nightly-report", "params": {"day": "2026-12-06"}},
                ]}),
            ),
        ),
        (
            "CancelRequest",
            request(
                "Why (optional, kept in the history).",
                &[("reason", string())],
                &[],
                json!({"reason": "superseded by a newer deploy"}),
            ),
        ),
        (
            "RetryRequest",
            request(
                "Where to rerun from (optional: the failed, cancelled and timed-out steps).",
                &[("from_step", string())],
                &[],
                json!({"from_step": "deploy"}),
            ),
        ),
        (
            "SignalRequest",
            request(
                "The waiting step, its output, or a rejection.",
                &[
                    ("step", string()),
                    ("data", string()),
                    ("reject", boolean()),
                ],
                &["step"],
                json!({"step": "approve", "data": "approved by ops"}),
            ),
        ),
        (
            "RunRequest",
            request(
                "A template run's parameters and, optionally, its version (the latest when 0 or \
                 absent).",
                &[("params", map_of_strings()), ("version", int())],
                &[],
                json!({"params": {"env": "staging"}, "version": 2}),
            ),
        ),
        (
            "NamespaceRequest",
            request(
                "A new namespace: 1-63 of a-z 0-9 -, starting with a letter, and its quotas \
                 (optional; 0 is no limit).",
                &[
                    ("name", string()),
                    ("description", string()),
                    (
                        "quotas",
                        json!({
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "max_running_workflows": int(),
                                "max_active_steps": int(),
                                "submits_per_second": int(),
                                "submit_burst": int(),
                            },
                        }),
                    ),
                    ("weight", int()),
                ],
                &["name"],
                json!({"name": "team-a", "description": "the payments team",
                       "quotas": {"max_running_workflows": 50, "submits_per_second": 20}}),
            ),
        ),
        (
            "NamespaceUpdate",
            request(
                "The fields to change; those absent stay. 0 lifts a quota.",
                &[
                    ("description", string()),
                    ("max_running_workflows", int()),
                    ("max_active_steps", int()),
                    ("submits_per_second", int()),
                    ("submit_burst", int()),
                    ("weight", int()),
                ],
                &[],
                json!({"max_running_workflows": 100, "weight": 2}),
            ),
        ),
        (
            "BackfillRequest",
            request(
                "The range of nominal times, in milliseconds since the Unix epoch; it ends at \
                 now at the latest.",
                &[("from_ms", int()), ("to_ms", int())],
                &["from_ms", "to_ms"],
                json!({"from_ms": 1_764_979_200_000u64, "to_ms": 1_765_000_000_000u64}),
            ),
        ),
    ]
}

fn schemas() -> Value {
    let mut map = Map::new();
    for (name, schema) in request_schemas() {
        map.insert(name.into(), schema);
    }
    let step = object(
        "A step's current state.",
        &[
            ("name", string()),
            ("state", string()),
            ("attempts", int()),
            ("attempt_id", nullable("integer")),
            ("agent", nullable("string")),
            ("ready_at_ms", nullable("integer")),
            ("started_at_ms", nullable("integer")),
            ("finished_at_ms", nullable("integer")),
            ("retry_at_ms", nullable("integer")),
            ("pending_reason", string()),
            ("output", string()),
            ("error", string()),
            ("exit_code", int()),
        ],
    );
    let workflow = object(
        "A workflow, as `baton get -o json` prints it. List answers leave `steps` empty and \
         `spec` null.",
        &[
            ("id", int()),
            ("namespace", string()),
            ("name", string()),
            ("state", string()),
            ("labels", map_of_strings()),
            ("idempotency_key", string()),
            ("created_at_ms", nullable("integer")),
            ("finished_at_ms", nullable("integer")),
            ("reason", string()),
            ("revision", int()),
            ("paused", boolean()),
            ("params", map_of_strings()),
            ("deadline_ms", nullable("integer")),
            ("schedule", nullable("string")),
            ("nominal_time_ms", nullable("integer")),
            ("template", nullable("string")),
            ("template_version", nullable("integer")),
            ("steps", array(reference("Step"))),
            (
                "spec",
                json!({"oneOf": [reference("WorkflowSpec"), {"type": "null"}]}),
            ),
        ],
    );
    let event = object(
        "One event of a workflow's history.",
        &[
            ("index", int()),
            ("workflow_id", int()),
            ("namespace", string()),
            ("time_ms", nullable("integer")),
            ("kind", string()),
            ("step", nullable("string")),
            ("attempt_id", nullable("integer")),
            ("agent", nullable("string")),
            ("workflow_state", string()),
            ("step_state", string()),
            ("message", string()),
            ("actor", nullable("string")),
            ("output_bytes", int()),
            ("error_bytes", int()),
        ],
    );
    let run = object(
        "One run of a schedule.",
        &[("workflow_id", int()), ("nominal_time_ms", int())],
    );
    let schedule = json!({
        "type": "object",
        "description": "A schedule: its spec's fields, its state and its counters (Get adds \
            `upcoming_ms`, its next few times).",
        "properties": {
            "namespace": string(), "name": string(), "cron": string(), "every_ms": int(), "timezone": string(),
            "overlap": string(), "catchup_window_ms": int(), "jitter_ms": int(),
            "start_at_ms": int(), "end_at_ms": int(), "params": map_of_strings(),
            "workflow": nullable("string"), "template": string(), "template_version": int(),
            "last_error": string(), "paused": boolean(), "created_at_ms": int(),
            "next_fire_ms": int(), "running": array(reference("ScheduleRun")),
            "buffered_nominal_ms": int(), "runs_started": int(), "runs_skipped": int(),
            "runs_missed": int(),
            "last_run": {"oneOf": [reference("ScheduleRun"), {"type": "null"}]},
            "upcoming_ms": array(int()),
        },
        "required": ["namespace", "name", "paused", "next_fire_ms", "runs_started", "runs_skipped", "runs_missed"],
    });
    let template = object(
        "A template version (List: without the spec's steps).",
        &[
            ("namespace", string()),
            ("name", string()),
            ("version", int()),
            ("versions", array(int())),
            ("created_at_ms", int()),
            (
                "spec",
                json!({"oneOf": [reference("WorkflowSpec"), {"type": "null"}]}),
            ),
        ],
    );
    let agent = object(
        "An agent the leader knows.",
        &[
            ("agent_id", int()),
            ("name", string()),
            ("labels", map_of_strings()),
            ("connected", boolean()),
            ("slots", int()),
            ("slots_used", int()),
            ("cpu_millis", int()),
            ("cpu_millis_used", int()),
            ("memory_mb", int()),
            ("memory_mb_used", int()),
            ("task_types", array(string())),
            ("namespaces", array(string())),
            (
                "running",
                array(object(
                    "A step attempt the agent runs.",
                    &[
                        ("workflow_id", int()),
                        ("step", string()),
                        ("attempt_id", int()),
                    ],
                )),
            ),
        ],
    );
    let member = object(
        "A member of the cluster.",
        &[
            ("node_id", int()),
            ("address", string()),
            ("voter", boolean()),
            ("matched_index", nullable("integer")),
            ("data_folder", string()),
        ],
    );
    let cluster = object(
        "This node's view of the cluster.",
        &[
            ("node_id", int()),
            ("cluster_id", string()),
            ("role", string()),
            ("leader_id", nullable("integer")),
            ("term", int()),
            ("last_log_index", int()),
            ("committed_index", int()),
            ("applied_index", int()),
            ("snapshot_index", int()),
            ("purged_index", int()),
            ("state_hash", string()),
            ("members", array(reference("Member"))),
        ],
    );
    let responses = [
        ("Step", step),
        ("Workflow", workflow),
        ("Event", event),
        ("ScheduleRun", run),
        ("Schedule", schedule),
        ("Template", template),
        ("Agent", agent),
        ("Member", member),
        ("ClusterStatus", cluster),
        (
            "WorkflowSpec",
            json!({"type": "object", "description": "A workflow spec: the fields of a spec \
                file (docs/SPEC.md), as JSON.", "required": ["name", "steps"]}),
        ),
        (
            "ScheduleSpec",
            json!({"type": "object", "description": "A schedule: the fields of a schedule \
                file (docs/SCHEDULES.md), as JSON.", "required": ["name"]}),
        ),
        (
            "Error",
            object(
                "An error.",
                &[(
                    "error",
                    object(
                        "The gRPC code's name in lower case, and the message.",
                        &[("code", string()), ("message", string())],
                    ),
                )],
            ),
        ),
        (
            "Submitted",
            object(
                "The submitted workflow (or, for a repeated idempotency key, the first one).",
                &[
                    ("workflow_id", int()),
                    ("created", boolean()),
                    ("log_index", int()),
                ],
            ),
        ),
        (
            "WorkflowPage",
            object(
                "A page of workflows, newest first; `next_page_token` is empty on the last.",
                &[
                    ("workflows", array(reference("Workflow"))),
                    ("next_page_token", string()),
                ],
            ),
        ),
        (
            "BatchResult",
            object(
                "One result per item, in order: submitted, or refused by the state machine.",
                &[(
                    "results",
                    array(
                        json!({"oneOf": [reference("Submitted"), object("Refused.", &[("rejected", string())])]}),
                    ),
                )],
            ),
        ),
        (
            "History",
            object(
                "Every event of a workflow, oldest first.",
                &[("events", array(reference("Event")))],
            ),
        ),
        (
            "Cancelled",
            object(
                "The workflow's state after the call.",
                &[("workflow_id", int()), ("state", string())],
            ),
        ),
        (
            "Changed",
            object(
                "Whether the call changed anything.",
                &[("changed", boolean())],
            ),
        ),
        (
            "Retried",
            object(
                "The steps that will run again.",
                &[("workflow_id", int()), ("steps", array(string()))],
            ),
        ),
        ("Empty", object("Done.", &[])),
        (
            "TemplateList",
            object(
                "Every template.",
                &[("templates", array(reference("Template")))],
            ),
        ),
        (
            "TemplateApplied",
            object(
                "The template's version now.",
                &[
                    ("name", string()),
                    ("version", int()),
                    ("created", boolean()),
                ],
            ),
        ),
        (
            "ScheduleList",
            object(
                "Every schedule.",
                &[("schedules", array(reference("Schedule")))],
            ),
        ),
        (
            "ScheduleCreated",
            object(
                "The schedule, and when it first fires.",
                &[
                    ("name", string()),
                    ("created", boolean()),
                    ("next_fire_ms", int()),
                ],
            ),
        ),
        (
            "Triggered",
            object(
                "The run started, or why none was (`outcome`).",
                &[
                    ("workflow_id", nullable("integer")),
                    ("nominal_time_ms", int()),
                    ("outcome", string()),
                ],
            ),
        ),
        (
            "Backfilled",
            object(
                "The runs started, the times that had one already, and why it stopped before \
                 the range's end (the namespace's quota; null: it did not).",
                &[
                    ("name", string()),
                    ("started", array(reference("ScheduleRun"))),
                    ("already_run", int()),
                    ("stopped", nullable("string")),
                ],
            ),
        ),
        (
            "Trigger",
            object(
                "A webhook trigger; deliveries go to `url_path` on any node's HTTP listener.",
                &[
                    ("namespace", string()),
                    ("name", string()),
                    ("template", string()),
                    ("template_version", int()),
                    ("params", map_of_strings()),
                    ("params_from_body", map_of_strings()),
                    ("created_at_ms", int()),
                    ("url_path", string()),
                ],
            ),
        ),
        (
            "TriggerList",
            object(
                "Every trigger.",
                &[("triggers", array(reference("Trigger")))],
            ),
        ),
        (
            "Delivered",
            object(
                "The run a delivery started (or, for a repeated delivery id, the first one).",
                &[
                    ("workflow_id", int()),
                    ("created", boolean()),
                    ("log_index", int()),
                    ("trigger", string()),
                    ("delivery", nullable("string")),
                ],
            ),
        ),
        (
            "AgentList",
            object("The agents.", &[("agents", array(reference("Agent")))]),
        ),
        (
            "Namespace",
            object(
                "A namespace, what it holds and its quotas (`default` has no creation time).",
                &[
                    ("name", string()),
                    ("description", string()),
                    ("created_at_ms", nullable("integer")),
                    ("workflows", int()),
                    ("running", int()),
                    ("active_steps", int()),
                    ("quotas", reference("Quotas")),
                    ("weight", int()),
                ],
            ),
        ),
        (
            "Quotas",
            object(
                "A namespace's quotas; 0 is no limit. A submit past one answers 429 naming it.",
                &[
                    ("max_running_workflows", int()),
                    ("max_active_steps", int()),
                    ("submits_per_second", int()),
                    ("submit_burst", int()),
                ],
            ),
        ),
        (
            "AuditRecord",
            object(
                "One change and who asked for it.",
                &[
                    ("index", int()),
                    ("time_ms", nullable("integer")),
                    ("actor", nullable("string")),
                    ("namespace", nullable("string")),
                    ("action", string()),
                    ("target", string()),
                    ("detail", string()),
                    ("workflow_id", nullable("integer")),
                ],
            ),
        ),
        (
            "AuditList",
            object(
                "Changes the caller may read, newest first.",
                &[("records", array(reference("AuditRecord")))],
            ),
        ),
        (
            "NamespaceList",
            object(
                "The namespaces the caller may read.",
                &[("namespaces", array(reference("Namespace")))],
            ),
        ),
        (
            "OpenApi",
            json!({"type": "object", "description": "This document."}),
        ),
    ];
    for (name, schema) in responses {
        map.insert(name.into(), schema);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document names something the document defines.
    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 50, "{}", refs.len());
        for r in refs {
            let path = r.strip_prefix("#/").expect("local reference");
            let mut at = &doc;
            for part in path.split('/') {
                at = at
                    .get(part)
                    .unwrap_or_else(|| panic!("{r} does not resolve"));
            }
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "$ref" {
                        out.push(v.as_str().unwrap().to_string());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// Each route is one operation with a unique id, and its path parameters are declared.
    #[test]
    fn every_route_is_an_operation() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {}", route.method, route.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()));
            let declared = op["parameters"].as_array().unwrap();
            for segment in route.path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    declared
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{} {name}",
                    route.path
                );
            }
        }
    }
}
