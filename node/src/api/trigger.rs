//! `baton.v1.TriggerService`: create, read and delete webhook triggers (see `state::triggers`).
//! Deliveries arrive on the HTTP listener (`http::api`, `POST /api/v1/triggers/{name}`), which
//! checks them with [`verify_signature`] and starts the run with [`delivery_request`].

use std::sync::Arc;

use baton_proto::limits::IDEMPOTENCY_KEY_LEN_MAX;
use baton_proto::schedule::{delivery_params, validate_trigger, validate_trigger_secret};
use baton_proto::v1 as pb;
use baton_proto::v1::trigger_service_server::TriggerService;
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use baton_security::TokenRole;

use super::workflow::DELIVERY_KEY_PREFIX;
use super::{namespace_arg, namespace_exists, node_error, observed, stored_namespace};
use crate::raft::RaftNode;
use crate::security::grants::Grants;
use crate::state::namespaces::{scoped_name, split_scoped};
use crate::state::{Command, CreateTriggerCommand, Response as Applied};

pub struct TriggerServiceImpl {
    pub node: Arc<RaftNode>,
}

pub fn no_trigger(name: &str) -> Status {
    Status::not_found(format!("no trigger named {name:?}"))
}

fn checked_name(name: &str) -> Result<(), Status> {
    baton_proto::validate::check_name("name", "trigger name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Whether `signature` (a header value, `sha256=HEX`) is the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time. UNAUTHENTICATED naming the header otherwise.
pub fn verify_signature(
    header: &str,
    signature: Option<&str>,
    secret: &str,
    body: &[u8],
) -> Result<(), Status> {
    let Some(signature) = signature else {
        return Err(Status::unauthenticated(format!(
            "{header}: missing; sign the body with HMAC-SHA256 under the trigger's secret and \
             send `sha256=HEX`"
        )));
    };
    let digest = signature
        .strip_prefix("sha256=")
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .ok_or_else(|| {
            Status::unauthenticated(format!("{header}: not `sha256=` and a hex digest"))
        })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| Status::internal(format!("hmac key: {e}")))?;
    mac.update(body);
    mac.verify_slice(&digest).map_err(|_| {
        Status::unauthenticated(format!(
            "{header}: the signature does not match the body under this trigger's secret"
        ))
    })
}

/// The idempotency key of delivery `id` of trigger `name`: `trigger:NAME:ID`, readable in
/// `baton get`, or, when that is longer than a key may be, `trigger:` and a SHA-256 of both.
pub fn delivery_key(name: &str, id: &str) -> String {
    let key = format!("{DELIVERY_KEY_PREFIX}{name}:{id}");
    if key.len() <= IDEMPOTENCY_KEY_LEN_MAX {
        return key;
    }
    let digest = Sha256::digest(format!("{name}\0{id}").as_bytes());
    format!("{DELIVERY_KEY_PREFIX}{}", hex::encode(digest))
}

/// The submit a delivery makes: the trigger's template with the delivery's parameters, keyed by
/// the trigger and the delivery id (a redelivery finds the first run) when there is one.
pub fn delivery_request(
    namespace: &str,
    spec: &pb::TriggerSpec,
    body: &serde_json::Value,
    delivery: Option<&str>,
) -> pb::SubmitRequest {
    pb::SubmitRequest {
        spec: None,
        idempotency_key: delivery
            .map(|id| delivery_key(&spec.name, id))
            .unwrap_or_default(),
        params: delivery_params(spec, body),
        template: spec.template.clone(),
        template_version: spec.template_version,
        namespace: namespace.to_string(),
    }
}

impl TriggerServiceImpl {
    async fn consistent(&self, consistency: i32) -> Result<(), Status> {
        match pb::ReadConsistency::try_from(consistency) {
            Ok(pb::ReadConsistency::Stale) => Ok(()),
            Ok(_) => self.node.linearize().await.map_err(node_error),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}"
            ))),
        }
    }

    async fn create_inner(
        &self,
        grants: Grants,
        req: pb::CreateTriggerRequest,
        actor: String,
    ) -> Result<pb::CreateTriggerResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "TriggerService.CreateTrigger",
            &namespace,
            TokenRole::Operator,
        )?;
        namespace_exists(&self.node, &namespace).await?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: a trigger spec is required"))?;
        validate_trigger(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate_trigger_secret(&req.secret)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The template must exist now, and the fixed parameters fit it; each delivery checks
        // the parameters again against the version it starts.
        let (template, _) = super::template::resolve(
            &self.node,
            &namespace,
            &spec.template,
            spec.template_version,
        )
        .await?;
        for name in spec.params.keys().chain(spec.params_from_body.keys()) {
            if !template.params.iter().any(|p| &p.name == name) {
                return Err(Status::invalid_argument(format!(
                    "params.{name}: template {:?} declares no parameter {name:?}",
                    spec.template
                )));
            }
        }
        let name = spec.name.clone();
        let command = Command::CreateTrigger(CreateTriggerCommand {
            spec: spec.encode_to_vec(),
            secret: req.secret,
            replace: req.replace,
            namespace: stored_namespace(namespace),
        });
        match self
            .node
            .propose_client(super::audited(actor, command))
            .await
            .map_err(node_error)?
            .response
        {
            Applied::TriggerCreated { created } => Ok(pb::CreateTriggerResponse { created }),
            Applied::TriggerExists { .. } => Err(Status::already_exists(format!(
                "trigger {name:?} already exists: delete it first, or replace it (baton trigger \
                 create --replace)"
            ))),
            Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
            other => Err(Status::internal(format!("create trigger: {other:?}"))),
        }
    }

    async fn get_inner(
        &self,
        grants: Grants,
        req: pb::GetTriggerRequest,
    ) -> Result<pb::GetTriggerResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require("TriggerService.GetTrigger", &namespace, TokenRole::Reader)?;
        checked_name(&req.name)?;
        self.consistent(req.consistency).await?;
        let trigger = self
            .node
            .replica
            .read(|a| {
                a.state
                    .trigger(&scoped_name(&namespace, &req.name))
                    .map(|t| t.to_proto(&namespace))
            })
            .ok_or_else(|| no_trigger(&req.name))?;
        Ok(pb::GetTriggerResponse {
            trigger: Some(trigger),
        })
    }

    async fn list_inner(
        &self,
        grants: Grants,
        req: pb::ListTriggersRequest,
    ) -> Result<pb::ListTriggersResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require("TriggerService.ListTriggers", &namespace, TokenRole::Reader)?;
        self.consistent(req.consistency).await?;
        let triggers = self.node.replica.read(|a| {
            a.state
                .triggers()
                .filter(|(key, _)| split_scoped(key).0 == namespace)
                .map(|(_, t)| t.to_proto(&namespace))
                .collect()
        });
        Ok(pb::ListTriggersResponse { triggers })
    }

    async fn delete_inner(
        &self,
        grants: Grants,
        req: pb::DeleteTriggerRequest,
        actor: String,
    ) -> Result<pb::DeleteTriggerResponse, Status> {
        let namespace = namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "TriggerService.DeleteTrigger",
            &namespace,
            TokenRole::Operator,
        )?;
        checked_name(&req.name)?;
        match self
            .node
            .propose_client(super::audited(
                actor,
                Command::DeleteTrigger {
                    name: scoped_name(&namespace, &req.name),
                },
            ))
            .await
            .map_err(node_error)?
            .response
        {
            Applied::Done => Ok(pb::DeleteTriggerResponse {}),
            Applied::NoTrigger { .. } => Err(no_trigger(&req.name)),
            other => Err(Status::internal(format!("delete trigger: {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl TriggerService for TriggerServiceImpl {
    async fn create_trigger(
        &self,
        request: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::CreateTriggerResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "CreateTrigger",
            self.create_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn get_trigger(
        &self,
        request: Request<pb::GetTriggerRequest>,
    ) -> Result<Response<pb::GetTriggerResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed("GetTrigger", self.get_inner(grants, request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn list_triggers(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        observed(
            "ListTriggers",
            self.list_inner(grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn delete_trigger(
        &self,
        request: Request<pb::DeleteTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        let grants = Grants::of(&request, &self.node.replica);
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "DeleteTrigger",
            self.delete_inner(grants, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn only_the_right_signature_of_the_exact_body_passes() {
        let secret = "a-secret-of-16-bytes";
        let body = br#"{"ref":"refs/heads/main"}"#;
        let header = "X-Baton-Signature-256";
        verify_signature(header, Some(&sign(secret, body)), secret, body).unwrap();
        // GitHub's documented example: secret "It's a Secret to Everybody", body
        // "Hello, World!".
        verify_signature(
            header,
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            "It's a Secret to Everybody",
            b"Hello, World!",
        )
        .unwrap();
        let refused = |signature: Option<&str>, body: &[u8]| {
            verify_signature(header, signature, secret, body)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(refused(None, body).contains("missing"));
        assert!(refused(Some("md5=00"), body).contains("not `sha256=`"));
        assert!(refused(Some(&sign(secret, b"other")), body).contains("does not match"));
        assert!(refused(Some(&sign("another-secret-16b", body)), body).contains("does not match"));
        let mut truncated = sign(secret, body);
        truncated.truncate(39);
        assert!(refused(Some(&truncated), body).contains("does not match"));
    }

    #[test]
    fn a_delivery_is_keyed_by_trigger_and_delivery_id() {
        let spec = pb::TriggerSpec {
            name: "on-push".into(),
            template: "deploy".into(),
            params_from_body: [("sha".to_string(), "/after".to_string())].into(),
            ..Default::default()
        };
        let body = serde_json::json!({"after": "abc"});
        let request = delivery_request("team-a", &spec, &body, Some("d-1"));
        assert_eq!(request.idempotency_key, "trigger:on-push:d-1");
        assert_eq!(request.template, "deploy");
        assert_eq!(request.namespace, "team-a");
        assert_eq!(request.params["sha"], "abc");
        assert_eq!(
            delivery_request("default", &spec, &body, None).idempotency_key,
            ""
        );
        // Long names and ids still make a key that fits, one per (trigger, delivery).
        let long = delivery_key(&"n".repeat(128), &"d".repeat(128));
        assert!(long.len() <= IDEMPOTENCY_KEY_LEN_MAX && long.starts_with("trigger:"));
        assert_ne!(long, delivery_key(&"n".repeat(128), &"e".repeat(128)));
        assert_eq!(long, delivery_key(&"n".repeat(128), &"d".repeat(128)));
    }
}
