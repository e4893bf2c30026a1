//! docs/TUTORIAL.md, run as printed: every `$` command of its `console` blocks, in order, in one
//! bash session against a real `batond dev` cluster, each one's output (stdout and stderr, as a
//! terminal shows them) compared with the lines the page prints under it.
//!
//! How the page is read:
//! - Only ```` ```console ```` blocks run. In them a line `$ COMMAND` is a command and the lines up
//!   to the next command or the block's end are its expected output.
//! - `$ scripts/dev` starts the cluster: the runner builds nothing (the test build did) and runs
//!   `batond dev` as that script would, in the background, on ports reserved for this test; the
//!   page's ports (7001-7003 for gRPC, 9101-9104 for metrics, 8441-8443 for the console) stand
//!   for them, both ways. It then
//!   waits until the dev agent is connected, as a person would before typing on.
//! - The session's home is a temporary folder shown as `~`, with a copy of `examples/` in
//!   `~/baton`, the working folder, so the page's paths are the ones a user on a fresh clone sees.
//! - A command must exit 0, unless the command after it is `echo $?`, which shows the status.
//! - Compared after normalizing both sides: runs of spaces are one space (table widths follow the
//!   content), and what differs from run to run is masked: times (`2026-12-06 09:00:01`), hex of
//!   32 digits or more (keys, hashes), the revision counter (`revision:  19`).
//! - An expected line `...` matches any number of lines (none included).
//!
//! A hand-written runner rather than a snapshot crate (trycmd): the page needs one shell session
//! (a background agent, `$?`, pipes) and readable output on the page, masked on both sides, which
//! those crates do not do.

use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::common::dev::{DevCluster, METRICS_PORTS, NODES, repository_root};
use crate::common::procs::Proc;

const PAGE: &str = "docs/TUTORIAL.md";
/// The page's ports, for which the runner's stand.
const DOC_GRPC_BASE: u16 = 7001;
const DOC_METRICS_BASE: u16 = 9101;
const DOC_HTTP_BASE: u16 = 8441;
const START_COMMAND: &str = "scripts/dev";
const STATUS_COMMAND: &str = "echo $?";

/// One `$` line and what the page prints under it.
#[derive(Clone, Debug, PartialEq)]
struct Step {
    /// 1-based line of the command in the page.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The commands of the page's console blocks, in order.
fn parse_page(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut in_other = false;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if fence {
            if in_console || in_other {
                in_console = false;
                in_other = false;
            } else if line.trim() == "```console" {
                in_console = true;
            } else {
                in_other = true;
            }
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: i + 1,
                command: command.to_owned(),
                expected: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.to_owned());
        } else {
            panic!("{PAGE}:{}: output before any `$` command", i + 1);
        }
    }
    steps
}

/// Turns a line of either side into its comparable form (see the module header); `ports` maps
/// this run's ports to the page's, applied to actual output only.
struct Normalizer {
    time: Regex,
    hex: Regex,
    revision: Regex,
    number: Regex,
    spaces: Regex,
    home: String,
    ports: Vec<(u16, u16)>,
}

impl Normalizer {
    fn new(home: &Path, ports: Vec<(u16, u16)>) -> Normalizer {
        Normalizer {
            time: Regex::new(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}").unwrap(),
            hex: Regex::new(r"[0-9a-f]{32,}").unwrap(),
            revision: Regex::new(r"revision:\s+\d+").unwrap(),
            number: Regex::new(r"\b\d{4,5}\b").unwrap(),
            spaces: Regex::new(r"\s+").unwrap(),
            home: home.display().to_string(),
            ports,
        }
    }

    fn actual(&self, line: &str) -> String {
        let line = line.replace(&self.home, "~");
        self.masked(&self.ports_mapped(&line, |(ours, page)| (*ours, *page)))
    }

    /// `text` with every reserved port number replaced by its counterpart: `pair` turns a
    /// (this run's, the page's) pair into (what to find, what to write).
    fn ports_mapped(&self, text: &str, pair: impl Fn(&(u16, u16)) -> (u16, u16)) -> String {
        self.number
            .replace_all(text, |c: &regex::Captures<'_>| {
                let text = &c[0];
                text.parse::<u16>()
                    .ok()
                    .and_then(|n| self.ports.iter().map(&pair).find(|(from, _)| *from == n))
                    .map_or_else(|| text.to_owned(), |(_, to)| to.to_string())
            })
            .into_owned()
    }

    fn expected(&self, line: &str) -> String {
        self.masked(line)
    }

    fn masked(&self, line: &str) -> String {
        let line = self.time.replace_all(line, "<time>");
        let line = self.hex.replace_all(&line, "<hex>");
        let line = self.revision.replace_all(&line, "revision: <n>");
        self.spaces.replace_all(line.trim_end(), " ").into_owned()
    }

    /// A command as the page writes it, with this run's ports.
    fn command(&self, command: &str) -> String {
        self.ports_mapped(command, |(ours, page)| (*page, *ours))
    }
}

