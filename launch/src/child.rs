//! A supervised child process: its own process group, PR_SET_PDEATHSIG, stdout and stderr to a
//! log file, SIGTERM-then-SIGKILL to stop, and SIGKILL to the whole group (then reaped) when
//! dropped, so a panicking or interrupted launcher leaves nothing running.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a child is started.
#[derive(Clone, Copy, Debug)]
pub struct SpawnOptions {
    /// Append to the log file (a restarted process keeps its earlier log) rather than start it
    /// anew.
    pub append: bool,
    /// What the kernel sends the child when the thread that spawned it exits (with the launcher,
    /// for a launcher that spawns from a thread living as long as it: the main thread, a tokio
    /// worker; not a `spawn_blocking` thread, which ends when idle).
    pub death_signal: libc::c_int,
}

impl Default for SpawnOptions {
    /// A new log, SIGKILL when the launcher dies.
    fn default() -> Self {
        SpawnOptions {
            append: false,
            death_signal: libc::SIGKILL,
        }
    }
}

impl SpawnOptions {
    pub fn appending(self) -> Self {
        SpawnOptions {
            append: true,
            ..self
        }
    }

    /// SIGTERM rather than SIGKILL when the launcher dies: the child stops as it would for a
    /// supervisor (a node drains).
    pub fn terminated_with_launcher(self) -> Self {
        SpawnOptions {
            death_signal: libc::SIGTERM,
            ..self
        }
    }
}

#[derive(Debug)]
pub struct Supervised {
    /// `None` once [`Supervised::kill`] reaped it.
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    /// Where this process's output starts in the log (it may follow an earlier run's).
    log_start: u64,
    exit: Option<ExitStatus>,
    paused: bool,
}

impl Supervised {
    /// Spawns `command` with [`SpawnOptions::default`].
    pub fn spawn(command: Command, log: &Path) -> io::Result<Supervised> {
        Supervised::spawn_with(command, log, SpawnOptions::default())
    }

    pub fn spawn_with(
        mut command: Command,
        log: &Path,
        options: SpawnOptions,
    ) -> io::Result<Supervised> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(options.append)
            .truncate(!options.append)
            .open(log)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log.display())))?;
        let log_start = out.metadata()?.len();
        let death_signal = options.death_signal;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}", command.get_program().to_string_lossy()),
            )
        })?;
        Ok(Supervised {
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            log_start,
            exit: None,
            paused: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Not killed through this handle (it may have exited on its own: see [`Supervised::try_wait`]).
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Its exit status if it has ended (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none()
            && let Some(child) = &mut self.child
        {
            self.exit = child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits until it ends on its own (polling: no runtime's child reaper is involved).
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if self.child.is_none() {
                return Err(io::Error::other("killed, and its status not kept"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `signal` to the process alone, while it has not been reaped.
    pub fn signal(&self, signal: libc::c_int) {
        if self.child.is_some() && self.exit.is_none() {
            // SAFETY: plain syscall on our own child, not yet reaped (its pid is still ours).
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// `signal` to its whole process group (the group's id is its pid: `process_group(0)`).
    /// Also after the process itself ended: what it started in its group may still run.
    pub fn signal_group(&self, signal: libc::c_int) {
        if self.child.is_some() {
            // SAFETY: plain syscall. The group id is our child's pid; while any member lives the
            // kernel does not hand that number to another process.
            unsafe {
                libc::kill(-(self.pid as libc::pid_t), signal);
            }
        }
    }

    /// SIGSTOP to the process alone (an agent's steps run in groups of their own anyway).
    pub fn pause(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// SIGKILL to the whole group, then reaped: gone when this returns.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exit.get_or_insert(status);
            }
        }
        self.paused = false;
    }

    /// SIGTERM (the way a supervisor asks a node to drain and stop), then SIGKILL to the group
    /// if it is still running after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if self.try_wait().ok().flatten().is_none() {
            if self.paused {
                self.resume();
            }
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if self.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }

    /// At most the last `bytes` this process wrote to its log (lossy UTF-8).
    pub fn log_tail(&self, bytes: u64) -> String {
        let read = || -> io::Result<String> {
            let mut file = std::fs::File::open(&self.log)?;
            let len = file.metadata()?.len();
            let from = self.log_start.max(len.saturating_sub(bytes));
            file.seek(SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates (or empties) `dir/name`, for a caller that wants the file itself.
pub fn log_file(dir: &Path, name: &str) -> io::Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_the_tail_is_this_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut first = Supervised::spawn(sh("echo first run"), &log).unwrap();
        assert!(first.exited().await.unwrap().success());
        assert_eq!(first.log_tail(1024), "first run\n");
        let options = SpawnOptions::default().appending();
        let mut second =
            Supervised::spawn_with(sh("echo second >&2; exit 3"), &log, options).unwrap();
        assert_eq!(second.exited().await.unwrap().code(), Some(3));
        assert_eq!(second.log_tail(1024), "second\n");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "first run\nsecond\n"
        );
    }

    #[tokio::test]
    async fn stop_asks_first_then_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        // Ignores SIGTERM; its own child (same group) would outlive a kill of the pid alone.
        let mut command = sh(
            "trap '' TERM; sleep 60 & echo $! > grandchild.tmp; mv grandchild.tmp grandchild; wait",
        );
        command.current_dir(dir.path());
        let mut stubborn = Supervised::spawn(command, &dir.path().join("s.log")).unwrap();
        let pidfile = dir.path().join("grandchild");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pidfile.exists() {
            assert!(Instant::now() < deadline, "no grandchild");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let started = Instant::now();
        stubborn.stop(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!stubborn.alive());
        assert!(stubborn.try_wait().unwrap().is_some());
        // The grandchild got the group's SIGKILL (init reaps it: wait for it to go).
        let gone = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the pid exists.
        while unsafe { libc::kill(grandchild, 0) } == 0 && !is_zombie(grandchild) {
            assert!(Instant::now() < gone, "grandchild {grandchild} survived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    #[tokio::test]
    async fn a_polite_child_stops_on_sigterm_and_drop_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut polite = Supervised::spawn(sh("exec sleep 60"), &dir.path().join("p.log")).unwrap();
        assert!(polite.try_wait().unwrap().is_none());
        polite.stop(Duration::from_secs(30)).await;
        let status = polite.try_wait().unwrap().expect("ended");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));

        let dropped = Supervised::spawn(sh("sleep 60"), &dir.path().join("d.log")).unwrap();
        let pid = dropped.pid() as i32;
        drop(dropped);
        // Reaped by the drop: the pid is gone.
        // SAFETY: signal 0 only checks that the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0);
    }
}
