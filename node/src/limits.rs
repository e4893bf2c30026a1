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
/// Highest `--max-commands-per-entry`: an entry of this many commands is applied, and its
/// responses sent, in one go on every node.
pub const COMMANDS_PER_ENTRY_MAX: usize = 65_536;
/// Most `--entry-linger-ms` may be: past this, the latency it adds is no longer a few ms.
pub const ENTRY_LINGER_MAX: Duration = Duration::from_millis(100);
/// Largest public request a node decodes (a spec is at most `SPEC_BYTES_MAX` of it).
pub const PUBLIC_REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest public response a node encodes (a page of workflows).
pub const PUBLIC_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Concurrent requests served per connection before callers queue.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;

/// Assignments the scheduler proposes in one log entry at most.
pub const ASSIGN_BATCH_MAX: usize = 256;
/// Ready steps the scheduler looks at per round, so a huge queue of unplaceable steps costs
/// bounded time.
pub const READY_SCANNED_PER_ROUND_MAX: usize = 10_000;
/// Ready steps a round passes over because their rate limit has no token left, at most. Each
/// costs a lookup, not a scan of the agents, so the bound is wider: a namespace's steps queued
/// behind this many rate-limited ones wait until the backlog drains.
pub const RATE_DEFERRED_PER_ROUND_MAX: usize = 50_000;
/// Messages buffered per agent session before the session is considered stuck and closed.
pub const AGENT_OUTBOX_CAPACITY: usize = 4_096;
/// Slots one agent may offer.
pub const AGENT_SLOTS_MAX: u32 = 10_000;

/// Log entries in one append to a follower. An entry is at most one command of up to
/// `SPEC_BYTES_MAX` or a batch of up to `ENTRY_BATCH_BYTES_MAX`, so an append of this many stays
/// under `RAFT_MESSAGE_BYTES_MAX` (asserted below): a follower far behind catches up in many
/// appends rather than being sent one it must refuse, again and again.
pub const RAFT_ENTRIES_PER_APPEND_MAX: usize = 48;
/// The commands' encoded size in one batched entry (the leader's group commit, `raft::batcher`).
pub const ENTRY_BATCH_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 4096 <= RAFT_MESSAGE_BYTES_MAX);
const _: () = {
    let entry_max = if ENTRY_BATCH_BYTES_MAX > baton_proto::limits::SPEC_BYTES_MAX {
        ENTRY_BATCH_BYTES_MAX
    } else {
        baton_proto::limits::SPEC_BYTES_MAX
    };
    // 64 KiB per entry for its other fields, the entry's framing and the message's.
    assert!(RAFT_ENTRIES_PER_APPEND_MAX * (entry_max + 64 * 1024) <= RAFT_MESSAGE_BYTES_MAX);
};
const _: () = assert!(baton_proto::limits::SPEC_BYTES_MAX + 4096 <= PUBLIC_REQUEST_BYTES_MAX);
// A `SubmitBatch` is one entry: its specs and keys fit a batched entry, and its commands'
// framing (under 64 bytes each) the 64 KiB the append bound above allows an entry beyond that.
const _: () = assert!(baton_proto::limits::SUBMIT_BATCH_BYTES_MAX <= ENTRY_BATCH_BYTES_MAX);
const _: () = assert!(baton_proto::limits::SUBMIT_BATCH_ITEMS_MAX * 64 <= 64 * 1024);
// A batch takes a proposal slot per item: the largest must not need most of them.
const _: () = assert!(baton_proto::limits::SUBMIT_BATCH_ITEMS_MAX * 4 <= PROPOSALS_IN_FLIGHT_MAX);

// ---- disk ----

/// Default `--disk-reserve-mb`: free space (MiB) kept on the data disk, below which the node stops
/// admitting new workflows as leader and hands leadership to a voter with room
/// (`storage::disk`). Room for what the node still writes while leadership moves and admitted
/// work finishes: a snapshot of about 100 MiB (some 250,000 retained workflows) plus the log.
pub const DISK_RESERVE_MB_DEFAULT: u64 = 256;

// ---- connections ----

/// Every server pings each connection over HTTP/2 this often, and drops one whose ping goes
/// unanswered for [`KEEPALIVE_TIMEOUT`]: a half-open connection (its peer paused, or cut off by a
/// partition) frees its permits, streams and sessions within their sum.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on plaintext listeners and on every client, under the HTTP/2 pings.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Default `--max-connection-age-secs`: the server closes every connection (gracefully: GOAWAY)
/// this long after it opened, so clients reconnect, and a rotated CA or a revoked certificate
/// reaches every connection within this plus [`CONNECTION_AGE_GRACE`].
pub const CONNECTION_AGE_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// How long streams still open on an aged connection (agent sessions, watches: they do not end
/// by themselves) may go on before the connection is cut; clients then reconnect and resume.
/// Never more than the maximum age itself.
pub const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

const _: () = assert!(
    KEEPALIVE_INTERVAL.as_millis() + KEEPALIVE_TIMEOUT.as_millis()
        < CONNECTION_AGE_DEFAULT.as_millis(),
    "a dead peer is noticed long before its connection would age out anyway"
);

/// Time allowed to send a snapshot of `bytes`: a floor, plus the time at a pessimistic 8 MiB/s.
pub fn snapshot_send_timeout(bytes: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis((bytes / (8 * 1024)) as u64)
}

// ---- counted limits: refused with RESOURCE_EXHAUSTED when full, never queued ----

