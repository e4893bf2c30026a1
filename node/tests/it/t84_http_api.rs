//! The JSON API (`--http-listen`) on a real three-node cluster: every route, called on a
//! follower (writes are forwarded to the leader), answers with its documented status and a body
//! that matches its schema in the served OpenAPI document; bad input gets a 400 naming the
//! problem; gRPC codes map to HTTP statuses; watches stream as Server-Sent Events and resume
//! after the last event seen. Over HTTPS, tokens and roles apply as over gRPC.

use std::time::Duration;

use baton_node::config::SecurityConfig;
use baton_security::devcerts;
use baton_security::{PeerIdentity, PeerRole, TlsFiles};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agent::{Behavior, TestAgent};
use crate::common::{TestCluster, init_logs, test_timing, wait_for};

pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one node's HTTP listener.
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One answer: status, headers, and the body as JSON (`Null` when it is not JSON).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub(crate) fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Http {
    fn new(client: reqwest::Client, base: String, token: Option<&str>) -> Http {
        Http {
            client,
            base,
            token: token.map(str::to_owned),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &str)>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, text)) = body {
            request = request
                .header("content-type", content_type)
                .body(text.to_owned());
        }
        let response = request.send().await.expect("the node answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, &[]).await
    }

    pub(crate) async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(("application/json", &body.to_string())),
            &[],
        )
        .await
    }

    pub(crate) async fn post(&self, path: &str) -> Answer {
        self.call(Method::POST, path, None, &[]).await
    }

    /// The events of an event stream that ends by itself (a finished workflow's), as (id, data).
    pub(crate) async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Vec<(String, Value)> {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let mut response = request.send().await.expect("the node answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        let mut text = String::new();
        while let Some(chunk) = tokio::time::timeout(TIMEOUT, response.chunk())
            .await
            .expect("the stream of a finished workflow ends")
            .expect("the stream reads")
        {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        parse_events(&text)
    }
}

impl Http {
    /// The first `n` events of a stream that does not end by itself (every workflow's).
    pub(crate) async fn first_events(&self, path: &str, n: usize) -> Vec<(String, Value)> {
        let mut response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the node answers");
        assert_eq!(response.status(), StatusCode::OK);
        let mut text = String::new();
        loop {
            let events = parse_events(&text);
            if events.len() >= n {
                return events[..n].to_vec();
            }
            let chunk = tokio::time::timeout(TIMEOUT, response.chunk())
                .await
                .expect("events keep coming")
                .expect("the stream reads")
                .expect("the stream does not end");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// `event:`/`id:`/`data:` blocks separated by blank lines; comments (keep-alives) skipped.
fn parse_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = None;
        let mut kind = None;
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("id:") {
                id = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str::<Value>(rest.trim()).expect("JSON data"));
            } else if let Some(rest) = line.strip_prefix("event:") {
                kind = Some(rest.trim().to_owned());
            }
        }
        if let Some(data) = data {
            assert_eq!(kind.as_deref(), Some("workflow_event"), "{block}");
            events.push((id.expect("every event has an id"), data));
        }
    }
    events
}

