//! The server in-process on port 0: correctness of tails, batching, hostile requests, deadlines,
//! overload and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input, relative_error};
use cleave_graph::ModelGraph;
use cleave_node::server::batcher::BatchConfig;
use cleave_node::{Device, DeviceConfig, EdgeClient, FrameStatus, RunningServer, ServerConfig};
use cleave_proto::inference::model_infer_request::InferInputTensor;
use cleave_proto::inference::*;
use cleave_proto::wire;
use tonic::Code;

struct Fixture {
    server: RunningServer,
    graph: Arc<ModelGraph>,
    _dir: tempfile::TempDir,
}

async fn start(batch: BatchConfig, max_message_bytes: usize) -> Fixture {
    let config = ServerConfig {
        metrics_addr: Some(([127, 0, 0, 1], 0).into()),
        max_message_bytes,
        batch,
        ..common::loopback_config()
    };
    let common::Tiny { server, graph, dir } = common::serve_tiny(config).await;
    Fixture { server, graph, _dir: dir }
}

async fn client(f: &Fixture) -> EdgeClient {
    EdgeClient::connect(&f.server.grpc_addr.to_string(), 64 << 20).await.unwrap()
}

fn device(f: &Fixture, c: EdgeClient, cut: usize, codec: Codec) -> Arc<Device> {
    let config = DeviceConfig {
        model_name: "tiny".into(),
        cut,
        encode: EncodeOptions::new(codec),
        max_in_flight: 4,
        timeout: Some(Duration::from_secs(10)),
        fps: None,
        check: true,
    };
    Arc::new(Device::new(Arc::new(Engine::new(EngineConfig::default())), f.graph.clone(), Some(c), config).unwrap())
}