/// Whether `actual` lines match `expected` ones, where an expected `...` matches any run of lines.
fn lines_match(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => {
            actual.first().is_some_and(|line| line == first) && lines_match(rest, &actual[1..])
        }
    }
}

/// What one command printed and how it exited, cut from the session's output by its markers.
#[derive(Debug)]
struct Ran {
    output: String,
    status: i32,
}

const BEGIN: &str = "@@tutorial-begin";
const END: &str = "@@tutorial-end";

/// The bash script that runs `commands` in order, each between markers carrying its index and
/// exit status; `$?` is each command's own (the markers keep it).
fn session_script(commands: &[String]) -> String {
    let mut script = String::from("__rc=0\n");
    for (i, command) in commands.iter().enumerate() {
        script.push_str(&format!(
            "printf '%s\\n' '{BEGIN} {i}@@'; (exit $__rc)\n{{ {command}\n}} </dev/null 2>&1\n\
             __rc=$?; printf '\\n%s %d@@\\n' '{END} {i}' \"$__rc\"\n"
        ));
    }
    script
}

/// Splits the session's output into what each command printed; fewer entries than commands when
/// the session stopped early.
fn split_session(output: &str) -> Vec<Ran> {
    let mut ran = Vec::new();
    let mut rest = output;
    for i in 0.. {
        let begin = format!("{BEGIN} {i}@@\n");
        let Some(start) = rest.find(&begin) else {
            break;
        };
        let body = &rest[start + begin.len()..];
        let end = format!("\n{END} {i} ");
        let Some(stop) = body.find(&end) else {
            break;
        };
        let after = &body[stop + end.len()..];
        let status = after
            .split("@@")
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        ran.push(Ran {
            output: body[..stop].to_owned(),
            status,
        });
        rest = after;
    }
    ran
}

/// Both sides of a comparison, normalized: the page's lines and this run's.
fn normalized(step: &Step, normalizer: &Normalizer, ran: &Ran) -> (Vec<String>, Vec<String>) {
    let expected = step
        .expected
        .iter()
        .map(|l| normalizer.expected(l))
        .collect();
    let actual = ran.output.lines().map(|l| normalizer.actual(l)).collect();
    (expected, actual)
}

