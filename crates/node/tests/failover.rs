//! Failover across two in-process servers, health detection, and request-id de-duplication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_link::{LinkConfig, LinkProxy};
use cleave_node::server::registry::{ModelEntry, Registry};
use cleave_node::{
    ClientSecurity, Device, DeviceConfig, EdgeClient, Endpoints, FailoverConfig, FrameOutput, FrameStatus,
    RunningServer, ServerConfig,
};
use prost::Message;

struct Model {
    graph: Arc<ModelGraph>,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn model() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.onnx");
    let bytes = zoo::tiny_resnet(3).encode_to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let graph = Arc::new(ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap());
    Model { graph, path, _dir: dir }
}

async fn server(m: &Model) -> RunningServer {
    let mut registry = Registry::default();
    registry.add(ModelEntry::load("tiny", &m.path, &InputShapes::none()).unwrap()).unwrap();
    let config = ServerConfig {
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        metrics_addr: Some(([127, 0, 0, 1], 0).into()),
        ..Default::default()
    };
    RunningServer::start(registry, config).await.unwrap()
}

fn device(m: &Model, endpoints: Arc<Endpoints>, fps: f64, timeout: Duration) -> Arc<Device> {
    let config = DeviceConfig {
        model_name: "tiny".into(),
        cut: 3,
        encode: EncodeOptions::new(Codec::Int8),
        max_in_flight: 4,
        timeout: Some(timeout),
        fps: Some(fps),
        check: true,
    };
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    Arc::new(Device::with_endpoints(engine, m.graph.clone(), Some(endpoints), config).unwrap())
}

fn frames(g: &ModelGraph, n: usize) -> Vec<TensorMap> {
    (0..n).map(|k| g.inputs().iter().map(|s| (s.name.clone(), random_input(s, k as u64))).collect()).collect()
}

/// Every frame has one answer, correct (remote within the codec's bound, or local and exact),
/// before its deadline.
fn assert_history(out: &[FrameOutput], n: usize, timeout: Duration) {
    assert_eq!(out.len(), n);
    for (k, f) in out.iter().enumerate() {
        let r = &f.record;
        assert_eq!(r.frame, k);
        assert!(!f.outputs.is_empty(), "frame {k} has no outputs: {:?}", r.error);
        let c = r.check.as_ref().unwrap_or_else(|| panic!("frame {k} was not checked"));
        match r.status {
            FrameStatus::Remote => {
                assert!(c.vs_local_tail < 1e-4, "frame {k}: the server's tail differs: {c:?}");
                assert!(c.boundary_error_vs_bound <= 1.0, "frame {k}: {c:?}");
            }
            FrameStatus::LocalFallback => assert!(c.vs_whole < 1e-5, "frame {k}: degraded but wrong: {c:?}"),
            s => panic!("frame {k}: unexpected status {s:?}"),
        }
        assert!(
            r.total_ms <= timeout.as_secs_f64() * 1e3,
            "frame {k} answered after its deadline: {:.1} ms > {timeout:?}",
            r.total_ms
        );
    }
}

