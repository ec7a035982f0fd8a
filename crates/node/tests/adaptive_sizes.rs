//! Regression: a content-dependent codec (JPEG) whose size prior is far too big was never sent,
//! so its real size was never learned and the device stayed home (PP-OCR det on the EVDO trace:
//! the photo prior for a 640 × 480 page is 2.2× what a page of text costs). The device now
//! measures such sizes off the link, from the input of frames it did not send that way.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::Codec;
use cleave_engine::{Engine, EngineConfig};
use cleave_node::EdgeClient;
use cleave_node::adaptive::{AdaptiveConfig, Hedge};
use cleave_plan::ProblemBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_the_prior_makes_too_big_is_measured_and_then_sent() {
    let tiny = common::serve_tiny(common::loopback_config()).await;
    let graph = tiny.graph.clone();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let edge = common::edge_profile(&engine, &graph);
    let jpeg: Codec = "jpeg75".parse().unwrap();
    // The device is 20× slower than the edge (and really sleeps so), and may send only the
    // input, only as a JPEG, whose prior says 1 GB: no link carries that faster than the
    // device computes.
    let slowdown = 20.0;
    let mut problem =
        ProblemBuilder::new(&graph, &edge.scaled(slowdown, "device")).server(edge.clone()).codecs(vec![jpeg]).build();
    let last = graph.last_cut();
    cleave_node::adaptive::restrict_cuts(&mut problem, &[0].into_iter().collect());
    assert!(problem.drop[0][0].is_finite(), "JPEG must apply to the image input");
    problem.set_bytes(0, jpeg, 1 << 30).unwrap();

    let client = EdgeClient::connect(&tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let config = AdaptiveConfig {
        model_name: "tiny".into(),
        timeout: Duration::from_secs(30),
        device_slowdown: slowdown,
        down_bps: None,
        probe: true,
        hedge: Hedge::Off,
        fleet: false,
    };
    let mut device = common::ready_device(engine, graph.clone(), &client, problem, config).await;
    let mut recs = vec![];
    for k in 0..6 {
        let (rec, out) = device.frame(k, common::input(&graph, k as u64), Instant::now()).await;
        assert!(out.contains_key("logits"), "frame {k}");
        recs.push(rec);
        // The gap between frames, in which the size is measured.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<(usize, u64)> = recs.iter().map(|r| (r.cut, r.bytes_up)).collect();
    assert_eq!(recs[0].cut, last, "with a 1 GB prior the first frame stays home: {seen:?}");
    let sent: Vec<_> = recs.iter().filter(|r| r.cut == 0).collect();
    assert!(!sent.is_empty() && recs.last().unwrap().cut == 0, "the measured size should make it offload: {seen:?}");
    assert!(sent.iter().all(|r| r.codec == Some(jpeg) && r.bytes_up > 0 && r.bytes_up < 64 << 10), "{seen:?}");
}
