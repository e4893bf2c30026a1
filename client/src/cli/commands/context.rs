//! `baton context`, and which cluster and credentials a command uses: flags and variables first,
//! then the context (`--context NAME`, else the current one), then a local node in plaintext.

use baton_client::{CredentialSources, Endpoints};
use baton_security::contexts::{Context, Contexts, default_path};
use serde_json::json;

use super::printer::Printer;
use crate::cli::args::{Cli, ContextCommand};
use crate::cli::failure::Failure;

/// Where a command with no endpoints from anywhere goes.
const LOCAL_NODE: &str = "127.0.0.1:7001";

/// The endpoints and credential sources a command uses.
///
/// - Endpoints: `--endpoints` / `BATON_ENDPOINTS`, else the context's, else [`LOCAL_NODE`].
/// - Credentials: any of `--credentials`, `--ca`, `--cert`, `--key`, `--token-file` (or their
///   variables) and only those; else the context's folder, but only when the endpoints are
///   the context's too, so a cluster named by `--endpoints` or `BATON_ENDPOINTS` never receives
///   another cluster's token. A current context that cannot be read is warned about and skipped.
pub(super) fn resolve(cli: &Cli) -> anyhow::Result<(Endpoints, CredentialSources)> {
    let given = CredentialSources {
        dir: cli.credentials.clone(),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        token_file: cli.token_file.clone(),
    };
    let context: Option<Context> = match &cli.context {
        Some(name) => {
            let path = default_path().map_err(usage)?;
            let contexts = Contexts::load(&path).map_err(usage)?;
            Some(contexts.get(name, &path).map_err(usage)?.clone())
        }
        // Nothing to ask of the file when flags say everything.
        None if cli.endpoints.is_some() => None,
        // The current context is a convenience: a file that cannot be read leaves the local
        // default, with a warning, instead of failing every command.
        None => match default_path().and_then(|path| Contexts::load(&path)) {
            Ok(contexts) => contexts.current().map(|(_, context)| context.clone()),
            Err(error) => {
                eprintln!("warning: no context used: {error}");
                None
            }
        },
    };
    let endpoints = match (&cli.endpoints, &context) {
        (Some(endpoints), _) => endpoints.clone(),
        (None, Some(context)) => Endpoints::parse(&context.endpoints).map_err(|e| {
            Failure::usage(format!(
                "the context's endpoints {:?}: {e}",
                context.endpoints
            ))
        })?,
        (None, None) => Endpoints::parse(LOCAL_NODE).expect("a valid address"),
    };
    // A context's credentials go only to its own endpoints: endpoints from a flag or variable
    // never receive a context's token, even one named by --context. With its endpoints, a flag
    // or variable beats the context item by item: `--token-file` with the context's
    // certificates, `--credentials` instead of its folder.
    let credentials = match context {
        Some(context) if cli.endpoints.is_none() => CredentialSources {
            dir: given.dir.clone().or(context.credentials),
            ..given
        },
        _ => given,
    };
    Ok((endpoints, credentials))
}

fn usage(error: impl std::fmt::Display) -> anyhow::Error {
    Failure::usage(error.to_string())
}

/// `baton context ...`: reads and writes the contexts file; never talks to a cluster.
pub(super) fn context(out: &Printer, command: ContextCommand) -> anyhow::Result<()> {
    let path = default_path().map_err(usage)?;
    let mut contexts = Contexts::load(&path).map_err(usage)?;
    let show = |name: &str, context: &Context, current: bool| {
        json!({
            "name": name,
            "current": current,
            "endpoints": context.endpoints,
            "credentials": context.credentials,
        })
    };
    match command {
        ContextCommand::List => {
            let current = contexts.current().map(|(name, _)| name.to_owned());
            let rows: Vec<_> = contexts
                .contexts
                .iter()
                .map(|(name, context)| (name, context, current.as_deref() == Some(name)))
                .collect();
            out.print(
                || {
                    json!({
                        "file": path,
                        "contexts": rows.iter().map(|(n, c, cur)| show(n, c, *cur)).collect::<Vec<_>>(),
                    })
                },
                || {
                    if rows.is_empty() {
                        return format!(
                            "no contexts in {} (`batond dev` saves one; `baton context set`)",
                            path.display()
                        );
                    }
                    let mut text = String::new();
                    for (name, context, current) in &rows {
                        let credentials = context
                            .credentials
                            .as_ref()
                            .map_or("plaintext".to_owned(), |d| d.display().to_string());
                        text.push_str(&format!(
                            "{} {name}  {}  {credentials}\n",
                            if *current { "*" } else { " " },
                            context.endpoints
                        ));
                    }
                    text
                },
            )
        }
        ContextCommand::Show { name } => {
            let (name, context) = match &name {
                Some(name) => (name.as_str(), contexts.get(name, &path).map_err(usage)?),
                None => contexts.current().ok_or_else(|| {
                    Failure::usage(format!(
                        "no current context in {} (`baton context use NAME`)",
                        path.display()
                    ))
                })?,
            };
            let current = contexts.current.as_deref() == Some(name);
            out.print(
                || show(name, context, current),
                || {
                    format!(
                        "context:     {name}{}\nendpoints:   {}\ncredentials: {}",
                        if current { " (current)" } else { "" },
                        context.endpoints,
                        context
                            .credentials
                            .as_ref()
                            .map_or("none (plaintext)".to_owned(), |d| d.display().to_string())
                    )
                },
            )
        }
        ContextCommand::Use { name } => {
            contexts.get(&name, &path).map_err(usage)?;
            contexts.current = Some(name.clone());
            contexts.save(&path).map_err(usage)?;
            out.print(
                || json!({ "current": name }),
                || format!("current context: {name}"),
            )
        }
        ContextCommand::Set {
            name,
            to,
            with_credentials,
        } => {
            let credentials = match with_credentials {
                Some(dir) => Some(std::fs::canonicalize(&dir).map_err(|e| {
                    Failure::usage(format!("--with-credentials {}: {e}", dir.display()))
                })?),
                None => None,
            };
            let context = Context {
                endpoints: to.to_string(),
                credentials,
            };
            contexts.set(&name, context.clone()).map_err(usage)?;
            contexts.current.get_or_insert_with(|| name.clone());
            contexts.save(&path).map_err(usage)?;
            let current = contexts.current.as_deref() == Some(name.as_str());
            out.print(
                || show(&name, &context, current),
                || format!("context {name} saved in {}", path.display()),
            )
        }
        ContextCommand::Delete { name } => {
            contexts.get(&name, &path).map_err(usage)?;
            contexts.contexts.remove(&name);
            if contexts.current.as_deref() == Some(name.as_str()) {
                contexts.current = None;
            }
            contexts.save(&path).map_err(usage)?;
            out.print(
                || json!({ "deleted": name }),
                || format!("context {name} deleted"),
            )
        }
    }
}
