//! Installing and healing the schedule's faults. A fault is installed at its time and healed at
//! the end of its hold, as two separate events, so that a second fault can be installed while
//! the first holds (schedules overlap two faults now and then). Each heal undoes only what its
//! own fault did, and only if it is still to undo: a node another fault already restarted is
//! left alone, a member a membership change removed is not restarted.

use std::time::{Duration, Instant};

use baton_client::Client;
use baton_powerloss::Tear;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::proxy::Mode;
use crate::schedule::{Fault, Planned};

pub const AGENTS: [&str; 3] = ["agent-1", "agent-2", "agent-3"];

/// How long a leader fault waits for another leader before it records none.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(15);
/// How long the end of the safety phase waits for failover measurements still going.
const FAILOVER_SETTLE: Duration = Duration::from_secs(2);

/// A fault as it happened.
#[derive(Debug)]
pub struct FaultRecord {
    pub at_ms: u64,
    pub fault: Fault,
    pub target: String,
    pub installed: bool,
    /// Whether it was installed while another fault held.
    pub overlapped: bool,
    /// For faults on the leader: ms until another leader was seen.
    pub failover_ms: Option<u64>,
    /// The safety phase ended before the failover measurement did (a leader fault at its very
    /// end): neither a failover nor a missing one.
    pub failover_unmeasured: bool,
    /// The measurement of `failover_ms` while it runs (it goes on beside later faults).
    failover: Option<JoinHandle<Option<u64>>>,
}

impl FaultRecord {
    /// Waits a moment for the failover measurement, if one runs; one still going then is
    /// stopped and counted as unmeasured, so that the safety phase ends on time.
    pub async fn settle(&mut self) {
        if let Some(mut handle) = self.failover.take() {
            match tokio::time::timeout(FAILOVER_SETTLE, &mut handle).await {
                Ok(measured) => self.failover_ms = measured.ok().flatten(),
                Err(_) => {
                    handle.abort();
                    self.failover_unmeasured = true;
                }
            }
        }
    }
}

/// What healing a fault undoes.
#[derive(Debug)]
pub enum Heal {
    Nothing,
    /// Start the node again if it is still a member and not running.
    RestartNode(u64),
    /// Continue the node if it is still paused.
    ResumeNode(u64),
    /// Every link of the node back to passing.
    NodeLinks(u64),
    Link((u64, u64)),
    /// Every node link still delayed back to passing (a partition installed meanwhile stays).
    Undelay,
    RestartAgent(String),
    /// Continue the agent; its pause, from `since_ms`, is a zombie window.
    ResumeAgent {
        agent: String,
        since_ms: u64,
    },
    AgentLinks(String),
    /// Start every node of the list that is not running, then wait for a leader.
    RestartAll(Vec<u64>),
}

