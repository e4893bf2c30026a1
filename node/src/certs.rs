//! `batond certs`: everything a secured deployment needs, from one command, into one folder: a CA,
//! a certificate per node valid for the host names peers dial it by, a credentials folder per
//! agent and client, and a bootstrap admin token; with `--context`, a client context that uses
//! them. Files already there are kept, so the command can be re-run to add parties; delete a
//! party's files to re-issue them.

use std::path::{Path, PathBuf};

use baton_security::devcerts::{self, DevCa};
use baton_security::{PeerIdentity, PeerRole, TlsFiles};

use crate::config::CertsArgs;

/// The file name of the bootstrap admin token in the output folder.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// Writes the files; returns what it wrote, for the operator. Errors name the flag or the file.
pub fn run(args: &CertsArgs) -> Result<String, String> {
    run_with_config(args, || {
        baton_security::contexts::default_path().map_err(|e| e.to_string())
    })
}

/// [`run`], saving a context to the file `config_file` names (the user's, in production).
fn run_with_config(
    args: &CertsArgs,
    config_file: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<String, String> {
    let nodes = args
        .nodes
        .iter()
        .map(|text| parse_node(text).map_err(|e| format!("--node {text:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if nodes.is_empty() && args.agents.is_empty() && args.clients.is_empty() {
        return Err("nothing to make: give at least one --node, --agent or --client".into());
    }
    // Checked before anything is written, the contexts file read too, so a bad flag or file
    // leaves no half-made folder.
    let context = match args.context.as_deref() {
        Some(text) => {
            let plan = context_plan(text, args.endpoints.as_deref(), &nodes, &args.clients)?;
            let path = config_file().map_err(|e| format!("--context {}: {e}", plan.name))?;
            let contexts = baton_security::contexts::Contexts::load(&path)
                .map_err(|e| format!("--context {}: {e}", plan.name))?;
            Some((plan, path, contexts))
        }
        None => None,
    };
    let out = &args.out;
    let ca = DevCa::open_or_create(out).map_err(|e| format!("--out {}: {e}", out.display()))?;
    let mut made = Vec::new();
    for (id, hosts) in &nodes {
        let identity = PeerIdentity::new(PeerRole::Node, id.to_string());
        if issue_unless_there(&ca, out, &identity, hosts)? {
            made.push(format!(
                "node {id}: node-{id}.pem, node-{id}-key.pem ({})",
                hosts.join(", ")
            ));
        }
    }
    for (role, names) in [
        (PeerRole::Agent, &args.agents),
        (PeerRole::Client, &args.clients),
    ] {
        for name in names {
            if role == PeerRole::Agent && name.contains('.') {
                return Err(format!(
                    "--agent {name}: no dots in an agent certificate's name (it may register as NAME.anything, so a dot would overlap another certificate's agents)"
                ));
            }
            if name.ends_with("-key") {
                return Err(format!(
                    "--{role} {name}: a name may not end in -key (its files would collide with another party's key)"
                ));
            }
            let identity = PeerIdentity::new(role, name.clone());
            let flag = format!("--{role}");
            if issue_unless_there(&ca, out, &identity, &[])? {
                let folder = out.join(devcerts::stem(&identity));
                devcerts::credentials_folder(out, &identity, &folder)
                    .map_err(|e| format!("{flag} {name}: {}: {e}", folder.display()))?;
                made.push(format!("{role} {name}: {}/", devcerts::stem(&identity)));
            }
        }
    }
    let token_path = out.join(BOOTSTRAP_TOKEN_FILE);
    if !token_path.exists() {
        let token = baton_security::token::generate()
            .map_err(|e| format!("no randomness for a token: {e}"))?;
        write_secret(&token_path, &token.text)
            .map_err(|e| format!("{}: {e}", token_path.display()))?;
        made.push(format!(
            "{BOOTSTRAP_TOKEN_FILE}: an admin token for --bootstrap-token-file"
        ));
    }
    let mut said = if made.is_empty() {
        format!("everything asked for is already in {}", out.display())
    } else {
        format!("in {}:\n  {}", out.display(), made.join("\n  "))
    };
    if let Some((plan, path, contexts)) = context {
        said.push('\n');
        said.push_str(&save_context(out, &plan, &path, contexts)?);
    }
    Ok(said)
}

/// The context `--context` asks for: its name, the client whose folder it uses, its endpoints.
#[derive(Debug, PartialEq)]
struct ContextPlan {
    name: String,
    client: String,
    endpoints: String,
}

/// The port `--context` assumes for nodes given by host only (`batond --listen`'s default).
const DEFAULT_PORT: u16 = 7001;

fn context_plan(
    text: &str,
    endpoints: Option<&str>,
    nodes: &[(u64, Vec<String>)],
    clients: &[String],
) -> Result<ContextPlan, String> {
    let (name, client) = match text.split_once('=') {
        Some((name, client)) => {
            if !clients.iter().any(|c| c == client) {
                return Err(format!(
                    "--context {text}: {client:?} is not one of this run's --client names"
                ));
            }
            (name, client.to_owned())
        }
        None => match clients {
            [client] => (text, client.clone()),
            [] => {
                return Err(format!(
                    "--context {text}: a context needs a client's credentials: add --client NAME"
                ));
            }
            _ => {
                return Err(format!(
                    "--context {text}: several --client given; say whose credentials it uses: \
                     --context {text}=CLIENT"
                ));
            }
        },
    };
    baton_security::contexts::check_name(name).map_err(|e| format!("--context {text}: {e}"))?;
    let endpoints = match endpoints {
        Some(endpoints) => {
            for endpoint in endpoints.split(',') {
                check_endpoint(endpoint).map_err(|e| format!("--endpoints {endpoints}: {e}"))?;
            }
            endpoints.to_owned()
        }
        None if nodes.is_empty() => {
            return Err(format!(
                "--context {text}: no --node to take endpoints from: give --endpoints HOST:PORT,..."
            ));
        }
        None => nodes
            .iter()
            .map(|(id, hosts)| {
                // A wildcard names no host to dial.
                let host = hosts.iter().find(|h| !h.contains('*')).ok_or_else(|| {
                    format!("--context {text}: node {id} has only wildcard names: give --endpoints")
                })?;
                Ok(if host.contains(':') {
                    format!("[{host}]:{DEFAULT_PORT}")
                } else {
                    format!("{host}:{DEFAULT_PORT}")
                })
            })
            .collect::<Result<Vec<_>, String>>()?
            .join(","),
    };
    Ok(ContextPlan {
        name: name.to_owned(),
        client,
        endpoints,
    })
}

/// One `HOST:PORT` (`[IPV6]:PORT`) of `--endpoints`.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let endpoint = endpoint.trim();
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} is not HOST:PORT"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !port_ok || !host_ok {
        return Err(format!("{endpoint:?} is not HOST:PORT"));
    }
    Ok(())
}

