//! Regression: a content-dependent codec (JPEG) whose size prior is far too big was never sent,
//! so its real size was never learned and the device stayed home (PP-OCR det on the EVDO trace:
//! the photo prior for a 640 × 480 page is 2.2× what a page of text costs). The device now
//! measures such sizes off the link, from the input of frames it did not send that way.
//!
//! And one frame's size can be far from the smoothed one: on a close call the device encodes
//! the frame first and decides with its exact size.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::Codec;
use cleave_codec::EncodeOptions;
use cleave_engine::{Engine, EngineConfig};
use cleave_node::EdgeClient;
use cleave_node::adaptive::{AdaptiveConfig, AdaptiveDevice, Hedge, LinkEstimates, Strategy};
use cleave_plan::ProblemBuilder;

/// The tiny model served on loopback, and a problem in which the device (`slowdown` of the
/// edge's whole-model ms times slower than the edge) may send only the input, as JPEG q75.
struct JpegBed {
    tiny: common::Tiny,
    engine: Arc<Engine>,
    jpeg: Codec,
    slowdown: f64,
    problem: cleave_plan::Problem,
}

/// A device without hedging (the tests are about what it decides), probing or not.
fn config(slowdown: f64, probe: bool) -> AdaptiveConfig {
    AdaptiveConfig {
        model_name: "tiny".into(),
        timeout: Duration::from_secs(30),
        device_slowdown: slowdown,
        down_bps: None,
        probe,
        hedge: Hedge::Off,
        fleet: false,
    }
}

async fn jpeg_bed(slowdown: impl FnOnce(f64) -> f64) -> JpegBed {
    jpeg_bed_with(slowdown, &[]).await
}