/// A probe timeout generous enough that a loaded test machine does not mark a healthy server
/// down (the default, 100 ms, is for detection speed; see `cleave bench chaos`).
fn config() -> FailoverConfig {
    FailoverConfig {
        probe_interval: Duration::from_millis(30),
        probe_timeout: Duration::from_millis(400),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_primary_fails_over_and_traffic_returns_when_it_recovers() {
    let m = model();
    let (a, b) = (server(&m).await, server(&m).await);
    let proxy = LinkProxy::start(a.grpc_addr, LinkConfig::default()).await.unwrap();
    let addrs = vec![proxy.local_addr().to_string(), b.grpc_addr.to_string()];
    let endpoints = Arc::new(
        Endpoints::connect(&addrs, 64 << 20, &ClientSecurity::default(), config(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let timeout = Duration::from_secs(2);
    let dev = device(&m, endpoints.clone(), 50.0, timeout);
    let n = 150;
    let link = proxy.handle();
    let nemesis = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let at = Instant::now();
        link.blackhole(true);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        link.blackhole(false);
        at
    });
    let out = dev.run(frames(&m.graph, n)).await;
    let injected = nemesis.await.unwrap();
    assert_history(&out, n, timeout);

    let a_addr = &addrs[0];
    let by = |addr: &str| out.iter().filter(|f| f.record.endpoint.as_deref() == Some(addr)).count();
    assert!(by(a_addr) > 0 && by(&addrs[1]) > 0, "both servers answered: {} and {}", by(a_addr), by(&addrs[1]));
    // Frames after the recovery went back to the primary.
    let last = out.last().unwrap();
    assert_eq!(last.record.endpoint.as_deref(), Some(a_addr.as_str()), "{:?}", last.record);
    let events = endpoints.events();
    let down = events
        .iter()
        .find(|e| e.endpoint == 0 && !e.up && e.at >= injected)
        .unwrap_or_else(|| panic!("the primary was not marked down after the fault: {events:?}"));
    assert!(events.iter().any(|e| e.endpoint == 0 && e.up && e.at > down.at), "and back up: {events:?}");
    // A frame caught in flight was re-sent, not lost.
    assert!(out.iter().any(|f| f.record.attempts > 1 && f.record.status == FrameStatus::Remote) || by(&addrs[1]) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_server_gone_frames_complete_locally_and_degraded() {
    let m = model();
    let a = server(&m).await;
    let addrs = vec![a.grpc_addr.to_string()];
    let endpoints = Arc::new(
        Endpoints::connect(&addrs, 64 << 20, &ClientSecurity::default(), config(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    a.shutdown().await.unwrap();
    let timeout = Duration::from_secs(2);
    let out = device(&m, endpoints.clone(), 100.0, timeout).run(frames(&m.graph, 20)).await;
    assert_history(&out, 20, timeout);
    assert!(out.iter().all(|f| f.record.status == FrameStatus::LocalFallback), "no server: all local");
    assert!(!endpoints.is_up(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_at_start_is_skipped_and_probed() {
    let m = model();
    let b = server(&m).await;
    // A port nobody listens on (bound, then closed).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let addrs = vec![dead.to_string(), b.grpc_addr.to_string()];
    let endpoints = Arc::new(
        Endpoints::connect(&addrs, 64 << 20, &ClientSecurity::default(), config(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert!(!endpoints.is_up(0) && endpoints.is_up(1));
    let timeout = Duration::from_secs(2);
    let out = device(&m, endpoints, 100.0, timeout).run(frames(&m.graph, 10)).await;
    assert_history(&out, 10, timeout);
    for f in &out {
        assert!(f.record.status == FrameStatus::Remote && f.record.attempts == 1, "{:?}", f.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_computed_once() {
    let m = model();
    let a = server(&m).await;
    let addr = a.grpc_addr.to_string();
    let client = EdgeClient::connect(&addr, 64 << 20).await.unwrap();
    let endpoints = Arc::new(Endpoints::from_clients(vec![client.clone()], config()));
    let dev = device(&m, endpoints, 100.0, Duration::from_secs(5));
    let env = dev.head_output(&frames(&m.graph, 1)[0]).unwrap();
    let (req, _) = dev.request(7, &env).unwrap();
    // Two copies at once, then a third later: one computation, three equal answers.
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (r1, r2) = tokio::join!(c1.infer(req.clone(), None), c2.infer(req.clone(), None));
    let r3 = client.clone().infer(req.clone(), None).await.unwrap();
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    for r in [&r2, &r3] {
        assert_eq!(r.outputs.len(), r1.outputs.len());
        for (x, y) in r.outputs.iter().zip(&r1.outputs) {
            assert_eq!(x.data, y.data, "a copy got a different answer");
        }
    }
    let m = a.state.metrics.model("tiny");
    assert_eq!(m.inference_count.load(std::sync::atomic::Ordering::Relaxed), 1, "computed once");
    assert_eq!(m.deduplicated.load(std::sync::atomic::Ordering::Relaxed), 2);
    // A request with another id computes.
    let (other, _) = dev.request(8, &env).unwrap();
    let resp = client.clone().infer(other, None).await.unwrap();
    assert!(resp.outputs.len() == r1.outputs.len());
    assert_eq!(m.inference_count.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Degraded with no time for the local tail: the device answers with the early exit its head
/// already computed, and that answer is the exit's local reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_and_no_time_for_the_tail_the_device_answers_at_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exit.onnx");
    let bytes = zoo::with_exit(5).encode_to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let graph = Arc::new(ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap());
    let mut registry = Registry::default();
    registry.add(ModelEntry::load("exit", &path, &InputShapes::none()).unwrap()).unwrap();
    let server_config =
        ServerConfig { grpc_addr: ([127, 0, 0, 1], 0).into(), metrics_addr: None, ..Default::default() };
    let server = RunningServer::start(registry, server_config).await.unwrap();
    let endpoints = Arc::new(
        Endpoints::connect(
            &[server.grpc_addr.to_string()],
            64 << 20,
            &ClientSecurity::default(),
            config(),
            Duration::from_secs(5),
        )
        .await
        .unwrap(),
    );
    server.shutdown().await.unwrap();
    let cut = graph.first_cut_after("exit_1").unwrap();
    let device_config = DeviceConfig {
        model_name: "exit".into(),
        cut,
        encode: EncodeOptions::new(Codec::Fp32),
        max_in_flight: 1,
        // Shorter than any local tail: only the exit can answer in time.
        timeout: Some(Duration::from_micros(10)),
        fps: None,
        check: true,
    };
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let dev = Arc::new(Device::with_endpoints(engine, graph.clone(), Some(endpoints), device_config).unwrap());
    let out = dev.run(frames(&graph, 5)).await;
    for f in &out {
        let r = &f.record;
        assert_eq!(r.status, FrameStatus::LocalFallback, "{r:?}");
        assert!(r.error.as_deref().unwrap_or("").contains("early exit exit_1"), "{r:?}");
        assert_eq!(f.outputs.keys().collect::<Vec<_>>(), ["exit_1"], "{r:?}");
        assert!(r.check.as_ref().unwrap().vs_whole < 1e-6, "the exit's own reference: {r:?}");
    }
}
