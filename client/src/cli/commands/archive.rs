//! `baton archive get | list`: purged workflows in an archive folder (`batond --archive-dir`),
//! read from the files themselves. The format is the node's (`storage/archive.rs` there): one
//! `purge-<log index>.jsonl` per purge entry, one JSON object per workflow and line.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use baton_client::output::{Table, format_time_ms};
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::ArchiveCommand;
use crate::cli::failure::Failure;

pub(super) fn archive(out: &Printer, command: ArchiveCommand) -> anyhow::Result<()> {
    match command {
        ArchiveCommand::Get { id, dir } => {
            let found = lines(&dir)?.find_map(|line| match line {
                Ok((_, value)) if value["workflow"]["id"] == id => Some(Ok(value)),
                Ok(_) => None,
                Err(error) => Some(Err(error)),
            });
            match found {
                Some(line) => {
                    let line = line?;
                    out.print(
                        || line.clone(),
                        || serde_json::to_string_pretty(&line).unwrap_or_default(),
                    )
                }
                None => Err(Failure::failed(format!(
                    "workflow {id} is not in the archive {} (a node archives what it purges; \
                     one that caught up from a snapshot lacks what was purged before it)",
                    dir.display()
                ))),
            }
        }
        ArchiveCommand::List { dir } => {
            let mut rows = Vec::new();
            for line in lines(&dir)? {
                rows.push(line?);
            }
            out.print(
                || Value::Array(rows.iter().map(|(_, line)| summary(line)).collect()),
                || {
                    let mut table =
                        Table::new(["ID", "NAME", "STATE", "FINISHED", "PURGED", "FILE"]);
                    for (file, line) in &rows {
                        let workflow = &line["workflow"];
                        table.row([
                            workflow["id"].to_string(),
                            text(&workflow["name"]),
                            text(&workflow["state"]),
                            format_time_ms(workflow["finished_at_ms"].as_u64().unwrap_or(0)),
                            format_time_ms(line["purged_at_ms"].as_u64().unwrap_or(0)),
                            file.clone(),
                        ]);
                    }
                    table.render()
                },
            )
        }
    }
}

/// A line in `list -o json`: what identifies the workflow and its purge.
fn summary(line: &Value) -> Value {
    let workflow = &line["workflow"];
    serde_json::json!({
        "id": workflow["id"],
        "name": workflow["name"],
        "state": workflow["state"],
        "finished_at_ms": workflow["finished_at_ms"],
        "purged_at_ms": line["purged_at_ms"],
        "purge_index": line["purge_index"],
    })
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_string()
}

/// Every archive line in `dir`, oldest purge first, with its file's name; an error names the
/// file and line.
fn lines(dir: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(String, Value)>>> {
    let entries = fs::read_dir(dir)
        .map_err(|e| Failure::failed(format!("archive {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("purge-") && name.ends_with(".jsonl"))
        })
        .collect();
    // Zero-padded log indexes: names sort in log order.
    files.sort();
    Ok(files.into_iter().flat_map(|path| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines: Vec<anyhow::Result<(String, Value)>> = match fs::File::open(&path) {
            Err(e) => vec![Err(Failure::failed(format!("{}: {e}", path.display())))],
            Ok(file) => BufReader::new(file)
                .lines()
                .enumerate()
                .map(|(i, line)| {
                    let line =
                        line.map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
                    let value = serde_json::from_str(&line).map_err(|e| {
                        Failure::failed(format!(
                            "{} line {}: not an archive line: {e}",
                            path.display(),
                            i + 1
                        ))
                    })?;
                    Ok((name.clone(), value))
                })
                .collect(),
        };
        lines
    }))
}
