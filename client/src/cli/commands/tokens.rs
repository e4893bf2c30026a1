//! `baton token create | list | revoke`: the cluster's bearer tokens (`generate` needs no
//! cluster and is answered in [`super::run`]).

use baton_client::Client;
use baton_client::output;
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::TokenCommand;
use crate::cli::failure::{CallKind, client_failure};

/// `baton token ...`.
pub(super) async fn token(
    client: &Client,
    out: &Printer,
    command: TokenCommand,
) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role } => {
            let created = client
                .create_token(&name, &role)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"id": created.id, "token": created.token}),
                || {
                    format!(
                        "id:    {}\ntoken: {}\n(shown once: store it now)",
                        created.id, created.token
                    )
                },
            )
        }
        TokenCommand::List => {
            let listed = client
                .list_tokens()
                .await
                .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
            out.print(
                || Value::Array(listed.tokens.iter().map(output::token_json).collect()),
                || output::render_tokens(&listed.tokens),
            )
        }
        TokenCommand::Revoke { id } => {
            let revoked = client
                .revoke_token(&id)
                .await
                .map_err(|error| client_failure(error, CallKind::Write, None, None))?;
            out.print(
                || serde_json::json!({"id": id, "was_live": revoked.was_live}),
                || {
                    if revoked.was_live {
                        format!("token {id} revoked")
                    } else {
                        format!("token {id} was already revoked")
                    }
                },
            )
        }
        TokenCommand::Generate => unreachable!("handled before connecting"),
    }
}
