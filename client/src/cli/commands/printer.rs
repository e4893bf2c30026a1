//! Where a command's answer goes: stdout, as pretty JSON, JSON lines or text, chosen by `-o`.

use std::io::Write;

use anyhow::Context;
use baton_client::output;
use baton_client::proto::WorkflowEvent;
use serde_json::Value;

use crate::cli::args::OutputFormat;

/// Prints results in the chosen format.
pub(super) struct Printer {
    pub(super) format: OutputFormat,
}

impl Printer {
    pub(super) fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints `json` in JSON mode, else `text`.
    pub(super) fn print(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json() {
            let rendered =
                serde_json::to_string_pretty(&json()).context("encoding the answer as json")?;
            writeln!(stdout, "{rendered}").context("writing to stdout")?;
        } else {
            let rendered = text();
            stdout
                .write_all(rendered.as_bytes())
                .context("writing to stdout")?;
            if !rendered.is_empty() && !rendered.ends_with('\n') {
                stdout.write_all(b"\n").context("writing to stdout")?;
            }
        }
        stdout.flush().context("writing to stdout")
    }

    /// One result as one line: compact JSON (JSON lines) or `text`.
    pub(super) fn print_json_line(
        &self,
        json: impl FnOnce() -> Value,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let line = if self.json() {
            serde_json::to_string(&json()).context("encoding the answer as json")?
        } else {
            text()
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")
    }

    /// One event as one line: compact JSON (JSON lines) or the text form, in `columns`.
    pub(super) fn print_line(
        &self,
        event: &WorkflowEvent,
        columns: &mut output::EventColumns,
    ) -> anyhow::Result<()> {
        self.print_json_line(|| output::event_json(event), || columns.render(event))
    }
}
