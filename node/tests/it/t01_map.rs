//! The map is true: ARCHITECTURE.md names only paths that exist (and none outside the
//! repository), its table lists every folder of Rust source, and every Rust source file opens
//! with a `//!` header saying what it holds. README.md's links lead somewhere too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where a short path in the map may be written from: the repository root, or a crate's source
/// or test folder that its section is about (`state/specs.rs` under `node/src/`).
const ROOTS: &[&str] = &[
    "",
    "node/src/",
    "node/tests/it/",
    "client/src/",
    "client/src/cli/",
    "client/src/agent/",
    "client/tests/it/",
    "proto/src/",
    "security/src/",
    "chaos-tests/",
    "chaos-tests/src/",
    "launch/src/",
];

/// What a code span must end with to be read as a path.
const PATH_ENDINGS: &[&str] = &[
    ".rs", ".md", ".proto", ".toml", ".yaml", ".yml", ".json", ".sh", "/",
];

struct Tree {
    root: PathBuf,
    /// Every file and folder, relative to the root, `/`-separated.
    files: BTreeSet<String>,
    folders: BTreeSet<String>,
}

impl Tree {
    fn read() -> Tree {
        // The manifest folder of this run (cargo sets it), not the one this test was built in.
        let root = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .parent()
        .expect("the workspace root")
        .to_owned();
        let mut tree = Tree {
            root: root.clone(),
            files: BTreeSet::new(),
            folders: BTreeSet::new(),
        };
        tree.walk(&root);
        tree
    }

    fn walk(&mut self, dir: &Path) {
        for entry in std::fs::read_dir(dir).expect("readable folder") {
            let entry = entry.expect("folder entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".git" || name == "target" {
                continue;
            }
            let rel = path
                .strip_prefix(&self.root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            if entry.file_type().expect("file type").is_dir() {
                self.folders.insert(rel);
                self.walk(&path);
            } else {
                self.files.insert(rel);
            }
        }
    }

    fn exists(&self, rel: &str) -> bool {
        self.files.contains(rel) || self.folders.contains(rel)
    }

    /// Whether a path the map names exists: from one of [`ROOTS`] when it has a folder in it,
    /// anywhere in the tree when it is a bare name.
    fn resolves(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        if path.contains('/') {
            ROOTS
                .iter()
                .any(|root| self.exists(&format!("{root}{path}")))
        } else {
            self.files
                .iter()
                .chain(&self.folders)
                .any(|p| p.rsplit('/').next() == Some(path))
        }
    }

    /// Folders holding Rust source, tests and examples (not generated or vendored code).
    fn rust_folders(&self) -> BTreeSet<String> {
        self.rust_files()
            .filter_map(|f| f.rsplit_once('/').map(|(dir, _)| dir.to_owned()))
            .collect()
    }

    fn rust_files(&self) -> impl Iterator<Item = &String> {
        self.files.iter().filter(|f| f.ends_with(".rs"))
    }

    fn text(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

/// The code spans of a Markdown text that read as paths.
fn named_paths(text: &str) -> Vec<&str> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.is_empty() && span.chars().all(path_char))
        .filter(|span| PATH_ENDINGS.iter().any(|end| span.ends_with(end)))
        .collect()
}

/// The targets of a Markdown text's links that are not web addresses or anchors.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .filter(|t| !t.starts_with("http://") && !t.starts_with("https://") && !t.starts_with('#'))
        .map(|t| t.split('#').next().unwrap_or(t))
        .collect()
}

#[test]
fn the_architecture_map_names_only_paths_that_exist() {
    let tree = Tree::read();
    let map = tree.text("ARCHITECTURE.md");
    let mut wrong = Vec::new();
    for path in named_paths(&map) {
        if path.starts_with("../") || path.starts_with('/') {
            wrong.push(format!("{path}: outside the repository"));
        } else if !tree.resolves(path) {
            wrong.push(format!("{path}: no such file or folder"));
        }
    }
    for doc in ["ARCHITECTURE.md", "README.md"] {
        for target in link_targets(&tree.text(doc)) {
            if target.starts_with("../") || !tree.exists(target.trim_end_matches('/')) {
                wrong.push(format!(
                    "{doc} links to {target}, which is not in the repository"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md is out of date:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_architecture_map_lists_every_folder_of_source() {
    let tree = Tree::read();
    let map = tree.text("ARCHITECTURE.md");
    let listed: BTreeSet<&str> = named_paths(&map)
        .into_iter()
        .map(|p| p.trim_end_matches('/'))
        .collect();
    let missing: Vec<String> = tree
        .rust_folders()
        .into_iter()
        .filter(|dir| !listed.contains(dir.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "folders of Rust source missing from ARCHITECTURE.md's \"Every folder\" table: {missing:?}"
    );
}

#[test]
fn every_source_file_says_what_it_holds() {
    let tree = Tree::read();
    let headless: Vec<&String> = tree
        .rust_files()
        .filter(|f| !tree.text(f).starts_with("//!"))
        .collect();
    assert!(
        headless.is_empty(),
        "Rust files without a `//!` header: {headless:?}"
    );
}

#[test]
fn the_path_reader_finds_paths_links_and_outsiders() {
    let text = "see `node/src/state/` and `specs.rs`, not `a b.rs` or `Foo::bar`; \
                [ops](docs/OPERATIONS.md#backup), [web](https://example.com), `../DESIGN.md`";
    assert_eq!(
        named_paths(text),
        ["node/src/state/", "specs.rs", "../DESIGN.md"]
    );
    assert_eq!(link_targets(text), ["docs/OPERATIONS.md"]);
    let tree = Tree::read();
    assert!(tree.resolves("state/specs.rs"));
    assert!(tree.resolves("specs.rs"));
    assert!(!tree.resolves("state/gone.rs"));
    assert!(!tree.resolves("nowhere-at-all.rs"));
}