/// Installs `planned` (resolving "the leader", "a follower", "an agent" now) and returns its
/// record and what healing it will undo. `workload_client` gets a new client after a
/// membership change.
pub async fn install(
    cluster: &mut Cluster,
    planned: &Planned,
    overlapped: bool,
    now_ms: u64,
    workload_client: &watch::Sender<Client>,
) -> (FaultRecord, Heal) {
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| Some(*id) != leader)
        .collect();
    let follower = followers[(planned.pick % followers.len() as u64) as usize];
    let agent = AGENTS[(planned.pick % AGENTS.len() as u64) as usize].to_string();
    let hold = Duration::from_millis(planned.hold_ms);
    let mut record = FaultRecord {
        at_ms: now_ms,
        fault: planned.fault,
        target: String::new(),
        installed: false,
        overlapped,
        failover_ms: None,
        failover_unmeasured: false,
        failover: None,
    };
    let heal = match planned.fault {
        Fault::KillLeader | Fault::PauseLeader | Fault::IsolateLeader => {
            let Some(leader) = leader else {
                record.target = "no leader known".into();
                return (record, Heal::Nothing);
            };
            record.target = format!("node {leader}");
            let node = cluster.nodes.get_mut(&leader).expect("known node");
            let heal = match planned.fault {
                Fault::KillLeader => {
                    node.kill();
                    Heal::RestartNode(leader)
                }
                Fault::PauseLeader => {
                    node.pause();
                    Heal::ResumeNode(leader)
                }
                _ => {
                    cluster.set_node_links(leader, Mode::Blackhole);
                    Heal::NodeLinks(leader)
                }
            };
            record.installed = true;
            record.failover = Some(tokio::spawn(failover_ms(
                cluster.status_clients(leader),
                Instant::now(),
            )));
            heal
        }
        Fault::KillFollower => {
            record.target = format!("node {follower}");
            cluster.nodes.get_mut(&follower).expect("known").kill();
            record.installed = true;
            Heal::RestartNode(follower)
        }
        Fault::IsolateFollower => {
            record.target = format!("node {follower}");
            cluster.set_node_links(follower, Mode::Blackhole);
            record.installed = true;
            Heal::NodeLinks(follower)
        }
        Fault::OneWayDrop => {
            let links = cluster.member_links();
            let link = links[(planned.pick % links.len() as u64) as usize];
            record.target = format!("link {} -> {}", link.0, link.1);
            cluster.links[&link].set(Mode::Drop);
            record.installed = true;
            Heal::Link(link)
        }
        Fault::DelayAll => {
            let ms = 20 + planned.pick % 180;
            record.target = format!("all node links +{ms} ms per chunk");
            // A link another fault cut stays cut.
            for proxy in cluster.links.values() {
                if proxy.mode() == Mode::Pass {
                    proxy.set(Mode::Delay(ms));
                }
            }
            record.installed = true;
            Heal::Undelay
        }
        Fault::KillAgent => {
            record.target = agent.clone();
            cluster.agents.get_mut(&agent).expect("known agent").kill();
            record.installed = true;
            Heal::RestartAgent(agent)
        }
        Fault::PauseAgent => {
            record.target = agent.clone();
            cluster.agents.get_mut(&agent).expect("known agent").pause();
            record.installed = true;
            Heal::ResumeAgent {
                agent,
                since_ms: now_ms,
            }
        }
        Fault::IsolateAgent => {
            record.target = agent.clone();
            cluster.set_agent_links(&agent, Mode::Blackhole, false);
            record.installed = true;
            Heal::AgentLinks(agent)
        }
        Fault::DelayAgent if cluster.agent_links_faulted(&agent) => {
            record.target = format!("{agent}: its links are cut already");
            Heal::Nothing
        }
        Fault::DelayAgent => {
            // Past the 2 s lease and the leader's 1 s margin: assignments arrive at once, but
            // heartbeats and reports only after the lease lapsed.
            let ms = 3_500 + planned.pick % 1_000;
            record.target = format!("{agent} uplink +{ms} ms per chunk");
            cluster.set_agent_links(&agent, Mode::Delay(ms), true);
            record.installed = true;
            Heal::AgentLinks(agent)
        }
        Fault::ReplaceNode => {
            // Any member, the leader included: removing the leader makes it step down. The
            // change runs to its end here; its hold is only calm after it.
            let members: Vec<u64> = cluster.nodes.keys().copied().collect();
            let victim = members[(planned.pick % members.len() as u64) as usize];
            let role = if Some(victim) == leader {
                "leader"
            } else {
                "follower"
            };
            match cluster.replace_node(victim).await {
                Ok(Some(new)) => {
                    record.target = format!("{role} node {victim} replaced by node {new}");
                    record.installed = true;
                }
                Ok(None) => record.target = "no spare node left".into(),
                Err(error) => record.target = format!("{role} node {victim}: {error:#}"),
            }
            match cluster.workload_client() {
                Ok(client) => {
                    workload_client.send_replace(client);
                }
                Err(error) => record.target += &format!(" (no new workload client: {error:#})"),
            }
            Heal::Nothing
        }
        Fault::KillAll => {
            record.target = "every node".into();
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            for node in cluster.nodes.values_mut() {
                node.kill();
            }
            record.installed = true;
            Heal::RestartAll(ids)
        }
        Fault::PowerLossNode => {
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            let id = ids[(planned.pick % ids.len() as u64) as usize];
            let role = if Some(id) == leader {
                "leader"
            } else {
                "follower"
            };
            record.target = format!("{role} node {id}");
            match cluster.power_cut(id, tear_of(planned, id)) {
                Ok(report) => {
                    record.target += &format!(" ({report})");
                    record.installed = true;
                }
                Err(error) => record.target += &format!(" (cut failed: {error:#})"),
            }
            Heal::RestartNode(id)
        }
        Fault::PowerLossAll => {
            record.target = "every node".into();
            let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
            // Every process dies before any folder is rewound: one power cut, not a sequence.
            for node in cluster.nodes.values_mut() {
                node.kill();
            }
            record.installed = true;
            for &id in &ids {
                match cluster.power_cut(id, tear_of(planned, id)) {
                    Ok(report) => record.target += &format!("; node {id}: {report}"),
                    Err(error) => {
                        record.installed = false;
                        record.target += &format!("; node {id}: cut failed: {error:#}");
                    }
                }
            }
            Heal::RestartAll(ids)
        }
        Fault::SnapshotCatchUp => {
            let Some(leader) = leader else {
                record.target = "no leader known".into();
                return (record, Heal::Nothing);
            };
            record.target = format!("node {follower} behind a snapshot of node {leader}");
            cluster.set_node_links(follower, Mode::Blackhole);
            tokio::time::sleep(hold / 2).await;
            // The leader snapshots and purges its log behind it (20 entries kept), so the cut
            // follower can only catch up by receiving the snapshot.
            let snapshot = match cluster.direct_client(Some(leader)) {
                Ok(client) => client.trigger_snapshot().await.is_ok(),
                Err(_) => false,
            };
            record.installed = snapshot;
            Heal::NodeLinks(follower)
        }
    };
    (record, heal)
}

