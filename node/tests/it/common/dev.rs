//! `batond dev` as a user runs it, for the tests of what a user sees (the tutorial, the CLI's
//! errors): a temporary home (so the `dev` context lands in `~/.config/baton/` there and no
//! variable of the test leaks in), a working folder `~/baton` with a copy of `examples/`, and
//! ports reserved for the test in place of 7001-7003 and 9101-9104.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use baton_launch::{PortPicker, Ports};

use super::procs::{Proc, batond_binary};
use super::wait_for;

pub const NODES: u16 = 3;
/// Metrics ports: three nodes and the dev agent.
pub const METRICS_PORTS: u16 = 4;
/// The last line of `batond dev`'s banner.
const BANNER_END: &str = "Ctrl-C stops the cluster";

pub struct DevCluster {
    pub tmp: tempfile::TempDir,
    /// `$HOME` of every command run through [`DevCluster::command`].
    pub home: PathBuf,
    /// The working folder, `~/baton`.
    pub work: PathBuf,
    pub grpc: Ports,
    pub metrics: Ports,
    /// The console and JSON API, one per node.
    pub http: Ports,
    /// What `batond dev` printed up to its banner's end.
    pub banner: String,
    _dev: Proc,
}

impl DevCluster {
    /// Starts `batond dev` and waits until its agent is connected.
    pub async fn start() -> DevCluster {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let work = home.join("baton");
        copy_dir(&repository_root().join("examples"), &work.join("examples"));
        let mut picker = PortPicker::new();
        let grpc = picker.reserve_consecutive(NODES as usize).unwrap();
        let metrics = picker.reserve_consecutive(METRICS_PORTS as usize).unwrap();
        let http = picker.reserve_consecutive(NODES as usize).unwrap();
        let mut dev = session_command(&batond_binary(), &home, &work);
        dev.args(["dev", "--data-dir", ".baton-dev"])
            .args(["--base-port", &grpc[0].to_string()])
            .args(["--metrics-base-port", &metrics[0].to_string()])
            .args(["--http-base-port", &http[0].to_string()]);
        let log = tmp.path().join("dev.log");
        let dev = Proc::spawn(dev, &log).expect("start batond dev");
        let banner = wait_for(Duration::from_secs(120), "batond dev's banner", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains(BANNER_END).then_some(text) }
        })
        .await;
        let cluster = DevCluster {
            tmp,
            home,
            work,
            grpc,
            metrics,
            http,
            banner,
            _dev: dev,
        };
        wait_for(Duration::from_secs(60), "the dev agent to connect", || {
            let out = cluster.baton(&["agents", "-o", "json"]);
            async move {
                let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                agents
                    .as_array()?
                    .iter()
                    .any(|a| a["name"] == "dev-agent" && a["connected"] == true)
                    .then_some(())
            }
        })
        .await;
        cluster
    }

    /// `program` in the user's environment (see [`session_command`]).
    pub fn command(&self, program: &Path) -> Command {
        session_command(program, &self.home, &self.work)
    }

    /// Runs `baton ARGS` to its end, stdin empty.
    pub fn baton(&self, args: &[&str]) -> Output {
        self.command(&baton_binary())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run baton")
    }
}

pub fn baton_binary() -> PathBuf {
    batond_binary().with_file_name("baton")
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ is in the repository")
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A command as a user on a fresh machine runs it: the build's binaries first on the test's
/// PATH, `home` as HOME, `work` as the working folder, and nothing else of the test's
/// environment (no BATON_* variable leaks in) but TMPDIR.
pub fn session_command(program: &Path, home: &Path, work: &Path) -> Command {
    let bin = batond_binary().parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .current_dir(work);
    if let Some(tmp) = std::env::var_os("TMPDIR") {
        command.env("TMPDIR", tmp);
    }
    command
}