fn frames(g: &ModelGraph, n: usize) -> Vec<TensorMap> {
    (0..n).map(|k| g.inputs().iter().map(|s| (s.name.clone(), random_input(s, k as u64))).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cut_and_codec_gives_the_local_answer() {
    let f = start(BatchConfig::default(), 64 << 20).await;
    let c = client(&f).await;
    for cut in 0..f.graph.last_cut() {
        for codec in [Codec::Fp32, Codec::Int8, Codec::Int2] {
            let out = device(&f, c.clone(), cut, codec).run(frames(&f.graph, 2)).await;
            for frame in out {
                assert_eq!(frame.record.status, FrameStatus::Remote, "cut {cut} {codec}: {:?}", frame.record.error);
                let check = frame.record.check.unwrap();
                assert!(check.vs_local_tail <= 1e-5, "cut {cut} {codec}: the server's tail differs: {check:?}");
                assert!(check.boundary_error_vs_bound <= 1.0, "cut {cut} {codec}: {check:?}");
                if codec == Codec::Fp32 {
                    assert!(check.vs_whole <= 1e-5, "cut {cut}: {check:?}");
                }
            }
        }
    }
    f.server.shutdown().await.unwrap();
}

/// The input sent as a JPEG (cut 0): the server decodes it like any codec and runs the whole
/// model on exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_input_at_cut_0_is_decoded_by_the_server() {
    let f = start(BatchConfig::default(), 64 << 20).await;
    let c = client(&f).await;
    for codec in Codec::JPEG {
        let out = device(&f, c.clone(), 0, codec).run(frames(&f.graph, 2)).await;
        for frame in out {
            assert_eq!(frame.record.status, FrameStatus::Remote, "{codec}: {:?}", frame.record.error);
            assert!(frame.record.bytes_up > 0 && frame.record.bytes_up < 3 * 32 * 32, "{codec}: {:?}", frame.record);
            let check = frame.record.check.unwrap();
            assert!(check.vs_local_tail <= 1e-5, "{codec}: the server's tail differs: {check:?}");
        }
    }
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_batch_and_stay_correct() {
    let f = start(BatchConfig { max_batch: 8, workers: 1, ..Default::default() }, 64 << 20).await;
    let c = client(&f).await;
    let config = DeviceConfig {
        model_name: "tiny".into(),
        cut: 4,
        encode: EncodeOptions::new(Codec::Fp32),
        max_in_flight: 16,
        timeout: Some(Duration::from_secs(10)),
        fps: None,
        check: true,
    };
    let d = Arc::new(
        Device::new(Arc::new(Engine::new(EngineConfig::default())), f.graph.clone(), Some(c), config).unwrap(),
    );
    let out = d.run(frames(&f.graph, 48)).await;
    let batched = out.iter().filter(|o| o.record.batch.unwrap_or(1) > 1).count();
    for o in &out {
        let check = o.record.check.as_ref().unwrap();
        assert!(
            check.vs_whole <= 1e-5,
            "frame {}: batched answers must equal the local ones: {check:?}",
            o.record.frame
        );
    }
    assert!(batched > 0, "16 requests in flight on one worker should batch");
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_requests_skip_the_queue_and_a_queue_delay_still_gathers_a_batch() {
    // No delay: requests one at a time never wait (the short tail runs where it arrives).
    let f = start(BatchConfig { max_batch: 8, workers: 1, ..Default::default() }, 64 << 20).await;
    let mut c = client(&f).await;
    let data = Bytes::from(vec![0u8; 3 * 32 * 32 * 4]);
    for _ in 0..20 {
        let req = raw_request(vec![(image_input(vec![1, 3, 32, 32], 0).0, data.clone())], vec![]);
        let r = c.infer(req, Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(r.batch, Some(1));
        assert!(r.queue_ms.unwrap() < 50.0, "a lone request waited {:?} ms", r.queue_ms);
    }
    let metrics = http_get(f.server.metrics_addr.unwrap(), "/metrics").await;
    assert!(metrics.contains("nv_inference_request_success{model=\"tiny\",version=\"1\"} 20"), "{metrics}");
    assert!(metrics.contains("nv_inference_exec_count{model=\"tiny\",version=\"1\"} 20"), "{metrics}");
    assert!(metrics.contains("nv_inference_pending_request_count{model=\"tiny\",version=\"1\"} 0"), "{metrics}");
    f.server.shutdown().await.unwrap();

    // With a queue delay, even a request that finds a free worker waits for company.
    let f = start(
        BatchConfig { max_batch: 8, workers: 1, max_queue_delay: Duration::from_millis(200), ..Default::default() },
        64 << 20,
    )
    .await;
    let c = client(&f).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut c = c.clone();
        let req = raw_request(vec![(image_input(vec![1, 3, 32, 32], 0).0, data.clone())], vec![]);
        tasks.spawn(async move { c.infer(req, Some(Duration::from_secs(10))).await.unwrap() });
    }
    let batches: Vec<i64> = tasks.join_all().await.iter().map(|r| r.batch.unwrap()).collect();
    assert!(batches.iter().any(|&b| b > 1), "4 requests within a 200 ms queue delay should batch: {batches:?}");
    f.server.shutdown().await.unwrap();
}

fn raw_request(inputs: Vec<(InferInputTensor, Bytes)>, params: Vec<(&str, InferParameter)>) -> ModelInferRequest {
    let (inputs, raw): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
    ModelInferRequest {
        model_name: "tiny".into(),
        inputs,
        raw_input_contents: raw,
        parameters: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Default::default()
    }
}

fn image_input(shape: Vec<i64>, bytes: usize) -> (InferInputTensor, Bytes) {
    (
        InferInputTensor { name: "image".into(), datatype: "FP32".into(), shape, ..Default::default() },
        Bytes::from(vec![0u8; bytes]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_right_code_and_the_server_keeps_serving() {
    let f = start(BatchConfig::default(), 4 << 20).await;
    let mut c = client(&f).await;
    let good = || raw_request(vec![image_input(vec![1, 3, 32, 32], 3 * 32 * 32 * 4)], vec![]);
    let int4 = {
        let data: Vec<u8> = vec![0; 16 * 16 * 16 * 4];
        wire::encode_input("relu_4", cleave_graph::DType::F32, &[1, 16, 16, 16], &data, EncodeOptions::new(Codec::Int4))
            .unwrap()
    };
    let shapes = wire::str_param("image=1,3,32,32");
    let jpeg = {
        let data: Vec<u8> = (0..3 * 32 * 32).flat_map(|i| ((i % 32) as f32 / 31.0).to_le_bytes()).collect();
        wire::encode_input(
            "image",
            cleave_graph::DType::F32,
            &[1, 3, 32, 32],
            &data,
            EncodeOptions::new(Codec::JPEG[0]),
        )
        .unwrap()
    };
    let jpeg_request = |t: InferInputTensor, b: Bytes| {
        raw_request(
            vec![(t, b)],
            vec![(wire::PARAM_CUT, wire::int_param(0)), (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone())],
        )
    };
    let cases: Vec<(&str, ModelInferRequest, Code)> = vec![
        ("wrong length", raw_request(vec![image_input(vec![1, 3, 32, 32], 100)], vec![]), Code::InvalidArgument),
        ("negative dim", raw_request(vec![image_input(vec![1, -3, 32, 32], 0)], vec![]), Code::InvalidArgument),
        (
            "huge dims",
            raw_request(vec![image_input(vec![1 << 31, 1 << 31, 1 << 31, 1 << 31], 0)], vec![]),
            Code::InvalidArgument,
        ),
        ("rank 64", raw_request(vec![image_input(vec![1; 64], 4)], vec![]), Code::InvalidArgument),
        (
            "dtype mismatch",
            {
                let (mut t, b) = image_input(vec![1, 3, 32, 32], 3 * 32 * 32 * 8);
                t.datatype = "FP64".into();
                raw_request(vec![(t, b)], vec![])
            },
            Code::InvalidArgument,
        ),
        (
            "wrong shape",
            raw_request(vec![image_input(vec![1, 3, 16, 16], 3 * 16 * 16 * 4)], vec![]),
            Code::InvalidArgument,
        ),
        ("unknown model", ModelInferRequest { model_name: "nope".into(), ..good() }, Code::NotFound),
        (
            "missing parameter",
            raw_request(vec![int4.clone()], vec![(wire::PARAM_CUT, wire::int_param(1))]),
            Code::InvalidArgument,
        ),
        (
            "unknown codec",
            {
                let (mut t, b) = int4.clone();
                t.parameters.insert(wire::PARAM_CODEC.into(), wire::str_param("int3"));
                raw_request(
                    vec![(t, b)],
                    vec![
                        (wire::PARAM_CUT, wire::int_param(1)),
                        (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone()),
                    ],
                )
            },
            Code::InvalidArgument,
        ),
        (
            "truncated int4",
            {
                let (mut t, b) = int4.clone();
                let short = b.slice(0..b.len() - 7);
                t.shape = vec![short.len() as i64];
                raw_request(
                    vec![(t, short)],
                    vec![
                        (wire::PARAM_CUT, wire::int_param(1)),
                        (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone()),
                    ],
                )
            },
            Code::InvalidArgument,
        ),
        (
            "cut out of range",
            raw_request(
                vec![int4.clone()],
                vec![
                    (wire::PARAM_CUT, wire::int_param(999)),
                    (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone()),
                ],
            ),
            Code::InvalidArgument,
        ),
        (
            "other model file",
            raw_request(
                vec![int4.clone()],
                vec![
                    (wire::PARAM_CUT, wire::int_param(1)),
                    (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone()),
                    (wire::PARAM_MODEL_SHA256, wire::str_param("00ff")),
                ],
            ),
            Code::FailedPrecondition,
        ),
        (
            // Regression (found by reading after fuzzing): the error message cut the client's
            // string at byte 12, inside this multi-byte character, and the handler panicked.
            "non-ASCII model hash",
            raw_request(
                vec![int4.clone()],
                vec![
                    (wire::PARAM_CUT, wire::int_param(1)),
                    (cleave_node::server::PARAM_INPUT_SHAPES, shapes.clone()),
                    (wire::PARAM_MODEL_SHA256, wire::str_param("0123456789aé")),
                ],
            ),
            Code::FailedPrecondition,
        ),
        (
            "truncated jpeg",
            {
                let (mut t, b) = jpeg.clone();
                let short = b.slice(0..b.len() / 2);
                t.shape = vec![short.len() as i64];
                jpeg_request(t, short)
            },
            Code::InvalidArgument,
        ),
        (
            "jpeg of another size than its shape",
            {
                let (mut t, b) = jpeg.clone();
                t.parameters.insert(wire::PARAM_SHAPE.into(), wire::str_param("1,3,32,16"));
                jpeg_request(t, b)
            },
            Code::InvalidArgument,
        ),
        (
            "garbage as jpeg",
            {
                let (mut t, _) = jpeg.clone();
                t.shape = vec![300];
                jpeg_request(t, Bytes::from(vec![0xff; 300]))
            },
            Code::InvalidArgument,
        ),
        // tonic refuses an over-size message from its length prefix, before allocating, with OUT_OF_RANGE.
        ("over the size limit", raw_request(vec![image_input(vec![1, 3, 32, 32], 5 << 20)], vec![]), Code::OutOfRange),
    ];
    for (what, req, code) in cases {
        let err = c.infer(req, Some(Duration::from_secs(10))).await.unwrap_err();
        match err {
            cleave_node::ClientError::Status { code: got, message } => assert_eq!(got, code, "{what}: {message}"),
            other => panic!("{what}: {other}"),
        }
        // The server keeps serving.
        let ok = c.infer(good(), Some(Duration::from_secs(10))).await;
        assert!(ok.is_ok(), "after {what}: {:?}", ok.err());
    }
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_resource_exhausted_and_a_retry_hint() {
    let f = start(BatchConfig { max_batch: 1, max_queue: 2, workers: 1, ..Default::default() }, 64 << 20).await;
    let c = client(&f).await;
    let data = Bytes::from(vec![0u8; 3 * 32 * 32 * 4]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut c = c.clone();
        let req = raw_request(vec![(image_input(vec![1, 3, 32, 32], 0).0, data.clone())], vec![]);
        tasks.spawn(async move { c.infer(req, Some(Duration::from_secs(30))).await });
    }
    let results = tasks.join_all().await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(cleave_node::ClientError::Status { code: Code::ResourceExhausted, .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(refused > 0, "64 concurrent requests against a queue of 2 must see refusals");
    assert_eq!(ok + refused, 64, "every request is either answered or refused");
    // And the retry hint is there.
    let mut raw =
        cleave_proto::GrpcInferenceServiceClient::connect(format!("http://{}", f.server.grpc_addr)).await.unwrap();
    let mut hinted = false;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let mut raw = raw.clone();
        let req = raw_request(vec![(image_input(vec![1, 3, 32, 32], 0).0, data.clone())], vec![]);
        tasks.spawn(async move { raw.model_infer(req).await });
    }
    for r in tasks.join_all().await {
        if let Err(s) = r {
            hinted |= s.code() == Code::ResourceExhausted && s.metadata().get("retry-after-ms").is_some();
        }
    }
    assert!(hinted, "RESOURCE_EXHAUSTED carries retry-after-ms");
    let _ = raw.server_live(ServerLiveRequest {}).await.unwrap();
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_metrics() {
    let f = start(BatchConfig::default(), 64 << 20).await;
    let mut raw =
        cleave_proto::GrpcInferenceServiceClient::connect(format!("http://{}", f.server.grpc_addr)).await.unwrap();
    assert!(raw.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(raw.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    assert!(
        raw.model_ready(ModelReadyRequest { name: "tiny".into(), version: String::new() })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !raw.model_ready(ModelReadyRequest { name: "nope".into(), version: String::new() })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let md = raw
        .model_metadata(ModelMetadataRequest { name: "tiny".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.inputs[0].name, "image");
    assert_eq!(md.inputs[0].shape, vec![-1, 3, 32, 32], "a symbolic batch shows as -1");
    assert_eq!(md.outputs[0].datatype, "FP32");
    let status =
        raw.model_metadata(ModelMetadataRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // One successful whole-model inference shows in the metrics.
    let mut c = client(&f).await;
    let x = random_input(&f.graph.inputs()[0], 5);
    let (t, b) = wire::encode_input(
        "image",
        cleave_graph::DType::F32,
        &[1, 3, 32, 32],
        &cleave_node::convert::bytes_of(&x),
        EncodeOptions::new(Codec::Fp32),
    )
    .unwrap();
    let resp = c.infer(raw_request(vec![(t, b)], vec![]), None).await.unwrap();
    let engine = Engine::new(EngineConfig::default());
    let local = engine.run_split(&f.graph, &[], &[("image".to_string(), x)].into_iter().collect()).unwrap().outputs;
    let remote = cleave_node::convert::to_tensor(&resp.outputs[0]).unwrap();
    assert!(relative_error(&remote, &local["logits"]).unwrap() <= 1e-5);
    assert!(resp.queue_ms.is_some() && resp.compute_ms.is_some(), "responses carry queue and compute time");
    let metrics = http_get(f.server.metrics_addr.unwrap(), "/metrics").await;
    assert!(metrics.contains("nv_inference_request_success{model=\"tiny\",version=\"1\"} 1"), "{metrics}");
    f.server.shutdown().await.unwrap();
}

/// tonic's own timeout layer answers CANCELLED "Timeout expired" when a deadline passes before the
/// request body has been read; once the handler holds the request it answers DEADLINE_EXCEEDED.
fn is_deadline(s: &tonic::Status) -> bool {
    s.code() == Code::DeadlineExceeded || (s.code() == Code::Cancelled && s.message() == "Timeout expired")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_honoured() {
    let f = start(BatchConfig { max_batch: 1, workers: 1, ..Default::default() }, 64 << 20).await;
    let raw =
        cleave_proto::GrpcInferenceServiceClient::connect(format!("http://{}", f.server.grpc_addr)).await.unwrap();
    let good = || raw_request(vec![image_input(vec![1, 3, 32, 32], 3 * 32 * 32 * 4)], vec![]);
    // Already expired on arrival.
    let mut req = tonic::Request::new(good());
    req.set_timeout(Duration::from_nanos(1));
    let status = raw.clone().model_infer(req).await.unwrap_err();
    assert!(is_deadline(&status), "{status:?}");
    raw.clone().model_infer(good()).await.unwrap(); // compiles the model
    // Expiring in the queue behind 200 others on one worker: each answer is a result or a deadline
    // error that comes back near the deadline, not after the queue drained.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut raw = raw.clone();
        let mut req = tonic::Request::new(good());
        req.set_timeout(Duration::from_millis(20));
        tasks.spawn(async move {
            let t0 = std::time::Instant::now();
            (raw.model_infer(req).await, t0.elapsed())
        });
    }
    let mut expired = 0;
    for (r, took) in tasks.join_all().await {
        if let Err(s) = r {
            assert!(is_deadline(&s), "{s:?}");
            assert!(took < Duration::from_millis(1000), "a deadline error came {took:?} after a 20 ms deadline");
            expired += 1;
        }
    }
    println!("{expired}/200 expired");
    // And the server still serves.
    raw.clone().model_infer(good()).await.unwrap();
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_refuses_new_work() {
    let f = start(BatchConfig::default(), 64 << 20).await;
    let c = client(&f).await;
    let d = device(&f, c.clone(), 3, Codec::Fp32);
    let g = f.graph.clone();
    let running = tokio::spawn(async move { d.run(frames(&g, 8)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let state = f.server.state.clone();
    f.server.shutdown().await.unwrap();
    assert!(state.shutting_down.load(std::sync::atomic::Ordering::Acquire));
    // Every frame got exactly one answer: remote if it got in, local otherwise.
    let out = running.await.unwrap();
    assert_eq!(out.len(), 8);
    for o in &out {
        assert!(matches!(o.record.status, FrameStatus::Remote | FrameStatus::LocalFallback));
        assert!(o.outputs.contains_key("logits"));
    }
    let mut c = c;
    let after = c
        .infer(
            raw_request(vec![image_input(vec![1, 3, 32, 32], 3 * 32 * 32 * 4)], vec![]),
            Some(Duration::from_secs(2)),
        )
        .await;
    assert!(after.is_err(), "a stopped server takes no work");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
