//! What a failed call's status says about where it failed, for every caller of the API and of
//! the Raft transport: the client library and a node forwarding to its leader classify a
//! failure the same way.

/// Metadata of the OUT_OF_RANGE a node answers a watch of every workflow with when it no longer
/// holds every event from the index asked: the first index from which it holds them all.
pub const EVENTS_FROM_METADATA: &str = "baton-events-from";

/// Whether `status` was made on this side from an error of type `E` somewhere in its chain of
/// sources (`tonic::ConnectError`: the connection was never made, so the request never left;
/// `tonic::TimeoutExpired`: a deadline tonic enforced). A status decoded from the server's answer
/// has no source.
pub fn has_source<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}
