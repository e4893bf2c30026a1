//! The human views of the cluster: members, one node's status (`baton cluster status`), and
//! every endpoint's side by side with their state hashes compared (`--all`).

use std::collections::BTreeMap;

use baton_proto::v1::{ClusterStatusResponse, Member};

use super::text::{Table, one_line, or_dash};

pub fn render_members(members: &[Member]) -> String {
    let mut table = Table::new(["MEMBER", "ADDRESS", "VOTER", "MATCHED"]);
    for member in members {
        table.row([
            member.node_id.to_string(),
            member.address.clone(),
            if member.voter { "yes" } else { "no" }.to_string(),
            if member.matched_index == 0 {
                "-".to_string()
            } else {
                member.matched_index.to_string()
            },
        ]);
    }
    table.render()
}

/// The `baton cluster status` view of one node's answer.
pub fn render_cluster_status(status: &ClusterStatusResponse) -> String {
    let leader = if status.leader_id == 0 {
        "none known".to_string()
    } else {
        status.leader_id.to_string()
    };
    let mut header = Table::new(["cluster:".to_string(), or_dash(&status.cluster_id)]);
    header.row([
        "leader:".to_string(),
        format!("{leader} (term {})", status.term),
    ]);
    header.row([
        "answered by:".to_string(),
        format!("node {} ({})", status.node_id, or_dash(&status.role)),
    ]);
    header.row([
        "log:".to_string(),
        format!(
            "last {}, committed {}, applied {}, snapshot {}, purged {}",
            status.last_log_index,
            status.committed_index,
            status.applied_index,
            status.snapshot_index,
            status.purged_index
        ),
    ]);
    header.row(["state hash:".to_string(), or_dash(&status.state_hash)]);
    let mut out = header.render();
    out.push('\n');
    out.push_str(&render_members(&status.members));
    out
}

/// One node's answer in `baton cluster status --all`: its status or why it did not answer.
pub type NodeStatus<'a> = (String, Result<&'a ClusterStatusResponse, String>);

/// The `baton cluster status --all` view: one row per endpoint, so that state hashes at equal
/// applied indexes can be compared at a glance; a closing line says whether they agree.
pub fn render_cluster_statuses(nodes: &[NodeStatus<'_>]) -> String {
    let mut table = Table::new([
        "ENDPOINT",
        "NODE",
        "ROLE",
        "LEADER",
        "TERM",
        "COMMITTED",
        "APPLIED",
        "SNAPSHOT",
        "STATE HASH",
    ]);
    for (endpoint, answer) in nodes {
        match answer {
            Ok(status) => table.row([
                endpoint.clone(),
                status.node_id.to_string(),
                or_dash(&status.role),
                if status.leader_id == 0 {
                    "-".to_string()
                } else {
                    status.leader_id.to_string()
                },
                status.term.to_string(),
                status.committed_index.to_string(),
                status.applied_index.to_string(),
                status.snapshot_index.to_string(),
                or_dash(&status.state_hash),
            ]),
            Err(error) => table.row([endpoint.clone(), format!("error: {}", one_line(error, 100))]),
        }
    }
    let mut out = table.render();
    if let Some(line) = hash_agreement(nodes) {
        out.push('\n');
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Compares state hashes of nodes that report the same applied index: only those must agree.
fn hash_agreement(nodes: &[NodeStatus<'_>]) -> Option<String> {
    let mut by_index: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for status in nodes.iter().filter_map(|(_, answer)| answer.as_ref().ok()) {
        if !status.state_hash.is_empty() {
            by_index
                .entry(status.applied_index)
                .or_default()
                .push(&status.state_hash);
        }
    }
    let mut differing: Vec<u64> = Vec::new();
    let mut compared = false;
    for (index, hashes) in &by_index {
        if hashes.len() > 1 {
            compared = true;
            if hashes.iter().any(|hash| hash != &hashes[0]) {
                differing.push(*index);
            }
        }
    }
    if !differing.is_empty() {
        let indexes = differing
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Some(format!(
            "STATE HASHES DIFFER at applied index {indexes}: replicas have diverged"
        ))
    } else if compared {
        Some("state hashes agree at equal applied indexes".to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverged_hashes_are_called_out() {
        let a = ClusterStatusResponse {
            node_id: 1,
            applied_index: 10,
            state_hash: "aa".into(),
            ..Default::default()
        };
        let b = ClusterStatusResponse {
            node_id: 2,
            applied_index: 10,
            state_hash: "bb".into(),
            ..Default::default()
        };
        let c = ClusterStatusResponse {
            node_id: 3,
            applied_index: 9,
            state_hash: "cc".into(),
            ..Default::default()
        };
        let nodes: Vec<NodeStatus<'_>> = vec![
            ("a:1".into(), Ok(&a)),
            ("b:2".into(), Ok(&b)),
            ("c:3".into(), Ok(&c)),
        ];
        assert!(
            render_cluster_statuses(&nodes).contains("STATE HASHES DIFFER at applied index 10")
        );
        let nodes: Vec<NodeStatus<'_>> = vec![
            ("a:1".into(), Ok(&a)),
            ("c:3".into(), Err("refused".into())),
        ];
        let text = render_cluster_statuses(&nodes);
        assert!(text.contains("error: refused"), "{text}");
        assert!(!text.contains("agree"), "{text}");
    }
}