fn report(step: &Step, normalizer: &Normalizer, ran: &Ran, why: &str) -> String {
    let (expected, actual) = normalized(step, normalizer, ran);
    format!(
        "{PAGE}:{}: `{}` {why}\n--- the page (normalized) ---\n{}\n--- this run (normalized) ---\n{}\n\
         --- this run (as printed, exit {}) ---\n{}",
        step.line,
        step.command,
        expected.join("\n"),
        actual.join("\n"),
        ran.status,
        ran.output
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_runs_as_printed() {
    let page = std::fs::read_to_string(repository_root().join(PAGE)).unwrap();
    let steps = parse_page(&page);
    assert_eq!(
        steps.first().map(|s| s.command.as_str()),
        Some(START_COMMAND),
        "{PAGE}: the first command starts the cluster"
    );

    // Step 1: `scripts/dev`, as `batond dev` with this test's ports, waited on until its agent
    // is connected.
    let dev = DevCluster::start().await;
    let mut ports: Vec<(u16, u16)> = (0..NODES)
        .map(|i| (dev.grpc[i as usize], DOC_GRPC_BASE + i))
        .collect();
    ports.extend((0..METRICS_PORTS).map(|i| (dev.metrics[i as usize], DOC_METRICS_BASE + i)));
    ports.extend((0..NODES).map(|i| (dev.http[i as usize], DOC_HTTP_BASE + i)));
    let normalizer = Normalizer::new(&dev.home, ports);
    let start = Ran {
        output: dev.banner.clone(),
        status: 0,
    };
    check(&steps[0], &normalizer, &start);

    // The rest, in one bash session.
    let rest = &steps[1..];
    let commands: Vec<String> = rest
        .iter()
        .map(|s| normalizer.command(&s.command))
        .collect();
    let script = dev.tmp.path().join("tutorial.sh");
    std::fs::write(&script, session_script(&commands)).unwrap();
    let mut bash = dev.command(Path::new("bash"));
    bash.args(["--noprofile", "--norc"]).arg(&script);
    let session_log = dev.tmp.path().join("session.log");
    let mut session = Proc::spawn(bash, &session_log).expect("start bash");
    let finished = tokio::time::timeout(Duration::from_secs(300), session.exited()).await;
    let output = std::fs::read_to_string(&session_log).unwrap_or_default();
    let ran = split_session(&output);
    for (i, step) in rest.iter().enumerate() {
        let Some(result) = ran.get(i) else {
            let why = match finished {
                Err(_) => "did not finish within 5 minutes",
                Ok(_) => "never ran: the session ended first",
            };
            panic!(
                "{PAGE}:{}: `{}` {why}; the session printed:\n{output}",
                step.line, step.command
            );
        };
        let status_shown = rest
            .get(i + 1)
            .is_some_and(|next| next.command == STATUS_COMMAND);
        if result.status != 0 && !status_shown {
            panic!(
                "{}",
                report(
                    step,
                    &normalizer,
                    result,
                    &format!(
                        "exited {} and the page does not show it with `echo $?`",
                        result.status
                    )
                )
            );
        }
        check(step, &normalizer, result);
    }
}

fn check(step: &Step, normalizer: &Normalizer, ran: &Ran) {
    let (expected, actual) = normalized(step, normalizer, ran);
    assert!(
        lines_match(&expected, &actual),
        "{}",
        report(step, normalizer, ran, "printed something else")
    );
}

#[test]
fn the_page_is_read_as_commands_and_their_output() {
    let page = "intro\n```sh\n$ not run\n```\n```console\n$ a\none\n$ b\n```\ntext\n```console\n$ c\n```\n";
    let steps = parse_page(page);
    let commands: Vec<(&str, usize, usize)> = steps
        .iter()
        .map(|s| (s.command.as_str(), s.line, s.expected.len()))
        .collect();
    assert_eq!(commands, vec![("a", 6, 1), ("b", 8, 0), ("c", 12, 0)]);
}

#[test]
fn both_sides_are_masked_and_ports_map_to_the_page() {
    let n = Normalizer::new(Path::new("/tmp/x/home"), vec![(23001, 7001)]);
    assert_eq!(
        n.actual("2026-01-02 03:04:05  node  127.0.0.1:23001   /tmp/x/home/baton  revision:   7"),
        "<time> node 127.0.0.1:7001 ~/baton revision: <n>"
    );
    assert_eq!(
        n.expected("2026-12-06 09:00:01 node 127.0.0.1:7001 ~/baton revision: 19"),
        "<time> node 127.0.0.1:7001 ~/baton revision: <n>"
    );
    assert_eq!(n.command("curl 127.0.0.1:7001/x"), "curl 127.0.0.1:23001/x");
    // Only the reserved ports move; other numbers stay.
    assert_eq!(n.actual("attempt 7001x 12345"), "attempt 7001x 12345");
}

#[test]
fn an_ellipsis_matches_any_run_of_lines_and_nothing_else_does() {
    let lines = |s: &str| -> Vec<String> { s.lines().map(str::to_owned).collect() };
    assert!(lines_match(&lines("a\n...\nd"), &lines("a\nb\nc\nd")));
    assert!(lines_match(&lines("a\n...\nd"), &lines("a\nd")));
    assert!(lines_match(&lines("...\nd\n..."), &lines("x\nd\ny")));
    assert!(!lines_match(&lines("a\n...\nd"), &lines("a\nb\nc")));
    assert!(!lines_match(&lines("a\nb"), &lines("a\nb\nc")));
    assert!(!lines_match(&lines("a\nb"), &lines("a")));
}

#[test]
fn the_session_keeps_each_output_and_status_apart() {
    let script = session_script(&["echo hi".into(), "false".into(), "echo $?".into()]);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let ran = split_session(&String::from_utf8(out.stdout).unwrap());
    let got: Vec<(&str, i32)> = ran.iter().map(|r| (r.output.as_str(), r.status)).collect();
    assert_eq!(got, vec![("hi\n", 0), ("", 1), ("1\n", 0)]);
}
