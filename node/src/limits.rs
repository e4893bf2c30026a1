//! Every bound of the node in one place (spec bounds live in `baton_proto::limits`, shared with
//! the CLI). Units last in names.

use std::time::Duration;

/// Largest Raft message (append batch or snapshot chunk) either way between nodes.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Snapshots stream in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// A received snapshot larger than this is refused rather than exhausting memory.
pub const SNAPSHOT_BYTES_MAX: usize = 8 * 1024 * 1024 * 1024;
/// Shortest deadline of a Raft RPC, whatever openraft asks: under load an append that waits on a
/// follower's fsync takes longer than a heartbeat interval, and that is not unreachability.
pub const RAFT_RPC_TIMEOUT_MIN: Duration = Duration::from_millis(1_000);
/// Largest public request a node decodes (a spec is at most `SPEC_BYTES_MAX` of it).
pub const PUBLIC_REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest public response a node encodes (a page of workflows).
pub const PUBLIC_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Concurrent requests served per connection before callers queue.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 4096 <= RAFT_MESSAGE_BYTES_MAX);
const _: () = assert!(baton_proto::limits::SPEC_BYTES_MAX + 4096 <= PUBLIC_REQUEST_BYTES_MAX);

/// Time allowed to send a snapshot of `bytes`: a floor, plus the time at a pessimistic 8 MiB/s.
pub fn snapshot_send_timeout(bytes: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis((bytes / (8 * 1024)) as u64)
}
