//! The `exec` executor: one process in its own process group, killed as a group.
//!
//! Why a group: a step is often a shell script that starts children (`make`, `sh -c 'a & b'`).
//! Killing only the direct child would leave the rest running after the cluster handed the
//! step to another agent, which is exactly the double execution fencing exists to prevent.
//! Why `PR_SET_PDEATHSIG(SIGKILL)`: if the agent itself dies (kill -9, OOM), nobody is left to
//! kill the group, yet the cluster will requeue the step once the lease expires.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use baton_proto::limits::OUTPUT_BYTES_MAX;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::agent::executor::{STOP_GRACE, TaskResult};
use crate::agent::handler::AttemptControl;
use crate::agent::tail::TailBuffer;

/// An exec task with its templates filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecJob {
    /// argv; `argv[0]` is looked up in PATH.
    pub argv: Vec<String>,
    /// Added to the agent's own environment, in order (later wins).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

/// Runs the job to its end, or until `control` fires, then kills what is left of its group.
pub(crate) async fn run(job: &ExecJob, control: &AttemptControl) -> TaskResult {
    let Some(program) = job.argv.first() else {
        return TaskResult::failed("exec.command is empty");
    };
    let mut command = tokio::process::Command::new(program);
    // Secrets given to the agent by environment are for it to fill in, not for every step's
    // process to read; nor where its secrets folder is.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with(crate::agent::secrets::SECRET_ENV_PREFIX)
                || k == "BATON_AGENT_SECRETS_DIR"
        }) {
            command.env_remove(key);
        }
    }
    command
        .args(&job.argv[1..])
        .envs(job.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that one killpg reaches every process the step starts.
        .process_group(0)
        // Should this future be dropped (the agent abandons it), the direct child dies; the
        // group guard below takes the rest.
        .kill_on_drop(true);
    if let Some(dir) = &job.working_dir {
        command.current_dir(dir);
    }
    let agent_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl and
    // getppid, both async-signal-safe; it allocates nothing (the error is a raw OS code).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then nothing would ever fire.
            if libc::getppid() != agent_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let mut result = TaskResult::failed(format!("cannot start {program}: {error}"));
            result.exit_code = None;
            return result;
        }
    };
    let Some(pid) = child.id() else {
        return TaskResult::failed(format!("{program} exited before it could be watched"));
    };
    let group = GroupGuard::new(pid as libc::pid_t);
    tracing::debug!(pid, program = %program, "process started");

    let stdout = Arc::new(Mutex::new(TailBuffer::new(OUTPUT_BYTES_MAX)));
    let stderr = Arc::new(Mutex::new(TailBuffer::new(OUTPUT_BYTES_MAX)));
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| read_into(pipe, stdout.clone())),
        child
            .stderr
            .take()
            .map(|pipe| read_into(pipe, stderr.clone())),
    ];

    let status: Option<ExitStatus> = tokio::select! {
        status = child.wait() => status.ok(),
        _ = control.stopped() => {
            group.signal(libc::SIGTERM);
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    group.signal(libc::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    // The step is over when its main process is: whatever it left behind in its group
    // (a forgotten `&`) would otherwise keep running unleased, and keep the pipes open.
    group.signal(libc::SIGKILL);
    for reader in readers.into_iter().flatten() {
        // Only a process that left the group (its own setsid) can still hold a pipe open;
        // its output is not worth waiting for.
        let abort = reader.abort_handle();
        if tokio::time::timeout(STOP_GRACE, reader).await.is_err() {
            tracing::debug!(pid, "output pipe still open after the group was killed");
            abort.abort();
        }
    }
    drop(group);

    let output = lock(&stdout).to_string_lossy();
    let mut result = TaskResult {
        success: status.is_some_and(|status| status.success()),
        output,
        error: lock(&stderr).to_string_lossy(),
        exit_code: status.and_then(|status| status.code()),
    };
    match status {
        None => result.add_error_line("baton: lost track of the process"),
        Some(status) => {
            if let Some(signal) = status.signal() {
                result.add_error_line(&format!("baton: process killed by signal {signal}"));
            }
        }
    }
    result
}

fn lock(buffer: &Mutex<TailBuffer>) -> std::sync::MutexGuard<'_, TailBuffer> {
    // A reader task that panicked mid-push leaves a consistent buffer: keep using it.
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copies a pipe into a tail buffer until end of file.
fn read_into(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    buffer: Arc<Mutex<TailBuffer>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => lock(&buffer).push(&chunk[..read]),
            }
        }
    })
}

/// The step's process group; SIGKILLs it when dropped, so that no exit path (an abandoned
/// future, a panic) leaves processes running.
struct GroupGuard {
    pgid: libc::pid_t,
}

impl GroupGuard {
    fn new(pgid: libc::pid_t) -> GroupGuard {
        GroupGuard { pgid }
    }

    fn signal(&self, signal: libc::c_int) {
        // killpg(0) or (1) would signal the agent's own group or everything we may signal.
        if self.pgid <= 1 {
            return;
        }
        // SAFETY: killpg has no memory effects; ESRCH (group gone) is the expected result
        // once everything has exited.
        unsafe {
            libc::killpg(self.pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}