/// Client proposals (submit, cancel, agent register and report, admin changes) a node has in
/// flight at once, its own and those forwarded to it as leader. Past it a proposal is refused
/// before it reaches Raft: openraft's write queue is unbounded, so without this bound a burst
/// would grow the leader's memory and every caller's latency instead of failing fast. The
/// scheduler's own proposals (assign, expire, tick) are not counted: they must go through.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 1024;
/// Agent sessions one node serves at once (each holds a task, an outbox and leases).
pub const AGENT_SESSIONS_MAX: usize = 4096;
/// Time an agent session may take to send its register message before it is closed (and its
/// session slot freed).
pub const REGISTER_WAIT_MAX: Duration = Duration::from_secs(10);
/// Watch streams one node serves at once (each may buffer up to 1024 events).
pub const WATCHES_MAX: usize = 1024;
/// Attempts named in one heartbeat or register (an agent runs at most its slots).
pub const RUNNING_ATTEMPTS_PER_MESSAGE_MAX: usize = 10_000;
/// Largest message an agent may send (register, heartbeat, report). A report's output and
/// error are kept to `OUTPUT_BYTES_MAX` each (the tail), so this leaves room for both.
pub const AGENT_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Total size of the request headers (gRPC metadata) of one call: tokens and tracing headers
/// fit in far less.
pub const REQUEST_HEADERS_BYTES_MAX: u32 = 16 * 1024;
/// HTTP/2 streams (concurrent calls) one connection may open: the requests served per
/// connection plus as many waiting their turn; past it the client's HTTP/2 layer holds new
/// calls back, so they cost the server nothing.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 2 * REQUESTS_PER_CONNECTION_MAX as u32;
/// A cancel's reason, kept in the workflow.
pub const CANCEL_REASON_BYTES_MAX: usize = 1024;
/// A `List` filter: at most this many states and labels (there are four states; labels are
/// bounded like a workflow's).
pub const LIST_FILTER_STATES_MAX: usize = 4;

const _: () = assert!(2 * baton_proto::limits::OUTPUT_BYTES_MAX + 4096 <= AGENT_MESSAGE_BYTES_MAX);

/// The counted limits of one node, shared by every service. A permit is held for as long as
/// the proposal, session or watch lasts; when none is left the caller is refused at once.
pub struct Admission {
    proposals: std::sync::Arc<tokio::sync::Semaphore>,
    agent_sessions: std::sync::Arc<tokio::sync::Semaphore>,
    watches: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Held while an admitted proposal, session or watch lasts.
pub type Permit = tokio::sync::OwnedSemaphorePermit;

impl Default for Admission {
    fn default() -> Self {
        use std::sync::Arc;
        use tokio::sync::Semaphore;
        Self {
            proposals: Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX)),
            agent_sessions: Arc::new(Semaphore::new(AGENT_SESSIONS_MAX)),
            watches: Arc::new(Semaphore::new(WATCHES_MAX)),
        }
    }
}

impl Admission {
    /// A slot for one client proposal, or None when `PROPOSALS_IN_FLIGHT_MAX` are in flight.
    pub fn proposal(&self) -> Option<Permit> {
        self.proposals(1)
    }

    /// Slots for `n` client proposals (a batch counts as its commands), or None when fewer
    /// than `n` are free.
    pub fn proposals(&self, n: usize) -> Option<Permit> {
        let n = u32::try_from(n).ok()?;
        self.proposals.clone().try_acquire_many_owned(n).ok()
    }

    /// A slot for one agent session, or None when `AGENT_SESSIONS_MAX` are open.
    pub fn agent_session(&self) -> Option<Permit> {
        self.agent_sessions.clone().try_acquire_owned().ok()
    }

    /// A slot for one watch, or None when `WATCHES_MAX` are open.
    pub fn watch(&self) -> Option<Permit> {
        self.watches.clone().try_acquire_owned().ok()
    }

    /// Takes up to `n` proposal slots away (tests simulate a saturated node with it); returns
    /// how many, to give back with [`Admission::restore_proposals`].
    pub fn withhold_proposals(&self, n: usize) -> usize {
        self.proposals.forget_permits(n)
    }

    pub fn restore_proposals(&self, n: usize) {
        self.proposals.add_permits(n);
    }

    /// Same as [`Admission::withhold_proposals`] for agent sessions and watches.
    pub fn withhold_streams(&self, n: usize) -> (usize, usize) {
        (
            self.agent_sessions.forget_permits(n),
            self.watches.forget_permits(n),
        )
    }

    pub fn restore_streams(&self, sessions: usize, watches: usize) {
        self.agent_sessions.add_permits(sessions);
        self.watches.add_permits(watches);
    }
}

/// Open connections to the HTTP listener (`--http-listen`) at once; more wait in the kernel's
/// accept queue until one closes.
pub const HTTP_CONNECTIONS_MAX: usize = 1024;
/// Requests the HTTP listener works on at once, across its connections (more wait their turn):
/// with the body bound, what unauthenticated callers (webhook senders, the login form) can make
/// a node hold is bounded too.
pub const HTTP_REQUESTS_IN_FLIGHT_MAX: usize = 128;
/// HTTP/2 streams per connection on the HTTP listener.
pub const HTTP_STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// A client that has not sent a request's headers within this long is dropped (HTTP/1); an
/// HTTP/2 peer that does not answer pings within [`KEEPALIVE_TIMEOUT`] is dropped.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP request body (a spec, a batch): as for a gRPC request.
pub const HTTP_BODY_BYTES_MAX: usize = PUBLIC_REQUEST_BYTES_MAX;
/// Server-Sent Events streams (watches) share the node's watch limit (`WATCHES_MAX`); a comment
/// line is sent this often so proxies and browsers keep an idle stream open.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
