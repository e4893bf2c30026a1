//! Each command's own outcome: what applying it can answer, as a type of its own, so a caller
//! matches the answers its command can have and nothing else. [`Response`] stays the one type
//! `apply` returns and that travels between nodes (a follower forwarding a proposal gets it
//! back from the leader; openraft carries it); [`Outcome::from_response`] is the one place that
//! turns it into the command's outcome, and a response of another kind (a bug) becomes an error
//! there (`RaftNode::propose_for`), not in every caller.

use super::command::{
    CancelCommand, Command, CompleteCommand, CreateTokenCommand, PauseCommand, PurgeCommand,
    RegisterAgentCommand, Response, RetryCommand, SignalCommand, SubmitCommand,
};
use super::ids::{AgentId, AttemptId, WorkflowId};
use super::workflow::WorkflowState;

/// A command's outcome type.
pub trait Outcome: Sized {
    /// The command, for the error when a response of another kind comes back.
    const COMMAND: &'static str;
    /// The outcome the response says, or the response back when it is of another kind.
    fn from_response(response: Response) -> Result<Self, Response>;
}

/// A command with an outcome type of its own.
pub trait Proposal: Into<Command> {
    type Outcome: Outcome;
}

/// What a submit answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// The workflow; `created` false when the idempotency key matched an earlier one.
    Workflow {
        workflow_id: WorkflowId,
        created: bool,
    },
    /// Nothing written: a spec apply cannot take (it passed the API's checks on a node of
    /// another version, or does not decode), or a namespace that does not exist.
    Rejected(String),
    /// Nothing written: a quota of its namespace refused it.
    OverQuota(super::namespaces::OverQuota),
}

/// What a cancel answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The workflow's state after the cancel (already finished: unchanged).
    Workflow(WorkflowState),
    NotFound,
}

/// What an agent's registration answers: its id, kept for its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered(pub AgentId);

/// What a report answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reported {
    Accepted,
    /// Not the step's current attempt held by that agent: nothing changed.
    Refused(String),
}

/// What creating a token answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCreated {
    Created,
    /// The id is taken, or a bootstrap token came after the first token.
    Rejected(String),
}

/// What revoking a token answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRevoked {
    /// `was_live` false: it was revoked already.
    Revoked { was_live: bool },
    /// No token has that id.
    Unknown(String),
}

/// What an `Assign` answers: per assignment, its attempt, or `None` where it no longer applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned(pub Vec<Option<AttemptId>>);

impl Outcome for Submitted {
    const COMMAND: &'static str = "submit";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Submitted {
                workflow_id,
                created,
            } => Ok(Self::Workflow {
                workflow_id,
                created,
            }),
            Response::Rejected { reason } => Ok(Self::Rejected(reason)),
            Response::OverQuota(over) => Ok(Self::OverQuota(over)),
            other => Err(other),
        }
    }
}

impl Outcome for Cancelled {
    const COMMAND: &'static str = "cancel";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Cancelled { state } => Ok(Self::Workflow(state)),
            Response::NotFound { .. } => Ok(Self::NotFound),
            other => Err(other),
        }
    }
}

impl Outcome for Registered {
    const COMMAND: &'static str = "register_agent";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::AgentRegistered { agent_id } => Ok(Self(agent_id)),
            other => Err(other),
        }
    }
}

impl Outcome for Reported {
    const COMMAND: &'static str = "complete";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Completed => Ok(Self::Accepted),
            Response::ReportRefused { reason } => Ok(Self::Refused(reason)),
            other => Err(other),
        }
    }
}

impl Outcome for TokenCreated {
    const COMMAND: &'static str = "create_token";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::TokenCreated => Ok(Self::Created),
            Response::Rejected { reason } => Ok(Self::Rejected(reason)),
            other => Err(other),
        }
    }
}

impl Outcome for TokenRevoked {
    const COMMAND: &'static str = "revoke_token";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::TokenRevoked { was_live } => Ok(Self::Revoked { was_live }),
            Response::Rejected { reason } => Ok(Self::Unknown(reason)),
            other => Err(other),
        }
    }
}

