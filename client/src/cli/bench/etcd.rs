//! `baton bench --compare-etcd`: the yardstick. After Baton's run, the same machine runs a
//! three-member etcd (the `etcd` binary on PATH, e.g. Debian's etcd-server 3.4) on free loopback
//! ports with a temporary data folder, and the same number of clients put keys into it the same
//! way the bench submits workflows (closed loop, or the shared `--rate` ticker), through one gRPC
//! channel to member 1 (which forwards to its leader, as a Baton node forwards submits).
//!
//! Only etcd's `KV.Put` is used, so its two messages are declared here (field numbers from
//! etcd's `rpc.proto`); nothing of the rest of etcd's API is needed, and no protoc.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_launch::{ATTEMPTS, PortPicker, Ports, SpawnOptions, Supervised};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::cluster::{self, STOP_GRACE, sample, spawn_options};
use super::options::Stop;
use super::report::{EtcdReport, LatencySummary, new_histogram, per_second, record};
use super::usage::NodeUsage;

const MEMBERS: usize = 3;
/// How long the members may take to elect a leader and answer a put.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of each value: about a single-step workflow's spec, so both sides carry similar loads.
const VALUE_BYTES: usize = 128;
const PUT_PATH: &str = "/etcdserverpb.KV/Put";

/// `etcdserverpb.PutRequest`, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`; its fields are not read (prost skips them).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

struct EtcdCluster {
    members: Vec<Supervised>,
    client_url: String,
    /// The members' client and peer ports, reserved until the end.
    _ports: Ports,
    /// Kept until the end: dropping it removes the members' data and logs.
    _data: tempfile::TempDir,
}

impl EtcdCluster {
    async fn start(binary: &PathBuf) -> anyhow::Result<EtcdCluster> {
        let data = tempfile::Builder::new()
            .prefix("baton-bench-etcd-")
            .tempdir()
            .context("creating a temporary data folder for etcd")?;
        // Ports reserved as for the bench's own cluster (baton-launch): a member that still
        // finds one taken ("bind: address already in use") starts the three again on new ones.
        let dir = data.path().to_path_buf();
        let (members, ports) = baton_launch::launch(
            &mut PortPicker::new(),
            2 * MEMBERS,
            ATTEMPTS,
            async |attempt, ports: &Ports| {
                let client_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
                let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
                let initial_cluster = (0..MEMBERS)
                    .map(|i| format!("e{i}={}", peer_url(i)))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut members = Vec::new();
                for i in 0..MEMBERS {
                    let member_dir = dir.join(format!("e{i}"));
                    if attempt > 1 {
                        let _ = std::fs::remove_dir_all(&member_dir);
                    }
                    let mut command = Command::new(binary);
                    command.args([
                        "--name".to_string(),
                        format!("e{i}"),
                        "--data-dir".to_string(),
                        member_dir.display().to_string(),
                        "--listen-client-urls".to_string(),
                        client_url(i),
                        "--advertise-client-urls".to_string(),
                        client_url(i),
                        "--listen-peer-urls".to_string(),
                        peer_url(i),
                        "--initial-advertise-peer-urls".to_string(),
                        peer_url(i),
                        "--initial-cluster".to_string(),
                        initial_cluster.clone(),
                        "--initial-cluster-state".to_string(),
                        "new".to_string(),
                        "--initial-cluster-token".to_string(),
                        "baton-bench".to_string(),
                    ]);
                    let log = dir.join(format!("etcd{i}.log"));
                    let options = SpawnOptions {
                        append: false,
                        ..spawn_options()
                    };
                    members.push(Supervised::spawn_with(command, &log, options).with_context(
                        || format!("starting {} (is etcd installed?)", binary.display()),
                    )?);
                }
                for (i, member) in members.iter_mut().enumerate() {
                    let ports = [ports[2 * i], ports[2 * i + 1]];
                    baton_launch::wait_listening(
                        member,
                        &format!("etcd member e{i}"),
                        &ports,
                        baton_launch::launch::LISTEN_TIMEOUT,
                    )
                    .await?;
                }
                Ok(members)
            },
        )
        .await?;
        Ok(EtcdCluster {
            members,
            client_url: format!("http://127.0.0.1:{}", ports[0]),
            _ports: ports,
            _data: data,
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Supervised::pid).collect()
    }

    async fn stop(mut self) {
        for member in &mut self.members {
            member.stop(STOP_GRACE).await;
        }
    }
}

async fn put(channel: Channel, request: PutRequest) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static(PUT_PATH),
        codec,
    )
    .await
    .map(|_| ())
}

