//! The `IDENTITY` file that ties a data folder to one node, and the folder's incarnation.
//!
//! The incarnation is a random id made when the folder is first used. The cluster records each
//! member's incarnation (`state::members`), and every Raft message names the incarnation of its
//! sender and of the node it expects to reach, so a node that comes back on an empty or foreign
//! folder under a member's id is told apart from that member: it neither votes nor accepts
//! entries, and exits naming the recovery steps. (The node id alone cannot tell: an operator who
//! mounts the wrong volume, or a disk that was replaced, keeps the id.)

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::durable;

/// The identity of a data folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub node_id: u64,
    /// 16 hex digits; absent in folders of releases before incarnations (added on their first
    /// start by this release).
    #[serde(default)]
    pub incarnation: String,
}

/// The identity format. The incarnation is a field that earlier releases of the same format
/// ignore, so a node upgraded and then rolled back still starts.
const FORMAT: u32 = 1;
const FILE: &str = "IDENTITY";

/// Entries a fresh folder may hold: a crash between writing the identity and renaming it into
/// place leaves the temporary file, and a freshly made ext4 volume has `lost+found`.
const FRESH_FOLDER_ENTRIES: [&str; 2] = ["IDENTITY.tmp", "lost+found"];

/// Checks (or, in a new folder, writes) the identity of `dir` for node `node_id`. A folder of
/// another node, a foreign folder or an unknown format is refused.
pub fn open(dir: &Path, node_id: u64) -> Result<Identity, String> {
    durable::create_dir_all(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return create(dir, node_id),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut identity: Identity = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a batond identity file ({e}); is this the right data dir?",
            path.display()
        )
    })?;
    if identity.format != FORMAT {
        return Err(format!(
            "data dir {} has format {}, this batond reads format {FORMAT}",
            dir.display(),
            identity.format
        ));
    }
    if identity.node_id != node_id {
        return Err(format!(
            "data dir {} belongs to node {}, not node {node_id}",
            dir.display(),
            identity.node_id
        ));
    }
    if identity.incarnation.is_empty() {
        // A folder of an earlier release: it is the same folder, so it gets its incarnation now.
        identity.incarnation = new_incarnation()?;
        write(dir, &identity)?;
    }
    Ok(identity)
}

fn create(dir: &Path, node_id: u64) -> Result<Identity, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    for entry in entries {
        let name = entry
            .map_err(|e| format!("data dir {}: {e}", dir.display()))?
            .file_name();
        if !FRESH_FOLDER_ENTRIES.iter().any(|fresh| name == *fresh) {
            return Err(format!(
                "data dir {} is not empty and has no IDENTITY file: it is not a batond data \
                 dir; give an empty or new folder",
                dir.display()
            ));
        }
    }
    let identity = Identity {
        format: FORMAT,
        node_id,
        incarnation: new_incarnation()?,
    };
    write(dir, &identity)?;
    Ok(identity)
}

fn write(dir: &Path, identity: &Identity) -> Result<(), String> {
    let text = serde_json::to_string(identity).expect("identity encodes");
    durable::write_atomically(&dir.join(FILE), text.as_bytes())
        .map_err(|e| format!("data dir {}: cannot write IDENTITY: {e}", dir.display()))
}

fn new_incarnation() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for an incarnation: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_belongs_to_one_node_and_keeps_its_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("n1");
        let first = open(&data, 1).unwrap();
        assert_eq!(first.incarnation.len(), 16);
        assert_eq!(
            open(&data, 1).unwrap(),
            first,
            "the same folder, the same incarnation"
        );
        let err = open(&data, 2).unwrap_err();
        assert!(err.contains("belongs to node 1, not node 2"), "{err}");

        let other = dir.path().join("n1-again");
        assert_ne!(
            open(&other, 1).unwrap().incarnation,
            first.incarnation,
            "a new folder for the same id is a new incarnation"
        );

        let foreign = dir.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("something"), "x").unwrap();
        let err = open(&foreign, 1).unwrap_err();
        assert!(err.contains("not a batond data dir"), "{err}");

        std::fs::write(data.join("IDENTITY"), "garbage").unwrap();
        let err = open(&data, 1).unwrap_err();
        assert!(err.contains("not a batond identity file"), "{err}");
    }

    #[test]
    fn a_fresh_volume_and_a_torn_first_start_are_still_fresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lost+found")).unwrap();
        std::fs::write(dir.path().join("IDENTITY.tmp"), "{\"form").unwrap();
        let identity = open(dir.path(), 4).unwrap();
        assert_eq!(identity.node_id, 4);
    }

    #[test]
    fn a_folder_of_the_previous_format_gets_an_incarnation_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("IDENTITY"), r#"{"format":1,"node_id":3}"#).unwrap();
        let upgraded = open(dir.path(), 3).unwrap();
        assert_eq!(upgraded.format, FORMAT);
        assert_eq!(upgraded.incarnation.len(), 16);
        assert_eq!(open(dir.path(), 3).unwrap(), upgraded);
    }
}
