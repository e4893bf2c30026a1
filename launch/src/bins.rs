//! Where `batond` and `baton` are: beside the running executable (cargo puts every binary of the
//! workspace in one folder, and a release ships them together), or in a folder named by an
//! environment variable.

use std::io;
use std::path::{Path, PathBuf};

pub const BATOND: &str = "batond";
pub const BATON: &str = "baton";

/// The folder of the running executable.
pub fn beside_current_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::other(format!("{} has no folder", exe.display())))
}

/// The folder named by the environment variable `var` if it is set, else the running
/// executable's.
pub fn from_env_or_beside(var: &str) -> io::Result<PathBuf> {
    match std::env::var_os(var) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => beside_current_exe(),
    }
}

/// The first of `names` missing from `dir`, as its full path.
pub fn missing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| !p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BATOND), "").unwrap();
        assert_eq!(missing(dir.path(), &[BATOND]), None);
        assert_eq!(
            missing(dir.path(), &[BATOND, BATON]),
            Some(dir.path().join(BATON))
        );
        assert!(beside_current_exe().unwrap().is_dir());
    }
}
