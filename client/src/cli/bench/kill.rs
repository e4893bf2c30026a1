//! `--kill-leader`: SIGKILL and restart the leader on a timer, and pair each kill with the
//! next step assignment to measure failover.

use std::time::Duration;

use baton_client::Client;

use super::cluster::LocalCluster;

/// Until the submitting ends: every `every`, SIGKILL the leader and restart it. Returns the
/// wall-clock times (ms since the epoch) of the kills.
pub async fn kill_leaders(
    cluster: &mut LocalCluster,
    client: &Client,
    every: Duration,
    submitting: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<u64>> {
    let mut kills = Vec::new();
    loop {
        tokio::select! {
            _ = submitting.cancelled() => return Ok(kills),
            _ = tokio::time::sleep(every) => {}
        }
        let leader = match client.cluster_status().await {
            Ok(status) if status.leader_id != 0 => status.leader_id,
            _ => continue, // no leader yet: try again next round
        };
        kills.push(now_ms());
        cluster.kill_and_restart(leader).await?;
        eprintln!("bench: killed and restarted node {leader} (the leader)");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// For each kill, the time to the first step assignment proposed after it (leader time and
/// kill time are one machine's clock); `None` when no assignment followed.
pub fn failovers_ms(kills_ms: &[u64], assigned_ms: &[u64]) -> Vec<Option<u64>> {
    let mut assigned = assigned_ms.to_vec();
    assigned.sort_unstable();
    kills_ms
        .iter()
        .map(|&kill| {
            let next = assigned.partition_point(|&a| a <= kill);
            assigned.get(next).map(|&a| a - kill)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::options::test_plan as plan;

    #[test]
    fn kill_leader_plan_and_failover_times() {
        let p = plan(&["--start-cluster", "--kill-leader", "--kill-every", "2s"]).unwrap();
        assert_eq!(p.kill_every, Some(Duration::from_secs(2)));
        // Kills at 100, 200, 300; assignments at 90, 100 (before or at the first kill), 350,
        // 360: the first two kills wait for 350, the third too; a kill at 400 sees none.
        assert_eq!(
            failovers_ms(&[100, 200, 300, 400], &[360, 90, 350, 100]),
            [Some(250), Some(150), Some(50), None]
        );
        assert!(failovers_ms(&[], &[1, 2]).is_empty());
    }
}
