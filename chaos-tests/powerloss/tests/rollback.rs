//! `cut` on hand-written journals against real files: an operation journalled but never run
//! (the process died between its record and the call) must be tolerated, and the setup checks
//! must refuse what cannot work.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use baton_powerloss::journal::{self, FileId, MAGIC, Record, Replaced, Saved};
use baton_powerloss::{CutReport, SetupError, Tear};

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    journal: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (root, journal) = (tmp.path().join("root"), tmp.path().join("journal"));
    fs::create_dir_all(root.join("d")).expect("root");
    fs::create_dir_all(journal.join(journal::STASH_DIR)).expect("journal");
    fs::write(root.join("a"), b"A").expect("a");
    fs::write(root.join("b"), b"B").expect("b");
    Dirs {
        _tmp: tmp,
        root,
        journal,
    }
}

fn id(path: &Path) -> FileId {
    let meta = fs::symlink_metadata(path).expect("stat");
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Builds a record against the files (and may prepare the stash as the shim would).
type MakeRecord = fn(&Dirs) -> Record;

fn write_journal(dir: &Path, records: &[Record]) {
    let mut bytes = MAGIC.to_vec();
    for record in records {
        journal::encode(record, &mut bytes);
    }
    fs::write(dir.join(journal::JOURNAL_FILE), bytes).expect("journal");
}

/// What the root holds: every name with its content (directories as "/").
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if path.is_dir() {
                out.push((name, b"/".to_vec()));
                todo.push(path);
            } else {
                out.push((name, fs::read(&path).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn cut(d: &Dirs, tear: Tear) -> CutReport {
    baton_powerloss::cut(&d.root, &d.journal, tear).unwrap_or_else(|e| panic!("cut: {e}"))
}

#[test]
fn directory_changes_journalled_but_never_run_change_nothing() {
    let cases: Vec<(&str, MakeRecord)> = vec![
        ("create", |d| Record::Create {
            dir: id(&d.root),
            name: b"new".to_vec(),
        }),
        ("mkdir", |d| Record::Mkdir {
            dir: id(&d.root),
            name: b"newdir".to_vec(),
        }),
        ("link", |d| Record::Link {
            dir: id(&d.root),
            name: b"c".to_vec(),
            file: id(&d.root.join("a")),
        }),
        ("unlink", |d| {
            // The shim links the victim into the stash before journalling.
            let stash = d
                .journal
                .join(journal::STASH_DIR)
                .join(journal::stash_name(0));
            fs::hard_link(d.root.join("a"), stash).expect("stash");
            Record::Unlink {
                dir: id(&d.root),
                name: b"a".to_vec(),
                file: id(&d.root.join("a")),
                stash: 0,
            }
        }),
        ("rmdir", |d| Record::Rmdir {
            dir: id(&d.root),
            name: b"d".to_vec(),
            removed: id(&d.root.join("d")),
            mode: 0o755,
        }),
        ("rename over", |d| {
            let stash = d
                .journal
                .join(journal::STASH_DIR)
                .join(journal::stash_name(0));
            fs::hard_link(d.root.join("b"), stash).expect("stash");
            Record::Rename {
                from_dir: id(&d.root),
                from_name: b"a".to_vec(),
                to_dir: id(&d.root.join("d")),
                to_name: b"b".to_vec(),
                moved: id(&d.root.join("a")),
                replaced: Replaced::File {
                    file: id(&d.root.join("b")),
                    stash: 0,
                },
            }
        }),
    ];
    for (name, record) in cases {
        let d = dirs();
        let before = snapshot(&d.root);
        write_journal(&d.journal, &[Record::RunStart { pid: 1 }, record(&d)]);
        let report = cut(&d, Tear::None);
        assert_eq!(snapshot(&d.root), before, "{name}: {report}");
        assert_eq!(
            (report.names_undone, report.names_already_gone),
            (0, 1),
            "{name}: {report}"
        );
    }
}

#[test]
fn data_changes_journalled_but_never_run_change_nothing_even_when_torn() {
    for seed in 0..20 {
        let d = dirs();
        let a = id(&d.root.join("a"));
        let before = snapshot(&d.root);
        let extend = Record::Write {
            file: a,
            offset: 1,
            len: 50,
            size_before: 1,
            saved: Saved::default(),
        };
        write_journal(&d.journal, &[extend]);
        let report = cut(&d, Tear::Seeded(seed));
        assert_eq!(snapshot(&d.root), before, "seed {seed}: {report}");
    }
}

#[test]
fn a_write_cut_short_by_the_kill_is_never_torn_past_what_it_wrote() {
    for seed in 0..20 {
        let d = dirs();
        let a = id(&d.root.join("a"));
        // The write of 50 bytes got 4 in before the kill.
        fs::write(d.root.join("a"), b"Awxyz").expect("short write");
        let write = Record::Write {
            file: a,
            offset: 1,
            len: 50,
            size_before: 1,
            saved: Saved::default(),
        };
        write_journal(&d.journal, &[write]);
        let report = cut(&d, Tear::Seeded(seed));
        let a_now = fs::read(d.root.join("a")).expect("a");
        assert!(
            b"Awxyz".starts_with(&a_now) && !a_now.is_empty(),
            "seed {seed}: {a_now:?}; {report}"
        );
    }
}

#[test]
fn a_missing_journal_changes_nothing_and_a_corrupt_one_is_an_error() {
    let d = dirs();
    let before = snapshot(&d.root);
    assert_eq!(cut(&d, Tear::None), CutReport::default());
    assert_eq!(snapshot(&d.root), before);

    let mut bytes = MAGIC.to_vec();
    journal::encode(&Record::SyncEnd { sync: 1 }, &mut bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(d.journal.join(journal::JOURNAL_FILE), bytes).expect("journal");
    let err = baton_powerloss::cut(&d.root, &d.journal, Tear::None).expect_err("corrupt");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn child_env_refuses_a_missing_shim_nested_folders_and_two_filesystems() {
    let d = dirs();
    let missing = baton_powerloss::find_preload(&d.root).expect_err("no shim there");
    assert!(
        matches!(missing, SetupError::PreloadMissing { .. }),
        "{missing}"
    );
    assert!(
        missing
            .to_string()
            .contains("cargo build -p baton-powerloss-preload"),
        "{missing}"
    );

    let shim = d.root.join("a"); // any file will do as the shim's path here
    let nested = baton_powerloss::child_env(&shim, &d.root, &d.root.join("journal"));
    assert!(
        matches!(nested, Err(SetupError::Nested { .. })),
        "{nested:?}"
    );

    // /proc is always its own filesystem.
    let apart = baton_powerloss::child_env(&shim, Path::new("/proc/self"), &d.journal);
    assert!(
        matches!(apart, Err(SetupError::DifferentFilesystems { .. })),
        "{apart:?}"
    );

    let env = baton_powerloss::child_env(&shim, &d.root, &d.journal).expect("good setup");
    let names: Vec<_> = env
        .iter()
        .map(|(k, _)| k.to_str().expect("ascii"))
        .collect();
    assert_eq!(
        names,
        [
            "LD_PRELOAD",
            baton_powerloss::ROOT_ENV,
            baton_powerloss::JOURNAL_ENV
        ]
    );
}
