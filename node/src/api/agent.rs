//! AgentService: the agents' bidirectional stream. Served by the scheduler (a later milestone);
//! until then every call is refused with UNIMPLEMENTED, naming what is missing.

use baton_proto::v1::agent_service_server::AgentService;
use baton_proto::v1::{AgentMessage, ServerMessage};
use tonic::{Request, Response, Status, Streaming};

pub struct AgentServiceImpl;

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    type SessionStream = tokio_stream::Empty<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        _request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented(
            "this batond does not schedule steps yet: agents cannot connect",
        ))
    }
}
