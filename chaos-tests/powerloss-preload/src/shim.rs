//! The shim's state: its configuration from the environment, the fd table, and the journal
//! writer behind the one lock that orders every tracked operation.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use baton_powerloss::journal::{
    self, FileId, JOURNAL_FILE, MAGIC, Record, SAVED_BYTES_PER_OP_MAX, SAVED_FILE, STASH_DIR, Saved,
};
use baton_powerloss::{JOURNAL_ENV, ROOT_ENV};
use libc::c_int;

use crate::paths::AbsPath;
use crate::sys;

/// Fds below this have a lock-free "maybe tracked" flag; above it a count says whether any is.
const LOW_FDS: usize = 65536;

static TRACKED_LOW: [AtomicBool; LOW_FDS] = [const { AtomicBool::new(false) }; LOW_FDS];
static TRACKED_HIGH: AtomicUsize = AtomicUsize::new(0);

/// Whether `fd` may be tracked: the O(1), lock-free check every fd hook makes first, so writes
/// to sockets and pipes cost one atomic load. A true answer is confirmed under the lock.
pub fn maybe_tracked(fd: c_int) -> bool {
    match usize::try_from(fd) {
        Ok(fd) if fd < LOW_FDS => TRACKED_LOW[fd].load(Ordering::Relaxed),
        Ok(_) => TRACKED_HIGH.load(Ordering::Relaxed) > 0,
        Err(_) => false,
    }
}

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as inside the shim, so that the shim's own libc calls (std, dlsym,
/// allocation) pass straight through the interposers.
pub struct Reentry(());

impl Reentry {
    /// None if the thread is already inside the shim.
    pub fn enter() -> Option<Reentry> {
        IN_SHIM.with(|inside| (!inside.replace(true)).then_some(Reentry(())))
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        IN_SHIM.with(|inside| inside.set(false));
    }
}

/// A tracked fd: a regular file or directory under the root.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub id: FileId,
    pub is_dir: bool,
    /// The path at open, for messages only (renames make it stale).
    pub path: Vec<u8>,
}

pub struct Shim {
    pub root: AbsPath,
    pub root_dev: u64,
    /// False when another live process holds the journal: then touching the root aborts.
    owner: bool,
    pid: u32,
    state: Mutex<State>,
}

/// Everything behind the lock.
pub struct State {
    journal_fd: c_int,
    saved_fd: c_int,
    saved_len: u64,
    stash_dir: Vec<u8>,
    next_stash: u64,
    next_sync: u64,
    fds: HashMap<c_int, Tracked>,
    /// Fds on removed directories, kept open so their inode numbers are not reused while the
    /// journal names them.
    pinned_dirs: Vec<c_int>,
    buf: Vec<u8>,
}

static SHIM: OnceLock<Option<Shim>> = OnceLock::new();

/// The shim, or None when its environment variables are not set (pure pass-through). Call only
/// inside a [`Reentry`]: the first call initializes, and initializing calls libc.
pub fn get() -> Option<&'static Shim> {
    SHIM.get_or_init(init).as_ref()
}

fn env(name: &str) -> Option<Vec<u8>> {
    let name = CString::new(name).expect("no NUL in a constant");
    // SAFETY: getenv with a NUL-terminated name; the value is copied out at once.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: getenv returns a NUL-terminated string or null.
    (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_bytes().to_vec())
}

fn init() -> Option<Shim> {
    let root = env(ROOT_ENV)?;
    let journal_dir = env(JOURNAL_ENV)?;
    let root_c = CString::new(root.clone()).expect("from a C string");
    let root_st = sys::lstat(&root_c).unwrap_or_else(|e| die_env(ROOT_ENV, &root, e));
    if !sys::is_dir(&root_st) {
        sys::die(
            "init",
            &root,
            &format!("{ROOT_ENV} is not a directory (symlinks are not followed)"),
        );
    }
    let journal_c = CString::new(journal_dir.clone()).expect("from a C string");
    let journal_st =
        sys::lstat(&journal_c).unwrap_or_else(|e| die_env(JOURNAL_ENV, &journal_dir, e));
    if journal_st.st_dev != root_st.st_dev {
        sys::die(
            "init",
            &journal_dir,
            "the journal folder is not on the root's filesystem (the stash needs hard links)",
        );
    }
    let root = AbsPath::normalize(&root);
    if AbsPath::normalize(&journal_dir).is_under(&root) {
        sys::die(
            "init",
            &journal_dir,
            "the journal folder is inside the root",
        );
    }
    let mut stash_dir = journal_dir.clone();
    stash_dir.extend_from_slice(b"/");
    stash_dir.extend_from_slice(STASH_DIR.as_bytes());
    let mut state = open_journal(&journal_dir, stash_dir);
    if let Some(state) = &mut state {
        adopt_inherited_fds(state, &root);
    }
    let owner = state.is_some();
    let state = state.unwrap_or_else(State::idle);
    let shim = Shim {
        root,
        root_dev: root_st.st_dev,
        owner,
        pid: sys::getpid(),
        state: Mutex::new(state),
    };
    Some(shim)
}

