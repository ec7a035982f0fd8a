//! Regression: the device's profile, timed operator by operator under a CPU quota, said
//! PP-OCR det costs 859 ms on the device where its device-only frames took 673 (median), and a
//! device that only sends the input never corrects it from a head. The device now times the
//! whole model on its compute thread before the first frame and scales its profile to it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cleave_engine::{Engine, EngineConfig};
use cleave_node::EdgeClient;
use cleave_node::adaptive::{AdaptiveConfig, AdaptiveDevice, Hedge, Strategy};
use cleave_plan::ProblemBuilder;

fn config(slowdown: f64) -> AdaptiveConfig {
    AdaptiveConfig {
        model_name: "tiny".into(),
        timeout: Duration::from_secs(30),
        device_slowdown: slowdown,
        down_bps: None,
        probe: false,
        hedge: Hedge::Off,
        fleet: false,
    }
}

/// The device-only time and the prefix sums after the fit, for a profile `wrong` times what this
/// machine measured, on a device emulating `slowdown`.
async fn fitted(wrong: f64, slowdown: f64) -> (f64, f64, Vec<f64>, Vec<f64>) {
    let tiny = common::serve_tiny(common::loopback_config()).await;
    let graph = tiny.graph.clone();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let here = common::edge_profile(&engine, &graph);
    let problem = ProblemBuilder::new(&graph, &here.scaled(wrong, "device")).server(here.clone()).build();
    let before = problem.device_ms.clone();
    let client = EdgeClient::connect(&tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let mut device =
        AdaptiveDevice::new(engine, graph, Some(client), problem, Strategy::Adaptive, config(slowdown)).unwrap();
    let (said, now, device) = tokio::task::spawn_blocking(move || {
        device.prepare().unwrap();
        let (said, now) = device.fit_device_to_measured().unwrap();
        (said, now, device)
    })
    .await
    .unwrap();
    (said, now, before, device.problem().device_ms.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_far_too_slow_is_fitted_to_the_whole_model_as_timed() {
    let (said, now, before, after) = fitted(30.0, 1.0).await;
    let last = before.len() - 1;
    assert_eq!(said, before[last]);
    assert_eq!(now, after[last]);
    // The profile said 30× what this machine measured a moment ago; the fit must undo most of it.
    assert!(now < said / 5.0, "fitted {now:.2} ms, the profile said {said:.2} ms");
    assert!(now > 0.0);
    // The shape is the profile's: every cut keeps its share of the whole.
    for (b, a) in before.iter().zip(&after) {
        assert!((a / now - b / said).abs() < 1e-9, "share {} became {}", b / said, a / now);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fit_counts_the_emulated_slowdown() {
    // A profile already slowed 8× (as `--device-slowdown 8` makes it) must stay about 8× what
    // the machine does: the fit times the model and adds the sleeps the frames will add.
    let (_, slow, ..) = fitted(8.0, 8.0).await;
    let (_, plain, ..) = fitted(1.0, 1.0).await;
    let ratio = slow / plain;
    assert!((3.0..20.0).contains(&ratio), "slowdown 8 fitted to {slow:.2} ms, none to {plain:.2} ms");
}
