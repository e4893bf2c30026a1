//! The end-to-end harness: a scenario runs in a child process (this test binary, re-executed
//! with the scenario's name) under the shim, ends in SIGKILL, then the parent cuts and looks.

#![allow(dead_code)] // each test binary uses its own part

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use baton_powerloss::journal::{self, Record};

/// Names the scenario a re-executed test binary runs.
pub const SCENARIO_ENV: &str = "POWERLOSS_TEST_SCENARIO";
/// A folder outside the root, on the same filesystem, for the untracked-file scenario.
pub const OUTSIDE_ENV: &str = "POWERLOSS_TEST_OUTSIDE";

/// The shim next to the test binary (`<target>/<profile>/deps/e2e-HASH` -> `<target>/<profile>/`),
/// built first into that same folder: cargo does not build a cdylib for its own package's
/// integration tests, and a stale one would test old code. Quick when it is up to date.
pub fn preload() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps/<test>");
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let target_dir = bin_dir.parent().expect("<target>/<profile>");
        let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("{}: no profile folder name", bin_dir.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "baton-powerloss-preload",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            // This run's manifest folder (cargo sets it), not the one the test was built in: a
            // target folder shared by two checkouts may run a binary built in the other.
            .current_dir(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .status()
            .expect("run cargo build for the shim");
        assert!(
            status.success(),
            "cargo build -p baton-powerloss-preload failed: {status}"
        );
    });
    baton_powerloss::find_preload(bin_dir).unwrap_or_else(|e| panic!("{e}"))
}

/// One scenario's folders: `root` (journalled), `journal`, and `outside` (not journalled).
pub struct Sandbox {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub journal: PathBuf,
    pub outside: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = fs::canonicalize(dir.path()).expect("canonical temp dir");
        let (root, journal, outside) = (
            base.join("root"),
            base.join("journal"),
            base.join("outside"),
        );
        for d in [&root, &journal, &outside] {
            fs::create_dir(d).expect("sandbox folder");
        }
        Sandbox {
            _dir: dir,
            root,
            journal,
            outside,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `program` set up to run under the shim, stdout and stderr piped.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let env =
            baton_powerloss::child_env(&preload(), &self.root, &self.journal).expect("child env");
        let mut command = Command::new(program);
        command
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the scenario under the shim with stdout piped.
    pub fn spawn(&self, scenario: &str) -> Child {
        self.command(std::env::current_exe().expect("test binary path"))
            .args([
                "child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(SCENARIO_ENV, scenario)
            .env(OUTSIDE_ENV, &self.outside)
            .spawn()
            .expect("spawn scenario")
    }

    /// Runs the scenario to its SIGKILL; returns its stdout.
    pub fn run(&self, scenario: &str) -> String {
        let child = self.spawn(scenario);
        let out = child.wait_with_output().expect("wait for scenario");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "scenario {scenario} must end in SIGKILL, got {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a scenario the shim must refuse; returns its stderr, which says why.
    pub fn run_refused(&self, scenario: &str) -> String {
        let out = self
            .spawn(scenario)
            .wait_with_output()
            .expect("wait for scenario");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "scenario {scenario} must be aborted by the shim, got {:?}\nstderr:\n{stderr}",
            out.status
        );
        stderr
    }

    /// The journal's records, before a cut.
    pub fn records(&self) -> Vec<Record> {
        let bytes = fs::read(self.journal.join(journal::JOURNAL_FILE)).expect("journal");
        journal::decode(&bytes).expect("journal decodes").records
    }

    /// The journal's records, or None when there is no journal file (after a cut).
    pub fn records_or_none(&self) -> Option<Vec<Record>> {
        let bytes = fs::read(self.journal.join(journal::JOURNAL_FILE)).ok()?;
        Some(journal::decode(&bytes).expect("journal decodes").records)
    }

    pub fn cut(&self, tear: baton_powerloss::Tear) -> baton_powerloss::CutReport {
        baton_powerloss::cut(&self.root, &self.journal, tear).unwrap_or_else(|e| panic!("cut: {e}"))
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub fn exists(&self, name: &str) -> bool {
        fs::symlink_metadata(self.path(name)).is_ok()
    }

    /// Creates a file before the scenario (outside the shim, so it is durable).
    pub fn seed(&self, name: &str, content: &[u8]) {
        fs::write(self.path(name), content).expect("seed file");
    }

    /// All names under the root, sorted, relative.
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                out.push(
                    path.strip_prefix(&self.root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
                if path.is_dir() {
                    dirs.push(path);
                }
            }
        }
        out.sort();
        out
    }
}

/// Ends a scenario as the fault does: SIGKILL, nothing flushed.
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls on our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL is not catchable")
}

/// Reads all of a child's stdout, line by line, calling `on_line` for each until it says stop.
pub fn read_lines_until(child: &mut Child, mut on_line: impl FnMut(&str) -> bool) {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).expect("read child stdout");
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..=end);
            if !on_line(&line) {
                return;
            }
        }
    }
}

/// A C string for direct libc calls in scenarios.
pub fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a path")
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .expect("an OS error")
}
