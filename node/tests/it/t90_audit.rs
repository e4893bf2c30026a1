//! The audit trail as a user reads it, on a real `batond dev` cluster (TLS and tokens): `baton
//! audit` lists who created a namespace and a token, who submitted and who cancelled, each with
//! the token that asked; a team's token sees only its namespace's changes; the node's log says
//! who asked too.

use serde_json::Value;

use crate::common::dev::DevCluster;

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The (action, actor) of each record, newest first.
fn actions(records: &Value) -> Vec<(String, String)> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_audit_says_who_changed_what() {
    let dev = DevCluster::start().await;
    json(&dev.baton(&["-o", "json", "namespace", "create", "team-a"]));
    let created = json(&dev.baton(&[
        "-o",
        "json",
        "token",
        "create",
        "--name",
        "team-a-ci",
        "--role",
        "submitter",
        "-n",
        "team-a",
    ]));
    let team_token = dev.tmp.path().join("team-a-token");
    std::fs::write(&team_token, created["token"].as_str().unwrap()).unwrap();
    let team_token = team_token.to_str().unwrap();
    let spec = dev.work.join("long.yaml");
    std::fs::write(
        &spec,
        "name: long\nsteps:\n  - name: wait\n    sleep: {duration: 60s}\n",
    )
    .unwrap();
    let submitted = json(&dev.baton(&[
        "--token-file",
        team_token,
        "-n",
        "team-a",
        "-o",
        "json",
        "submit",
        spec.to_str().unwrap(),
    ]));
    let id = submitted["workflow_id"].as_u64().unwrap().to_string();
    json(&dev.baton(&["-o", "json", "cancel", &id]));

    // The admin sees every change, newest first, each with the token that asked.
    let all = json(&dev.baton(&["-o", "json", "audit"]));
    let seen = actions(&all);
    let kinds: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        &kinds[..4],
        [
            "workflow.cancel",
            "workflow.submit",
            "token.create",
            "namespace.create"
        ],
        "{all:#}"
    );
    let team_ci = created["id"].as_str().unwrap();
    assert!(
        seen[1]
            .1
            .starts_with(&format!("token team-a-ci ({team_ci})")),
        "{:?}",
        seen[1]
    );
    for (action, actor) in [&seen[0], &seen[2], &seen[3]] {
        assert!(
            actor.starts_with("token ") && !actor.contains("team-a-ci"),
            "{action} by {actor:?}"
        );
    }
    assert_eq!(all[1]["namespace"], "team-a");
    assert_eq!(all[1]["workflow_id"].as_u64().unwrap().to_string(), id);
    assert_eq!(all[2]["detail"], "roles team-a=submitter");

    // The team's token reads its namespace's changes only: no token or namespace change.
    let theirs = json(&dev.baton(&["--token-file", team_token, "-o", "json", "audit", "-A"]));
    let theirs = actions(&theirs);
    assert_eq!(
        theirs.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["workflow.cancel", "workflow.submit"]
    );
    // A window that ends before the changes holds none of them.
    let later = json(&dev.baton(&["-o", "json", "audit", "--since", "2099-01-01T00:00:00Z"]));
    assert_eq!(later.as_array().unwrap().len(), 0);
    let table = dev.baton(&["audit", "--limit", "2"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("TIME"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    // The nodes' logs carry who asked, too.
    let log: String = (1..=3)
        .map(|n| {
            std::fs::read_to_string(dev.work.join(format!(".baton-dev/node{n}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        log.lines().any(|l| l.contains("change asked")
            && l.contains("create_token")
            && l.contains("token ")),
        "no audit line in the node's log"
    );
}