impl Outcome for Assigned {
    const COMMAND: &'static str = "assign";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Assigned { attempts } => Ok(Self(attempts)),
            other => Err(other),
        }
    }
}

/// What a purge answers: how many workflows left the state, and how many purge records did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purged {
    pub workflows: u32,
    pub records: u32,
}

impl Outcome for Purged {
    const COMMAND: &'static str = "purge";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Purged { workflows, records } => Ok(Self { workflows, records }),
            other => Err(other),
        }
    }
}

/// What a pause or resume answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paused {
    /// false: the workflow already was as asked.
    Changed(bool),
    NotFound,
    /// Nothing changed: the workflow has finished.
    Refused(String),
}

impl Outcome for Paused {
    const COMMAND: &'static str = "pause";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Paused { changed } => Ok(Self::Changed(changed)),
            Response::NotFound { .. } => Ok(Self::NotFound),
            Response::Rejected { reason } => Ok(Self::Refused(reason)),
            other => Err(other),
        }
    }
}

/// What a retry answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retried {
    /// The steps that run again, and the workflow's state after the retry.
    Steps(Vec<String>, WorkflowState),
    NotFound,
    /// Nothing changed: the workflow is running, has no such step, or nothing needs a rerun.
    Refused(String),
    /// Nothing changed: its namespace is at its running-workflows quota.
    OverQuota(super::namespaces::OverQuota),
}

impl Outcome for Retried {
    const COMMAND: &'static str = "retry";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Retried { steps, state } => Ok(Self::Steps(steps, state)),
            Response::NotFound { .. } => Ok(Self::NotFound),
            Response::Rejected { reason } => Ok(Self::Refused(reason)),
            Response::OverQuota(over) => Ok(Self::OverQuota(over)),
            other => Err(other),
        }
    }
}

/// What a signal answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signalled {
    Done,
    NotFound,
    /// Nothing changed: no such step, or it is not waiting for a signal.
    Refused(String),
}

impl Outcome for Signalled {
    const COMMAND: &'static str = "signal";
    fn from_response(response: Response) -> Result<Self, Response> {
        match response {
            Response::Signalled => Ok(Self::Done),
            Response::NotFound { .. } => Ok(Self::NotFound),
            Response::Rejected { reason } => Ok(Self::Refused(reason)),
            other => Err(other),
        }
    }
}

macro_rules! proposal {
    ($command:ident => $variant:ident, $outcome:ty) => {
        impl From<$command> for Command {
            fn from(command: $command) -> Command {
                Command::$variant(command)
            }
        }
        impl Proposal for $command {
            type Outcome = $outcome;
        }
    };
}

proposal!(SubmitCommand => Submit, Submitted);
proposal!(CancelCommand => Cancel, Cancelled);
proposal!(RegisterAgentCommand => RegisterAgent, Registered);
proposal!(CompleteCommand => Complete, Reported);
proposal!(CreateTokenCommand => CreateToken, TokenCreated);
proposal!(PurgeCommand => Purge, Purged);
proposal!(PauseCommand => Pause, Paused);
proposal!(RetryCommand => Retry, Retried);
proposal!(SignalCommand => Signal, Signalled);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome takes the responses its command can have, and hands any other back.
    #[test]
    fn outcomes_take_their_commands_responses_only() {
        assert_eq!(
            Cancelled::from_response(Response::NotFound {
                workflow_id: WorkflowId(3)
            }),
            Ok(Cancelled::NotFound)
        );
        assert_eq!(
            Submitted::from_response(Response::Rejected { reason: "r".into() }),
            Ok(Submitted::Rejected("r".into()))
        );
        assert_eq!(
            Reported::from_response(Response::Done),
            Err(Response::Done),
            "a response of another kind comes back"
        );
        assert_eq!(
            Assigned::from_response(Response::Completed),
            Err(Response::Completed)
        );
    }
}