/// [`jpeg_bed`] with `more` codecs besides JPEG q75.
async fn jpeg_bed_with(slowdown: impl FnOnce(f64) -> f64, more: &[Codec]) -> JpegBed {
    let tiny = common::serve_tiny(common::loopback_config()).await;
    let graph = tiny.graph.clone();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let edge = common::edge_profile(&engine, &graph);
    let jpeg: Codec = "jpeg75".parse().unwrap();
    let slowdown = slowdown(edge.prefix()[graph.last_cut()]);
    let codecs = std::iter::once(jpeg).chain(more.iter().copied()).collect();
    let mut problem =
        ProblemBuilder::new(&graph, &edge.scaled(slowdown, "device")).server(edge.clone()).codecs(codecs).build();
    cleave_node::adaptive::restrict_cuts(&mut problem, &[0].into_iter().collect());
    assert!(problem.drop[0][0].is_finite(), "JPEG must apply to the image input");
    JpegBed { tiny, engine, jpeg, slowdown, problem }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_the_prior_makes_too_big_is_measured_and_then_sent() {
    // The device is 20× slower than the edge (and really sleeps so), and may send only the
    // input, only as a JPEG, whose prior says 1 GB: no link carries that faster than the
    // device computes.
    let JpegBed { tiny, engine, jpeg, slowdown, mut problem } = jpeg_bed(|_| 20.0).await;
    let graph = tiny.graph.clone();
    let last = graph.last_cut();
    problem.set_bytes(0, jpeg, 1 << 30).unwrap();

    let client = EdgeClient::connect(&tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let config = config(slowdown, true);
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

/// The largest `jpeg` payload still worth sending in `problem` (every other codec out of
/// reach) at the estimate before any sample (1 Mbit/s, 100 ms), by bisection.
fn break_even(problem: &cleave_plan::Problem, jpeg: Codec) -> u64 {
    let est = LinkEstimates::new().estimate();
    let mut alone = problem.clone();
    for &c in problem.codecs.iter().filter(|&&c| c != jpeg) {
        alone.set_bytes(0, c, 1 << 40).unwrap();
    }
    let offloads = |bytes: u64| {
        let mut p = alone.clone();
        p.set_bytes(0, jpeg, bytes).unwrap();
        cleave_node::adaptive::decide(&p, &est, None).unwrap().cuts[0] == 0
    };
    let (mut lo, mut hi) = (1u64, 1u64 << 30);
    assert!(offloads(lo) && !offloads(hi));
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if offloads(mid) { lo = mid } else { hi = mid }
    }
    lo
}

/// Two JPEG qualities are in doubt on a close call (priors 1.3× and 1.4× the break-even): the
/// device encodes one, scales the other by what it measured, and decides. It used to encode
/// both, about 3 ms of a 15 %-of-a-core device's CPU each for a 640 × 480 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_call_between_two_jpeg_qualities_costs_one_encode() {
    let jpeg90: Codec = "jpeg90".parse().unwrap();
    let JpegBed { tiny, engine, jpeg, slowdown, mut problem } =
        jpeg_bed_with(|whole_ms| (400.0 / whole_ms.max(0.01)).max(2.0), &[jpeg90]).await;
    let graph = tiny.graph.clone();
    let even = break_even(&problem, jpeg);
    problem.set_bytes(0, jpeg, even * 13 / 10).unwrap();
    problem.set_bytes(0, jpeg90, even * 14 / 10).unwrap();
    // Both in doubt: either one at 1/1.5 of its prior would be sent.
    assert!(even * 14 / 10 * 2 / 3 < break_even(&problem, jpeg90));

    let client = EdgeClient::connect(&tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let mut device = AdaptiveDevice::new(
        engine,
        graph.clone(),
        Some(client.clone()),
        problem,
        Strategy::Adaptive,
        config(slowdown, false),
    )
    .unwrap();
    device.prepare().unwrap();
    device.warm_server(&client).await.unwrap();
    let input = common::input(&graph, 0);
    let (_, actual) = device.request(0, 0, EncodeOptions::new(jpeg), &input).unwrap();
    assert!(actual * 2 < even, "this frame's JPEG ({actual} B) must be well under the break-even ({even} B)");

    let (rec, out) = device.frame(0, input, Instant::now()).await;
    assert!(out.contains_key("logits"));
    assert_eq!(rec.sizing_encodes, 1, "{rec:?}");
    // The device's own cost of the frame is on record (CPU time: at least the encode).
    #[cfg(unix)]
    assert!(
        rec.cpu_ms.is_some_and(|c| c > 0.0) && rec.cpu_to_send_ms.is_some() && rec.page_faults.is_some(),
        "{rec:?}"
    );
    assert_eq!((rec.cut, rec.codec, rec.bytes_up), (0, Some(jpeg), actual), "{rec:?}");
}

/// The smoothed JPEG size is 1.3× the size at which offloading stops paying (at the estimate
/// before any sample: 1 Mbit/s, 100 ms), but this frame's JPEG is a fraction of it: the frame
/// is offloaded, as its JPEG. Deciding on the smoothed size alone kept it home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_call_is_settled_by_the_frames_own_jpeg_size() {
    // A device whose whole model takes about 400 ms by its profile.
    let JpegBed { tiny, engine, jpeg, slowdown, mut problem } =
        jpeg_bed(|whole_ms| (400.0 / whole_ms.max(0.01)).max(2.0)).await;
    let graph = tiny.graph.clone();
    let last = graph.last_cut();
    let lo = break_even(&problem, jpeg);
    problem.set_bytes(0, jpeg, lo * 13 / 10).unwrap();

    let client = EdgeClient::connect(&tiny.server.grpc_addr.to_string(), 64 << 20).await.unwrap();
    let config = config(slowdown, false);
    let mut device =
        AdaptiveDevice::new(engine, graph.clone(), Some(client.clone()), problem, Strategy::Adaptive, config).unwrap();
    device.prepare().unwrap();
    device.warm_server(&client).await.unwrap();
    let input = common::input(&graph, 0);
    let (_, actual) = device.request(0, 0, EncodeOptions::new(jpeg), &input).unwrap();
    assert!(actual * 2 < lo, "this frame's JPEG ({actual} B) must be well under the break-even ({lo} B)");

    let (rec, out) = device.frame(0, input, Instant::now()).await;
    assert!(out.contains_key("logits"));
    assert_eq!((rec.cut, rec.codec, rec.bytes_up), (0, Some(jpeg), actual), "{rec:?}");
    assert_ne!(rec.cut, last);
}
