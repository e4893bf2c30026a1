//! Schedules: workflows that start themselves, exactly once per scheduled time.
//!
//! A schedule names the times it fires at (its [`Calendar`]: a cron pattern in a time zone, or
//! an interval) and the workflow each run is. The state keeps, per schedule, the **next nominal
//! time** it fires at. When the state's time (the leader's stamp, never a node's wall clock)
//! reaches that time plus the schedule's jitter, the leader proposes a `Tick`, and apply starts
//! the run and moves the next time on, in the same entry. So a time fires once however many
//! leaders see it due, and a new leader after a failover finds the times it has not fired still
//! due: none is doubled, none skipped.
//!
//! Each run is identified by (schedule, nominal time): it carries both (`Workflow::schedule`), and
//! its idempotency key is `schedule:NAME:NOMINAL_MS`, which also keeps `trigger` and `backfill`
//! from starting a second run for a time that has one (for as long as the run, or its purge
//! record, is kept: the idempotency window).
//!
//! **Catch-up.** A due time more than the catch-up window old when it is reached (the cluster
//! was down) is counted as missed, not run; the ones inside the window run, oldest first, as the
//! overlap policy allows. At most [`FIRES_PER_TICK_MAX`] times are handled per entry; the leader
//! ticks again while some are due.
//!
//! **Overlap.** A time that comes while a run of the schedule is still running is skipped
//! (counted), buffered (one, started when the running run ends), started anyway, or started after
//! cancelling the running runs, as the schedule's policy says.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_proto::schedule::{Calendar, catchup_window_ms, overlap};
use baton_proto::v1 as pb;
use baton_proto::validate::resolve_params;
use imbl::OrdSet;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{Response, SubmitCommand};
use super::ids::WorkflowId;
use super::namespaces::{
    DEFAULT_NAMESPACE, Live, OverQuota, is_wait, or_default, scoped_name, split_scoped,
};
use super::templates::TemplateRef;
use super::workflow::{ScheduledRun, WorkflowState};
use super::{ApplyCtx, ClusterState, Events};

/// Schedule times one entry handles at most (run, skipped or counted as missed).
pub const FIRES_PER_TICK_MAX: usize = 1024;
/// How late past its due time (nominal time plus jitter) a time may be reached and still run
/// with a catch-up window of 0: the delay of a leader's round and its proposal, not an outage.
pub const CATCHUP_GRACE_MS: u64 = 10_000;

/// Unpaused schedules by the time they next fire (nominal time plus jitter).
pub(super) type ScheduleDue = OrdSet<(u64, Arc<str>)>;

/// A schedule as the state keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its `baton.v1.ScheduleSpec`, protobuf-encoded, without the workflow.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    /// The workflow each run is, a `baton.v1.WorkflowSpec` encoded as a submit carries it (runs
    /// share its decoded spec: `specs.rs`).
    #[serde(with = "serde_bytes")]
    pub workflow: Vec<u8>,
    /// Its params' values, resolved against the workflow's declarations when it was created.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub created_at_ms: u64,
    /// The next time it fires at (nominal, before jitter); None: never again.
    pub next_ms: Option<u64>,
    pub paused: bool,
    /// Its runs that have not ended, oldest first: (nominal time, workflow).
    pub running: Vec<(u64, WorkflowId)>,
    /// A time waiting for the running run to end (overlap `buffer_one`).
    pub buffered: Option<u64>,
    pub started: u64,
    pub skipped: u64,
    pub missed: u64,
    pub last_run: Option<(u64, WorkflowId)>,
    /// Why the latest time that could not start a run did not (its template gone, its params
    /// no longer fit it); empty once a run starts again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl Schedule {
    /// Its spec, without the workflow. A stored spec always decodes (it was encoded by apply).
    pub fn spec(&self) -> pb::ScheduleSpec {
        pb::ScheduleSpec::decode(self.spec.as_slice()).unwrap_or_default()
    }

    /// The API view; `with_workflow`: with the workflow's whole spec.
    pub fn to_proto(&self, namespace: &str, with_workflow: bool) -> pb::Schedule {
        let mut spec = self.spec();
        if with_workflow {
            spec.workflow = pb::WorkflowSpec::decode(self.workflow.as_slice()).ok();
        }
        let run = |(nominal_ms, id): (u64, WorkflowId)| pb::ScheduleRun {
            workflow_id: id.0,
            nominal_time_ms: nominal_ms,
        };
        pb::Schedule {
            spec: Some(spec),
            created_at_ms: self.created_at_ms,
            next_fire_ms: if self.paused {
                0
            } else {
                self.next_ms.unwrap_or(0)
            },
            running: self.running.iter().copied().map(run).collect(),
            buffered_nominal_ms: self.buffered.unwrap_or(0),
            runs_started: self.started,
            runs_skipped: self.skipped,
            runs_missed: self.missed,
            last_run: self.last_run.map(run),
            paused: self.paused,
            last_error: self.last_error.clone(),
            namespace: namespace.to_string(),
        }
    }

    /// When it next starts a run, jitter included, while it is unpaused.
    pub fn due_at(&self, name: &str) -> Option<u64> {
        let next = self.next_ms.filter(|_| !self.paused)?;
        Some(next.saturating_add(jitter_ms(name, next, self.spec().jitter_ms)))
    }
}

