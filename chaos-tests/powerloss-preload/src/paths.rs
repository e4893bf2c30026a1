//! Which paths are under the root: a path (relative to the cwd or to a directory fd) made
//! absolute and normalized lexically. Symlinks are not followed: the root is canonical, the hooks
//! refuse a symlink as the last component, and a symlinked directory in the middle of a path is
//! not detected (a documented limit).

use std::ffi::{CStr, CString};

use libc::c_int;

use crate::sys;

/// An absolute, normalized path: starts with `/`, no `.`/`..`/empty parts, no trailing `/`
/// (except the root `/` itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsPath(Vec<u8>);

impl AbsPath {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn c_string(&self) -> CString {
        CString::new(self.0.clone()).expect("built from a C string, so no NUL inside")
    }

    /// The parent directory and the last name; None for `/`.
    pub fn split(&self) -> Option<(AbsPath, Vec<u8>)> {
        let slash = self.0.iter().rposition(|&b| b == b'/')?;
        let name = self.0[slash + 1..].to_vec();
        if name.is_empty() {
            return None;
        }
        let parent = if slash == 0 {
            b"/".to_vec()
        } else {
            self.0[..slash].to_vec()
        };
        Some((AbsPath(parent), name))
    }

    /// Whether this is `root` or inside it.
    pub fn is_under(&self, root: &AbsPath) -> bool {
        self.0.starts_with(&root.0)
            && (self.0.len() == root.0.len() || root.0 == b"/" || self.0[root.0.len()] == b'/')
    }

    /// Lexical normalization of an absolute path; `..` at `/` stays at `/`, as the kernel does.
    pub fn normalize(path: &[u8]) -> AbsPath {
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in path.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        let mut out = Vec::with_capacity(path.len());
        for part in &parts {
            out.push(b'/');
            out.extend_from_slice(part);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        AbsPath(out)
    }
}

/// `path` resolved against `dirfd` (or the cwd for `AT_FDCWD`), or None when the base is not a
/// directory path (a deleted directory, a socket) or cannot be read: then the path is not
/// under the root, and the real call decides what happens.
pub fn resolve(dirfd: c_int, path: &CStr) -> Option<AbsPath> {
    let path = path.to_bytes();
    if path.first() == Some(&b'/') {
        return Some(AbsPath::normalize(path));
    }
    let mut base = if dirfd == libc::AT_FDCWD {
        sys::getcwd().ok()?
    } else {
        sys::readlink(&sys::proc_fd_path(dirfd)).ok()?
    };
    // The kernel marks a removed directory " (deleted)"; anything not absolute is no directory.
    if base.first() != Some(&b'/') || base.ends_with(b" (deleted)") {
        return None;
    }
    base.push(b'/');
    base.extend_from_slice(path);
    Some(AbsPath::normalize(&base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dots_and_slashes() {
        assert_eq!(AbsPath::normalize(b"/a/./b//c/../d/").bytes(), b"/a/b/d");
        assert_eq!(AbsPath::normalize(b"/../..").bytes(), b"/");
    }

    #[test]
    fn under_root_is_by_whole_components() {
        let root = AbsPath::normalize(b"/data/n1");
        assert!(AbsPath::normalize(b"/data/n1").is_under(&root));
        assert!(AbsPath::normalize(b"/data/n1/db/CURRENT").is_under(&root));
        assert!(!AbsPath::normalize(b"/data/n10/db").is_under(&root));
        assert!(!AbsPath::normalize(b"/data/n1/../n2").is_under(&root));
    }

    #[test]
    fn splits_parent_and_name() {
        let (parent, name) = AbsPath::normalize(b"/a/b").split().expect("has a parent");
        assert_eq!((parent.bytes(), name.as_slice()), (&b"/a"[..], &b"b"[..]));
        let (parent, name) = AbsPath::normalize(b"/a").split().expect("has a parent");
        assert_eq!((parent.bytes(), name.as_slice()), (&b"/"[..], &b"a"[..]));
        assert_eq!(AbsPath::normalize(b"/").split(), None);
    }

    #[test]
    fn relative_paths_resolve_against_the_cwd() {
        let cwd = sys::getcwd().expect("cwd");
        let resolved = resolve(libc::AT_FDCWD, c"x/../y").expect("resolves");
        let mut expected = cwd;
        expected.extend_from_slice(b"/y");
        assert_eq!(resolved, AbsPath::normalize(&expected));
    }
}
