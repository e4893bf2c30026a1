//! Schedules on a real three-node cluster: a schedule firing every second starts exactly one run
//! per second while its leader is killed (no time doubled, none skipped: the new leader fires
//! the times the old one did not), and trigger and backfill never start a second run for a time
//! that has one. The rules themselves (overlap policies, catch-up, pause) are tested on the state
//! machine (`state::tests`) and the calendar, daylight saving included, in `baton_proto::schedule`.

use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::schedule_service_client::ScheduleServiceClient;

use crate::common::agent::{Behavior, TestAgent};
use crate::common::{TestCluster, channel, noop_spec, test_timing, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The nominal times of schedule `name`'s runs, read from node `node`, oldest first.
async fn nominal_times(cluster: &TestCluster, node: u64, name: &str) -> Option<Vec<u64>> {
    let listed = cluster
        .workflows(node)
        .await
        .list(pb::ListRequest {
            schedule: name.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let mut times: Vec<u64> = listed
        .workflows
        .iter()
        .map(|w| {
            assert_eq!(
                w.schedule, name,
                "the filter keeps the schedule's runs only"
            );
            w.nominal_time_ms
        })
        .collect();
    times.sort_unstable();
    Some(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_runs_once_per_time_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    let endpoints: Vec<_> = cluster
        .running()
        .iter()
        .map(|&id| cluster.addr(id))
        .collect();
    let _agent = TestAgent::start("a1", 8, endpoints, |_| Behavior::Succeed);
    let mut schedules = ScheduleServiceClient::new(channel(cluster.addr(leader)));
    let spec = pb::ScheduleSpec {
        name: "every-second".into(),
        workflow: Some(noop_spec("tick", 1)),
        every_ms: 1_000,
        overlap: pb::OverlapPolicy::Allow as i32,
        ..Default::default()
    };
    let created = schedules
        .create_schedule(pb::CreateScheduleRequest {
            namespace: Default::default(),
            spec: Some(spec.clone()),
            replace: false,
        })
        .await
        .expect("create")
        .into_inner();
    assert!(created.created && created.next_fire_ms % 1_000 == 0);
    let again = schedules
        .create_schedule(pb::CreateScheduleRequest {
            namespace: Default::default(),
            spec: Some(spec),
            replace: false,
        })
        .await
        .expect_err("the name is taken");
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again}");

    tracing::info!("--- three runs, then the leader dies");
    let before = wait_for(TIMEOUT, "three runs", || async {
        let times = nominal_times(&cluster, leader, "every-second").await?;
        (times.len() >= 3).then_some(times)
    })
    .await;
    cluster.stop(leader).await;
    let survivor = cluster.follower(leader);
    let new_leader = cluster.leader(TIMEOUT).await;
    assert_ne!(new_leader, leader);

    tracing::info!("--- the new leader fires on: every second once, none skipped");
    let last_before = *before.last().expect("three");
    let times = wait_for(TIMEOUT, "three runs after the failover", || async {
        let times = nominal_times(&cluster, survivor, "every-second").await?;
        (times.iter().filter(|&&t| t > last_before + 2_000).count() >= 3).then_some(times)
    })
    .await;
    let first = times[0];
    let expected: Vec<u64> = (0..times.len() as u64).map(|i| first + i * 1_000).collect();
    assert_eq!(
        times, expected,
        "one run per second, none doubled or missed across the failover"
    );
    let mut schedules = ScheduleServiceClient::new(channel(cluster.addr(new_leader)));
    let got = schedules
        .get_schedule(pb::GetScheduleRequest {
            namespace: Default::default(),
            name: "every-second".into(),
            consistency: 0,
        })
        .await
        .expect("get")
        .into_inner();
    let schedule = got.schedule.expect("a schedule");
    assert_eq!(schedule.runs_missed, 0);
    assert_eq!(got.upcoming_ms.len(), 5);

    tracing::info!("--- a backfill of times that ran starts nothing; a trigger starts one run");
    let filled = schedules
        .backfill_schedule(pb::BackfillScheduleRequest {
            namespace: Default::default(),
            name: "every-second".into(),
            from_ms: times[0],
            to_ms: times[2],
        })
        .await
        .expect("backfill")
        .into_inner();
    assert_eq!((filled.started.len(), filled.already_run), (0, 3));
    let fired = schedules
        .trigger_schedule(pb::TriggerScheduleRequest {
            namespace: Default::default(),
            name: "every-second".into(),
        })
        .await
        .expect("trigger")
        .into_inner();
    assert_ne!(fired.workflow_id, 0, "{fired:?}");
    let paused = schedules
        .pause_schedule(pb::PauseScheduleRequest {
            namespace: Default::default(),
            name: "every-second".into(),
            paused: true,
        })
        .await
        .expect("pause")
        .into_inner();
    assert!(paused.changed);
    let missing = schedules
        .trigger_schedule(pb::TriggerScheduleRequest {
            namespace: Default::default(),
            name: "nope".into(),
        })
        .await
        .expect_err("no such schedule");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// Templates on a cluster: versions, a submit by name (latest or a version) recording what it
/// ran, params checked against the template, a schedule of a template.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn templates_are_versioned_and_submitted_by_name() {
    use baton_proto::v1::template_service_client::TemplateServiceClient;
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    // A follower: its answers must see what the leader applied a moment ago.
    let follower = cluster.follower(leader);
    let mut templates = TemplateServiceClient::new(channel(cluster.addr(follower)));
    let mut v1 = noop_spec("report", 1);
    v1.params = vec![pb::ParamSpec {
        name: "region".into(),
        required: true,
        ..Default::default()
    }];
    let mut v2 = v1.clone();
    v2.steps = noop_spec("report", 2).steps;
    for (spec, version, created) in [(&v1, 1, true), (&v1, 1, false), (&v2, 2, true)] {
        let applied = templates
            .apply_template(pb::ApplyTemplateRequest {
                namespace: Default::default(),
                spec: Some(spec.clone()),
            })
            .await
            .expect("apply")
            .into_inner();
        assert_eq!((applied.version, applied.created), (version, created));
    }
    let mut workflows = cluster.workflows(follower).await;
    let submit = |version: u32, params: &[(&str, &str)]| pb::SubmitRequest {
        namespace: Default::default(),
        spec: None,
        idempotency_key: String::new(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        template: "report".into(),
        template_version: version,
    };
    for (version, steps) in [(0, 2), (1, 1)] {
        let id = workflows
            .submit(submit(version, &[("region", "eu")]))
            .await
            .expect("submit a template")
            .into_inner()
            .workflow_id;
        let workflow = workflows
            .get(pb::GetRequest {
                workflow_id: id,
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .workflow
            .expect("a workflow");
        let expected = if version == 0 { 2 } else { version };
        assert_eq!(
            (workflow.template.as_str(), workflow.template_version),
            ("report", expected)
        );
        assert_eq!(workflow.steps.len(), steps);
        assert_eq!(workflow.params["region"], "eu");
    }
    let missing = workflows.submit(submit(0, &[])).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().starts_with("params[\"region\"]: "),
        "{missing}"
    );
    let unknown = workflows
        .submit(submit(7, &[("region", "eu")]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown}");

    tracing::info!("--- a schedule of the template runs its latest version");
    let mut schedules = ScheduleServiceClient::new(channel(cluster.addr(follower)));
    let refused = schedules
        .create_schedule(pb::CreateScheduleRequest {
            namespace: Default::default(),
            spec: Some(pb::ScheduleSpec {
                name: "from-template".into(),
                template: "report".into(),
                every_ms: 1_000,
                ..Default::default()
            }),
            replace: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("params[\"region\"]"),
        "{refused}"
    );
    schedules
        .create_schedule(pb::CreateScheduleRequest {
            namespace: Default::default(),
            spec: Some(pb::ScheduleSpec {
                name: "from-template".into(),
                template: "report".into(),
                every_ms: 1_000,
                params: [("region".to_string(), "us".to_string())].into(),
                ..Default::default()
            }),
            replace: false,
        })
        .await
        .expect("create");
    let run = wait_for(TIMEOUT, "a run of the template's schedule", || async {
        let listed = cluster
            .workflows(follower)
            .await
            .list(pb::ListRequest {
                schedule: "from-template".into(),
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        listed.workflows.into_iter().next()
    })
    .await;
    assert_eq!((run.template.as_str(), run.template_version), ("report", 2));
    assert_eq!(run.params["region"], "us");
}