/// Puts until one succeeds: the members have elected a leader and commit.
async fn wait_ready(cluster: &mut EtcdCluster, channel: &Channel) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for member in &mut cluster.members {
            if let Some(status) = member.try_wait()? {
                bail!("an etcd member exited at start ({status}); see its log");
            }
        }
        let probe = PutRequest {
            key: b"baton-bench/ready".to_vec(),
            value: Vec::new(),
        };
        let last =
            match tokio::time::timeout(Duration::from_secs(2), put(channel.clone(), probe)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(status)) => status.to_string(),
                Err(_) => "no answer within 2 s".to_string(),
            };
        if Instant::now() > deadline {
            bail!("etcd did not accept a put within {READY_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn version(binary: &PathBuf) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Starts etcd, puts from `clients` concurrent clients until `stop`, stops etcd.
pub async fn run(
    binary: PathBuf,
    clients: u32,
    stop_at: Stop,
    rate: Option<f64>,
    baton_accepted_per_second: f64,
) -> anyhow::Result<EtcdReport> {
    eprintln!(
        "bench: starting a {MEMBERS}-member etcd ({}) for comparison",
        binary.display()
    );
    let mut etcd = EtcdCluster::start(&binary).await?;
    let result = measure(&mut etcd, clients, stop_at, rate).await;
    etcd.stop().await;
    let (puts, errors, first_error, seconds, acks, members) = result?;
    let puts_per_second = per_second(puts, seconds);
    Ok(EtcdReport {
        version: version(&binary),
        binary: binary.display().to_string(),
        puts,
        put_errors: errors,
        first_put_error: first_error,
        seconds,
        puts_per_second,
        put_ack: LatencySummary::of(&acks),
        members,
        baton_to_etcd_ratio: if puts_per_second > 0.0 {
            baton_accepted_per_second / puts_per_second
        } else {
            0.0
        },
    })
}

type Measured = (
    u64,
    u64,
    Option<String>,
    f64,
    hdrhistogram::Histogram<u64>,
    Vec<NodeUsage>,
);

async fn measure(
    etcd: &mut EtcdCluster,
    clients: u32,
    stop_at: Stop,
    rate: Option<f64>,
) -> anyhow::Result<Measured> {
    let channel = Channel::from_shared(etcd.client_url.clone())
        .context("etcd client address")?
        .tcp_nodelay(true)
        .connect_lazy();
    wait_ready(etcd, &channel).await?;
    let pids = etcd.pids();
    let before: Vec<_> = pids.iter().map(|&pid| sample(pid)).collect();
    let claimed = Arc::new(AtomicU64::new(0));
    let pacer = rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Arc::new(tokio::sync::Mutex::new(interval))
    });
    let started = Instant::now();
    let deadline = match stop_at {
        Stop::Duration(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let mut workers = Vec::new();
    for client in 0..clients {
        let (channel, claimed, pacer) = (channel.clone(), claimed.clone(), pacer.clone());
        workers.push(tokio::spawn(async move {
            let mut acks = new_histogram();
            let (mut puts, mut errors, mut first_error) = (0u64, 0u64, None);
            let value = vec![b'x'; VALUE_BYTES];
            let mut n = 0u64;
            loop {
                let more = match stop_at {
                    Stop::Count(total) => claimed.fetch_add(1, Ordering::Relaxed) < total,
                    Stop::Duration(_) => deadline.is_some_and(|d| Instant::now() < d),
                };
                if !more {
                    break;
                }
                if let Some(pacer) = &pacer {
                    pacer.lock().await.tick().await;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                n += 1;
                let request = PutRequest {
                    key: format!("bench/{client}/{n}").into_bytes(),
                    value: value.clone(),
                };
                let sent = Instant::now();
                match put(channel.clone(), request).await {
                    Ok(()) => {
                        record(&mut acks, sent.elapsed().as_micros() as u64);
                        puts += 1;
                    }
                    Err(status) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
            (puts, errors, first_error, acks)
        }));
    }
    let (mut puts, mut errors, mut first_error, mut acks) = (0, 0, None, new_histogram());
    for worker in workers {
        let (p, e, first, a) = worker.await.context("an etcd bench client panicked")?;
        puts += p;
        errors += e;
        first_error = first_error.or(first);
        acks.add(a).expect("histograms of equal bounds add");
    }
    let seconds = started.elapsed().as_secs_f64();
    let members = pids
        .iter()
        .zip(before)
        .enumerate()
        .filter_map(|(i, (&pid, before))| cluster::usage(i as u64 + 1, pid, before, seconds))
        .collect();
    Ok((puts, errors, first_error, seconds, acks, members))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn put_request_encodes_as_etcd_expects() {
        // etcd's PutRequest: key = 1 (bytes), value = 2 (bytes).
        let bytes = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x12, 1, b'v']);
        // A real PutResponse carries a header (field 1) and maybe prev_kv: both are skipped.
        let response = [0x0a, 2, 0x08, 7];
        assert_eq!(PutResponse::decode(&response[..]).unwrap(), PutResponse {});
    }
}