/// Checks `value` against schema `schema` of the OpenAPI document `doc`: required properties
/// present, each documented property of the declared type, no undocumented ones.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Err(problem) = check(doc, schema, value, at) {
        panic!("{problem}");
    }
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return check(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return if options.iter().any(|o| check(doc, o, value, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {value} fits none of {schema}"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.contains(&actual) {
        return Err(format!("{at}: {value} is {actual}, not {types:?}"));
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap();
                if !map.contains_key(required) {
                    return Err(format!("{at}: no {required} in {value}"));
                }
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (key, item) in map {
                    let property = properties
                        .get(key)
                        .ok_or_else(|| format!("{at}.{key}: not in the schema"))?;
                    check(doc, property, item, &format!("{at}.{key}"))?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks an answer against the document: its status is one the route declares, and a JSON
/// body matches the status's schema.
fn documented(doc: &Value, method: &str, route: &str, answer: &Answer) {
    let operation = &doc["paths"][route][method.to_ascii_lowercase()];
    assert!(operation.is_object(), "{method} {route} is not documented");
    let status = answer.status.as_u16().to_string();
    let mut response = &operation["responses"][&status];
    assert!(
        !response.is_null(),
        "{method} {route} answered {status}, which it does not declare: {}",
        answer.body
    );
    if let Some(reference) = response["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        response = &doc["components"]["responses"][name];
    }
    if let Some(schema) = response["content"]["application/json"].get("schema") {
        conforms(
            doc,
            schema,
            &answer.body,
            &format!("{method} {route} {status}"),
        );
    }
}

/// Node `id`'s HTTP listener address.
fn http_base(cluster: &TestCluster, id: u64, scheme: &str) -> String {
    let addr = cluster.servers[&id].http_addr().expect("--http-listen set");
    format!("{scheme}://{addr}")
}

fn on_free_port(config: &mut baton_node::config::Config) {
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
}

const HOLD_SPEC: &str = "name: held\nsteps:\n  - name: hold\n    noop: {}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_as_documented() {
    init_logs();
    // reqwest is built without a default TLS provider (plain HTTP here, but it asks anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = TestCluster::start_customized(3, test_timing(), |_, c| on_free_port(c)).await;
    let leader = cluster.leader(TIMEOUT).await;
    let follower = cluster.follower(leader);
    let endpoints: Vec<_> = cluster
        .running()
        .iter()
        .map(|&id| cluster.addr(id))
        .collect();
    let _agent = TestAgent::start("a1", 8, endpoints, |step| match step {
        "hold" => Behavior::Hold,
        _ => Behavior::Succeed,
    });
    let http = Http::new(
        reqwest::Client::new(),
        http_base(&cluster, follower, "http"),
        None,
    );

    // The document, served without credentials, lists every route.
    let doc = http.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());

    // Submit: YAML with an idempotency key, on a follower; the same key again is the same one.
    let spec = "name: two-steps\nlabels: {team: web}\nsteps:\n  - name: a\n    noop: {}\n  - name: b\n    depends_on: [a]\n    noop: {}\n";
    let key = [("idempotency-key", "web-1")];
    let first = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", spec)),
            &key,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    documented(&doc, "POST", "/api/v1/workflows", &first);
    let id = first.body["workflow_id"].as_u64().unwrap();
    assert_eq!(first.headers["location"], format!("/api/v1/workflows/{id}"));
    let again = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", spec)),
            &key,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["workflow_id"], id);
    assert_eq!(again.body["created"], false);
    documented(&doc, "POST", "/api/v1/workflows", &again);

    // A JSON spec, with parameters from the query string.
    let json_spec = json!({"name": "params", "params": [{"name": "env"}],
        "steps": [{"name": "only", "noop": {}}]});
    let with_params = http
        .call(
            Method::POST,
            "/api/v1/workflows?param=env=prod",
            Some(("application/json", &json_spec.to_string())),
            &[],
        )
        .await;
    assert_eq!(
        with_params.status,
        StatusCode::CREATED,
        "{}",
        with_params.body
    );
    let params_id = with_params.body["workflow_id"].as_u64().unwrap();

    // Bad input: each a 400 naming what is wrong, and documented.
    let bad_yaml = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some((
                "application/yaml",
                "name: x\nsteps:\n  - name: a\n    noop: {}\n    dependson: [b]\n",
            )),
            &[],
        )
        .await;
    assert_eq!(bad_yaml.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_yaml.code(), "invalid_argument");
    assert!(
        bad_yaml.message().starts_with("body: line 5") && bad_yaml.message().contains("dependson"),
        "{}",
        bad_yaml.message()
    );
    documented(&doc, "POST", "/api/v1/workflows", &bad_yaml);
    let invalid = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some((
                "application/yaml",
                "name: x\nsteps:\n  - name: a\n    noop: {}\n    depends_on: [nope]\n",
            )),
            &[],
        )
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert!(invalid.message().contains("nope"), "{}", invalid.message());
    let missing_param = http
        .call(
            Method::POST,
            "/api/v1/workflows?param=nope=1",
            Some(("application/json", &json_spec.to_string())),
            &[],
        )
        .await;
    assert_eq!(missing_param.status, StatusCode::BAD_REQUEST);
    assert!(
        missing_param.message().contains("nope"),
        "{}",
        missing_param.message()
    );
    let unknown_query = http.get("/api/v1/workflows?stat=running").await;
    assert_eq!(unknown_query.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown_query.message().contains("stat"),
        "{}",
        unknown_query.message()
    );
    let bad_state = http.get("/api/v1/workflows?state=runing").await;
    assert_eq!(bad_state.status, StatusCode::BAD_REQUEST);
    assert!(bad_state.message().contains("runing"));
    let bad_id = http.get("/api/v1/workflows/abc").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert!(bad_id.message().contains("abc"));
    documented(&doc, "GET", "/api/v1/workflows/{id}", &bad_id);
    let not_found = http.get("/api/v1/workflows/999999").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert_eq!(not_found.code(), "not_found");
    documented(&doc, "GET", "/api/v1/workflows/{id}", &not_found);
    let too_big = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", &"#".repeat(5 * 1024 * 1024))),
            &[],
        )
        .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Its unread body ends the connection, and the client is told so (not to reuse it).
    assert_eq!(too_big.headers["connection"], "close");
    let no_route = http.get("/api/v1/nothing").await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    assert_eq!(no_route.code(), "not_found");
    let reserved = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", spec)),
            &[("idempotency-key", "trigger:on-push:1")],
        )
        .await;
    assert_eq!(reserved.status, StatusCode::BAD_REQUEST);
    assert!(
        reserved
            .message()
            .contains("reserved for webhook deliveries"),
        "{}",
        reserved.message()
    );
    let wrong_method = http
        .call(Method::DELETE, "/api/v1/workflows", None, &[])
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);

    // Get, until it succeeds; its fields are `baton get -o json`'s.
    let done = wait_for(TIMEOUT, "the workflow to succeed", || async {
        let got = http.get(&format!("/api/v1/workflows/{id}")).await;
        (got.body["state"] == "succeeded").then_some(got)
    })
    .await;
    assert_eq!(done.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/workflows/{id}", &done);
    assert_eq!(done.body["steps"].as_array().unwrap().len(), 2);
    assert_eq!(done.body["labels"]["team"], "web");
    let params_run = http
        .get(&format!("/api/v1/workflows/{params_id}?consistency=stale"))
        .await;
    assert_eq!(params_run.body["params"]["env"], "prod");
    let with_attempts = http
        .get(&format!("/api/v1/workflows/{id}?attempts_of=a"))
        .await;
    assert_eq!(with_attempts.status, StatusCode::OK);

    // List, with filters and paging.
    let listed = http
        .get("/api/v1/workflows?state=succeeded&label=team=web")
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/workflows", &listed);
    let ids: Vec<u64> = listed.body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [id]);
    let page = http.get("/api/v1/workflows?page_size=1").await;
    let token = page.body["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let next = http
        .get(&format!("/api/v1/workflows?page_size=1&page_token={token}"))
        .await;
    assert_eq!(next.status, StatusCode::OK);
    assert_ne!(
        next.body["workflows"][0]["id"],
        page.body["workflows"][0]["id"]
    );

    // History and the event stream: the same events, with ids a reconnect resumes after.
    let history = http.get(&format!("/api/v1/workflows/{id}/history")).await;
    assert_eq!(history.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/workflows/{id}/history", &history);
    let history: Vec<Value> = history.body["events"].as_array().unwrap().clone();
    let streamed = http
        .events(&format!("/api/v1/workflows/{id}/events"), None)
        .await;
    assert_eq!(
        streamed.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        history,
        "the stream of a finished workflow is its history"
    );
    for (id_text, event) in &streamed {
        conforms(
            &doc,
            &json!({"$ref": "#/components/schemas/Event"}),
            event,
            "event",
        );
        assert!(
            id_text.starts_with(&format!("{}.", event["index"])),
            "{id_text}"
        );
    }
    assert!(streamed.len() >= 4, "{streamed:?}");
    for cut in [0, 1, streamed.len() - 2] {
        let resumed = http
            .events(
                &format!("/api/v1/workflows/{id}/events"),
                Some(&streamed[cut].0),
            )
            .await;
        assert_eq!(resumed, streamed[cut + 1..], "resumed after event {cut}");
    }

    // Every workflow's events, from an index on, resumable the same way; a resume id past what
    // a u64 counts is refused, not wrapped.
    let all = http.first_events("/api/v1/events?from_index=1", 6).await;
    assert!(all.iter().any(|(_, e)| e["workflow_id"] == id), "{all:?}");
    let overflow = http
        .call(
            Method::GET,
            &format!("/api/v1/workflows/{id}/events"),
            None,
            &[("last-event-id", "5.18446744073709551615")],
        )
        .await;
    assert_eq!(overflow.status, StatusCode::BAD_REQUEST);

    // Cancel a running workflow; cancelling it again leaves it so.
    let held = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", HOLD_SPEC)),
            &[],
        )
        .await;
    let held_id = held.body["workflow_id"].as_u64().unwrap();
    let paused = http
        .post(&format!("/api/v1/workflows/{held_id}/pause"))
        .await;
    assert_eq!(paused.status, StatusCode::OK);
    assert_eq!(paused.body["changed"], true);
    documented(&doc, "POST", "/api/v1/workflows/{id}/pause", &paused);
    let resumed = http
        .post(&format!("/api/v1/workflows/{held_id}/resume"))
        .await;
    assert_eq!(resumed.body["changed"], true);
    let resumed_again = http
        .post(&format!("/api/v1/workflows/{held_id}/resume"))
        .await;
    assert_eq!(resumed_again.body["changed"], false);
    // A running workflow cannot be retried: FAILED_PRECONDITION is a 409.
    let early_retry = http
        .post(&format!("/api/v1/workflows/{held_id}/retry"))
        .await;
    assert_eq!(
        early_retry.status,
        StatusCode::CONFLICT,
        "{}",
        early_retry.body
    );
    assert_eq!(early_retry.code(), "failed_precondition");
    documented(&doc, "POST", "/api/v1/workflows/{id}/retry", &early_retry);
    let cancelled = http
        .post_json(
            &format!("/api/v1/workflows/{held_id}/cancel"),
            json!({"reason": "testing the API"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    documented(&doc, "POST", "/api/v1/workflows/{id}/cancel", &cancelled);
    let cancelled_again = http
        .post(&format!("/api/v1/workflows/{held_id}/cancel"))
        .await;
    assert_eq!(cancelled_again.body["state"], "cancelled");
    let bad_cancel = http
        .post_json(
            &format!("/api/v1/workflows/{held_id}/cancel"),
            json!({"reasn": "x"}),
        )
        .await;
    assert_eq!(bad_cancel.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_cancel.message().contains("reasn"),
        "{}",
        bad_cancel.message()
    );
    // Retry the cancelled one: its held step runs again, once its agent has shown it stopped
    // the cancelled attempt (its next heartbeat; until then what the attempt held stays taken).
    let retried = wait_for(
        TIMEOUT,
        "the cancelled attempt's agent to stop it",
        || async {
            let answer = http
                .post_json(
                    &format!("/api/v1/workflows/{held_id}/retry"),
                    json!({"from_step": "hold"}),
                )
                .await;
            (!answer.message().contains("retry in a moment")).then_some(answer)
        },
    )
    .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["steps"], json!(["hold"]));
    documented(&doc, "POST", "/api/v1/workflows/{id}/retry", &retried);
    http.post(&format!("/api/v1/workflows/{held_id}/cancel"))
        .await;

    // Signal a waiting step.
    let gate = "name: gate\nsteps:\n  - name: approve\n    wait: {signal: go}\n  - name: after\n    depends_on: [approve]\n    noop: {}\n";
    let gated = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", gate)),
            &[],
        )
        .await;
    let gated_id = gated.body["workflow_id"].as_u64().unwrap();
    let wrong_step = http
        .post_json(
            &format!("/api/v1/workflows/{gated_id}/signal"),
            json!({"step": "after", "data": "x"}),
        )
        .await;
    assert!(wrong_step.status.is_client_error(), "{}", wrong_step.body);
    documented(&doc, "POST", "/api/v1/workflows/{id}/signal", &wrong_step);
    let signalled = wait_for(TIMEOUT, "the gate to wait", || async {
        let answer = http
            .post_json(
                &format!("/api/v1/workflows/{gated_id}/signal"),
                json!({"step": "approve", "data": "ok by test"}),
            )
            .await;
        (answer.status == StatusCode::OK).then_some(answer)
    })
    .await;
    documented(&doc, "POST", "/api/v1/workflows/{id}/signal", &signalled);
    wait_for(TIMEOUT, "the gated workflow to succeed", || async {
        let got = http.get(&format!("/api/v1/workflows/{gated_id}")).await;
        (got.body["state"] == "succeeded").then_some(())
    })
    .await;

    // A batch: a JSON spec, a YAML text, all in one entry.
    let batch = http
        .post_json(
            "/api/v1/workflows/batch",
            json!({"submits": [
                {"spec": {"name": "b1", "steps": [{"name": "s", "noop": {}}]}, "idempotency_key": "b-1"},
                {"spec": "name: b2\nsteps:\n  - name: s\n    noop: {}\n"},
            ]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.body);
    assert_eq!(batch.body["results"].as_array().unwrap().len(), 2);
    documented(&doc, "POST", "/api/v1/workflows/batch", &batch);
    let bad_batch = http
        .post_json(
            "/api/v1/workflows/batch",
            json!({"submits": [{"spec": {"name": "ok", "steps": [{"name": "s", "noop": {}}]}},
                               {"spec": {"name": "bad", "stepz": []}}]}),
        )
        .await;
    assert_eq!(bad_batch.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_batch.message().starts_with("submits[1].spec:"),
        "{}",
        bad_batch.message()
    );

    // Templates: apply (a new version, then the same), list, get, run, delete.
    let template = "name: greet\nparams:\n  - name: who\n    required: true\nsteps:\n  - name: hello\n    noop: {}\n";
    let applied = http
        .call(
            Method::POST,
            "/api/v1/templates",
            Some(("application/yaml", template)),
            &[],
        )
        .await;
    assert_eq!(applied.status, StatusCode::CREATED, "{}", applied.body);
    documented(&doc, "POST", "/api/v1/templates", &applied);
    let same = http
        .call(
            Method::POST,
            "/api/v1/templates",
            Some(("application/yaml", template)),
            &[],
        )
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body["version"], 1);
    let templates = http.get("/api/v1/templates").await;
    documented(&doc, "GET", "/api/v1/templates", &templates);
    assert_eq!(templates.body["templates"][0]["name"], "greet");
    let one = http.get("/api/v1/templates/greet?version=1").await;
    assert_eq!(one.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/templates/{name}", &one);
    let run = http
        .call(
            Method::POST,
            "/api/v1/templates/greet/runs",
            Some((
                "application/json",
                &json!({"params": {"who": "world"}}).to_string(),
            )),
            &[("idempotency-key", "greet-1")],
        )
        .await;
    assert_eq!(run.status, StatusCode::CREATED, "{}", run.body);
    documented(&doc, "POST", "/api/v1/templates/{name}/runs", &run);
    let run_id = run.body["workflow_id"].as_u64().unwrap();
    let started = http.get(&format!("/api/v1/workflows/{run_id}")).await;
    assert_eq!(started.body["template"], "greet");
    assert_eq!(started.body["params"]["who"], "world");
    let no_param = http.post("/api/v1/templates/greet/runs").await;
    assert_eq!(
        no_param.status,
        StatusCode::BAD_REQUEST,
        "{}",
        no_param.body
    );
    assert!(no_param.message().contains("who"), "{}", no_param.message());

    // Schedules: create, refuse a second of the name, replace, read, pause, trigger, backfill.
    let schedule = "name: hourly-greet\nevery: 1h\ntemplate: greet\nparams: {who: schedule}\n";
    let made = http
        .call(
            Method::POST,
            "/api/v1/schedules",
            Some(("application/yaml", schedule)),
            &[],
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    documented(&doc, "POST", "/api/v1/schedules", &made);
    let twice = http
        .call(
            Method::POST,
            "/api/v1/schedules",
            Some(("application/yaml", schedule)),
            &[],
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.body);
    documented(&doc, "POST", "/api/v1/schedules", &twice);
    let replaced = http
        .call(
            Method::POST,
            "/api/v1/schedules?replace=true",
            Some(("application/yaml", schedule)),
            &[],
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    let bad_schedule = http
        .call(
            Method::POST,
            "/api/v1/schedules",
            Some((
                "application/yaml",
                "name: x\ncron: \"61 * * * *\"\ntemplate: greet\n",
            )),
            &[],
        )
        .await;
    assert_eq!(
        bad_schedule.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_schedule.body
    );
    assert!(
        bad_schedule.message().contains("cron"),
        "{}",
        bad_schedule.message()
    );
    let schedules = http.get("/api/v1/schedules").await;
    documented(&doc, "GET", "/api/v1/schedules", &schedules);
    let got = http.get("/api/v1/schedules/hourly-greet").await;
    documented(&doc, "GET", "/api/v1/schedules/{name}", &got);
    assert!(!got.body["upcoming_ms"].as_array().unwrap().is_empty());
    let paused = http.post("/api/v1/schedules/hourly-greet/pause").await;
    assert_eq!(paused.body["changed"], true);
    documented(&doc, "POST", "/api/v1/schedules/{name}/pause", &paused);
    let resumed = http.post("/api/v1/schedules/hourly-greet/resume").await;
    assert_eq!(resumed.body["changed"], true);
    let triggered = http.post("/api/v1/schedules/hourly-greet/trigger").await;
    assert_eq!(triggered.status, StatusCode::OK, "{}", triggered.body);
    documented(&doc, "POST", "/api/v1/schedules/{name}/trigger", &triggered);
    assert!(
        triggered.body["workflow_id"].as_u64().is_some(),
        "{}",
        triggered.body
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let backfilled = http
        .post_json(
            "/api/v1/schedules/hourly-greet/backfill",
            json!({"from_ms": now_ms - 3 * 3_600_000, "to_ms": now_ms}),
        )
        .await;
    assert_eq!(backfilled.status, StatusCode::OK, "{}", backfilled.body);
    documented(
        &doc,
        "POST",
        "/api/v1/schedules/{name}/backfill",
        &backfilled,
    );
    let started = backfilled.body["started"].as_array().unwrap().len() as u64
        + backfilled.body["already_run"].as_u64().unwrap();
    assert!(started >= 2, "{}", backfilled.body);
    let runs = http.get("/api/v1/workflows?schedule=hourly-greet").await;
    assert!(runs.body["workflows"].as_array().unwrap().len() >= 2);
    let deleted = http
        .call(Method::DELETE, "/api/v1/schedules/hourly-greet", None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    documented(&doc, "DELETE", "/api/v1/schedules/{name}", &deleted);
    let gone = http.get("/api/v1/schedules/hourly-greet").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let deleted = http
        .call(Method::DELETE, "/api/v1/templates/greet", None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        http.get("/api/v1/templates/greet").await.status,
        StatusCode::NOT_FOUND
    );

    // The audit trail, newest first: a client's submits (no actor under --insecure), the
    // schedule's runs (by the schedule), the schedule's deletion.
    let audit = http.get("/api/v1/audit?limit=500").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    documented(&doc, "GET", "/api/v1/audit", &audit);
    let records = audit.body["records"].as_array().unwrap();
    let has = |action: &str, actor: Value| {
        records
            .iter()
            .any(|r| r["action"] == action && r["actor"] == actor)
    };
    assert!(has("workflow.submit", Value::Null), "{records:#?}");
    assert!(has("workflow.submit", json!("schedule hourly-greet")));
    assert!(has("schedule.delete", Value::Null));
    let times: Vec<u64> = records
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let few = http.get("/api/v1/audit?limit=2").await;
    assert_eq!(few.body["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        http.get("/api/v1/audit?limit=0x").await.status,
        StatusCode::BAD_REQUEST
    );

    // Agents and the cluster.
    let agents = http.get("/api/v1/agents").await;
    assert_eq!(agents.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/agents", &agents);
    assert_eq!(agents.body["agents"][0]["name"], "a1");
    let status = http.get("/api/v1/cluster").await;
    documented(&doc, "GET", "/api/v1/cluster", &status);
    assert_eq!(status.body["node_id"], follower);
    assert_eq!(status.body["leader_id"], leader);
    assert_eq!(status.body["members"].as_array().unwrap().len(), 3);

    // Under --insecure the console needs no session.
    for path in [
        "/workflows".to_string(),
        format!("/workflows/{id}"),
        "/agents".into(),
        "/cluster".into(),
        "/schedules".into(),
        "/namespaces".into(),
        "/audit".into(),
    ] {
        assert_eq!(http.get(&path).await.status, StatusCode::OK, "{path}");
    }

    // Every route was called and its answers matched the document.
    cluster.shutdown().await;
}

/// A cluster with TLS and tokens, its JSON API on HTTPS, and an admin token.
pub(crate) struct Secure {
    pub(crate) cluster: TestCluster,
    pki: tempfile::TempDir,
    pub(crate) admin: String,
}

pub(crate) async fn start_secure() -> Secure {
    init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = tempfile::tempdir().unwrap();
    let identities: Vec<PeerIdentity> = (1..=3)
        .map(|i| PeerIdentity::new(PeerRole::Node, i.to_string()))
        .collect();
    devcerts::ensure(pki.path(), &identities).unwrap();
    let admin = baton_security::token::generate().unwrap();
    let token_file = pki.path().join("bootstrap-token");
    std::fs::write(&token_file, &admin.text).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let dir = pki.path().to_owned();
    let cluster = TestCluster::start_customized(3, test_timing(), move |id, config| {
        config.security = SecurityConfig::Secure {
            tls: TlsFiles::in_dir(&dir, &format!("node-{id}")),
            bootstrap_token_file: Some(token_file.clone()),
        };
        on_free_port(config);
    })
    .await;
    Secure {
        cluster,
        pki,
        admin: admin.text,
    }
}

impl Secure {
    /// An HTTPS client trusting the cluster's CA, presenting no certificate.
    fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.pki.path().join("ca.pem")).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub(crate) fn http(&self, id: u64, token: Option<&str>) -> Http {
        Http::new(self.client(), http_base(&self.cluster, id, "https"), token)
    }

    /// A gRPC client with the admin token (and a client certificate), once the bootstrap token
    /// works.
    pub(crate) async fn grpc_admin(&self) -> baton_client::Client {
        let admin = self.http(1, Some(&self.admin));
        // The bootstrap token is recorded by the first leader: wait until it works.
        wait_for(TIMEOUT, "the bootstrap admin token to work", || async {
            (admin.get("/api/v1/cluster").await.status == StatusCode::OK).then_some(())
        })
        .await;
        self.grpc(&self.admin, "")
    }

    /// A gRPC client of every node with a client certificate, `token`, acting in `namespace`.
    pub(crate) fn grpc(&self, token: &str, namespace: &str) -> baton_client::Client {
        let endpoints = (1..=3)
            .map(|id| self.cluster.addr(id).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let pki = self.pki.path();
        let ops = PeerIdentity::new(PeerRole::Client, "ops");
        devcerts::ensure(pki, std::slice::from_ref(&ops)).unwrap();
        let tls = baton_security::TlsSettings::load(TlsFiles::in_dir(pki, &devcerts::stem(&ops)))
            .unwrap();
        baton_client::Client::with_config(
            baton_client::Endpoints::parse(&endpoints).unwrap(),
            baton_client::ClientConfig {
                credentials: baton_client::Credentials {
                    tls: Some(tls),
                    token: Some(token.to_owned()),
                },
                namespace: namespace.to_owned(),
                ..baton_client::ClientConfig::default()
            },
        )
        .unwrap()
    }

    /// A new token with `role`.
    async fn token(&self, role: &str) -> String {
        self.grpc_admin()
            .await
            .create_token(&format!("http-{role}"), role, Default::default())
            .await
            .unwrap()
            .token
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_roles_apply_over_https_as_over_grpc() {
    let secure = start_secure().await;
    let leader = secure.cluster.leader(TIMEOUT).await;
    let follower = secure.cluster.follower(leader);
    let reader = secure.token("reader").await;
    let submitter = secure.token("submitter").await;

    // No client certificate is asked for; the document needs no token.
    let anonymous = secure.http(follower, None);
    let doc = anonymous.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.body;

    // No token, or a bad one: 401, and the same words whatever was wrong.
    let none = anonymous.get("/api/v1/workflows").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.code(), "unauthenticated");
    assert!(none.headers.contains_key("www-authenticate"));
    documented(&doc, "GET", "/api/v1/workflows", &none);
    let forged = secure
        .http(follower, Some("baton_abc_def"))
        .get("/api/v1/workflows")
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged.message(), none.message());

    // A reader reads, and is refused a submit with the roles that may.
    let reading = secure.http(follower, Some(&reader));
    assert_eq!(
        reading.get("/api/v1/workflows").await.status,
        StatusCode::OK
    );
    assert_eq!(reading.get("/api/v1/cluster").await.status, StatusCode::OK);
    let refused = reading
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", HOLD_SPEC)),
            &[],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.message(),
        "WorkflowService.Submit needs a token with role submitter, operator or admin; this \
         token's role is reader"
    );
    documented(&doc, "POST", "/api/v1/workflows", &refused);

    // A submitter submits on a follower; the history names its token.
    let submitting = secure.http(follower, Some(&submitter));
    let submitted = submitting
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", HOLD_SPEC)),
            &[],
        )
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", submitted.body);
    let id = submitted.body["workflow_id"].as_u64().unwrap();
    // A reader cannot cancel it; a submitter can.
    let no_cancel = reading
        .post(&format!("/api/v1/workflows/{id}/cancel"))
        .await;
    assert_eq!(no_cancel.status, StatusCode::FORBIDDEN);
    // Signals are an operator's.
    let no_signal = submitting
        .post_json(
            &format!("/api/v1/workflows/{id}/signal"),
            json!({"step": "hold"}),
        )
        .await;
    assert_eq!(no_signal.status, StatusCode::FORBIDDEN);
    assert!(
        no_signal.message().contains("operator"),
        "{}",
        no_signal.message()
    );
    let cancelled = submitting
        .post(&format!("/api/v1/workflows/{id}/cancel"))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    // The history names who cancelled it: the token, as for a gRPC caller.
    let history = reading
        .get(&format!("/api/v1/workflows/{id}/history"))
        .await;
    let actors: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(
        actors.iter().any(|a| a.contains("http-submitter")),
        "{actors:?}"
    );

    // Plaintext HTTP to the HTTPS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/openapi.json",
            secure.cluster.servers[&follower].http_addr().unwrap()
        ))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plaintext reached the HTTPS listener"
    );
    secure.cluster.shutdown().await;
}

/// `sha256=HEX` of `body` under `secret`.
fn sign(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_delivery_starts_one_run_per_delivery_id() {
    let secure = start_secure().await;
    let leader = secure.cluster.leader(TIMEOUT).await;
    let follower = secure.cluster.follower(leader);
    let admin = secure.grpc_admin().await;
    let template = baton_proto::spec::parse_spec(
        "name: deploy\nparams:\n  - name: sha\n  - name: branch\n  - name: env\nsteps:\n  - name: go\n    noop: {}\n",
        baton_proto::spec::SpecFormat::Yaml,
    )
    .unwrap();
    admin.apply_template(template).await.unwrap();
    let spec = baton_proto::schedule::parse_trigger(
        "name: on-push\ntemplate: deploy\nparams: {env: staging}\nparams_from_body: {sha: /after, branch: /ref}\n",
        baton_proto::spec::SpecFormat::Yaml,
    )
    .unwrap();
    let secret = "a-webhook-secret-of-some-length";
    assert!(
        admin
            .create_trigger(spec.clone(), secret.into(), false)
            .await
            .unwrap()
            .created
    );
    // A second of the name is refused; the secret's bounds are the node's too.
    let again = admin
        .create_trigger(spec.clone(), secret.into(), false)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(tonic::Code::AlreadyExists));
    let short = admin
        .create_trigger(spec.clone(), "short".into(), true)
        .await
        .unwrap_err();
    assert_eq!(short.code(), Some(tonic::Code::InvalidArgument));
    let mut unknown_param = spec.clone();
    unknown_param.params.insert("nope".into(), "x".into());
    let refused = admin
        .create_trigger(unknown_param, secret.into(), true)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("nope"), "{refused}");

    // Deliveries need no token: the signature is the credential.
    let sender = secure.http(follower, None);
    let reader = secure.http(follower, Some(&secure.token("reader").await));
    let count = || async {
        reader.get("/api/v1/workflows?name=deploy").await.body["workflows"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let body = r#"{"ref": "refs/heads/main", "after": "c0ffee", "pusher": {"name": "ada"}}"#;
    let deliver = |signature: Option<String>, delivery: Option<&'static str>, github: bool| {
        let sender = &sender;
        async move {
            let mut headers: Vec<(&str, String)> = Vec::new();
            if let Some(signature) = signature {
                let name = if github {
                    "x-hub-signature-256"
                } else {
                    "x-baton-signature-256"
                };
                headers.push((name, signature));
            }
            if let Some(id) = delivery {
                let name = if github {
                    "x-github-delivery"
                } else {
                    "x-baton-delivery"
                };
                headers.push((name, id.to_string()));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sender
                .call(
                    Method::POST,
                    "/api/v1/triggers/on-push",
                    Some(("application/json", body)),
                    &headers,
                )
                .await
        }
    };
    let doc = sender.get("/api/v1/openapi.json").await.body;

    // Unsigned, or signed with another secret, or over another body: 401, nothing started.
    let unsigned = deliver(None, Some("d-0"), false).await;
    assert_eq!(
        unsigned.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        unsigned.body
    );
    assert!(
        unsigned.message().contains("missing"),
        "{}",
        unsigned.message()
    );
    documented(&doc, "POST", "/api/v1/triggers/{name}", &unsigned);
    let forged = deliver(
        Some(sign("not-the-secret-at-all", body)),
        Some("d-0"),
        false,
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let other_body = deliver(Some(sign(secret, "{}")), Some("d-0"), false).await;
    assert_eq!(other_body.status, StatusCode::UNAUTHORIZED);
    assert_eq!(count().await, 0, "a refused delivery started nothing");

    // Signed: one run, with the mapped parameters; the same delivery again is the same run.
    let first = deliver(Some(sign(secret, body)), Some("d-1"), false).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    documented(&doc, "POST", "/api/v1/triggers/{name}", &first);
    let id = first.body["workflow_id"].as_u64().unwrap();
    let run = reader.get(&format!("/api/v1/workflows/{id}")).await.body;
    assert_eq!(run["template"], "deploy");
    assert_eq!(run["params"]["sha"], "c0ffee");
    assert_eq!(run["params"]["branch"], "refs/heads/main");
    assert_eq!(run["params"]["env"], "staging");
    assert_eq!(run["idempotency_key"], "trigger:on-push:d-1");
    let redelivered = deliver(Some(sign(secret, body)), Some("d-1"), false).await;
    assert_eq!(redelivered.status, StatusCode::OK, "{}", redelivered.body);
    assert_eq!(redelivered.body["workflow_id"], id);
    // GitHub's headers, another delivery: another run.
    let github = deliver(Some(sign(secret, body)), Some("d-2"), true).await;
    assert_eq!(github.status, StatusCode::CREATED, "{}", github.body);
    assert_ne!(github.body["workflow_id"], id);
    assert_eq!(count().await, 2);
    let bad_delivery = deliver(Some(sign(secret, body)), Some("has space"), false).await;
    assert_eq!(bad_delivery.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_delivery.message().starts_with("x-baton-delivery"),
        "{}",
        bad_delivery.message()
    );

    // Reads never show the secret.
    let listed = reader.get("/api/v1/triggers").await;
    assert_eq!(listed.status, StatusCode::OK);
    documented(&doc, "GET", "/api/v1/triggers", &listed);
    assert!(!listed.body.to_string().contains(secret));
    let one = reader.get("/api/v1/triggers/on-push").await;
    documented(&doc, "GET", "/api/v1/triggers/{name}", &one);
    assert_eq!(one.body["params_from_body"]["sha"], "/after");

    // Unknown, or deleted: 404.
    let nobody = sender
        .call(
            Method::POST,
            "/api/v1/triggers/nobody",
            Some(("application/json", body)),
            &[],
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    let no_delete = reader
        .call(Method::DELETE, "/api/v1/triggers/on-push", None, &[])
        .await;
    assert_eq!(no_delete.status, StatusCode::FORBIDDEN);
    let operator = secure.http(follower, Some(&secure.admin));
    let deleted = operator
        .call(Method::DELETE, "/api/v1/triggers/on-push", None, &[])
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let after = deliver(Some(sign(secret, body)), Some("d-3"), false).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(count().await, 2);
    secure.cluster.shutdown().await;
}

/// The hidden `csrf` field of the first form on a page.
fn csrf_field(html: &str) -> String {
    let found = regex::Regex::new(r#"name="csrf" value="([^"]*)""#)
        .unwrap()
        .captures(html)
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    found[1].to_string()
}

/// The value `Set-Cookie` gives cookie `name`, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|header| {
            let value = header[name.len() + 1..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            (value, header.to_string())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_pages_need_a_session_and_their_forms_a_csrf_token() {
    let secure = start_secure().await;
    let leader = secure.cluster.leader(TIMEOUT).await;
    let follower = secure.cluster.follower(leader);
    let reader_token = secure.token("reader").await;
    let ca = std::fs::read(secure.pki.path().join("ca.pem")).unwrap();
    // Redirects and cookies by hand, to see each.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = http_base(&secure.cluster, follower, "https");
    let get = |path: String, cookie: Option<String>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let post = |path: String, cookie: Option<String>, form: String| {
        let mut request = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    // A running workflow (no agent: its step stays ready).
    let api = secure.http(follower, Some(&secure.admin));
    let submitted = api
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", HOLD_SPEC)),
            &[],
        )
        .await;
    let id = submitted.body["workflow_id"].as_u64().unwrap();

    // Without a session, a page sends the viewer to sign in, and back afterwards.
    let page = get(format!("/workflows/{id}"), None).await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers()["location"],
        format!("/login?next=%2Fworkflows%2F{id}")
    );

    // Signing in: the form's CSRF value must come back with its cookie.
    let sign_in = |token: String, next: &'static str| {
        let (get, post) = (&get, &post);
        async move {
            let form = get(format!("/login?next={next}"), None).await.unwrap();
            let (login_cookie, _) = set_cookie(&form, "baton_login").expect("a login cookie");
            let csrf = csrf_field(&form.text().await.unwrap());
            assert_eq!(csrf, login_cookie);
            let body = format!("token={token}&next={next}&csrf={csrf}");
            let forged = post(
                "/login".into(),
                Some(format!("baton_login={login_cookie}")),
                body.replace(&csrf, "forged"),
            )
            .await
            .unwrap();
            assert_eq!(forged.status(), StatusCode::FORBIDDEN);
            let signed = post(
                "/login".into(),
                Some(format!("baton_login={login_cookie}")),
                body,
            )
            .await
            .unwrap();
            assert_eq!(signed.status(), StatusCode::SEE_OTHER);
            let location = signed.headers()["location"].to_str().unwrap().to_string();
            let (session, header) = set_cookie(&signed, "baton_session").expect("a session cookie");
            assert!(
                header.contains("HttpOnly")
                    && header.contains("SameSite=Strict")
                    && header.contains("Secure"),
                "{header}"
            );
            (format!("baton_session={session}"), location)
        }
    };
    let form = get("/login".into(), None).await.unwrap();
    let (login_cookie, _) = set_cookie(&form, "baton_login").unwrap();
    let bad = post(
        "/login".into(),
        Some(format!("baton_login={login_cookie}")),
        format!("token=baton_0_0&csrf={login_cookie}"),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let (admin, location) = sign_in(secure.admin.clone(), "%2Fworkflows").await;
    assert_eq!(location, "/workflows");
    let (_, elsewhere) = sign_in(secure.admin.clone(), "%2F%2Fevil.example%2F").await;
    assert_eq!(
        elsewhere, "/workflows",
        "only this site's paths are followed"
    );

    // Pages with the session; the admin's workflow page has a cancel form with the CSRF token.
    for path in [
        "/workflows",
        "/agents",
        "/cluster",
        "/schedules",
        "/namespaces",
        "/audit",
    ] {
        let page = get(path.into(), Some(admin.clone())).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert!(page.text().await.unwrap().contains("<main>"), "{path}");
    }
    // The audit page shows the submit above, by the admin's token; the namespaces page `default`.
    let audit = get("/audit".into(), Some(admin.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains(r#"data-audit="workflow.submit""#) && audit.contains("token "),
        "{audit}"
    );
    let namespaces = get("/namespaces".into(), Some(admin.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        namespaces.contains(r#"data-namespace-row="default""#),
        "{namespaces}"
    );
    let cluster = get("/cluster".into(), Some(admin.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        cluster.contains("The 3 nodes that answered hold the same state")
            || cluster.contains("No disagreement seen"),
        "{cluster}"
    );
    let html = get(format!("/workflows/{id}"), Some(admin.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"data-action="cancel""#), "{html}");
    assert!(
        html.contains(r#"data-step="hold" data-state="ready""#),
        "{html}"
    );
    let csrf = csrf_field(&html);
    // Without the token a form is refused; with it, it acts and goes back to the page.
    let forged = post(
        format!("/workflows/{id}/pause"),
        Some(admin.clone()),
        "csrf=nope".into(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let paused = post(
        format!("/workflows/{id}/pause"),
        Some(admin.clone()),
        format!("csrf={csrf}"),
    )
    .await
    .unwrap();
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    assert!(
        paused.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&format!("/workflows/{id}?done="))
    );
    assert_eq!(
        api.get(&format!("/api/v1/workflows/{id}")).await.body["paused"],
        true
    );

    // The JSON API takes the session too; a change made with it needs X-Baton-CSRF.
    let read = client
        .get(format!("{base}/api/v1/workflows/{id}"))
        .header("cookie", admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let without = client
        .post(format!("{base}/api/v1/workflows/{id}/resume"))
        .header("cookie", admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let with = client
        .post(format!("{base}/api/v1/workflows/{id}/resume"))
        .header("cookie", admin.clone())
        .header("x-baton-csrf", csrf.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::OK);

    // A reader sees the page without the buttons, and is refused when it posts one anyway.
    let (reader, _) = sign_in(reader_token, "%2Fworkflows").await;
    let html = get(format!("/workflows/{id}"), Some(reader.clone()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("data-action="), "{html}");
    let reader_csrf = csrf_field(&html);
    let refused = post(
        format!("/workflows/{id}/cancel"),
        Some(reader.clone()),
        format!("csrf={reader_csrf}"),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        api.get(&format!("/api/v1/workflows/{id}")).await.body["state"],
        "running"
    );
    let cancelled = post(
        format!("/workflows/{id}/cancel"),
        Some(admin.clone()),
        format!("csrf={csrf}"),
    )
    .await
    .unwrap();
    assert_eq!(cancelled.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        api.get(&format!("/api/v1/workflows/{id}")).await.body["state"],
        "cancelled"
    );

    // Logging out needs the token too, and ends the cookie.
    let kept = post("/logout".into(), Some(admin.clone()), "csrf=nope".into())
        .await
        .unwrap();
    assert_eq!(kept.status(), StatusCode::FORBIDDEN);
    let out = post(
        "/logout".into(),
        Some(admin.clone()),
        format!("csrf={csrf}"),
    )
    .await
    .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (_, header) = set_cookie(&out, "baton_session").unwrap();
    assert!(header.contains("Max-Age=0"), "{header}");
    secure.cluster.shutdown().await;
}

/// A connection older than `--max-connection-age-secs` is closed, event streams included: no
/// client holds one of the listener's connections for ever, and a new one is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_connection_is_closed_and_its_client_served_again() {
    init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = TestCluster::start_customized(3, test_timing(), |_, config| {
        on_free_port(config);
        config.max_connection_age = Duration::from_secs(2);
    })
    .await;
    let leader = cluster.leader(TIMEOUT).await;
    let http = Http::new(
        reqwest::Client::new(),
        http_base(&cluster, leader, "http"),
        None,
    );
    // No agent: its step stays ready, and its event stream would never end by itself.
    let held = http
        .call(
            Method::POST,
            "/api/v1/workflows",
            Some(("application/yaml", HOLD_SPEC)),
            &[],
        )
        .await;
    let id = held.body["workflow_id"].as_u64().unwrap();
    let mut stream = http
        .client
        .get(format!("{}/api/v1/workflows/{id}/events", http.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // The stream reads (its history first, then keep-alives every 15 s) until the connection's
    // age (2 s) and grace (2 s): bounded as a whole, so a stream that is never closed fails.
    let read_to_end = async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            assert!(!chunk.is_empty());
        }
    };
    tokio::time::timeout(TIMEOUT, read_to_end)
        .await
        .expect("the connection is closed by its age, within the grace");
    let again = http.get(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["state"], "running");
    cluster.shutdown().await;
}
