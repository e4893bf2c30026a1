//! A real database under the shim: SQLite (through python3's sqlite3 module, a prerequisite of
//! this repository) commits transactions in its default rollback-journal mode, is killed in the
//! middle of one, and the cut must leave a database SQLite itself recovers, with exactly the
//! transactions its documented durability promises.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use baton_powerloss::Tear;
use common::Sandbox;

const COMMITS: usize = 40;

/// Commits COMMITS one-row transactions, then dies inside an uncommitted big one.
const WRITER: &str = r#"
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("pragma synchronous=" + sys.argv[2])
db.execute("create table t (i integer primary key, v text)")
for i in range(int(sys.argv[3])):
    db.execute("begin")
    db.execute("insert into t (v) values (?)", ("x" * (i * 37 % 900),))
    db.execute("commit")
db.execute("begin")
for i in range(100):
    db.execute("insert into t (v) values (?)", ("y" * 1000,))
os.kill(os.getpid(), 9)
"#;

/// Opens the database (SQLite rolls back a hot journal) and prints the integrity check, the
/// committed rows and the uncommitted ones.
const READER: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
ok = db.execute("pragma integrity_check").fetchone()[0]
rows, uncommitted = db.execute("select count(*), count(case when v like 'y%' then 1 end) from t").fetchone()
print(ok, rows, uncommitted)
"#;

/// The rows SQLite keeps after a power cut, for each seed of the cut.
fn committed_rows_after_cut(synchronous: &str) -> Vec<usize> {
    (0..4)
        .map(|seed| {
            let sandbox = Sandbox::new();
            let db = sandbox.path("db.sqlite");
            let out = sandbox
                .command("python3")
                .args(["-c", WRITER])
                .arg(&db)
                .args([synchronous, &COMMITS.to_string()])
                .output()
                .expect("python3 runs (a prerequisite, see scripts/prereqs.sh)");
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "the writer dies by its SIGKILL: {:?}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let report = sandbox.cut(Tear::Seeded(seed));
            let out = Command::new("python3")
                .args(["-c", READER])
                .arg(&db)
                .output()
                .expect("reader");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let fields: Vec<&str> = stdout.split_whitespace().collect();
            let [ok, rows, uncommitted] = fields.as_slice() else {
                panic!("reader: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            };
            assert_eq!((*ok, *uncommitted), ("ok", "0"), "seed {seed}: {report}");
            rows.parse().expect("a row count")
        })
        .collect()
}

/// EXTRA syncs the directory after unlinking the journal, which is the commit in this mode:
/// every commit survives.
#[test]
fn sqlite_synchronous_extra_keeps_every_commit() {
    assert_eq!(committed_rows_after_cut("extra"), vec![COMMITS; 4]);
}

/// FULL does not sync the directory after the unlink that commits, so the last commit's journal
/// can come back after a power cut and SQLite rolls that transaction back: its documentation
/// says exactly this (pragma synchronous, EXTRA). The cut must show it, every time.
#[test]
fn sqlite_synchronous_full_can_lose_the_last_commit_to_a_power_cut() {
    assert_eq!(committed_rows_after_cut("full"), vec![COMMITS - 1; 4]);
}
