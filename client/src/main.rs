//! `baton`: the command-line client of a Baton cluster (see `baton --help`).

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::args::{Cli, Command, LogFormat};
use crate::cli::failure::{EXIT_FAILED, EXIT_OK, report};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    cli.namespace_flag = cli::args::namespace_on_command_line(&matches);
    // Logs (retries, failovers) go to stderr, quiet unless RUST_LOG asks for more; an agent is
    // a service, whose operators want to see what it runs.
    let default_filter = if matches!(cli.command, Command::Agent(_)) {
        "info"
    } else {
        "warn"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // One thread is plenty for a CLI making a handful of calls, and for an agent too: its steps
    // are other processes or async I/O. (It is also the thread that forks step processes, and
    // PR_SET_PDEATHSIG fires when the forking *thread* exits: the main thread lives as long as
    // the process.)
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(cli::commands::run(cli)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) => {
            let (code, text) = report(&error);
            eprintln!("{text}");
            ExitCode::from(code)
        }
    }
}