/// The delay of the run of `name` at `nominal_ms`: the same on every node, spread over
/// `0..=jitter_ms`.
pub fn jitter_ms(name: &str, nominal_ms: u64, jitter_ms: u64) -> u64 {
    if jitter_ms == 0 {
        return 0;
    }
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(nominal_ms.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes) % (jitter_ms + 1)
}

/// The idempotency key of the run of `name` at `nominal_ms`.
pub fn run_key(name: &str, nominal_ms: u64) -> String {
    format!("schedule:{name}:{nominal_ms}")
}

/// See [`super::Command::CreateSchedule`]. The API has validated the spec and resolved the
/// params (`baton_proto::schedule::validate_schedule`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateScheduleCommand {
    /// A `baton.v1.ScheduleSpec` without its workflow.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    /// Its workflow, a `baton.v1.WorkflowSpec`.
    #[serde(with = "serde_bytes")]
    pub workflow: Vec<u8>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Replace a schedule of the same name (its counters and runs stay).
    #[serde(default)]
    pub replace: bool,
    /// Its namespace; empty: `default` (left out, so it encodes as before namespaces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// See [`super::Command::PauseSchedule`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PauseScheduleCommand {
    pub name: String,
    /// false: resume.
    pub paused: bool,
}

/// See [`super::Command::BackfillSchedule`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillScheduleCommand {
    pub name: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What one time of a schedule came to.
enum Fired {
    Started(WorkflowId),
    /// It had a run already (the same idempotency key).
    AlreadyRun,
    Skipped,
    Buffered,
    /// Nothing to run (its template gone, its params no longer fit it).
    Failed(String),
    /// Its namespace's quota held the run back.
    OverQuota(OverQuota),
}

impl Fired {
    /// Why no run started, for the schedule's `last_error`, when that is a problem.
    fn problem(&self, name: &str, nominal_ms: u64) -> Option<String> {
        match self {
            Fired::Failed(reason) => Some(reason.clone()),
            Fired::OverQuota(over) => {
                Some(format!("schedule {name}: no run for {nominal_ms}: {over}"))
            }
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fired::Started(_) => "started",
            Fired::AlreadyRun => "already run",
            Fired::Skipped => "skipped (a run is still running; overlap policy)",
            Fired::Buffered => "buffered (starts when the running run ends)",
            Fired::Failed(_) => "failed",
            Fired::OverQuota(_) => "over quota",
        }
    }
}

impl ClusterState {
    pub fn schedule(&self, name: &str) -> Option<&Arc<Schedule>> {
        self.schedules.get(name)
    }

    pub fn schedules(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Schedule>)> {
        self.schedules.iter()
    }

