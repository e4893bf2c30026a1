//! The archive of purged workflows (`batond --archive-dir`).
//!
//! Before this node applies an entry that purges workflows, it writes each of them (spec, final
//! state, every attempt of every step, the whole history) as one JSON line, in one object per
//! entry named after the entry's log index, and only then applies the entry. A failed write
//! fails the apply: openraft stops the node's Raft core and `batond` exits naming it, so no
//! workflow ever leaves a node's state without its line on that node's archive. A node that
//! applies the same entry again (after a restart, from its log) writes the same object again,
//! byte for byte: archiving is idempotent.
//!
//! Objects are `purge-<index, 20 digits>.jsonl` (so names sort by log order), each line:
//! `{"purge_index", "purged_at_ms", "retention_ms", "workflow": <as baton get -o json, with
//! every step's earlier_attempts>, "history": [<as baton watch -o json>...]}`. Where they go is
//! an [`ArchiveStore`]: a local folder today, each object written durably (`*.tmp`, fsync,
//! rename, folder fsync); an object store is another implementation of the same trait, with
//! nothing to change in the state machine.
//!
//! Every node archives what it applies, so each node's folder is a full archive, except for a
//! node that caught up by installing a snapshot: purges inside the snapshot happened elsewhere.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_proto::json::{event_json, workflow_json};
use serde_json::json;

use super::durable;
use crate::state::Workflow;
use crate::state::lifecycle::decode_history;

/// Where archive objects go.
pub trait ArchiveStore: Send + Sync {
    /// Stores `bytes` under `name`, replacing any object of that name, durably before it returns.
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
}

/// A local (or mounted) folder.
pub struct LocalFolder {
    dir: PathBuf,
}

impl LocalFolder {
    /// Opens `dir`, creating it (durably) if needed.
    pub fn open(dir: &Path) -> Result<Self, String> {
        durable::create_dir_all(dir)
            .map_err(|e| format!("--archive-dir {}: cannot create it: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl ArchiveStore for LocalFolder {
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.dir.join(name);
        durable::write_atomically(&path, bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("archive: cannot write {}: {e}", path.display()),
            )
        })
    }
}

/// The archive a node writes purged workflows to.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ArchiveStore>,
}

impl Archive {
    pub fn new(store: Arc<dyn ArchiveStore>) -> Self {
        Self { store }
    }

    /// Writes `workflows` (each with the retention that ended), which the entry at `index`
    /// purges at state time `purged_at_ms`, as one object.
    pub fn write(
        &self,
        index: u64,
        purged_at_ms: u64,
        workflows: &[(Arc<Workflow>, u64)],
    ) -> io::Result<()> {
        let mut bytes = Vec::new();
        for (workflow, retention_ms) in workflows {
            let line = archive_line(index, purged_at_ms, *retention_ms, workflow);
            serde_json::to_writer(&mut bytes, &line).map_err(io::Error::other)?;
            bytes.push(b'\n');
        }
        self.store.put(&object_name(index), &bytes)?;
        crate::metrics::archived(workflows.len());
        Ok(())
    }
}

/// `purge-00000000000000001234.jsonl`: names sort in log order.
pub fn object_name(index: u64) -> String {
    format!("purge-{index:020}.jsonl")
}

/// One workflow's archive line.
pub fn archive_line(
    index: u64,
    purged_at_ms: u64,
    retention_ms: u64,
    workflow: &Workflow,
) -> serde_json::Value {
    json!({
        "purge_index": index,
        "purged_at_ms": purged_at_ms,
        "retention_ms": retention_ms,
        "workflow": workflow_json(&workflow.to_proto_archived()),
        "history": decode_history(workflow).iter().map(event_json).collect::<Vec<_>>(),
    })
}