/// Tracks the fds under the root that this program image did not open: inherited across an exec
/// (a process that re-executes itself keeps its fds). The image before journalled what it did
/// with them; from here on this one does.
fn adopt_inherited_fds(state: &mut State, root: &AbsPath) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<c_int>().ok())
        else {
            continue;
        };
        let Ok(target) = sys::readlink(&sys::proc_fd_path(fd)) else {
            continue;
        };
        if target.first() != Some(&b'/') || !AbsPath::normalize(&target).is_under(root) {
            continue;
        }
        if let Ok(st) = sys::fstat(fd)
            && (sys::is_regular(&st) || sys::is_dir(&st))
        {
            let tracked = Tracked {
                id: file_id(&st),
                is_dir: sys::is_dir(&st),
                path: target,
            };
            state.track(fd, tracked);
        }
    }
}

fn die_env(var: &str, value: &[u8], errno: c_int) -> ! {
    let why = format!("{var}: {}", std::io::Error::from_raw_os_error(errno));
    sys::die("init", value, &why)
}

fn join(dir: &[u8], name: &str) -> CString {
    let mut path = dir.to_vec();
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    CString::new(path).expect("from a C string")
}

/// Opens and locks the journal, or None if another live process holds it. A journal left by an
/// earlier run that was killed without a cut is continued: its torn tail is cut off, and ids go on
/// from its highest.
fn open_journal(journal_dir: &[u8], stash_dir: Vec<u8>) -> Option<State> {
    let journal_path = join(journal_dir, JOURNAL_FILE);
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
    let journal_fd = sys::open(&journal_path, flags, 0o644)
        .unwrap_or_else(|e| die_io("open", journal_path.to_bytes(), e));
    match sys::flock(journal_fd, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(libc::EWOULDBLOCK) => {
            sys::close(journal_fd);
            return None;
        }
        Err(e) => die_io("flock", journal_path.to_bytes(), e),
    }
    let bytes =
        sys::read_to_end(journal_fd).unwrap_or_else(|e| die_io("read", journal_path.to_bytes(), e));
    let decoded = journal::decode(&bytes).unwrap_or_else(|e| {
        sys::die(
            "init",
            journal_path.to_bytes(),
            &format!("corrupt journal {e}"),
        )
    });
    let kept = bytes.len() - decoded.torn_tail_bytes;
    sys::ftruncate(journal_fd, kept as u64)
        .unwrap_or_else(|e| die_io("truncate", journal_path.to_bytes(), e));
    if kept == 0 {
        sys::write_all(journal_fd, MAGIC)
            .unwrap_or_else(|e| die_io("write", journal_path.to_bytes(), e));
    }
    let (mut next_sync, mut next_stash) = (0, 0);
    for record in &decoded.records {
        match record {
            Record::SyncBegin { sync, .. } => next_sync = next_sync.max(sync + 1),
            Record::Unlink { stash, .. }
            | Record::Rename {
                replaced: journal::Replaced::File { stash, .. },
                ..
            } => {
                next_stash = next_stash.max(stash + 1);
            }
            _ => {}
        }
    }
    let stash_c = CString::new(stash_dir.clone()).expect("from a C string");
    match sys::mkdir(&stash_c, 0o755) {
        Ok(()) | Err(libc::EEXIST) => {}
        Err(e) => die_io("mkdir", &stash_dir, e),
    }
    let saved_path = join(journal_dir, SAVED_FILE);
    let saved_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
    let saved_fd = sys::open(&saved_path, saved_flags, 0o644)
        .unwrap_or_else(|e| die_io("open", saved_path.to_bytes(), e));
    let saved_len = sys::fstat(saved_fd)
        .unwrap_or_else(|e| die_io("stat", saved_path.to_bytes(), e))
        .st_size as u64;
    let mut state = State {
        journal_fd,
        saved_fd,
        saved_len,
        stash_dir,
        next_stash,
        next_sync,
        fds: HashMap::new(),
        pinned_dirs: Vec::new(),
        buf: Vec::new(),
    };
    state.record(&Record::RunStart { pid: sys::getpid() });
    Some(state)
}

fn die_io(call: &str, path: &[u8], errno: c_int) -> ! {
    let why = format!(
        "power-loss journal: {}",
        std::io::Error::from_raw_os_error(errno)
    );
    sys::die(call, path, &why)
}

impl Shim {
    /// The lock for a tracked operation on `path` by `call`. Aborts in a process that does not
    /// own the journal (a second process, or a forked child), whose changes cannot be journalled.
    pub fn lock(&self, call: &str, path: &[u8]) -> MutexGuard<'_, State> {
        self.abort_unless_owner(call, path);
        // A panic under the lock aborts the process (hooks are extern "C"), so poison is moot.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Aborts in a process that does not own the journal, naming `call` and `path`.
    pub fn abort_unless_owner(&self, call: &str, path: &[u8]) {
        if !self.owner {
            sys::die(
                call,
                path,
                "another live process holds the power-loss journal; one process per journal",
            );
        }
        if sys::getpid() != self.pid {
            sys::die(
                call,
                path,
                "a forked child changed the power-loss root; only the process that opened the journal may",
            );
        }
    }

