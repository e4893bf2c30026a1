//! The CLI's errors as a user meets them, against a real `batond dev` cluster: each mistake of a
//! list (a workflow or step that does not exist, a file that is missing or wrong, a role that is
//! too small, TLS on one side only, no node listening, an unknown context, ...) must exit with
//! the documented code and say, in one message, what went wrong and about what, without a
//! repeated phrase ("permission denied: permission denied") or an empty detail ("error: ").

use crate::common::dev::DevCluster;

/// What is wrong with an error message, if anything: a word or a phrase of two words or more
/// said twice, or a detail left empty.
fn message_defects(message: &str) -> Vec<String> {
    let mut defects = Vec::new();
    let words: Vec<String> = message
        .split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    for pair in words.windows(2) {
        if pair[0] == pair[1] && !pair[0].chars().all(|c| c.is_ascii_digit()) {
            defects.push(format!("the word {:?} twice in a row", pair[0]));
        }
    }
    // A phrase of two or more words, said twice: "permission denied: permission denied".
    for n in 2..=4 {
        let grams: Vec<&[String]> = words.windows(n).collect();
        for (i, gram) in grams.iter().enumerate() {
            if grams[i + 1..].contains(gram) && gram.iter().any(|w| w.len() > 3) {
                defects.push(format!("the phrase {:?} twice", gram.join(" ")));
            }
        }
    }
    let trimmed = message.trim_end();
    for empty in [": :", "()", "\"\"", "''", ": ,", ":\n"] {
        if trimmed.contains(empty) {
            defects.push(format!("an empty detail ({empty:?})"));
        }
    }
    if trimmed.ends_with(':') || trimmed.is_empty() {
        defects.push("nothing after the last colon".into());
    }
    defects.sort();
    defects.dedup();
    defects
}

#[test]
fn the_defect_check_finds_what_it_should_and_nothing_else() {
    assert_eq!(
        message_defects("error: permission denied: permission denied"),
        vec!["the phrase \"permission denied\" twice"]
    );
    assert!(!message_defects("error: workflow 3 has no step 'x': the the steps").is_empty());
    assert!(!message_defects("error: connection lost: ").is_empty());
    assert!(!message_defects("error: bad spec ()").is_empty());
    assert_eq!(
        message_defects("error: workflow 999 not found"),
        Vec::<String>::new()
    );
    // A word may come back, a number too, just not a phrase.
    assert_eq!(
        message_defects("error: step a of workflow 4 waits for step b, attempts 9, 9"),
        Vec::<String>::new()
    );
}

/// One mistake: the arguments, the exit code, and words the message must hold.
struct Mistake {
    args: Vec<String>,
    exit: i32,
    says: Vec<String>,
}

fn mistake(args: &[&str], exit: i32, says: &[&str]) -> Mistake {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Mistake {
        args: owned(args),
        exit,
        says: owned(says),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_error_names_the_problem_once() {
    let dev = DevCluster::start().await;
    let work = &dev.work;
    // A finished workflow with a failed step, and a reader's token.
    let submitted = dev.baton(&["submit", "--wait", "examples/disk-report.yaml"]);
    assert_eq!(submitted.status.code(), Some(1), "{submitted:?}");
    let id = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let created = dev.baton(&[
        "-o", "json", "token", "create", "--name", "r", "--role", "reader",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).expect("a token");
    let reader = work.join("reader.token");
    std::fs::write(&reader, created["token"].as_str().unwrap()).unwrap();
    let reader = reader.display().to_string();
    std::fs::write(
        work.join("bad.yaml"),
        "name: x\nsteps:\n  - name: a\n    exec: {command: [true]\n",
    )
    .unwrap();
    std::fs::write(
        work.join("cycle.yaml"),
        "name: x\nsteps:\n  - {name: a, depends_on: [b], noop: {}}\n  - {name: b, depends_on: [a], noop: {}}\n",
    )
    .unwrap();
    std::fs::write(work.join("empty.yaml"), "").unwrap();
    // A port nothing listens on: reserved for this test, never bound.
    let closed = baton_launch::reserve(1).unwrap();
    let closed_endpoint = format!("127.0.0.1:{}", closed[0]);
    let node = format!("127.0.0.1:{}", dev.grpc[0]);

    let mistakes = [
        mistake(&["get", "999"], 1, &["workflow 999 not found"]),
        mistake(&["cancel", "999"], 1, &["workflow 999"]),
        mistake(&["watch", "999"], 1, &["workflow 999"]),
        mistake(&["logs", "999", "a"], 1, &["workflow 999 not found"]),
        mistake(&["logs", &id, "nope"], 1, &["no step 'nope'", "check-disk"]),
        mistake(
            &["logs", &id, "check-disk", "--attempt", "999"],
            1,
            &["no attempt 999"],
        ),
        mistake(&["logs", &id, "send-report"], 1, &["never ran", "skipped"]),
        mistake(&["submit", "missing.yaml"], 2, &["missing.yaml"]),
        mistake(&["submit", "bad.yaml"], 2, &["bad.yaml", "line"]),
        mistake(&["submit", "cycle.yaml"], 2, &["cycle.yaml", "cycle"]),
        mistake(&["submit", "empty.yaml"], 2, &["empty.yaml"]),
        mistake(
            &["--token-file", &reader, "submit", "examples/hello.yaml"],
            1,
            &["Submit", "reader", "submitter"],
        ),
        mistake(
            &["--token-file", &reader, "token", "list"],
            1,
            &["reader", "admin"],
        ),
        mistake(&["--context", "nope", "list"], 2, &["nope"]),
        mistake(&["context", "use", "nope"], 2, &["nope"]),
        mistake(&["token", "revoke", "nope"], 1, &["nope"]),
        mistake(
            &["--endpoints", &closed_endpoint, "--timeout", "2s", "list"],
            1,
            &[&closed_endpoint],
        ),
        // The context's credentials go only to its own endpoints: this is a plaintext client.
        mistake(
            &["--endpoints", &node, "list"],
            2,
            &["mutual TLS", "--credentials"],
        ),
        mistake(
            &["--credentials", "/nonexistent", "list"],
            2,
            &["/nonexistent"],
        ),
    ];
    let mut failures = Vec::new();
    for m in &mistakes {
        let args: Vec<&str> = m.args.iter().map(String::as_str).collect();
        let out = dev.baton(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        let mut wrong = message_defects(&stderr);
        if code != m.exit {
            wrong.push(format!("exit {code}, not {}", m.exit));
        }
        for word in &m.says {
            if !stderr.contains(word.as_str()) {
                wrong.push(format!("does not say {word:?}"));
            }
        }
        if stderr.contains("panicked") {
            wrong.push("a panic".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "baton {}: {}\n  {}",
                args.join(" "),
                wrong.join("; "),
                stderr.trim_end().replace('\n', "\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