/// Saves the planned context and makes it current; gives the client's folder the bootstrap token
/// when it has none. Returns what it did.
fn save_context(
    out: &Path,
    plan: &ContextPlan,
    path: &Path,
    mut contexts: baton_security::contexts::Contexts,
) -> Result<String, String> {
    use baton_security::contexts::Context;
    let identity = PeerIdentity::new(PeerRole::Client, plan.client.clone());
    let folder = std::path::absolute(out.join(devcerts::stem(&identity)))
        .map_err(|e| format!("--out {}: {e}", out.display()))?;
    let mut said = Vec::new();
    let token = folder.join("token");
    if !token.exists() {
        let bootstrap = std::fs::read_to_string(out.join(BOOTSTRAP_TOKEN_FILE))
            .map_err(|e| format!("{}: {e}", out.join(BOOTSTRAP_TOKEN_FILE).display()))?;
        write_secret(&token, bootstrap.trim()).map_err(|e| format!("{}: {e}", token.display()))?;
        said.push(format!(
            "{}: the bootstrap admin token, until you give it one of its own \
             (baton token create, then revoke the bootstrap token; docs/SECURITY.md)",
            token.display()
        ));
    }
    contexts
        .set(
            &plan.name,
            Context {
                endpoints: plan.endpoints.clone(),
                credentials: Some(folder.clone()),
            },
        )
        .map_err(|e| format!("--context {}: {e}", plan.name))?;
    contexts.current = Some(plan.name.clone());
    contexts
        .save(path)
        .map_err(|e| format!("--context {}: {e}", plan.name))?;
    said.push(format!(
        "context {} ({}, {}) saved in {} and current",
        plan.name,
        plan.endpoints,
        folder.display(),
        path.display()
    ));
    Ok(said.join("\n"))
}

