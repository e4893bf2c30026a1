//! `baton submit`: read and check spec files, then submit one with Submit or several in
//! SubmitBatch calls, and with `--wait` follow them to their end.

use std::collections::BTreeMap;
use std::io::Read;
use std::iter::Peekable;
use std::path::{Path, PathBuf};

use baton_client::output::{self, EventColumns};
use baton_client::proto::{SubmitBatchResult, WorkflowSpec};
use baton_client::{Client, new_idempotency_key};
use baton_proto::limits::{
    SPEC_TEXT_BYTES_MAX, SUBMIT_BATCH_BYTES_MAX, SUBMIT_BATCH_ITEMS_MAX, submit_batch_item_bytes,
};
use baton_proto::spec::{SpecFormat, parse_spec};
use baton_proto::validate::{resolve_params, validate_idempotency_key, validate_spec};
use serde_json::Value;

use super::printer::Printer;
use super::wait::wait_for_end;
use crate::cli::args::SubmitArgs;
use crate::cli::failure::{CallKind, Failure, client_failure};

pub(super) async fn submit(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    args: SubmitArgs,
) -> anyhow::Result<()> {
    let params = param_values(&args.params)?;
    if let Some(template) = &args.template {
        return submit_template(connect, out, template, &args, params).await;
    }
    if args.files.len() > 1 {
        return submit_many(connect, out, args, params).await;
    }
    let file = &args.files[0];
    let (display_name, spec) = read_spec(file)?;
    check_params(&display_name, &spec, &params)?;
    // Our own key when none was given, so that an unknown outcome can name it for the retry.
    let key = match args.idempotency_key {
        Some(key) => {
            validate_idempotency_key(&key)
                .map_err(|error| Failure::usage(format!("--idempotency-key: {}", error.message)))?;
            key
        }
        None => new_idempotency_key(),
    };
    let mut columns = EventColumns::default();
    columns.fit_steps(spec.steps.iter().map(|step| step.name.as_str()));
    let client = connect()?;
    let response = client
        .submit_with_params(spec, Some(key.clone()), params)
        .await
        .map_err(|error| {
            let hint = format!(
                "the workflow may or may not have been submitted; run `baton submit {} \
             --idempotency-key {key}` again: it returns the first workflow if there is one",
                file.display()
            );
            client_failure(
                error,
                CallKind::Write,
                Some(&format!("workflow from {display_name}")),
                Some(hint),
            )
        })?;
    // The id first, so that a script has it even while it waits (and if the wait fails).
    out.print(
        || output::submit_json(&response),
        || response.workflow_id.to_string(),
    )?;
    if !args.wait {
        return Ok(());
    }
    wait_for_end(
        &client,
        response.workflow_id,
        response.log_index,
        &mut columns,
    )
    .await
}

