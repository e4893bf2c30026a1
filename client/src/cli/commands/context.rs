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
/// - Credentials: `--credentials`, `--cert` or `--key` (or their variables) and only those; else
///   the context's folder, with `--token-file` and `--ca` beating its files, but only when the
///   endpoints are the context's too, so a cluster named by `--endpoints` or `BATON_ENDPOINTS`
///   never receives another cluster's token ([`with_context_credentials`]). A current context
///   that cannot be read is warned about and skipped.
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
    let context_dir = context
        .and_then(|context| context.credentials)
        .filter(|_| cli.endpoints.is_none());
    let credentials = with_context_credentials(given, context_dir);
    Ok((endpoints, credentials))
}

/// The credentials a command uses, from what flags and variables `given` and the context's folder
/// (`None` unless the endpoints are the context's own: a cluster named by `--endpoints` or
/// `BATON_ENDPOINTS` never receives another cluster's token).
///
/// A flag or variable naming who the caller is (`--credentials`, `--cert`, `--key`) replaces the
/// context's folder outright, so a certificate given alone is never sent with the context's
/// token. `--token-file` and `--ca` only replace that one file of the folder: the context's
/// certificate with another token (a reader's, to try a role), or with another CA bundle.
fn with_context_credentials(
    given: CredentialSources,
    context_dir: Option<std::path::PathBuf>,
) -> CredentialSources {
    let names_caller = given.dir.is_some() || given.cert.is_some() || given.key.is_some();
    if names_caller {
        return given;
    }
    CredentialSources {
        dir: context_dir,
        ..given
    }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn path(p: &str) -> Option<PathBuf> {
        Some(PathBuf::from(p))
    }

    #[test]
    fn flags_naming_the_caller_replace_the_context_and_others_beat_one_file() {
        let context = path("/ctx");
        // Nothing given: the context's folder.
        let used = with_context_credentials(CredentialSources::default(), context.clone());
        assert_eq!(used.dir, context);
        // A token alone keeps the context's certificate; so does a CA bundle.
        let token = CredentialSources {
            token_file: path("/reader.token"),
            ca: path("/ca.pem"),
            ..CredentialSources::default()
        };
        let used = with_context_credentials(token, context.clone());
        assert_eq!(
            (used.dir, used.token_file, used.ca),
            (context.clone(), path("/reader.token"), path("/ca.pem"))
        );
        // A certificate (or key, or folder) given names another caller: never with the
        // context's token.
        for given in [
            CredentialSources {
                cert: path("/me.pem"),
                ..CredentialSources::default()
            },
            CredentialSources {
                key: path("/me-key.pem"),
                ..CredentialSources::default()
            },
            CredentialSources {
                dir: path("/other"),
                ..CredentialSources::default()
            },
        ] {
            let expected = given.clone();
            let used = with_context_credentials(given, context.clone());
            assert_eq!(used, expected);
        }
        // Endpoints not the context's: no context folder at all.
        let used = with_context_credentials(CredentialSources::default(), None);
        assert_eq!(used, CredentialSources::default());
    }
}
