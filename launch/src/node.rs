//! A `batond` node's command line: id, addresses, `--initial-cluster`, data folder, TLS flags or
//! `--insecure`, and whatever else a launcher adds (test timing, `--peer-dial`, environment such
//! as `LD_PRELOAD`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_security::TlsFiles;

/// How a node is secured.
#[derive(Clone, Debug, Default)]
pub enum Security {
    /// `--insecure`: plaintext, no tokens.
    #[default]
    Insecure,
    /// Mutual TLS with `PKI/node-ID.pem`, `node-ID-key.pem` and `ca.pem` (the layout `batond
    /// certs` and the dev certificates write), and the bootstrap admin token file if any.
    Tls {
        pki: PathBuf,
        bootstrap_token: Option<PathBuf>,
    },
    /// Neither: the launcher passes what it wants in the extra flags.
    Flags,
}

/// One node: what `batond` is started with, and where its output goes.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `--initial-cluster` (see [`initial_cluster`]); `None` for a node that joins later.
    pub initial_cluster: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// `--http-listen`: the JSON API.
    pub http_listen: Option<SocketAddr>,
    pub security: Security,
    /// Flags after the ones above.
    pub extra: Vec<OsString>,
    /// Added to the launcher's environment.
    pub env: Vec<(OsString, OsString)>,
    pub log: PathBuf,
}

/// `1=ADDR,2=ADDR,...`.
pub fn initial_cluster<'a>(members: impl IntoIterator<Item = (u64, &'a SocketAddr)>) -> String {
    members
        .into_iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl NodeSpec {
    /// Node `id` listening on `listen`, data in `dir/node{id}`, log in `dir/node{id}.log`,
    /// insecure, nothing else.
    pub fn new(id: u64, listen: SocketAddr, dir: &Path) -> NodeSpec {
        NodeSpec {
            id,
            listen,
            data_dir: dir.join(format!("node{id}")),
            initial_cluster: None,
            metrics_listen: None,
            http_listen: None,
            security: Security::Insecure,
            extra: Vec::new(),
            env: Vec::new(),
            log: dir.join(format!("node{id}.log")),
        }
    }

    pub fn initial_cluster(mut self, members: impl Into<String>) -> NodeSpec {
        self.initial_cluster = Some(members.into());
        self
    }

    pub fn metrics(mut self, addr: SocketAddr) -> NodeSpec {
        self.metrics_listen = Some(addr);
        self
    }

    pub fn http(mut self, addr: SocketAddr) -> NodeSpec {
        self.http_listen = Some(addr);
        self
    }

    pub fn security(mut self, security: Security) -> NodeSpec {
        self.security = security;
        self
    }

    pub fn args<I, S>(mut self, args: I) -> NodeSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> NodeSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The ports this node must hold once started.
    pub fn ports(&self) -> Vec<u16> {
        std::iter::once(self.listen.port())
            .chain(self.metrics_listen.map(|a| a.port()))
            .chain(self.http_listen.map(|a| a.port()))
            .collect()
    }

    /// `batond`'s arguments.
    pub fn command_line(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.security {
            Security::Insecure => args.push("--insecure".into()),
            Security::Tls {
                pki,
                bootstrap_token,
            } => {
                args.extend(TlsFiles::in_dir(pki, &format!("node-{}", self.id)).batond_args());
                if let Some(token) = bootstrap_token {
                    args.push("--bootstrap-token-file".into());
                    args.push(token.into());
                }
            }
            Security::Flags => {}
        }
        args.push("--node-id".into());
        args.push(self.id.to_string().into());
        args.push("--listen".into());
        args.push(self.listen.to_string().into());
        args.push("--data-dir".into());
        args.push(self.data_dir.clone().into());
        if let Some(members) = &self.initial_cluster {
            args.push("--initial-cluster".into());
            args.push(members.into());
        }
        if let Some(metrics) = self.metrics_listen {
            args.push("--metrics-listen".into());
            args.push(metrics.to_string().into());
        }
        if let Some(http) = self.http_listen {
            args.push("--http-listen".into());
            args.push(http.to_string().into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// The command that starts it with `batond`.
    pub fn command(&self, batond: &Path) -> Command {
        let mut command = Command::new(batond);
        command
            .args(self.command_line())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn an_insecure_node_of_a_cluster() {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:20001", "127.0.0.1:20002"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let members = initial_cluster([(1, &addrs[0]), (2, &addrs[1])]);
        assert_eq!(members, "1=127.0.0.1:20001,2=127.0.0.1:20002");
        let spec = NodeSpec::new(2, addrs[1], Path::new("/d"))
            .initial_cluster(members)
            .metrics("127.0.0.1:20009".parse().unwrap())
            .args(["--heartbeat-ms", "50"]);
        assert_eq!(
            strings(spec.command_line()),
            [
                "--insecure",
                "--node-id",
                "2",
                "--listen",
                "127.0.0.1:20002",
                "--data-dir",
                "/d/node2",
                "--initial-cluster",
                "1=127.0.0.1:20001,2=127.0.0.1:20002",
                "--metrics-listen",
                "127.0.0.1:20009",
                "--heartbeat-ms",
                "50",
            ]
        );
        assert_eq!(spec.ports(), [20002, 20009]);
        assert_eq!(spec.log, Path::new("/d/node2.log"));
    }

    #[test]
    fn a_secured_node_names_its_certificate_and_the_token() {
        let spec = NodeSpec::new(3, "127.0.0.1:20003".parse().unwrap(), Path::new("/d")).security(
            Security::Tls {
                pki: "/pki".into(),
                bootstrap_token: Some("/pki/token".into()),
            },
        );
        let args = strings(spec.command_line());
        let tls = strings(
            TlsFiles::in_dir(Path::new("/pki"), "node-3")
                .batond_args()
                .into(),
        );
        assert_eq!(args[..tls.len()], tls[..]);
        assert_eq!(
            args[tls.len()..tls.len() + 2],
            ["--bootstrap-token-file", "/pki/token"]
        );
        assert!(!args.contains(&"--insecure".to_string()));
        assert!(spec.initial_cluster.is_none());
    }
}
