//! The web console, served by the node itself on the HTTP listener: server-rendered pages (no
//! build step) with a little plain JavaScript (`assets/console.js`) for the live DAG.
//!
//! Every page reads through the same gRPC service calls the JSON API makes, authorized as the
//! method it reads (`List` for the workflows, `Get` for one...), with the token of the viewer's
//! session cookie (`/login`). Buttons appear for the actions the viewer's role allows, each
//! asking before it acts; each is a form carrying the session's CSRF token, and the node checks
//! the role again when it is posted (403 otherwise).

pub mod html;
pub mod layout;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_proto::names::{step_state_name, workflow_state_name};
use baton_proto::text::format_time_ms;
use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::admin_service_server::AdminService;
use baton_proto::v1::schedule_service_server::ScheduleService;
use baton_proto::v1::workflow_service_server::WorkflowService;
use baton_security::PeerRole;
use tonic::{Code, Status};

use super::error::http_status;
use super::session::{self, Credential};
use super::{Api, Caller};
use crate::security::auth::{Access, access, decide};
use crate::security::grants::Grants;
use crate::state::DEFAULT_NAMESPACE;
use html::{DagStep, Frame, badge, esc, page, url};

/// How long the cluster page waits for another member's status.
const PEER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the members that answered hold the same state: equal hashes wherever their applied
/// indexes are equal (a hash is of the state at its node's applied index).
fn agreement(views: &[(u64, Result<pb::ClusterStatusResponse, Status>)]) -> String {
    let answered: Vec<&pb::ClusterStatusResponse> =
        views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
    let silent = views.len() - answered.len();
    let mut by_index: std::collections::BTreeMap<u64, std::collections::BTreeSet<&str>> =
        Default::default();
    for view in &answered {
        by_index
            .entry(view.applied_index)
            .or_default()
            .insert(view.state_hash.as_str());
    }
    if let Some((index, _)) = by_index.iter().find(|(_, hashes)| hashes.len() > 1) {
        return format!(
            "The state hashes differ at applied index {index}: these nodes hold different states. \
             Outside a rolling upgrade (docs/OPERATIONS.md, \"Stopping a node, rolling restart \
             and upgrade\"), replace the node that differs (\"Add, remove, replace a node\")."
        );
    }
    let unanswered = if silent == 0 {
        String::new()
    } else {
        format!(" {silent} did not answer.")
    };
    match by_index.len() {
        0 => format!("No member answered.{unanswered}"),
        1 => format!(
            "The {} nodes that answered hold the same state (the same hash at applied index \
             {}).{unanswered}",
            answered.len(),
            by_index.keys().next().copied().unwrap_or(0)
        ),
        _ => format!(
            "No disagreement seen: the nodes are at different applied indexes, so their hashes \
             are of different states; nodes at the same index agree.{unanswered}"
        ),
    }
}

/// Workflows the list page counts by state, newest first.
const COUNTED_MAX: usize = 100_000;
const PAGE_SIZE: u32 = 50;

/// Adds the console's routes.
pub fn routes(router: Router<Api>) -> Router<Api> {
    router
        .route("/", get(|| async { Redirect::to("/workflows") }))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(js))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/workflows", get(workflows_page))
        .route("/workflows/{id}", get(workflow_page))
        .route("/workflows/{id}/{action}", post(workflow_action))
        .route("/agents", get(agents_page))
        .route("/cluster", get(cluster_page))
        .route("/schedules", get(schedules_page))
        .route("/namespaces", get(namespaces_page))
        .route("/audit", get(audit_page))
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}

/// Who is looking: their calls' credentials, their role (None under --insecure: everything is
/// open), and their session's CSRF token.
struct Viewer {
    caller: Caller,
    /// Its roles by namespace ([`Grants::All`] under --insecure).
    grants: Grants,
    name: String,
    csrf: String,
}

impl Viewer {
    /// Whether the viewer may call `rpc` on what lives in `namespace`.
    fn may(&self, rpc: &str, namespace: &str) -> bool {
        match (&self.grants, access(rpc)) {
            (Grants::All, _) => true,
            (grants, Access::Client(needed)) => grants.allows(namespace, needed),
            (Grants::Cluster(role), Access::Cluster(needed)) => role.includes(needed),
            _ => false,
        }
    }

    /// The namespace a page shows when its address names none: `default` when the viewer
    /// may read it, else the first one it may.
    fn home_namespace(&self) -> String {
        match self.grants.readable() {
            Some(set) if !set.contains(DEFAULT_NAMESPACE) => set
                .into_iter()
                .next()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            _ => DEFAULT_NAMESPACE.into(),
        }
    }