/// Several files: all read and checked before anything is sent, then submitted in SubmitBatch
/// calls (each within the server's item and byte bounds, committed whole), file N with key
/// `BASE-N`, so that running the same command (same files, same order) with
/// `--idempotency-key BASE` after a failure part-way returns the workflows already made and
/// submits the rest. Each call's ids are printed as it answers.
async fn submit_many(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    args: SubmitArgs,
    params: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if args.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        return Err(Failure::usage("`-` (standard input) can be given once"));
    }
    let base = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => new_idempotency_key(),
    };
    let items = read_items(&args.files, &base, &params)?;
    // One table for every workflow followed: as wide as the longest step name among them.
    let mut columns = EventColumns::default();
    for item in &items {
        columns.fit_steps(item.spec.steps.iter().map(|step| step.name.as_str()));
    }
    let client = connect()?;
    let done = submit_batches(&client, out, items, &base, &params).await?;
    if !args.wait {
        return Ok(());
    }
    // Every workflow followed to its end, in order; the first that did not succeed decides.
    let mut first_failure = None;
    for (workflow_id, log_index) in done {
        if let Err(error) = wait_for_end(&client, workflow_id, log_index, &mut columns).await {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// One file of a multi-file submit, read and checked: its name, spec, key and batch bytes.
struct Item {
    name: String,
    spec: WorkflowSpec,
    key: String,
    size: usize,
}

/// Reads and checks every file, keying file N `BASE-N`.
fn read_items(
    files: &[PathBuf],
    base: &str,
    params: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::with_capacity(files.len());
    for (n, file) in files.iter().enumerate() {
        let (display_name, spec) = read_spec(file)?;
        check_params(&display_name, &spec, params)?;
        let key = format!("{base}-{}", n + 1);
        validate_idempotency_key(&key).map_err(|error| {
            Failure::usage(format!(
                "--idempotency-key: {} (as {key}, the key of file {})",
                error.message,
                n + 1
            ))
        })?;
        let size = batch_item_bytes(&display_name, &spec, &key, params)?;
        items.push(Item {
            name: display_name,
            spec,
            key,
            size,
        });
    }
    Ok(items)
}

/// Sends `items` in SubmitBatch calls, printing each call's ids as it answers; returns the
/// `(workflow id, log index)` of every workflow made, in order.
async fn submit_batches(
    client: &Client,
    out: &Printer,
    items: Vec<Item>,
    base: &str,
    params: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut done: Vec<(u64, u64)> = Vec::with_capacity(items.len());
    // After a failure part-way, what was made stays made: say how to finish without repeats.
    let resume = |done: usize| {
        if done > 0 {
            eprintln!(
                "baton: {done} workflows were submitted before this error; to submit the rest \
                 without repeating them, run the same command (same files, same order) with \
                 --idempotency-key {base}"
            );
        }
    };
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let (names, batch) = next_batch(&mut items);
        let results = client
            .submit_batch_with_params(batch, params.clone())
            .await
            .map_err(|error| {
                resume(done.len());
                let hint = format!(
                    "{} may or may not have been submitted; run the same `baton submit` again with \
                 `--idempotency-key {base}`: it returns the workflows already made",
                    if done.is_empty() {
                        "the workflows".to_string()
                    } else {
                        format!("the workflows after the first {}", done.len())
                    }
                );
                client_failure(
                    error,
                    CallKind::Write,
                    Some(&format!("workflows from {} and on", names[0])),
                    Some(hint),
                )
            })?;
        if results.len() != names.len() {
            resume(done.len());
            return Err(Failure::unknown(
                format!(
                    "outcome unknown: the answer to {} workflows had {} results",
                    names.len(),
                    results.len()
                ),
                format!(
                    "whether they were submitted is unknown; run the same command (same files, \
                     same order) with --idempotency-key {base}: it returns those already made"
                ),
            ));
        }
        let refused = print_results(out, &names, results, &mut done)?;
        if !refused.is_empty() {
            resume(done.len());
            return Err(Failure::failed(refused.join("; ")));
        }
    }
    Ok(done)
}

/// The next call's items: as many as the server's item and byte bounds allow. Each item fits a
/// batch alone (`batch_item_bytes` checked it when read).
fn next_batch(
    items: &mut Peekable<std::vec::IntoIter<Item>>,
) -> (Vec<String>, Vec<(WorkflowSpec, Option<String>)>) {
    let (mut names, mut batch, mut bytes) = (Vec::new(), Vec::new(), 0);
    while let Some(&Item { size, .. }) = items.peek() {
        let full = batch.len() == SUBMIT_BATCH_ITEMS_MAX
            || (!batch.is_empty() && bytes + size > SUBMIT_BATCH_BYTES_MAX);
        if full {
            break;
        }
        let item = items.next().expect("peeked");
        bytes += size;
        names.push(item.name);
        batch.push((item.spec, Some(item.key)));
    }
    (names, batch)
}

/// The whole call is committed: every result is printed (and added to `done`), refusals after;
/// returns the refusals.
fn print_results(
    out: &Printer,
    names: &[String],
    results: Vec<SubmitBatchResult>,
    done: &mut Vec<(u64, u64)>,
) -> anyhow::Result<Vec<String>> {
    let mut refused = Vec::new();
    for (name, result) in names.iter().zip(results) {
        use baton_client::proto::submit_batch_result::Outcome;
        let response = match result.outcome {
            Some(Outcome::Submitted(response)) => response,
            Some(Outcome::Rejected(reason)) => {
                refused.push(format!("{name}: refused: {reason}"));
                continue;
            }
            None => {
                refused.push(format!("{name}: the answer has no outcome"));
                continue;
            }
        };
        out.print_json_line(
            || {
                let mut json = output::submit_json(&response);
                json["file"] = Value::from(name.as_str());
                json
            },
            || format!("{}\t{name}", response.workflow_id),
        )?;
        done.push((response.workflow_id, response.log_index));
    }
    Ok(refused)
}

/// What the server counts against a batch's bytes for one item (its encoded spec, its key and
/// the parameters). A spec close to the spec limit cannot go with its key in any batch; it is
/// refused here, naming its file, before anything is sent.
fn batch_item_bytes(
    display_name: &str,
    spec: &WorkflowSpec,
    key: &str,
    params: &BTreeMap<String, String>,
) -> anyhow::Result<usize> {
    let size = submit_batch_item_bytes(prost::Message::encoded_len(spec), key, params);
    if size > SUBMIT_BATCH_BYTES_MAX {
        return Err(Failure::usage(format!(
            "{display_name}: {size} bytes with its key, more than the {SUBMIT_BATCH_BYTES_MAX} \
             a batch may carry; submit it alone"
        )));
    }
    Ok(size)
}

/// `-p` values as a map; a name given twice is a usage error.
fn param_values(given: &[(String, String)]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (name, value) in given {
        if params.insert(name.clone(), value.clone()).is_some() {
            return Err(Failure::usage(format!(
                "-p {name}: given twice; give each parameter once"
            )));
        }
    }
    Ok(params)
}

/// The checks the node makes on `params` for `spec`, before anything is sent.
fn check_params(
    display_name: &str,
    spec: &WorkflowSpec,
    params: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    resolve_params(spec, params)
        .map(|_| ())
        .map_err(|error| Failure::usage(format!("{display_name}: {error}")))
}

/// `baton submit --template NAME[@VERSION]`: the node resolves the template and checks the
/// params against it.
async fn submit_template(
    connect: impl FnOnce() -> anyhow::Result<Client>,
    out: &Printer,
    template: &str,
    args: &SubmitArgs,
    params: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let (name, version) = baton_proto::schedule::parse_template_ref(template)
        .map_err(|e| Failure::usage(format!("--template: {e}")))?;
    let key = match &args.idempotency_key {
        Some(key) => {
            validate_idempotency_key(key)
                .map_err(|error| Failure::usage(format!("--idempotency-key: {}", error.message)))?;
            key.clone()
        }
        None => new_idempotency_key(),
    };
    let client = connect()?;
    let response = client
        .submit_template(&name, version, key.clone(), params)
        .await
        .map_err(|error| {
            if error.code() == Some(tonic::Code::NotFound)
                || error.code() == Some(tonic::Code::InvalidArgument)
            {
                return Failure::failed(
                    error
                        .status()
                        .map(|s| s.message().to_string())
                        .unwrap_or_default(),
                );
            }
            let hint = format!(
                "the workflow may or may not have been submitted; run `baton submit --template \
                 {template} --idempotency-key {key}` again: it returns the first workflow if \
                 there is one"
            );
            client_failure(
                error,
                CallKind::Write,
                Some(&format!("workflow from template {template}")),
                Some(hint),
            )
        })?;
    out.print(
        || output::submit_json(&response),
        || response.workflow_id.to_string(),
    )?;
    if !args.wait {
        return Ok(());
    }
    let mut columns = EventColumns::default();
    wait_for_end(
        &client,
        response.workflow_id,
        response.log_index,
        &mut columns,
    )
    .await
}

/// Reads, parses and validates a spec file (`-`: stdin). Every problem is a usage error naming
/// the file, and the line and column or the field.
pub(super) fn read_spec(path: &Path) -> anyhow::Result<(String, WorkflowSpec)> {
    let from_stdin = path.as_os_str() == "-";
    let display_name = if from_stdin {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let mut bytes = Vec::new();
    // One byte past the limit is enough for the parser to say "too large" without us reading
    // a runaway file or pipe to its end.
    let limit = (SPEC_TEXT_BYTES_MAX + 1) as u64;
    let read = if from_stdin {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|error| Failure::usage(format!("cannot read {display_name}: {error}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{display_name}: not utf-8 text")))?;
    let format = if from_stdin {
        SpecFormat::Yaml
    } else {
        SpecFormat::from_path(path)
    };
    let spec = parse_spec(&text, format)
        .map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    validate_spec(&spec).map_err(|error| Failure::usage(format!("{display_name}: {error}")))?;
    Ok((display_name, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_too_large_for_any_batch_is_refused_by_name() {
        let mut spec = WorkflowSpec {
            name: "w".into(),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert!(batch_item_bytes("small.yaml", &spec, "k-1", &none).is_ok());
        // Within a few bytes of the bound with its key fits; 17 bytes more do not.
        let key = "baton-0123456789abcdef-1";
        spec.input.insert("pad".into(), String::new());
        let base = prost::Message::encoded_len(&spec) + key.len();
        spec.input
            .insert("pad".into(), "x".repeat(SUBMIT_BATCH_BYTES_MAX - base - 8));
        let fits = prost::Message::encoded_len(&spec) + key.len();
        assert!(
            fits <= SUBMIT_BATCH_BYTES_MAX && fits > SUBMIT_BATCH_BYTES_MAX - 16,
            "{fits}"
        );
        assert_eq!(
            batch_item_bytes("edge.yaml", &spec, key, &none).unwrap(),
            fits
        );
        spec.input.insert(
            "pad".into(),
            "x".repeat(SUBMIT_BATCH_BYTES_MAX - base - 8 + 17),
        );
        let error = batch_item_bytes("big.yaml", &spec, key, &none).unwrap_err();
        assert!(error.to_string().starts_with("big.yaml: "), "{error}");
    }
}