/// `ID=HOST[,HOST...]`.
fn parse_node(text: &str) -> Result<(u64, Vec<String>), String> {
    let (id, hosts) = text
        .split_once('=')
        .ok_or("expected ID=HOST[,HOST...], e.g. 1=baton-1")?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|&id| id >= 1)
        .ok_or_else(|| format!("{id:?} is not a node id (1 or more)"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err("no host name after '='".into());
    }
    for host in &hosts {
        let ok = host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'));
        if !ok {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
    }
    Ok((id, hosts))
}

/// Issues `identity`'s certificate unless its files exist; true if it issued one.
fn issue_unless_there(
    ca: &DevCa,
    out: &Path,
    identity: &PeerIdentity,
    hosts: &[String],
) -> Result<bool, String> {
    let files = TlsFiles::in_dir(out, &devcerts::stem(identity));
    if files.cert.exists() && files.key.exists() {
        return Ok(false);
    }
    ca.issue_for_hosts(out, identity, hosts)
        .map_err(|e| format!("--{} {}: {e}", identity.role, identity.name))?;
    Ok(true)
}

/// Writes a secret (a token) to a new file readable by its owner only; an existing file is an
/// error, never overwritten.
pub(crate) fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_security::TlsSettings;

    fn args(out: &Path, nodes: &[&str], agents: &[&str], clients: &[&str]) -> CertsArgs {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        CertsArgs {
            out: out.to_owned(),
            nodes: owned(nodes),
            agents: owned(agents),
            clients: owned(clients),
            context: None,
            endpoints: None,
        }
    }

    #[test]
    fn makes_loadable_credentials_for_every_party_and_keeps_them_on_a_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let a = args(
            &out,
            &["1=baton-1", "2=baton-2,10.0.0.2"],
            &["gpu"],
            &["ops"],
        );
        run(&a).unwrap();
        let node2 = TlsSettings::load(TlsFiles::in_dir(&out, "node-2")).unwrap();
        assert_eq!(node2.identity(), PeerIdentity::new(PeerRole::Node, "2"));
        let agent_dir = out.join("agent-gpu");
        let agent = TlsSettings::load(TlsFiles {
            ca: agent_dir.join("ca.pem"),
            cert: agent_dir.join("cert.pem"),
            key: agent_dir.join("key.pem"),
        })
        .unwrap();
        assert_eq!(agent.identity(), PeerIdentity::new(PeerRole::Agent, "gpu"));
        let token = std::fs::read_to_string(out.join(BOOTSTRAP_TOKEN_FILE)).unwrap();
        assert!(baton_security::token::parse(token.trim()).is_some());
        use std::os::unix::fs::PermissionsExt;
        for secret in [out.join(BOOTSTRAP_TOKEN_FILE), agent_dir.join("key.pem")] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", secret.display());
        }

        // A re-run keeps every file and adds only what is new.
        let before = std::fs::read(out.join("node-1.pem")).unwrap();
        let more = args(&out, &["1=baton-1", "3=baton-3"], &[], &[]);
        let said = run(&more).unwrap();
        assert!(
            said.contains("node 3") && !said.contains("node 1"),
            "{said}"
        );
        assert_eq!(std::fs::read(out.join("node-1.pem")).unwrap(), before);
        assert_eq!(
            std::fs::read_to_string(out.join(BOOTSTRAP_TOKEN_FILE)).unwrap(),
            token
        );
    }

    #[test]
    fn a_context_uses_the_client_folder_with_the_bootstrap_token_and_becomes_current() {
        use baton_security::contexts::Contexts;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let config = dir.path().join("config.toml");
        let mut a = args(&out, &["1=baton-1", "2=10.0.0.2", "3=::1"], &[], &["ops"]);
        a.context = Some("prod".into());
        let said = run_with_config(&a, || Ok(config.clone())).unwrap();
        assert!(said.contains("context prod"), "{said}");
        let contexts = Contexts::load(&config).unwrap();
        assert_eq!(contexts.current.as_deref(), Some("prod"));
        let prod = &contexts.contexts["prod"];
        assert_eq!(prod.endpoints, "baton-1:7001,10.0.0.2:7001,[::1]:7001");
        let folder = prod.credentials.clone().unwrap();
        assert!(
            folder.is_absolute() && folder.ends_with("client-ops"),
            "{folder:?}"
        );
        let bootstrap = std::fs::read_to_string(out.join(BOOTSTRAP_TOKEN_FILE)).unwrap();
        let token = std::fs::read_to_string(folder.join("token")).unwrap();
        assert_eq!(token.trim(), bootstrap.trim());

        // A second context for another client, endpoints given; the token already there stays.
        std::fs::write(folder.join("token"), "baton_own_token\n").unwrap();
        let mut b = args(&out, &[], &[], &["ops", "ci"]);
        b.context = Some("staging=ops".into());
        b.endpoints = Some("10.1.0.1:7001".into());
        run_with_config(&b, || Ok(config.clone())).unwrap();
        let contexts = Contexts::load(&config).unwrap();
        assert_eq!(contexts.current.as_deref(), Some("staging"));
        assert_eq!(contexts.contexts.len(), 2);
        assert_eq!(contexts.contexts["staging"].endpoints, "10.1.0.1:7001");
        assert_eq!(
            std::fs::read_to_string(folder.join("token")).unwrap(),
            "baton_own_token\n"
        );
    }

    #[test]
    fn a_context_that_cannot_be_made_is_named_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let config = dir.path().join("config.toml");
        for (nodes, clients, context, endpoints, says) in [
            (&["1=a"][..], &[][..], "prod", None, "add --client"),
            (
                &["1=a"][..],
                &["x", "y"][..],
                "prod",
                None,
                "--context prod=CLIENT",
            ),
            (
                &["1=a"][..],
                &["x"][..],
                "prod=z",
                None,
                "not one of this run's --client",
            ),
            (&[][..], &["x"][..], "prod", None, "give --endpoints"),
            (&["1=a"][..], &["x"][..], "bad name", None, "context name"),
            (&["1=*.a"][..], &["x"][..], "prod", None, "wildcard"),
            (
                &["1=a"][..],
                &["x"][..],
                "prod",
                Some("a:7001,b"),
                "--endpoints",
            ),
            (&["1=a"][..], &["x"][..], "prod", Some("a:0"), "--endpoints"),
        ] {
            let mut a = args(&out, nodes, &[], clients);
            a.context = Some(context.into());
            a.endpoints = endpoints.map(str::to_owned);
            let err = run_with_config(&a, || Ok(config.clone())).unwrap_err();
            assert!(
                err.contains(says) && (err.contains("--context") || err.contains("--endpoints")),
                "{context}: {err}"
            );
            assert!(!out.exists(), "{context}: nothing written");
            assert!(!config.exists(), "{context}: no config written");
        }
        // A contexts file that cannot be read stops it before anything is written, too.
        std::fs::write(&config, "not toml [").unwrap();
        let mut a = args(&out, &["1=a"], &[], &["x"]);
        a.context = Some("prod".into());
        let err = run_with_config(&a, || Ok(config.clone())).unwrap_err();
        assert!(err.contains("--context prod"), "{err}");
        assert!(!out.exists(), "nothing written");
    }

    #[test]
    fn bad_flags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (node, says) in [
            ("baton-1", "ID=HOST"),
            ("0=baton-1", "not a node id"),
            ("1=", "no host name"),
            ("1=bad host", "not a host name"),
        ] {
            let err = run(&args(dir.path(), &[node], &[], &[])).unwrap_err();
            assert!(
                err.contains("--node") && err.contains(says),
                "{node}: {err}"
            );
        }
        let err = run(&args(dir.path(), &[], &["no/slash"], &[])).unwrap_err();
        assert!(err.contains("--agent"), "{err}");
        let err = run(&args(dir.path(), &[], &[], &[])).unwrap_err();
        assert!(err.contains("nothing to make"), "{err}");
        let err = run(&args(dir.path(), &[], &["pool.a"], &[])).unwrap_err();
        assert!(
            err.contains("--agent pool.a") && err.contains("dots"),
            "{err}"
        );
        let err = run(&args(dir.path(), &[], &[], &["x-key"])).unwrap_err();
        assert!(err.contains("--client x-key"), "{err}");
    }
}
