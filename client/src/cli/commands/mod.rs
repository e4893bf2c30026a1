//! What each `baton` command does: read and check input, make the calls, print the answer.
//!
//! Results go to stdout (one id, a table, or JSON); errors and hints go to stderr through
//! [`crate::cli::failure`], so `id=$(baton submit f.yaml)` captures only the id.
//!
//! Code map: `printer` prints in the chosen output format; `submit` reads spec files and submits
//! them (one, or many in batches); `wait` follows a submitted workflow to its end (`--wait`);
//! `workflows` is get, list, cancel, watch, logs and history; `archive` reads an archive
//! folder; `context` the named contexts and which cluster
//! and credentials a command uses; `cluster` the cluster's administration; `tokens`
//! the bearer tokens; `agent` runs an agent (`baton agent`) and lists them (`baton agents`).

mod agent;
mod archive;
mod cluster;
mod context;
mod printer;
mod schedules;
mod submit;
mod tokens;
mod triggers;
mod wait;
mod workflows;

use std::io::Write;

use anyhow::Context;
use baton_client::{Client, ClientConfig};

use self::printer::Printer;
use crate::cli::args::{Cli, Command, TokenCommand, VERSION};
use crate::cli::failure::{CallKind, Failure, client_failure};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no cluster and no credentials.
    match cli.command {
        Command::Completion { shell } => {
            // Into memory first: the generator panics on a failed write (a closed pipe). The
            // script as it is, whatever -o says: it is for a shell.
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "baton", &mut script);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&script)
                .and_then(|()| stdout.flush())
                .context("writing to stdout")?;
            return Ok(());
        }
        Command::Version => {
            let out = Printer { format: cli.output };
            return out.print(
                || {
                    serde_json::json!({
                        "version": env!("CARGO_PKG_VERSION"),
                        "commit": env!("BATON_COMMIT"),
                    })
                },
                || format!("baton {VERSION}"),
            );
        }
        _ => {}
    }
    if let Command::Context(command) = cli.command {
        return context::context(&Printer { format: cli.output }, command);
    }
    // Reads a folder: no cluster, no credentials.
    if let Command::Archive(command) = cli.command {
        return archive::archive(&Printer { format: cli.output }, command);
    }
    if let Command::Token(TokenCommand::Generate) = cli.command {
        let token = baton_security::token::generate()
            .map_err(|e| Failure::failed(format!("no randomness for a token: {e}")))?;
        println!("{}", token.text);
        return Ok(());
    }
    let (endpoints, credentials) = context::resolve(&cli)?;
    let credentials = credentials
        .load()
        .map_err(|error| Failure::usage(error.to_string()))?;
    let config = ClientConfig {
        call_timeout: cli.timeout,
        credentials,
        namespace: cli.namespace.clone().unwrap_or_default(),
        ..ClientConfig::default()
    };
    let agent_credentials = config.credentials.clone();
    let endpoints_for_agent = endpoints.clone();
    let bench_setup = (endpoints.clone(), config.clone());
    // Built on demand, so that submit checks its input first and bad input never waits on a node.
    let connect = move || {
        Client::with_config(endpoints, config)
            .map_err(|error| client_failure(error, CallKind::Read, None, None))
    };
    let out = Printer { format: cli.output };
    match cli.command {
        Command::Submit(args) => submit::submit(connect, &out, args).await,
        Command::Get(args) => workflows::get(&connect()?, &out, args).await,
        Command::List(args) => workflows::list(&connect()?, &out, args).await,
        Command::Cancel(args) => workflows::cancel(&connect()?, &out, args).await,
        Command::Pause(args) => workflows::pause(&connect()?, &out, args.id, true).await,
        Command::Resume(args) => workflows::pause(&connect()?, &out, args.id, false).await,
        Command::Retry(args) => workflows::retry(&connect()?, &out, args).await,
        Command::Signal(args) => {
            // The data is checked before anything is sent.
            workflows::check_signal_data(&args)?;
            workflows::signal(&connect()?, &out, args).await
        }
        Command::Cluster(command) => cluster::cluster(&connect()?, &out, command).await,
        Command::Agents => agent::agents(&connect()?, &out).await,
        Command::Audit(args) => {
            let namespace = match args.all_namespaces {
                true => String::new(),
                false => cli.namespace.clone().unwrap_or_default(),
            };
            tokens::audit(&connect()?, &out, args, namespace).await
        }
        Command::Watch(args) => workflows::watch(&connect()?, &out, args).await,
        Command::Logs(args) => workflows::logs(&connect()?, &out, args).await,
        Command::History(args) => workflows::history(&connect()?, &out, args).await,
        Command::Agent(args) => agent::agent(endpoints_for_agent, agent_credentials, args).await,
        Command::Token(command) => {
            let namespace = cli
                .namespace_flag
                .then_some(cli.namespace.as_deref())
                .flatten();
            tokens::token(&connect()?, &out, command, namespace).await
        }
        Command::Namespace(command) => tokens::namespace(&connect()?, &out, command).await,
        Command::Schedule(command) => schedules::schedule(connect, &out, command).await,
        Command::Template(command) => schedules::template(connect, &out, command).await,
        Command::Trigger(command) => triggers::trigger(connect, &out, command).await,
        Command::Bench(args) => {
            let (endpoints, config) = bench_setup;
            crate::cli::bench::run(endpoints, config, out.json(), args).await
        }
        Command::Completion { .. }
        | Command::Version
        | Command::Context(_)
        | Command::Archive(_) => {
            unreachable!("answered above")
        }
    }
}