    /// The lock for bookkeeping that journals nothing (close, dup), or None in a forked child,
    /// which must not touch the parent's table (another thread may have held the lock at fork).
    pub fn lock_table(&self) -> Option<MutexGuard<'_, State>> {
        if sys::getpid() != self.pid {
            return None;
        }
        Some(
            self.state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether this process journals (false when another live process holds the journal).
    pub fn owns_journal(&self) -> bool {
        self.owner && sys::getpid() == self.pid
    }

    pub fn contains(&self, path: &AbsPath) -> bool {
        path.is_under(&self.root)
    }
}

impl State {
    /// A state that journals nothing, for a process that does not own the journal.
    fn idle() -> State {
        State {
            journal_fd: -1,
            saved_fd: -1,
            saved_len: 0,
            stash_dir: Vec::new(),
            next_stash: 0,
            next_sync: 0,
            fds: HashMap::new(),
            pinned_dirs: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Appends one record; the process aborts if the journal cannot be written, since going on
    /// would make the cut lie.
    pub fn record(&mut self, record: &Record) {
        self.buf.clear();
        journal::encode(record, &mut self.buf);
        if let Err(e) = sys::write_all(self.journal_fd, &self.buf) {
            die_io("write", JOURNAL_FILE.as_bytes(), e);
        }
    }

    /// Records the result of the operation just recorded, when it is not a full success.
    pub fn record_outcome(&mut self, result: i64) {
        self.record(&Record::Outcome { result });
    }

    pub fn next_sync(&mut self) -> u64 {
        self.next_sync += 1;
        self.next_sync - 1
    }

    /// Copies `len` bytes at `offset` of `source` (a path opened read-only) to the saved-bytes
    /// file. `call` and `path` name the operation in the abort message if that is impossible.
    pub fn save(&mut self, call: &str, path: &[u8], source: &CStr, offset: u64, len: u64) -> Saved {
        let saved = Saved {
            offset: self.saved_len,
            len,
        };
        if len == 0 {
            return saved;
        }
        if len > SAVED_BYTES_PER_OP_MAX {
            let why = format!(
                "would save {len} old bytes, beyond the {SAVED_BYTES_PER_OP_MAX} bytes per operation"
            );
            sys::die(call, path, &why);
        }
        let fd = sys::open(source, libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .unwrap_or_else(|e| die_io(call, path, e));
        const CHUNK_BYTES: u64 = 1 << 20;
        let mut chunk = vec![0u8; len.min(CHUNK_BYTES) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES) as usize;
            if let Err(e) = sys::pread_exact(fd, &mut chunk[..n], offset + done) {
                die_io(call, path, e);
            }
            if let Err(e) = sys::write_all(self.saved_fd, &chunk[..n]) {
                die_io("write", SAVED_FILE.as_bytes(), e);
            }
            done += n as u64;
        }
        sys::close(fd);
        self.saved_len += len;
        saved
    }

    /// Hard-links `path` into the stash; returns its stash number.
    pub fn stash(&mut self, call: &str, path: &AbsPath) -> u64 {
        loop {
            let n = self.next_stash;
            self.next_stash += 1;
            let mut target = self.stash_dir.clone();
            target.push(b'/');
            target.extend_from_slice(journal::stash_name(n).as_bytes());
            let target = CString::new(target).expect("from a C string");
            match sys::link(&path.c_string(), &target) {
                Ok(()) => return n,
                // Left by a run killed between linking and journalling: skip the number.
                Err(libc::EEXIST) => continue,
                Err(e) => die_io(call, path.bytes(), e),
            }
        }
    }

    pub fn pin_dir(&mut self, fd: c_int) {
        self.pinned_dirs.push(fd);
    }

    /// The tracked fd `fd` and its current stat, if it is tracked and still the same file (an fd
    /// number can be reused behind the shim's back, e.g. by a close inside glibc).
    pub fn tracked(&mut self, fd: c_int) -> Option<(Tracked, libc::stat)> {
        let tracked = self.fds.get(&fd)?.clone();
        match sys::fstat(fd) {
            Ok(st) if st.st_dev == tracked.id.dev && st.st_ino == tracked.id.ino => {
                Some((tracked, st))
            }
            _ => {
                self.untrack(fd);
                None
            }
        }
    }

    pub fn track(&mut self, fd: c_int, tracked: Tracked) {
        let new = self.fds.insert(fd, tracked).is_none();
        match usize::try_from(fd) {
            Ok(low) if low < LOW_FDS => TRACKED_LOW[low].store(true, Ordering::Relaxed),
            _ if new => {
                TRACKED_HIGH.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub fn untrack(&mut self, fd: c_int) {
        let was = self.fds.remove(&fd).is_some();
        match usize::try_from(fd) {
            Ok(low) if low < LOW_FDS => TRACKED_LOW[low].store(false, Ordering::Relaxed),
            _ if was => {
                TRACKED_HIGH.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub fn lookup(&self, fd: c_int) -> Option<&Tracked> {
        self.fds.get(&fd)
    }
}

/// A regular file or directory's identity from its stat.
pub fn file_id(st: &libc::stat) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}
