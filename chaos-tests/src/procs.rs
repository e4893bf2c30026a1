//! Real processes under supervision: `batond` nodes and `baton agent`s, each in its own process
//! group with PR_SET_PDEATHSIG(SIGKILL), killed (the whole group) when dropped, so a panicking
//! or interrupted harness leaves nothing running.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Proc {
    child: Option<Child>,
    pub paused: bool,
}

impl Proc {
    pub fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Proc {
            child: Some(command.spawn()?),
            paused: false,
        })
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: plain syscall; the group id is our child's pid (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), signal);
            }
        }
    }

    /// SIGSTOP to the process alone (not its group: an agent's steps run in groups of their own
    /// anyway, and keep running, which is the zombie-lease-holder case).
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGSTOP);
            }
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
            }
        }
        self.paused = false;
    }

    /// SIGKILL to the whole group, then reaped.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where `batond` and `baton` are: `BATON_BIN_DIR`, else next to this binary (cargo puts every
/// workspace binary in one folder).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("BATON_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow::anyhow!("this binary has no folder"))?
            .to_path_buf(),
    };
    for name in ["batond", "baton"] {
        anyhow::ensure!(
            dir.join(name).exists(),
            "{} not found: build it first (cargo build --workspace --bins --examples, the test \
             build's features) or set BATON_BIN_DIR",
            dir.join(name).display()
        );
    }
    Ok(dir)
}