    /// Whether some schedule is due at `now_ms` (the leader then proposes a Tick). O(log n).
    pub fn schedule_due_at(&self, now_ms: u64) -> bool {
        self.schedule_due
            .get_min()
            .is_some_and(|(at, _)| *at <= now_ms)
    }

    /// The due index as the schedules say it should be.
    pub(super) fn derive_schedule_due(&self) -> ScheduleDue {
        self.schedules
            .iter()
            .filter_map(|(name, s)| Some((s.due_at(name)?, name.clone())))
            .collect()
    }

    /// Changes schedule `name` with `change`, keeping the due index in step.
    fn change_schedule<T>(
        &mut self,
        name: &Arc<str>,
        change: impl FnOnce(&mut Schedule) -> T,
    ) -> T {
        let schedule = self.schedules.get_mut(name).expect("caller checked");
        if let Some(at) = schedule.due_at(name) {
            self.schedule_due.remove(&(at, name.clone()));
        }
        let schedule = Arc::make_mut(schedule);
        let result = change(schedule);
        if let Some(at) = schedule.due_at(name) {
            self.schedule_due.insert((at, name.clone()));
        }
        result
    }

    fn schedule_name(&self, name: &str) -> Option<Arc<str>> {
        self.schedules.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// [`super::Command::CreateSchedule`].
    pub(super) fn create_schedule(&mut self, create: CreateScheduleCommand) -> Response {
        let Ok(spec) = pb::ScheduleSpec::decode(create.spec.as_slice()) else {
            return Response::Rejected {
                reason: "the schedule spec does not decode".into(),
            };
        };
        let calendar = match Calendar::new(&spec) {
            Ok(calendar) => calendar,
            Err(error) => {
                return Response::Rejected {
                    reason: error.to_string(),
                };
            }
        };
        if !self.namespace_exists(or_default(&create.namespace)) {
            return Response::Rejected {
                reason: format!("namespace {} does not exist", create.namespace),
            };
        }
        if spec.template.is_empty() {
            if create.workflow.is_empty()
                || pb::WorkflowSpec::decode(create.workflow.as_slice()).is_err()
            {
                return Response::Rejected {
                    reason: "the schedule's workflow spec does not decode".into(),
                };
            }
        } else if !create.workflow.is_empty() {
            return Response::Rejected {
                reason: "a schedule runs a workflow or a template, not both".into(),
            };
        } else if self
            .template(&scoped_name(&create.namespace, &spec.template))
            .and_then(|t| t.version(spec.template_version))
            .is_none()
        {
            return Response::Rejected {
                reason: format!(
                    "no template {:?}{}",
                    spec.template,
                    match spec.template_version {
                        0 => String::new(),
                        v => format!(" version {v}"),
                    }
                ),
            };
        }
        let key = scoped_name(&create.namespace, &spec.name);
        let exists = self.schedules.contains_key(key.as_str());
        // A replace keeps a time already reached but not fired yet (in its jitter, or the Tick
        // not applied): it runs under the new spec rather than vanish uncounted.
        let pending = self
            .schedules
            .get(key.as_str())
            .filter(|s| !s.paused)
            .and_then(|s| s.next_ms)
            .filter(|&t| t <= self.now_ms);
        let next_ms = pending.or_else(|| calendar.next_after(self.now_ms));
        if exists && !create.replace {
            return Response::Rejected {
                reason: format!("schedule {:?} already exists", spec.name),
            };
        }
        let name: Arc<str> = Arc::from(key);
        if !exists {
            self.schedules.insert(
                name.clone(),
                Arc::new(Schedule {
                    spec: Vec::new(),
                    workflow: Vec::new(),
                    params: BTreeMap::new(),
                    created_at_ms: self.now_ms,
                    next_ms: None,
                    paused: true,
                    running: Vec::new(),
                    buffered: None,
                    started: 0,
                    skipped: 0,
                    missed: 0,
                    last_run: None,
                    last_error: String::new(),
                }),
            );
        }
        self.change_schedule(&name, |s| {
            s.paused = spec.paused;
            s.next_ms = next_ms;
            s.spec = create.spec;
            s.workflow = create.workflow;
            s.params = create.params;
        });
        Response::ScheduleCreated {
            created: !exists,
            next_ms: next_ms.unwrap_or(0),
        }
    }

    /// [`super::Command::PauseSchedule`]. A resumed schedule fires from the next time after
    /// now: the times it was paused over neither run nor count as missed.
    pub(super) fn pause_schedule(&mut self, pause: PauseScheduleCommand) -> Response {
        let Some(name) = self.schedule_name(&pause.name) else {
            return Response::NoSchedule { name: pause.name };
        };
        if self.schedules[&name].paused == pause.paused {
            return Response::ScheduleChanged { changed: false };
        }
        let now_ms = self.now_ms;
        let calendar = Calendar::new(&self.schedules[&name].spec()).ok();
        self.change_schedule(&name, |s| {
            s.paused = pause.paused;
            if pause.paused {
                // A paused schedule starts nothing, a buffered time included.
                if s.buffered.take().is_some() {
                    s.skipped += 1;
                }
            } else {
                s.next_ms = calendar.and_then(|c| c.next_after(now_ms));
            }
        });
        Response::ScheduleChanged { changed: true }
    }

    /// [`super::Command::DeleteSchedule`]. Its runs go on, and keep its name.
    pub(super) fn delete_schedule(&mut self, name: &str) -> Response {
        let Some(name) = self.schedule_name(name) else {
            return Response::NoSchedule { name: name.into() };
        };
        self.change_schedule(&name, |s| s.paused = true);
        self.schedules.remove(&name);
        Response::ScheduleChanged { changed: true }
    }

    /// [`super::Command::TriggerSchedule`]: a run now, as the overlap policy allows.
    pub(super) fn trigger_schedule(
        &mut self,
        ctx: ApplyCtx,
        name: &str,
        events: &mut Events,
    ) -> Response {
        let Some(name) = self.schedule_name(name) else {
            return Response::NoSchedule { name: name.into() };
        };
        let nominal_ms = self.now_ms;
        let fired = self.fire_time(ctx, &name, nominal_ms, events);
        match fired {
            Fired::Failed(reason) => return Response::Rejected { reason },
            Fired::OverQuota(over) => return Response::OverQuota(over),
            _ => {}
        }
        Response::ScheduleFired {
            workflow_id: match fired {
                Fired::Started(id) => Some(id),
                _ => None,
            },
            nominal_ms,
            outcome: fired.name().into(),
        }
    }

    /// [`super::Command::BackfillSchedule`]: a run for every time in the range without one,
    /// whatever the overlap policy and the catch-up window.
    pub(super) fn backfill_schedule(
        &mut self,
        ctx: ApplyCtx,
        backfill: BackfillScheduleCommand,
        events: &mut Events,
    ) -> Response {
        use baton_proto::schedule::BACKFILL_RUNS_MAX;
        let Some(name) = self.schedule_name(&backfill.name) else {
            return Response::NoSchedule {
                name: backfill.name,
            };
        };
        let Ok(calendar) = Calendar::new(&self.schedules[&name].spec()) else {
            return Response::Rejected {
                reason: "the schedule's calendar does not parse".into(),
            };
        };
        // Times still to come are the schedule's own to fire.
        let to_ms = backfill.to_ms.min(self.now_ms);
        let times = match calendar.times_in(backfill.from_ms, to_ms, BACKFILL_RUNS_MAX) {
            Ok(times) => times,
            Err(_) => {
                return Response::Rejected {
                    reason: format!(
                        "the range holds more than {BACKFILL_RUNS_MAX} of the schedule's times: \
                         backfill it in parts"
                    ),
                };
            }
        };
        let mut started = Vec::new();
        let mut already_run = 0;
        for nominal_ms in times {
            match self.start_run(ctx, &name, nominal_ms, false, events) {
                Fired::Started(id) => started.push((nominal_ms, id)),
                Fired::Failed(reason) => return Response::Rejected { reason },
                // The runs started stand; the rest wait for a backfill once work has finished.
                Fired::OverQuota(over) if started.is_empty() => return Response::OverQuota(over),
                Fired::OverQuota(over) => {
                    return Response::Backfilled {
                        started,
                        already_run,
                        stopped: Some(over),
                    };
                }
                _ => already_run += 1,
            }
        }
        Response::Backfilled {
            started,
            already_run,
            stopped: None,
        }
    }

    /// Part of a Tick: every schedule time reached by the state's time is run, skipped or
    /// counted as missed, and the schedule's next time set, at most [`FIRES_PER_TICK_MAX`].
    pub(super) fn fire_schedules(&mut self, ctx: ApplyCtx, events: &mut Events) {
        let now_ms = self.now_ms;
        for _ in 0..FIRES_PER_TICK_MAX {
            let Some((at, name)) = self.schedule_due.get_min().cloned() else {
                return;
            };
            if at > now_ms {
                return;
            }
            let schedule = &self.schedules[&name];
            let spec = schedule.spec();
            let nominal_ms = schedule.next_ms.expect("a due schedule has a next time");
            let next_ms = Calendar::new(&spec)
                .ok()
                .and_then(|c| c.next_after(nominal_ms));
            // Late from when it was due to start (its jitter included), beyond the delay of a
            // leader's round: an outage, not the scheduling itself.
            let late_ms = now_ms.saturating_sub(at);
            if late_ms > catchup_window_ms(&spec).saturating_add(CATCHUP_GRACE_MS) {
                self.change_schedule(&name, |s| s.missed += 1);
            } else if let Some(reason) = self
                .fire_time(ctx, &name, nominal_ms, events)
                .problem(&name, nominal_ms)
            {
                self.change_schedule(&name, |s| {
                    s.skipped += 1;
                    s.last_error = reason;
                });
            }
            self.change_schedule(&name, |s| s.next_ms = next_ms);
        }
    }

    /// One time of schedule `name`, as its overlap policy allows.
    fn fire_time(
        &mut self,
        ctx: ApplyCtx,
        name: &Arc<str>,
        nominal_ms: u64,
        events: &mut Events,
    ) -> Fired {
        // Runs that ended earlier in this entry (a timeout in the same Tick) no longer count.
        self.release_ended_runs(ctx, name, events);
        let schedule = &self.schedules[name];
        if !schedule.running.is_empty() {
            match overlap(&schedule.spec()) {
                pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip => {
                    self.change_schedule(name, |s| s.skipped += 1);
                    return Fired::Skipped;
                }
                pb::OverlapPolicy::BufferOne => {
                    return self.change_schedule(name, |s| {
                        if s.buffered.is_none() {
                            s.buffered = Some(nominal_ms);
                            Fired::Buffered
                        } else {
                            s.skipped += 1;
                            Fired::Skipped
                        }
                    });
                }
                pb::OverlapPolicy::Allow => {}
                pb::OverlapPolicy::CancelPrevious => {
                    // Nothing is cancelled for a run that cannot start: no spec, or its
                    // namespace's quota would refuse it even with the runs it replaces gone.
                    let submit = match self.run_submit(name, schedule, String::new()) {
                        Ok(submit) => submit,
                        Err(reason) => {
                            return Fired::Failed(format!(
                                "schedule {name}: no run for {nominal_ms}: {reason}"
                            ));
                        }
                    };
                    let namespace = split_scoped(name).0;
                    if !self.quotas(namespace).is_none() {
                        let running = schedule.running.clone();
                        self.count_live_so_far(events);
                        let mut freed = Live::default();
                        for (_, id) in &running {
                            if let Some(w) = self.workflows.get(id) {
                                let counted = Self::counted(w);
                                freed.running += counted.running;
                                freed.active_steps += counted.active_steps;
                            }
                        }
                        let roots =
                            pb::WorkflowSpec::decode(submit.spec.as_slice()).map_or(0, |spec| {
                                spec.steps
                                    .iter()
                                    .filter(|s| s.depends_on.is_empty() && !is_wait(s))
                                    .count()
                            }) as u64;
                        if let Some(over) = self.over_quota(namespace, roots, true, freed) {
                            return Fired::OverQuota(over);
                        }
                    }
                    let running = self.change_schedule(name, |s| std::mem::take(&mut s.running));
                    for (_, id) in running {
                        if self
                            .workflows
                            .get(&id)
                            .is_some_and(|w| !w.state.is_terminal())
                        {
                            self.end_workflow(
                                ctx,
                                id,
                                WorkflowState::Cancelled,
                                format!(
                                    "cancelled by schedule {name}: its run for {} replaces it \
                                     (overlap cancel_previous)",
                                    baton_proto::schedule::format_time_ms(nominal_ms)
                                ),
                                format!("schedule {}", split_scoped(name).1),
                                events,
                            );
                        }
                    }
                }
            }
        }
        self.start_run(ctx, name, nominal_ms, true, events)
    }

    /// Takes the runs of `name` that ended out of its running list; a buffered time starts once
    /// none is left (unless the schedule is paused). A buffered time that cannot start is
    /// counted as skipped.
    fn release_ended_runs(&mut self, ctx: ApplyCtx, name: &Arc<str>, events: &mut Events) {
        let workflows = &self.workflows;
        let ended = |id: &WorkflowId| workflows.get(id).is_none_or(|w| w.state.is_terminal());
        if !self.schedules[name].running.iter().any(|(_, id)| ended(id)) {
            return;
        }
        let workflows = self.workflows.clone();
        let ready = self.change_schedule(name, |s| {
            s.running
                .retain(|(_, id)| workflows.get(id).is_some_and(|w| !w.state.is_terminal()));
            if s.running.is_empty() && !s.paused {
                s.buffered.take()
            } else {
                None
            }
        });
        if let Some(nominal_ms) = ready
            && let Some(reason) = self
                .start_run(ctx, name, nominal_ms, true, events)
                .problem(name, nominal_ms)
        {
            self.change_schedule(name, |s| {
                s.skipped += 1;
                s.last_error = reason;
            });
        }
    }

    /// What a run of `schedule` starts: its workflow, or its template's version (the latest
    /// unless it names one), with its params resolved against that spec's declarations.
    fn run_submit(
        &self,
        name: &str,
        schedule: &Schedule,
        key: String,
    ) -> Result<SubmitCommand, String> {
        let spec = schedule.spec();
        let namespace = split_scoped(name).0;
        let template_key = scoped_name(namespace, &spec.template);
        let (bytes, template) = if spec.template.is_empty() {
            (schedule.workflow.clone(), None)
        } else {
            let found = self
                .template(&template_key)
                .and_then(|t| Some((t, t.version(spec.template_version)?)));
            let Some((_, version)) = found else {
                return Err(format!(
                    "template {:?}{} does not exist",
                    spec.template,
                    match spec.template_version {
                        0 => String::new(),
                        v => format!(" version {v}"),
                    }
                ));
            };
            let name = self
                .templates
                .get_key_value(template_key.as_str())
                .map(|(k, _)| k.clone())
                .expect("found above");
            (
                version.spec.clone(),
                Some(TemplateRef {
                    name,
                    version: version.version,
                }),
            )
        };
        let decoded = pb::WorkflowSpec::decode(bytes.as_slice())
            .map_err(|e| format!("the workflow spec does not decode: {e}"))?;
        let params = resolve_params(&decoded, &schedule.params).map_err(|e| e.to_string())?;
        // A key the run's values render badly (a template version changed its key): refused
        // here, so the schedule reports it instead of losing the run.
        super::keys::Keys::render(&decoded, &params).map_err(|e| e.to_string())?;
        Ok(SubmitCommand {
            // The schedule starts it: its history and the audit trail say so.
            actor: format!("schedule {}", split_scoped(name).1),
            spec: bytes,
            idempotency_key: key,
            params,
            template,
            namespace: match namespace {
                DEFAULT_NAMESPACE => String::new(),
                other => other.to_string(),
            },
        })
    }

    /// Starts the run of `name` for `nominal_ms`: `AlreadyRun` when that time has a run, or
    /// `Failed` when there is nothing to run (the caller counts it, or refuses its command).
    /// A `tracked` run joins the running list the overlap policy looks at (a backfill's does
    /// not: backfills run whatever the policy).
    fn start_run(
        &mut self,
        ctx: ApplyCtx,
        name: &Arc<str>,
        nominal_ms: u64,
        tracked: bool,
        events: &mut Events,
    ) -> Fired {
        let schedule = &self.schedules[name];
        let submit = match self.run_submit(name, schedule, run_key(name, nominal_ms)) {
            Ok(submit) => submit,
            Err(reason) => {
                return Fired::Failed(format!(
                    "schedule {name}: no run for {nominal_ms}: {reason}"
                ));
            }
        };
        let run = ScheduledRun {
            name: name.clone(),
            nominal_ms,
        };
        match self.submit_run(ctx, submit, Some(run), events) {
            Response::Submitted {
                workflow_id,
                created: true,
            } => {
                self.change_schedule(name, |s| {
                    if tracked {
                        s.running.push((nominal_ms, workflow_id));
                    }
                    s.started += 1;
                    s.last_run = Some((nominal_ms, workflow_id));
                    s.last_error.clear();
                });
                Fired::Started(workflow_id)
            }
            Response::OverQuota(over) => Fired::OverQuota(over),
            Response::Submitted { created: false, .. } => Fired::AlreadyRun,
            Response::Rejected { reason } => Fired::Failed(format!(
                "schedule {name}: no run for {nominal_ms}: {reason}"
            )),
            other => Fired::Failed(format!(
                "schedule {name}: no run for {nominal_ms}: unexpected {other:?}"
            )),
        }
    }

    /// After every command: a schedule's run that ended leaves its running list (and lets a
    /// buffered time start); one that a retry runs again joins it again.
    pub(super) fn schedule_runs_ended(&mut self, ctx: ApplyCtx, start: usize, events: &mut Events) {
        if self.schedules.is_empty() {
            return;
        }
        let changed: Vec<(WorkflowId, bool)> = events[start..]
            .iter()
            .filter_map(|e| match pb::EventKind::try_from(e.kind) {
                Ok(pb::EventKind::WorkflowFinished) => Some((WorkflowId(e.workflow_id), true)),
                Ok(pb::EventKind::WorkflowRetried) => Some((WorkflowId(e.workflow_id), false)),
                _ => None,
            })
            .collect();
        for (id, ended) in changed {
            let Some(workflow) = self.workflows.get(&id) else {
                continue;
            };
            // A retry that ended its workflow at once (every rerun step skipped) runs nothing.
            if !ended && workflow.state.is_terminal() {
                continue;
            }
            let Some(run) = workflow.schedule.clone() else {
                continue;
            };
            let Some(name) = self.schedule_name(&run.name) else {
                continue; // deleted
            };
            if ended {
                self.release_ended_runs(ctx, &name, events);
            } else {
                self.change_schedule(&name, |s| {
                    s.running.retain(|(_, w)| *w != id);
                    s.running.push((run.nominal_ms, id));
                });
            }
        }
    }

    /// The invariants of the schedules: the due index is what they say, and every running run
    /// is a running workflow of its schedule.
    pub(super) fn check_schedules(&self) {
        assert_eq!(
            self.schedule_due,
            self.derive_schedule_due(),
            "schedule due index"
        );
        for (name, schedule) in &self.schedules {
            for (nominal_ms, id) in &schedule.running {
                let workflow = self
                    .workflows
                    .get(id)
                    .unwrap_or_else(|| panic!("schedule {name} runs {id}, which is gone"));
                assert!(
                    !workflow.state.is_terminal(),
                    "schedule {name} lists {id} as running; it ended"
                );
                assert_eq!(
                    workflow.schedule.as_ref().map(|s| (&*s.name, s.nominal_ms)),
                    Some((&**name, *nominal_ms)),
                    "schedule {name}'s run {id}"
                );
            }
        }
    }
}
