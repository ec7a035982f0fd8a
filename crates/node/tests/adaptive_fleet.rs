//! The real adaptive device in fleet mode (`cleave run --cut adaptive --fleet` against
//! `cleave serve --coordinate`): it reports its options, receives the edge's joint plan in every
//! answer, and follows it, even when its own plan would have chosen otherwise.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::Codec;
use cleave_engine::{Engine, EngineConfig};
use cleave_graph::ModelGraph;
use cleave_node::EdgeClient;
use cleave_node::adaptive::{self, AdaptiveConfig, AdaptiveRecord, Hedge};
use cleave_node::server::coord::CoordConfig;
use cleave_plan::ProblemBuilder;

/// How much slower than this machine the device is, really (it sleeps) and in its profile.
const SLOWDOWN: f64 = 20.0;

struct Bed {
    tiny: common::Tiny,
    graph: Arc<ModelGraph>,
    engine: Arc<Engine>,
    problem: cleave_plan::Problem,
}

/// A coordinating server on loopback whose joint plan may fill `max_utilization` of its one
/// worker, and a problem (cut 0 or device-only) in which the device is 20× slower than the
/// edge, so that a device alone offloads.
async fn bed(max_utilization: f64) -> Bed {
    let mut config = common::loopback_config();
    config.batch.workers = 1;
    // Re-planned every 20 ms (250 by default), so that a short test sees several plans.
    config.coordination =
        Some(CoordConfig { max_utilization, period: Duration::from_millis(20), ..Default::default() });
    let tiny = common::serve_tiny(config).await;
    let graph = tiny.graph.clone();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let edge = common::edge_profile(&engine, &graph);
    let mut problem = ProblemBuilder::new(&graph, &edge.scaled(SLOWDOWN, "device"))
        .server(edge.clone())
        .codecs(vec![Codec::Fp32, Codec::Int8])
        .build();
    adaptive::restrict_cuts(&mut problem, &BTreeSet::from([0]));
    Bed { tiny, graph, engine, problem }
}

/// Runs `frames` frames released every `gap` (on a schedule, not waiting: the fps the device
/// reports is the release rate) and returns their records.
async fn run(bed: &Bed, fleet: bool, frames: usize, gap: Duration) -> Vec<AdaptiveRecord> {
    let client = EdgeClient::connect(&bed.tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let config = AdaptiveConfig {
        model_name: "tiny".into(),
        timeout: Duration::from_secs(30),
        device_slowdown: SLOWDOWN,
        down_bps: None,
        probe: false,
        hedge: Hedge::Off,
        fleet,
    };
    let mut device =
        common::ready_device(bed.engine.clone(), bed.graph.clone(), &client, bed.problem.clone(), config).await;
    let t0 = Instant::now();
    let mut recs = vec![];
    for k in 0..frames {
        let release = t0 + gap * k as u32;
        tokio::time::sleep_until(release.into()).await;
        let (rec, out) = device.frame(k, common::input(&bed.graph, k as u64), release).await;
        assert!(out.contains_key("logits"), "frame {k} has no answer: {rec:?}");
        recs.push(rec);
    }
    recs
}

fn summary(recs: &[AdaptiveRecord]) -> String {
    recs.iter()
        .map(|r| format!("{}:{:?}:{:?}:{:?}", r.cut, r.fleet_plan, r.followed, r.compute_ms))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Regression for issue 7's gap: the server's plan reached only the bench's simulated devices.
/// The edge may fill 5% of its worker; this device's frames at its release rate would fill
/// more, so the joint plan keeps it home, and the device follows although alone (a device
/// not in the fleet, same server) it offloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_device_follows_the_edges_plan_to_stay_home() {
    let bed = bed(0.05).await;
    let last = bed.graph.last_cut();
    // 200 releases a second: with any tail compute ≥ 0.25 ms that is ≥ 5% of the worker.
    let gap = Duration::from_millis(5);

    let alone = run(&bed, false, 12, gap).await;
    assert!(alone.iter().all(|r| r.fleet_plan.is_none() && r.followed.is_none()), "{}", summary(&alone));
    let sent = alone.iter().filter(|r| r.cut == 0).count();
    assert!(sent >= 10, "a device alone should offload (20× slower than the edge): {}", summary(&alone));

    let recs = run(&bed, true, 24, gap).await;
    let home = format!("{last}:-");
    assert!(
        recs.iter().any(|r| r.fleet_plan.as_deref() == Some(home.as_str())),
        "the edge never recommended device-only: {}",
        summary(&recs)
    );
    // Once the recommendation reflects the release rate (a few frames), every frame follows it.
    let tail = &recs[12..];
    assert!(
        tail.iter().all(|r| r.cut == last && r.followed == Some(true) && r.fleet_plan.as_deref() == Some(&home)),
        "{}",
        summary(&recs)
    );
    assert!(tail.iter().all(|r| r.bytes_up == 0), "{}", summary(&recs));
}

/// With room on the edge, the joint plan lets the device offload, and it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_room_on_the_edge_the_plan_offloads() {
    let bed = bed(0.95).await;
    let recs = run(&bed, true, 12, Duration::from_millis(50)).await;
    let tail = &recs[6..];
    assert!(
        tail.iter().all(|r| r.cut == 0
            && r.followed == Some(true)
            && r.fleet_plan.as_deref().is_some_and(|p| p.starts_with("0:"))),
        "{}",
        summary(&recs)
    );
}