    fn frame(&self) -> Frame<'_> {
        let who = match &self.grants {
            Grants::All => None,
            Grants::Cluster(role) => Some(format!("token {} ({role})", self.name)),
            Grants::Namespaces(roles) => Some(format!(
                "token {} ({})",
                self.name,
                roles
                    .iter()
                    .map(|(ns, role)| format!("{role} in {ns}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        Frame {
            who,
            csrf: &self.csrf,
        }
    }
}

/// The viewer of a page that reads through `rpc`: to the login page without a session, a 403
/// page when the role may not read it.
fn viewer(api: &Api, headers: &HeaderMap, uri: &Uri, rpc: &str) -> Result<Viewer, Box<Response>> {
    if !api.secure {
        return Ok(Viewer {
            caller: Caller::default(),
            grants: Grants::All,
            name: String::new(),
            csrf: String::new(),
        });
    }
    let to_login = || {
        let next = uri.path_and_query().map_or("/workflows", |p| p.as_str());
        Redirect::to(&format!("/login?next={}", url(next))).into_response()
    };
    let Some(Credential {
        presented, text, ..
    }) = session::credential(headers)
    else {
        return Err(Box::new(to_login()));
    };
    let Some((scope, name)) = session::lookup(api, &presented) else {
        return Err(Box::new(to_login()));
    };
    let role = scope.role;
    if let Err(status) = decide(
        rpc,
        access(rpc),
        Some(PeerRole::Client),
        Some(&presented),
        |_| Some(scope),
    ) {
        crate::metrics::auth_refused(status.code());
        let csrf = session::csrf_for(&text);
        let frame = Frame {
            who: Some(format!("token {name} ({})", role.as_str())),
            csrf: &csrf,
        };
        return Err(Box::new(error_page(&frame, &status)));
    }
    let grants = api
        .node
        .replica
        .read(|a| match a.state.live_token(&presented.id) {
            Some(record) if record.namespaces.is_empty() => Grants::Cluster(record.role),
            Some(record) => Grants::Namespaces(record.namespaces.clone()),
            None => Grants::Namespaces(Default::default()),
        });
    Ok(Viewer {
        caller: Caller::with_token(&text),
        grants,
        name,
        csrf: session::csrf_for(&text),
    })
}

/// An error as a page, with the status the JSON API would answer.
fn error_page(frame: &Frame<'_>, status: &Status) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"notice error\">{}</p><p><a href=\"/workflows\">Back to the \
         workflows</a></p>",
        esc(http_status(status.code())
            .canonical_reason()
            .unwrap_or("Error")),
        esc(status.message())
    );
    (
        http_status(status.code()),
        Html(page("Error", "", frame, &body)),
    )
        .into_response()
}

// ---- Login --------------------------------------------------------------------------------

/// Only a path of this site: never `//host` or `https://...`.
fn safe_next(next: &str) -> &str {
    // Browsers drop tabs and newlines from URLs (`/\t/evil` is `//evil`): only visible ASCII.
    let visible = next.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if visible && next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/workflows"
    }
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn login_form(next: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"notice error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<div class=\"login card\"><h1>Sign in to Baton</h1>{error}<p class=\"muted\">Paste a \
         token (`baton token create --role reader`). It is kept in an HttpOnly cookie for 12 \
         hours; what you may do is what its role may do.</p><form method=\"post\" \
         action=\"/login\"><input type=\"hidden\" name=\"next\" value=\"{}\"><input \
         type=\"hidden\" name=\"csrf\" value=\"{}\"><label>Token<textarea name=\"token\" \
         autocomplete=\"off\" spellcheck=\"false\" required autofocus></textarea></label>\
         <p><button class=\"primary\" type=\"submit\">Sign in</button></p></form></div>",
        esc(next),
        esc(csrf)
    )
}

fn login_response(api: &Api, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let csrf = baton_security::token::random_secret().unwrap_or_default();
    let frame = Frame {
        who: None,
        csrf: "",
    };
    let mut response = (
        status,
        Html(page("Sign in", "", &frame, &login_form(next, &csrf, error))),
    )
        .into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::login_cookie(&csrf, api.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn login_page(State(api): State<Api>, uri: Uri) -> Response {
    let query = query_map(&uri);
    let next = safe_next(query.get("next").map_or("/workflows", String::as_str)).to_string();
    if !api.secure {
        return Redirect::to(&next).into_response();
    }
    login_response(&api, StatusCode::OK, &next, None)
}

fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn login(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let next = safe_next(fields.get("next").map_or("/workflows", String::as_str)).to_string();
    if !api.secure {
        return Redirect::to(&next).into_response();
    }
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let given = fields.get("csrf").map_or("", String::as_str);
    if expected.is_empty() || !session::same(expected, given) {
        return login_response(
            &api,
            StatusCode::FORBIDDEN,
            &next,
            Some("The sign-in form expired or came from another site: sign in again here."),
        );
    }
    let text = fields.get("token").map_or("", |t| t.trim());
    let known = baton_security::token::parse(text).and_then(|p| session::lookup(&api, &p));
    if known.is_none() {
        crate::metrics::auth_refused(Code::Unauthenticated);
        return login_response(
            &api,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not a valid token (unknown, revoked or malformed)."),
        );
    }
    let mut response = Redirect::to(&next).into_response();
    let headers = response.headers_mut();
    for cookie in [
        session::session_cookie(text, api.secure),
        session::clear_cookie(session::LOGIN_COOKIE, api.secure),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

async fn logout(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    if let Some(credential) = session::credential(&headers)
        && !session::same(
            &session::csrf_for(&credential.text),
            fields.get("csrf").map_or("", String::as_str),
        )
    {
        return (
            StatusCode::FORBIDDEN,
            "the logout form came from another site",
        )
            .into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) =
        HeaderValue::from_str(&session::clear_cookie(session::SESSION_COOKIE, api.secure))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

// ---- Workflows ----------------------------------------------------------------------------

fn time(ms: u64) -> String {
    if ms == 0 {
        "—".into()
    } else {
        format_time_ms(ms)
    }
}

async fn workflows_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(&api, &headers, &uri, "/baton.v1.WorkflowService/List") {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let query = query_map(&uri);
    let get = |key: &str| query.get(key).map_or("", |v| v.trim());
    let state = get("state");
    // `?namespace=` names one; `*` is every one the viewer may read.
    let home = viewer.home_namespace();
    let namespace = match get("namespace") {
        "" => home.as_str(),
        named => named,
    };
    let all = namespace == "*";
    let mut request = pb::ListRequest {
        name_prefix: get("name").into(),
        schedule: get("schedule").into(),
        page_size: PAGE_SIZE,
        page_token: get("page").into(),
        namespace: if all { String::new() } else { namespace.into() },
        all_namespaces: all,
        ..Default::default()
    };
    if !state.is_empty() {
        match baton_proto::names::parse_workflow_state(state) {
            Some(s) => request.states.push(s as i32),
            None => {
                return error_page(
                    &viewer.frame(),
                    &Status::invalid_argument(format!("state: {state:?} is not a workflow state")),
                );
            }
        }
    }
    if let Some((key, value)) = get("label").split_once('=') {
        request
            .labels
            .insert(key.trim().into(), value.trim().into());
    } else if !get("label").is_empty() {
        return error_page(
            &viewer.frame(),
            &Status::invalid_argument("label: write it as key=value"),
        );
    }
    let listed = match WorkflowService::list(&api.workflows, viewer.caller.request(request)).await {
        Ok(listed) => listed.into_inner(),
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    // Counted on a point-in-time copy (apply does not wait for it), over the namespaces the
    // page shows.
    let counted = match all {
        true => viewer.grants.readable(),
        false => Some(std::collections::BTreeSet::from([namespace.to_string()])),
    };
    let (counts, capped) = api
        .node
        .replica
        .view()
        .state
        .state_counts(COUNTED_MAX, counted.as_ref());
    let namespaces = readable_namespaces(&api, &viewer).await;
    let keep = |key: &str, value: &str| -> String {
        let mut parts: Vec<String> = ["namespace", "name", "label", "schedule", "state"]
            .iter()
            .filter(|k| **k != key && !get(k).is_empty())
            .map(|k| format!("{k}={}", url(get(k))))
            .collect();
        if !value.is_empty() {
            parts.push(format!("{key}={}", url(value)));
        }
        if parts.is_empty() {
            "/workflows".into()
        } else {
            format!("/workflows?{}", parts.join("&"))
        }
    };
    let mut body = String::from("<h1>Workflows</h1><nav class=\"counts\" aria-label=\"By state\">");
    let total: usize = counts.values().sum();
    body.push_str(&format!(
        "<a href=\"{}\"{}><b>{total}</b>all</a>",
        esc(&keep("state", "")),
        if state.is_empty() {
            " aria-current=\"true\""
        } else {
            ""
        }
    ));
    for name in ["running", "succeeded", "failed", "cancelled", "timed_out"] {
        body.push_str(&format!(
            "<a href=\"{}\"{} data-count=\"{name}\"><b>{}</b>{name}</a>",
            esc(&keep("state", name)),
            if state == name {
                " aria-current=\"true\""
            } else {
                ""
            },
            counts.get(name).copied().unwrap_or(0),
        ));
    }
    body.push_str("</nav>");
    if capped {
        body.push_str(&format!(
            "<p class=\"muted\">Counts among the newest {COUNTED_MAX} workflows.</p>"
        ));
    }
    body.push_str(&format!(
        "<form class=\"filters\" method=\"get\" action=\"/workflows\" role=\"search\">\
         <label>Namespace<select name=\"namespace\" data-namespace>{}</select></label>\
         <label>Name starts with<input name=\"name\" value=\"{}\"></label>\
         <label>Label<input name=\"label\" placeholder=\"team=web\" value=\"{}\"></label>\
         <label>Schedule<input name=\"schedule\" value=\"{}\"></label>\
         <label>State<select name=\"state\">{}</select></label>\
         <button type=\"submit\">Filter</button> <a href=\"/workflows\">Clear</a></form>",
        namespace_options(&namespaces, namespace),
        esc(get("name")),
        esc(get("label")),
        esc(get("schedule")),
        [
            "",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "timed_out"
        ]
        .iter()
        .map(|s| format!(
            "<option value=\"{s}\"{}>{}</option>",
            if *s == state { " selected" } else { "" },
            if s.is_empty() { "any" } else { s }
        ))
        .collect::<String>()
    ));
    if listed.workflows.is_empty() {
        body.push_str("<p class=\"card muted\">No workflows match.</p>");
    } else {
        body.push_str(&format!(
            "<table><thead><tr><th>Id</th>{}<th>Name</th><th>State</th><th>Labels</th>\
             <th>Started by</th><th>Created</th><th>Finished</th></tr></thead><tbody>",
            if all { "<th>Namespace</th>" } else { "" }
        ));
        for w in &listed.workflows {
            let labels = w
                .labels
                .iter()
                .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                .collect::<Vec<_>>()
                .join(" ");
            let origin = match (w.schedule.is_empty(), w.template.is_empty()) {
                (false, _) => format!(
                    "schedule <a href=\"/workflows?namespace={}&amp;schedule={}\">{}</a>",
                    url(&w.namespace),
                    url(&w.schedule),
                    esc(&w.schedule)
                ),
                (true, false) => format!("template {}@{}", esc(&w.template), w.template_version),
                (true, true) => "submit".into(),
            };
            body.push_str(&format!(
                "<tr data-workflow=\"{id}\"><td><a href=\"/workflows/{id}\">{id}</a></td>\
                 {namespace}<td><a href=\"/workflows/{id}\">{name}</a>{paused}</td><td>{state}</td>\
                 <td class=\"mono\">{labels}</td><td>{origin}</td><td>{created}</td>\
                 <td>{finished}</td></tr>",
                id = w.id,
                namespace = if all {
                    format!("<td>{}</td>", esc(&w.namespace))
                } else {
                    String::new()
                },
                name = esc(&w.name),
                paused = if w.paused {
                    " <span class=\"muted\">(paused)</span>"
                } else {
                    ""
                },
                state = badge(workflow_state_name(w.state)),
                created = time(w.created_at_ms),
                finished = time(w.finished_at_ms),
            ));
        }
        body.push_str("</tbody></table>");
    }
    if !listed.next_page_token.is_empty() {
        let next = keep("page", &listed.next_page_token);
        body.push_str(&format!(
            "<div class=\"pager\"><a class=\"button\" href=\"{}\">Older workflows →</a></div>",
            esc(&next)
        ));
    }
    Html(page("Workflows", "workflows", &viewer.frame(), &body)).into_response()
}

/// The namespaces the viewer may read, by name, then `*` (all of them) when there are
/// several.
async fn readable_namespaces(api: &Api, viewer: &Viewer) -> Vec<String> {
    let listed = AdminService::list_namespaces(
        &api.admin,
        viewer.caller.request(pb::ListNamespacesRequest {
            consistency: pb::ReadConsistency::Stale as i32,
        }),
    )
    .await;
    let mut names: Vec<String> = match listed {
        Ok(listed) => listed
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect(),
        Err(_) => vec![viewer.home_namespace()],
    };
    if names.len() > 1 {
        names.push("*".into());
    }
    names
}

/// `<option>`s of a namespace selector, `current` selected (named even when not listed).
fn namespace_options(namespaces: &[String], current: &str) -> String {
    let mut options: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    if !options.contains(&current) {
        options.insert(0, current);
    }
    options
        .iter()
        .map(|name| {
            format!(
                "<option value=\"{}\"{}>{}</option>",
                esc(name),
                if *name == current { " selected" } else { "" },
                if *name == "*" { "all" } else { name }
            )
        })
        .collect()
}

/// A button that posts `action` for workflow `id`, asking `confirm` first.
fn action_button(
    viewer: &Viewer,
    id: u64,
    action: &str,
    label: &str,
    confirm: &str,
    class: &str,
) -> String {
    format!(
        "<form method=\"post\" action=\"/workflows/{id}/{action}\" data-confirm=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" \
         class=\"{class}\" data-action=\"{action}\">{label}</button></form>",
        esc(confirm),
        esc(&viewer.csrf),
    )
}

async fn workflow_page(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let viewer = match viewer(&api, &headers, &uri, "/baton.v1.WorkflowService/Get") {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let Ok(id) = id.parse::<u64>() else {
        return error_page(
            &viewer.frame(),
            &Status::invalid_argument(format!("{id:?} is not a workflow id")),
        );
    };
    let request = pb::GetRequest {
        workflow_id: id,
        ..Default::default()
    };
    let w = match WorkflowService::get(&api.workflows, viewer.caller.request(request)).await {
        Ok(got) => got.into_inner().workflow.unwrap_or_default(),
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let state = workflow_state_name(w.state);
    let running = state == "running";
    let namespace = w.namespace.as_str();
    let notice = query_map(&uri)
        .get("done")
        .map(|done| format!("<p class=\"notice\" role=\"status\">{}</p>", esc(done)))
        .unwrap_or_default();
    let mut body = format!(
        "{notice}<h1>{name} <span class=\"muted\">#{id}</span> <span id=\"workflow-state\" \
         class=\"badge {state}\">{state}</span> <span id=\"live\" class=\"live\"></span></h1>",
        name = esc(&w.name),
    );
    body.push_str("<div class=\"facts\" id=\"facts\">");
    body.push_str(&format!(
        "<div><span>Created</span>{}</div><div><span>Finished</span><time \
         id=\"fact-finished\">{}</time></div><div id=\"fact-paused\"{}><span>Paused</span>yes: \
         no new step starts</div>",
        time(w.created_at_ms),
        time(w.finished_at_ms),
        if w.paused { "" } else { " hidden" }
    ));
    let mut fact = |label: &str, value: String| {
        body.push_str(&format!("<div><span>{label}</span>{value}</div>"));
    };
    if !w.labels.is_empty() {
        fact(
            "Labels",
            format!(
                "<span class=\"mono\">{}</span>",
                w.labels
                    .iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
    }
    if !w.params.is_empty() {
        fact(
            "Parameters",
            format!(
                "<span class=\"mono\">{}</span>",
                w.params
                    .iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
    }
    if !w.schedule.is_empty() {
        fact(
            "Schedule",
            format!("{} at {}", esc(&w.schedule), time(w.nominal_time_ms)),
        );
    }
    if !w.template.is_empty() {
        fact(
            "Template",
            format!("{}@{}", esc(&w.template), w.template_version),
        );
    }
    if !w.reason.is_empty() {
        fact("Reason", esc(&w.reason));
    }
    body.push_str("</div><div class=\"actions\">");
    let mut actions = String::new();
    if running && viewer.may("/baton.v1.WorkflowService/Cancel", namespace) {
        actions.push_str(&format!(
            "<span data-while-running>{}</span>",
            action_button(
                &viewer,
                id,
                "cancel",
                "Cancel",
                &format!(
                    "Cancel workflow {id} ({})? Its pending steps never start and its running \
                     steps are told to stop.",
                    w.name
                ),
                "danger",
            )
        ));
    }
    if running && viewer.may("/baton.v1.WorkflowService/Pause", namespace) {
        let (action, label, confirm) = if w.paused {
            (
                "resume",
                "Resume",
                format!("Resume workflow {id}? Its ready steps start again."),
            )
        } else {
            (
                "pause",
                "Pause",
                format!("Pause workflow {id}? No new step starts; running steps finish."),
            )
        };
        actions.push_str(&format!(
            "<span data-while-running>{}</span>",
            action_button(&viewer, id, action, label, &confirm, "")
        ));
    }
    if !running && viewer.may("/baton.v1.WorkflowService/Retry", namespace) && state != "succeeded"
    {
        actions.push_str(&action_button(
            &viewer,
            id,
            "retry",
            "Retry",
            &format!(
                "Retry workflow {id}? Its failed, cancelled and timed-out steps, and every step \
                 after them, run again; succeeded steps keep their results."
            ),
            "primary",
        ));
    }
    let awaiting: Vec<&pb::Step> = w
        .steps
        .iter()
        .filter(|s| step_state_name(s.state) == "awaiting_signal")
        .collect();
    if viewer.may("/baton.v1.WorkflowService/Signal", namespace) {
        for step in awaiting {
            actions.push_str(&format!(
                "<form method=\"post\" action=\"/workflows/{id}/signal\" data-confirm=\"Approve \
                 step {name} of workflow {id}? The steps after it start.\"><input type=\"hidden\" \
                 name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"step\" \
                 value=\"{name}\"><button type=\"submit\" class=\"primary\" \
                 data-action=\"approve\">Approve {name}</button></form>\
                 <form method=\"post\" action=\"/workflows/{id}/signal\" data-confirm=\"Reject \
                 step {name} of workflow {id}? The step fails.\"><input type=\"hidden\" \
                 name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"step\" \
                 value=\"{name}\"><input type=\"hidden\" name=\"reject\" value=\"true\"><button \
                 type=\"submit\" data-action=\"reject\">Reject {name}</button></form>",
                name = esc(&step.name),
                csrf = esc(&viewer.csrf),
            ));
        }
    }
    if actions.is_empty() {
        actions.push_str("<span class=\"muted\">No action for your role in this state.</span>");
    }
    body.push_str(&actions);
    body.push_str("</div>");

    // The DAG, from the spec's order and dependencies and the steps' states.
    let spec_steps = w
        .spec
        .as_ref()
        .map(|s| s.steps.as_slice())
        .unwrap_or_default();
    let index: HashMap<&str, usize> = spec_steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let states: HashMap<&str, &'static str> = w
        .steps
        .iter()
        .map(|s| (s.name.as_str(), step_state_name(s.state)))
        .collect();
    let dag: Vec<DagStep<'_>> = spec_steps
        .iter()
        .map(|s| DagStep {
            name: &s.name,
            state: states.get(s.name.as_str()).copied().unwrap_or("waiting"),
            depends_on: s
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect(),
        })
        .collect();
    body.push_str(&format!(
        "<div class=\"layout\"><section class=\"dag\" aria-label=\"Steps\">{}</section>\
         <aside class=\"panel card\" id=\"step-panel\" aria-live=\"polite\"><p class=\"muted\">\
         Select a step (click it, or Tab to it and press Enter) to see its attempts, agent, \
         times, output and error.</p></aside></div>",
        html::dag_svg(id, !running, w.revision + 1, &dag)
    ));
    body.push_str(&format!(
        "<p class=\"muted\">History: <a href=\"/api/v1/workflows/{id}/history\">JSON</a> · \
         <span class=\"mono\">baton history {id}</span></p>"
    ));
    Html(page(
        &format!("{} #{id}", w.name),
        "workflows",
        &viewer.frame(),
        &body,
    ))
    .into_response()
}

/// A button's form: checked for the session's CSRF token, then the action's gRPC call with the
/// viewer's token (so its role is checked again); back to the page with what happened.
async fn workflow_action(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let rpc = match action.as_str() {
        "cancel" => "/baton.v1.WorkflowService/Cancel",
        "pause" => "/baton.v1.WorkflowService/Pause",
        "resume" => "/baton.v1.WorkflowService/Resume",
        "retry" => "/baton.v1.WorkflowService/Retry",
        "signal" => "/baton.v1.WorkflowService/Signal",
        _ => return (StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    let viewer = match viewer(&api, &headers, &uri, rpc) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let fields = form(&body);
    if api.secure && !session::same(&viewer.csrf, fields.get("csrf").map_or("", String::as_str)) {
        return error_page(
            &viewer.frame(),
            &Status::permission_denied(
                "the form came without this session's CSRF token (from another site, or an old \
                 page): reload the page and try again",
            ),
        );
    }
    let Ok(workflow_id) = id.parse::<u64>() else {
        return error_page(
            &viewer.frame(),
            &Status::invalid_argument("not a workflow id"),
        );
    };
    let workflows = &api.workflows;
    let caller = &viewer.caller;
    let done: Result<String, Status> = match action.as_str() {
        "cancel" => WorkflowService::cancel(
            workflows,
            caller.request(pb::CancelRequest {
                workflow_id,
                reason: "cancelled from the console".into(),
            }),
        )
        .await
        .map(|_| "Cancel requested.".to_string()),
        "pause" => {
            WorkflowService::pause(workflows, caller.request(pb::PauseRequest { workflow_id }))
                .await
                .map(|_| "Paused.".to_string())
        }
        "resume" => {
            WorkflowService::resume(workflows, caller.request(pb::PauseRequest { workflow_id }))
                .await
                .map(|_| "Resumed.".to_string())
        }
        "retry" => WorkflowService::retry(
            workflows,
            caller.request(pb::RetryRequest {
                workflow_id,
                from_step: String::new(),
            }),
        )
        .await
        .map(|r| format!("Retrying: {}.", r.into_inner().steps.join(", "))),
        _ => {
            let step = fields.get("step").cloned().unwrap_or_default();
            let reject = fields.get("reject").is_some_and(|v| v == "true");
            WorkflowService::signal(
                workflows,
                caller.request(pb::SignalRequest {
                    workflow_id,
                    step: step.clone(),
                    data: if reject {
                        String::new()
                    } else {
                        format!("approved in the console by {}", viewer.name)
                    },
                    reject,
                }),
            )
            .await
            .map(|_| format!("{step} {}.", if reject { "rejected" } else { "approved" }))
        }
    };
    match done {
        Ok(what) => {
            Redirect::to(&format!("/workflows/{workflow_id}?done={}", url(&what))).into_response()
        }
        Err(status) => error_page(&viewer.frame(), &status),
    }
}

// ---- Agents, cluster, schedules -----------------------------------------------------------

async fn agents_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(&api, &headers, &uri, "/baton.v1.AdminService/ListAgents") {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let agents = match AdminService::list_agents(
        &api.admin,
        viewer.caller.request(pb::ListAgentsRequest {}),
    )
    .await
    {
        Ok(listed) => listed.into_inner().agents,
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let mut body = String::from("<h1>Agents</h1>");
    if agents.is_empty() {
        body.push_str("<p class=\"card muted\">No agent has registered. Start one with <span class=\"mono\">baton agent --name NAME</span>.</p>");
    } else {
        body.push_str("<table><thead><tr><th>Name</th><th>Connected</th><th>Slots used</th><th>CPU</th><th>Memory</th><th>Labels</th><th>Namespaces</th><th>Task types</th><th>Running</th></tr></thead><tbody>");
        for a in &agents {
            let used = if a.slots == 0 {
                0.0
            } else {
                f64::from(a.slots_used) / f64::from(a.slots) * 100.0
            };
            let running = a
                .running
                .iter()
                .map(|r| {
                    format!(
                        "<a href=\"/workflows/{id}\">{id}</a>/{}",
                        esc(&r.step),
                        id = r.workflow_id
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            body.push_str(&format!(
                "<tr data-agent=\"{name}\"><td>{name}</td><td>{connected}</td><td>{su}/{s}<div class=\"meter\" aria-hidden=\"true\"><span style=\"width:{used:.0}%\"></span></div></td><td>{cu}/{c} m</td><td>{mu}/{m} MB</td><td class=\"mono\">{labels}</td><td class=\"mono\">{namespaces}</td><td class=\"mono\">{types}</td><td>{running}</td></tr>",
                name = esc(&a.name),
                connected = if a.connected { "yes" } else { "<strong>no</strong>" },
                su = a.slots_used,
                s = a.slots,
                cu = a.cpu_millis_used,
                c = a.cpu_millis,
                mu = a.memory_mb_used,
                m = a.memory_mb,
                labels = a.labels.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect::<Vec<_>>().join(" "),
                types = esc(&a.task_types.join(" ")),
                namespaces = match a.namespaces.is_empty() {
                    true => "all".to_string(),
                    false => esc(&a.namespaces.join(" ")),
                },
            ));
        }
        body.push_str("</tbody></table>");
    }
    Html(page("Agents", "agents", &viewer.frame(), &body)).into_response()
}

async fn cluster_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(&api, &headers, &uri, "/baton.v1.AdminService/ClusterStatus") {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let s = match AdminService::cluster_status(
        &api.admin,
        viewer.caller.request(pb::ClusterStatusRequest {}),
    )
    .await
    {
        Ok(status) => status.into_inner(),
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        s.leader_id.to_string()
    };
    let mut body = format!(
        "<h1>Cluster <span class=\"muted mono\">{cluster}</span></h1><p class=\"muted\">As node \
         {node} sees it (its role: {role}).</p><div class=\"facts\" id=\"cluster-facts\">\
         <div><span>Leader</span>{leader}</div><div><span>Term</span>{term}</div>\
         <div><span>Committed index</span>{committed}</div><div><span>Applied index</span>\
         {applied}</div><div><span>Snapshot index</span>{snapshot}</div></div>",
        cluster = esc(&s.cluster_id),
        node = s.node_id,
        role = esc(&s.role),
        term = s.term,
        committed = s.committed_index,
        applied = s.applied_index,
        snapshot = s.snapshot_index,
    );
    // Every other member's own view (its applied index and state hash), asked over the
    // cluster's links with the viewer's token, all at once and briefly: a node that does not
    // answer is shown as such.
    let own = &s;
    let views = futures::future::join_all(s.members.iter().map(|m| {
        let (api, caller, id, addr) = (&api, &viewer.caller, m.node_id, m.address.clone());
        async move {
            if id == own.node_id {
                return (id, Ok(own.clone()));
            }
            let asked = async {
                let channel = api
                    .node
                    .peers
                    .channel(&addr)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                AdminServiceClient::new(channel)
                    .cluster_status(caller.request(pb::ClusterStatusRequest {}))
                    .await
                    .map(tonic::Response::into_inner)
            };
            let view = match tokio::time::timeout(PEER_STATUS_TIMEOUT, asked).await {
                Ok(view) => view,
                Err(_) => Err(Status::deadline_exceeded("no answer in time")),
            };
            (id, view)
        }
    }))
    .await;
    body.push_str(&format!(
        "<h2>Members</h2><p id=\"hash-agreement\" class=\"notice{}\">{}</p>",
        if agreement(&views).starts_with("The state hashes differ") {
            " error"
        } else {
            ""
        },
        esc(&agreement(&views))
    ));
    body.push_str("<table><thead><tr><th>Node</th><th>Address</th><th>Voter</th><th>Replicated to (leader's view)</th><th>Applied index</th><th>State hash</th><th>Data folder</th></tr></thead><tbody>");
    for m in &s.members {
        let (applied, hash) = match views.iter().find(|(id, _)| *id == m.node_id) {
            Some((_, Ok(view))) => (view.applied_index.to_string(), esc(&view.state_hash)),
            Some((_, Err(status))) => (
                "—".into(),
                format!("<span class=\"muted\">{}</span>", esc(status.message())),
            ),
            None => ("—".into(), String::new()),
        };
        body.push_str(&format!(
            "<tr data-member=\"{id}\"><td>{id}{lead}</td><td class=\"mono\">{addr}</td><td>{voter}</td><td>{matched}</td><td>{applied}</td><td class=\"mono\">{hash}</td><td class=\"mono\">{folder}</td></tr>",
            id = m.node_id,
            lead = if m.node_id == s.leader_id { " (leader)" } else { "" },
            addr = esc(&m.address),
            voter = if m.voter { "yes" } else { "learner" },
            matched = if m.matched_index == 0 { "—".to_string() } else { m.matched_index.to_string() },
            folder = esc(&m.data_folder),
        ));
    }
    body.push_str("</tbody></table>");
    Html(page("Cluster", "cluster", &viewer.frame(), &body)).into_response()
}

async fn schedules_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(
        &api,
        &headers,
        &uri,
        "/baton.v1.ScheduleService/ListSchedules",
    ) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let query = query_map(&uri);
    let namespace = match query.get("namespace").map_or("", |v| v.trim()) {
        "" => viewer.home_namespace(),
        named => named.to_string(),
    };
    let schedules = match ScheduleService::list_schedules(
        &api.schedules,
        viewer.caller.request(pb::ListSchedulesRequest {
            namespace: namespace.clone(),
            ..Default::default()
        }),
    )
    .await
    {
        Ok(listed) => listed.into_inner().schedules,
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let namespaces = readable_namespaces(&api, &viewer).await;
    let mut body = format!(
        "<h1>Schedules</h1><form class=\"filters\" method=\"get\" action=\"/schedules\">\
         <label>Namespace<select name=\"namespace\" data-namespace>{}</select></label>\
         <button type=\"submit\">Show</button></form>",
        namespace_options(
            &namespaces
                .iter()
                .filter(|n| n.as_str() != "*")
                .cloned()
                .collect::<Vec<_>>(),
            &namespace
        )
    );
    if schedules.is_empty() {
        body.push_str("<p class=\"card muted\">No schedules. Create one with <span class=\"mono\">baton schedule create FILE</span> (docs/SCHEDULES.md).</p>");
    } else {
        body.push_str("<table><thead><tr><th>Name</th><th>When</th><th>Next run</th><th>Runs started</th><th>Skipped</th><th>Missed</th><th>Last run</th><th>Problem</th></tr></thead><tbody>");
        for sc in &schedules {
            let spec = sc.spec.clone().unwrap_or_default();
            let when = if spec.cron.is_empty() {
                format!(
                    "every {}",
                    baton_proto::text::format_duration_ms(spec.every_ms)
                )
            } else {
                format!(
                    "<span class=\"mono\">{}</span> {}",
                    esc(&spec.cron),
                    esc(if spec.timezone.is_empty() {
                        "UTC"
                    } else {
                        &spec.timezone
                    })
                )
            };
            let next = if sc.paused {
                "paused".to_string()
            } else {
                time(sc.next_fire_ms)
            };
            let last = sc.last_run.as_ref().map_or("—".to_string(), |r| {
                format!("<a href=\"/workflows/{id}\">{id}</a>", id = r.workflow_id)
            });
            body.push_str(&format!(
                "<tr data-schedule=\"{name}\"><td><a href=\"/workflows?namespace={qns}&amp;schedule={qname}\">{name}</a></td><td>{when}</td><td>{next}</td><td>{started}</td><td>{skipped}</td><td>{missed}</td><td>{last}</td><td>{error}</td></tr>",
                name = esc(&spec.name),
                qname = url(&spec.name),
                qns = url(&namespace),
                started = sc.runs_started,
                skipped = sc.runs_skipped,
                missed = sc.runs_missed,
                error = esc(&sc.last_error),
            ));
        }
        body.push_str("</tbody></table>");
    }
    Html(page("Schedules", "schedules", &viewer.frame(), &body)).into_response()
}

/// The namespaces the viewer may read: what each holds and runs against its quotas, its
/// weight in the fair order, and what waits for a concurrency key.
async fn namespaces_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(
        &api,
        &headers,
        &uri,
        "/baton.v1.AdminService/ListNamespaces",
    ) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let namespaces = match AdminService::list_namespaces(
        &api.admin,
        viewer.caller.request(pb::ListNamespacesRequest::default()),
    )
    .await
    {
        Ok(listed) => listed.into_inner().namespaces,
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let mut body = String::from(
        "<h1>Namespaces</h1><table><thead><tr><th>Name</th><th>Workflows</th><th>Running</th>\
         <th>Ready and running steps</th><th>Submit rate</th><th>Weight</th><th>Created</th>\
         <th>Description</th></tr></thead><tbody>",
    );
    for ns in &namespaces {
        let quotas = ns.quotas.unwrap_or_default();
        // A count against its quota, when it has one.
        let of = |count: u64, quota: u64| match quota {
            0 => count.to_string(),
            quota => format!("{count} of {quota}"),
        };
        let rate = match quotas.submits_per_second {
            0 => "—".to_string(),
            per_second => format!(
                "{per_second}/s, burst {}",
                quotas.submit_burst.max(per_second)
            ),
        };
        body.push_str(&format!(
            "<tr data-namespace-row=\"{name}\"><td><a href=\"/workflows?namespace={qname}\">{name}</a></td><td>{workflows}</td><td>{running}</td><td>{active}</td><td>{rate}</td><td>{weight}</td><td>{created}</td><td>{description}</td></tr>",
            name = esc(&ns.name),
            qname = url(&ns.name),
            workflows = ns.workflows,
            running = of(ns.running, quotas.max_running_workflows),
            active = of(ns.active_steps, quotas.max_active_steps),
            weight = ns.weight.max(1),
            created = time(ns.created_ms),
            description = esc(&ns.description),
        ));
    }
    body.push_str(
        "</tbody></table><p class=\"muted\">Quotas, weights and new namespaces: \
         <span class=\"mono\">baton namespace create | set</span> (a cluster-wide admin token).</p>",
    );
    Html(page("Namespaces", "namespaces", &viewer.frame(), &body)).into_response()
}

/// Who changed what, newest first: the last day's changes the viewer may read.
async fn audit_page(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match viewer(&api, &headers, &uri, "/baton.v1.AdminService/ListAudit") {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    const DAY_MS: u64 = 24 * 3_600_000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let records = match AdminService::list_audit(
        &api.admin,
        viewer.caller.request(pb::ListAuditRequest {
            since_ms: now_ms.saturating_sub(DAY_MS),
            limit: 200,
            ..Default::default()
        }),
    )
    .await
    {
        Ok(listed) => listed.into_inner().records,
        Err(status) => return error_page(&viewer.frame(), &status),
    };
    let mut body = String::from("<h1>Audit</h1>");
    if records.is_empty() {
        body.push_str("<p class=\"card muted\">No change in the last 24 hours.</p>");
    } else {
        body.push_str("<table><thead><tr><th>Time</th><th>Who</th><th>Namespace</th><th>Action</th><th>Target</th><th>Detail</th></tr></thead><tbody>");
        for r in &records {
            let target = match r.workflow_id {
                0 => esc(&r.target),
                id => format!("<a href=\"/workflows/{id}\">{}</a>", esc(&r.target)),
            };
            body.push_str(&format!(
                "<tr data-audit=\"{action}\"><td>{time}</td><td class=\"mono\">{actor}</td><td>{ns}</td><td class=\"mono\">{action}</td><td>{target}</td><td>{detail}</td></tr>",
                time = time(r.time_ms),
                actor = if r.actor.is_empty() { "—".to_string() } else { esc(&r.actor) },
                ns = if r.namespace.is_empty() { "—".to_string() } else { esc(&r.namespace) },
                action = esc(&r.action),
                detail = esc(&r.detail),
            ));
        }
        body.push_str("</tbody></table><p class=\"muted\">The last 24 hours, newest first, at most 200: <span class=\"mono\">baton audit --since</span> reaches further.</p>");
    }
    Html(page("Audit", "audit", &viewer.frame(), &body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_compared_only_at_equal_applied_indexes() {
        let view = |index: u64, hash: &str| {
            Ok(pb::ClusterStatusResponse {
                applied_index: index,
                state_hash: hash.into(),
                ..Default::default()
            })
        };
        let same = [(1, view(9, "aa")), (2, view(9, "aa")), (3, view(9, "aa"))];
        assert!(agreement(&same).starts_with("The 3 nodes that answered hold the same state"));
        let differ = [(1, view(9, "aa")), (2, view(9, "bb")), (3, view(7, "cc"))];
        assert!(agreement(&differ).starts_with("The state hashes differ at applied index 9"));
        let apart = [
            (1, view(9, "aa")),
            (2, view(8, "bb")),
            (3, Err(Status::unavailable("x"))),
        ];
        let said = agreement(&apart);
        assert!(said.starts_with("No disagreement seen"), "{said}");
        assert!(said.ends_with("1 did not answer."), "{said}");
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next("/workflows/7"), "/workflows/7");
        assert_eq!(safe_next("//evil.example/x"), "/workflows");
        assert_eq!(safe_next("https://evil.example/"), "/workflows");
        assert_eq!(safe_next("/\\evil.example"), "/workflows");
        assert_eq!(safe_next("/\t/evil.example"), "/workflows");
        assert_eq!(safe_next("/\n/evil.example"), "/workflows");
        assert_eq!(safe_next("/ /evil.example"), "/workflows");
    }
}
