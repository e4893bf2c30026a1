//! The commit a binary is built from, for `--version`, `baton version` and `baton_build_info`:
//! `BATON_COMMIT` is the checkout's `git rev-parse --short=12 HEAD`, or `unknown` where there is
//! no git checkout (a source archive) or no git. `batond`'s build script is this one too.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BATON_COMMIT={commit}");
    // Run again when HEAD moves: HEAD itself (a checkout), the branch it names (a commit), and
    // packed-refs (a branch packed away). A worktree's HEAD and the shared refs both resolve.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = Path::new(&path);
            let path = if path.is_absolute() {
                path.to_owned()
            } else {
                dir.join(path)
            };
            // Watched even while missing: a packed branch's loose ref appears at the next commit.
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