/// Undoes what installing a fault did, as far as it is still undone and no fault still
/// holding (`others`) needs it: a link shared with a node still cut off stays cut, an agent's
/// links another fault holds stay as they are. An agent's pause becomes a zombie window (agent,
/// from, to) in `zombie_windows`.
pub async fn heal(
    cluster: &mut Cluster,
    heal: Heal,
    others: &[&Heal],
    record: &mut FaultRecord,
    now_ms: u64,
    zombie_windows: &mut Vec<(String, u64, u64)>,
) {
    let cut_off = |node: u64| {
        others
            .iter()
            .any(|h| matches!(h, Heal::NodeLinks(n) if *n == node))
    };
    let link_held = |link: (u64, u64)| {
        cut_off(link.0)
            || cut_off(link.1)
            || others
                .iter()
                .any(|h| matches!(h, Heal::Link(l) if *l == link))
    };
    match heal {
        Heal::Nothing => {}
        Heal::RestartNode(id) => {
            if cluster.nodes.get(&id).is_some_and(|p| !p.alive())
                && let Err(error) = cluster.start_node(id)
            {
                record.target += &format!(" (restart failed: {error})");
            }
        }
        Heal::ResumeNode(id) => {
            if let Some(node) = cluster.nodes.get_mut(&id)
                && node.is_paused()
            {
                node.resume();
            }
        }
        Heal::NodeLinks(id) => {
            if !cut_off(id) {
                cluster.client_links[&id].set(Mode::Pass);
            }
            for (&link, proxy) in &cluster.links {
                if (link.0 == id || link.1 == id) && !link_held(link) {
                    proxy.set(Mode::Pass);
                }
            }
        }
        Heal::Link(link) => {
            if !link_held(link) {
                cluster.links[&link].set(Mode::Pass);
            }
        }
        Heal::Undelay => {
            for proxy in cluster.links.values() {
                if matches!(proxy.mode(), Mode::Delay(_)) {
                    proxy.set(Mode::Pass);
                }
            }
        }
        Heal::RestartAgent(agent) => {
            if cluster.agents.get(&agent).is_some_and(|p| !p.alive())
                && let Err(error) = cluster.start_agent(&agent).await
            {
                record.target += &format!(" (restart failed: {error})");
            }
        }
        Heal::ResumeAgent { agent, since_ms } => {
            let proc = cluster.agents.get_mut(&agent).expect("known agent");
            if proc.is_paused() {
                proc.resume();
            }
            zombie_windows.push((agent, since_ms, now_ms));
        }
        Heal::AgentLinks(agent) => {
            let held = others
                .iter()
                .any(|h| matches!(h, Heal::AgentLinks(a) if *a == agent));
            if !held {
                cluster.set_agent_links(&agent, Mode::Pass, false);
            }
        }
        Heal::RestartAll(ids) => {
            for &id in &ids {
                if cluster.nodes.get(&id).is_some_and(|p| !p.alive())
                    && let Err(error) = cluster.start_node(id)
                {
                    record.target += &format!(" (node {id} restart failed: {error})");
                }
            }
            let restarted = Instant::now();
            match cluster.wait_for_leader(Duration::from_secs(15)).await {
                Ok(leader) => {
                    record.target += &format!(
                        " (node {leader} leads {} ms after the restart)",
                        restarted.elapsed().as_millis()
                    );
                }
                Err(_) => record.target += " (no leader within 15 s of the restart)",
            }
        }
    }
}

/// Waits until one of `clients` (every running node but the old leader, asked directly) says
/// it leads; the ms since `since`, or `None` after [`FAILOVER_PATIENCE`].
async fn failover_ms(clients: Vec<(u64, Client)>, since: Instant) -> Option<u64> {
    while since.elapsed() < FAILOVER_PATIENCE {
        for (id, client) in &clients {
            let status = tokio::time::timeout(Duration::from_millis(300), client.cluster_status());
            if let Ok(Ok(status)) = status.await
                && status.leader_id == *id
            {
                return Some(since.elapsed().as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// How a planned power cut treats node `node`'s lost writes: torn ones seeded by the pick and
/// the node, so a seed replays the same tears.
pub fn tear_of(planned: &Planned, node: u64) -> Tear {
    if planned.torn() {
        Tear::Seeded(planned.pick ^ node.rotate_left(32))
    } else {
        Tear::None
    }
}
