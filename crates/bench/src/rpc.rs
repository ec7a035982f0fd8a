//! `cleave bench rpc`: what the framework costs per frame on loopback, beyond computing.
//!
//! A server ([`cleave_node::RunningServer`]) and a device run in this process, talking gRPC over
//! 127.0.0.1. The model is built here: its input is the boundary tensor (`--boundary-kib`,
//! default 200 KiB of f32) and its tail is a global average pool, so the compute is tiny and the
//! frame's time is almost all framework. For each frame, sent one at a time on one connection:
//!
//! * **encode**: building the request, i.e. the codec and the wire parameters
//!   ([`cleave_node::Device::request`], the code path `cleave run` uses);
//! * **rpc**: the client's call, split by the server's own report into queue, compute and the
//!   rest (serialization, HTTP/2, loopback TCP, deserialization, validation, the response);
//! * **decode**: turning the answer into tensors.
//!
//! The **overhead** is the frame's wall time minus the server's reported compute: everything
//! cleave adds to head + tail compute. Then `--clients` connections send frames concurrently for
//! `--seconds`, for throughput with dynamic batching.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::build::GraphBuilder;
use cleave_graph::{DType, InputShapes, ModelGraph};
use cleave_node::server::batcher::BatchConfig;
use cleave_node::server::registry::{ModelEntry, Registry};
use cleave_node::{Device, DeviceConfig, EdgeClient, RunningServer, ServerConfig};
use serde::Serialize;

use crate::stats::quantile;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// Size of the boundary tensor (f32), in KiB.
    pub boundary_kib: usize,
    /// Timed frames per codec (after warm-up).
    pub frames: usize,
    pub codecs: Vec<Codec>,
    /// Concurrent connections for the throughput run (0 skips it).
    pub clients: usize,
    /// Length of the throughput run.
    pub seconds: f64,
    /// Largest dynamic batch on the server.
    pub max_batch: usize,
    /// Server workers (batches computed at once).
    pub workers: usize,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            boundary_kib: 200,
            frames: 500,
            codecs: vec![Codec::Fp32, Codec::Fp16, Codec::Int8],
            clients: 16,
            seconds: 3.0,
            max_batch: 8,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

/// Per-frame costs with one codec, in microseconds (medians unless named otherwise).
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRow {
    pub codec: String,
    pub boundary_bytes: usize,
    pub bytes_on_wire: usize,
    pub frames: usize,
    pub overhead_p50_us: f64,
    pub overhead_p90_us: f64,
    pub overhead_p99_us: f64,
    pub encode_p50_us: f64,
    /// The call minus the server's queue and compute: transport, (de)serialization, validation,
    /// decoding on the server and encoding the answer.
    pub transport_p50_us: f64,
    pub queue_p50_us: f64,
    pub server_compute_p50_us: f64,
    pub decode_p50_us: f64,
    pub total_p50_us: f64,
    /// The floor under `transport`: a gRPC call carrying the same bytes that the server answers
    /// without decoding, queueing or computing (cleave's probe), on the same connection.
    pub grpc_floor_p50_us: f64,
}

/// Concurrent clients, each on its own connection.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub clients: usize,
    pub codec: String,
    pub seconds: f64,
    pub frames: usize,
    pub failed: usize,
    pub frames_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub mean_batch: f64,
}

/// The report `cleave bench rpc` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct RpcReport {
    pub host: serde_json::Value,
    /// Median round trip of an empty gRPC call (ServerLive) on the same loopback: the latency
    /// floor of any call on this machine, before a single byte of tensor.
    pub empty_call_p50_us: f64,
    pub boundary_shape: Vec<usize>,
    pub goal_overhead_p50_us: f64,
    pub overhead: Vec<OverheadRow>,
    pub throughput: Option<ThroughputRow>,
    pub server_workers: usize,
    pub max_batch: usize,
}

/// Errors of the benchmark's set-up (a failed frame is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum RpcBenchError {
    #[error("the benchmark model: {0}")]
    Model(String),
    #[error("the server: {0}")]
    Server(String),
    #[error("the client: {0}")]
    Client(String),
}

/// The benchmark's model: `features` [N, C, 32, 32] → GlobalAveragePool → Flatten → `pooled`.
pub fn boundary_model(boundary_kib: usize) -> (Vec<u8>, Vec<usize>) {
    use prost::Message;
    let c = (boundary_kib * 1024).div_ceil(32 * 32 * 4).max(1);
    let mut b = GraphBuilder::new("rpc_bench", 1);
    let x = b.input("features", DType::F32, &[0, c, 32, 32]);
    let x = b.global_avg_pool(&x);
    b.flatten(&x);
    b.rename_last("pooled");
    b.output("pooled");
    (b.build().encode_to_vec(), vec![1, c, 32, 32])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs the benchmark (call inside a multi-threaded tokio runtime).
pub async fn run(opts: &RpcOptions) -> Result<RpcReport, RpcBenchError> {
    let (bytes, shape) = boundary_model(opts.boundary_kib);
    let graph = Arc::new(
        ModelGraph::from_bytes(&bytes, &InputShapes::none()).map_err(|e| RpcBenchError::Model(e.to_string()))?,
    );
    let mut registry = Registry::default();
    let entry = ModelEntry::from_bytes("rpc_bench", std::path::Path::new("<built-in>"), bytes, &InputShapes::none())
        .map_err(RpcBenchError::Model)?;
    registry.add(entry).map_err(RpcBenchError::Model)?;
    let config = ServerConfig {
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        metrics_addr: None,
        batch: BatchConfig { max_batch: opts.max_batch, workers: opts.workers.max(1), ..Default::default() },
        ..Default::default()
    };
    let server = RunningServer::start(registry, config).await.map_err(RpcBenchError::Server)?;
    let addr = server.grpc_addr.to_string();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let frame: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();

    let empty_call_p50_us = {
        let mut c = EdgeClient::connect(&addr, 64 << 20).await.map_err(|e| RpcBenchError::Client(e.to_string()))?;
        c.rtt(20).await.map_err(|e| RpcBenchError::Client(e.to_string()))?;
        us(c.rtt(opts.frames.max(1)).await.map_err(|e| RpcBenchError::Client(e.to_string()))?)
    };
    let mut overhead = vec![];
    for &codec in &opts.codecs {
        let client = EdgeClient::connect(&addr, 64 << 20).await.map_err(|e| RpcBenchError::Client(e.to_string()))?;
        let device = device(&engine, &graph, client.clone(), codec)?;
        overhead.push(overhead_row(&device, client, &frame, codec, opts.frames).await?);
    }
    let throughput =
        if opts.clients > 0 { Some(throughput(&engine, &graph, &addr, &frame, opts).await?) } else { None };
    server.shutdown().await.map_err(RpcBenchError::Server)?;
    Ok(RpcReport {
        host: crate::host(),
        empty_call_p50_us,
        boundary_shape: shape,
        goal_overhead_p50_us: 200.0,
        overhead,
        throughput,
        server_workers: opts.workers.max(1),
        max_batch: opts.max_batch,
    })
}

fn device(
    engine: &Arc<Engine>,
    graph: &Arc<ModelGraph>,
    client: EdgeClient,
    codec: Codec,
) -> Result<Device, RpcBenchError> {
    let config = DeviceConfig {
        model_name: "rpc_bench".into(),
        cut: 0,
        encode: EncodeOptions::new(codec),
        max_in_flight: 1,
        timeout: Some(Duration::from_secs(10)),
        fps: None,
        check: false,
    };
    Device::new(engine.clone(), graph.clone(), Some(client), config).map_err(RpcBenchError::Model)
}

/// One frame, timed in its phases: (encode, call, decode, queue, compute, bytes on the wire).
async fn one_frame(
    device: &Device,
    client: &mut EdgeClient,
    frame: &TensorMap,
    k: usize,
) -> Result<(Duration, Duration, Duration, f64, f64, usize), String> {
    let t0 = Instant::now();
    let (req, sent) = device.request(k, frame)?;
    let t1 = Instant::now();
    let resp = client.infer(req, Some(Duration::from_secs(10))).await.map_err(|e| e.to_string())?;
    let t2 = Instant::now();
    let mut outputs = TensorMap::new();
    for w in &resp.outputs {
        outputs.insert(w.name.clone(), cleave_node::convert::to_tensor(w).map_err(|e| e.message)?);
    }
    let t3 = Instant::now();
    std::hint::black_box(&outputs);
    Ok((t1 - t0, t2 - t1, t3 - t2, resp.queue_ms.unwrap_or(0.0), resp.compute_ms.unwrap_or(0.0), sent as usize))
}

async fn overhead_row(
    device: &Device,
    mut client: EdgeClient,
    frame: &TensorMap,
    codec: Codec,
    frames: usize,
) -> Result<OverheadRow, RpcBenchError> {
    for k in 0..20 {
        one_frame(device, &mut client, frame, k).await.map_err(RpcBenchError::Client)?;
    }
    let (mut over, mut enc, mut transport, mut queue, mut compute, mut dec, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut wire = 0;
    let mut floor = vec![];
    for k in 0..frames.max(1) {
        // Frame numbers after the warm-up's: a request id seen before is answered from the
        // server's de-duplication store, without computing.
        let (e, call, d, q_ms, c_ms, sent) =
            one_frame(device, &mut client, frame, 20 + k).await.map_err(RpcBenchError::Client)?;
        let t = us(e) + us(call) + us(d);
        let (q, c) = (q_ms * 1e3, c_ms * 1e3);
        over.push(t - c);
        enc.push(us(e));
        transport.push(us(call) - q - c);
        queue.push(q);
        compute.push(c);
        dec.push(us(d));
        total.push(t);
        wire = sent;
        let probe = client.probe("rpc_bench", sent).await.map_err(|e| RpcBenchError::Client(e.to_string()))?;
        floor.push(us(probe));
    }
    let boundary_bytes = frame.values().map(|t| t.len() * t.datum_type().size_of()).sum();
    Ok(OverheadRow {
        codec: codec.to_string(),
        boundary_bytes,
        bytes_on_wire: wire,
        frames: frames.max(1),
        overhead_p50_us: quantile(&mut over, 0.5),
        overhead_p90_us: quantile(&mut over, 0.9),
        overhead_p99_us: quantile(&mut over, 0.99),
        encode_p50_us: quantile(&mut enc, 0.5),
        transport_p50_us: quantile(&mut transport, 0.5),
        queue_p50_us: quantile(&mut queue, 0.5),
        server_compute_p50_us: quantile(&mut compute, 0.5),
        decode_p50_us: quantile(&mut dec, 0.5),
        total_p50_us: quantile(&mut total, 0.5),
        grpc_floor_p50_us: quantile(&mut floor, 0.5),
    })
}

async fn throughput(
    engine: &Arc<Engine>,
    graph: &Arc<ModelGraph>,
    addr: &str,
    frame: &TensorMap,
    opts: &RpcOptions,
) -> Result<ThroughputRow, RpcBenchError> {
    let codec = opts.codecs.first().copied().unwrap_or(Codec::Fp32);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now() + Duration::from_millis(200);
    let stop = start + Duration::from_secs_f64(opts.seconds.max(0.1));
    for _ in 0..opts.clients {
        // Each client on its own connection, as separate devices would be.
        let client = EdgeClient::connect(addr, 64 << 20).await.map_err(|e| RpcBenchError::Client(e.to_string()))?;
        let device = device(engine, graph, client.clone(), codec)?;
        let frame = frame.clone();
        tasks.spawn(async move {
            let mut client = client;
            let (mut lat, mut batches, mut failed) = (vec![], vec![], 0usize);
            tokio::time::sleep_until(start.into()).await;
            let mut k = 0;
            while Instant::now() < stop {
                let t0 = Instant::now();
                match device.request(k, &frame) {
                    Ok((req, _)) => match client.infer(req, Some(Duration::from_secs(10))).await {
                        Ok(r) => {
                            lat.push(t0.elapsed().as_secs_f64() * 1e3);
                            batches.push(r.batch.unwrap_or(1) as f64);
                        }
                        Err(_) => failed += 1,
                    },
                    Err(_) => failed += 1,
                }
                k += 1;
            }
            (lat, batches, failed)
        });
    }
    let (mut lat, mut batches, mut failed) = (vec![], vec![], 0);
    for (l, b, f) in tasks.join_all().await {
        lat.extend(l);
        batches.extend(b);
        failed += f;
    }
    let seconds = (Instant::now().min(stop + Duration::from_secs(10)) - start).as_secs_f64().max(1e-9);
    let mean_batch = if batches.is_empty() { 0.0 } else { batches.iter().sum::<f64>() / batches.len() as f64 };
    Ok(ThroughputRow {
        clients: opts.clients,
        codec: codec.to_string(),
        seconds,
        frames: lat.len(),
        failed,
        frames_per_s: lat.len() as f64 / seconds,
        latency_p50_ms: quantile(&mut lat, 0.5),
        latency_p99_ms: quantile(&mut lat, 0.99),
        mean_batch,
    })
}

impl RpcReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "boundary tensor f32 {:?} on loopback; per-frame overhead = wall time − server compute (goal p50 ≤ {} µs)\nempty gRPC call (ServerLive) p50: {:.0} µs\n",
            self.boundary_shape, self.goal_overhead_p50_us, self.empty_call_p50_us
        );
        s += &format!(
            "{:<6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9} {:>8} {:>8} {:>11}\n",
            "codec",
            "wire",
            "overhead",
            "p90",
            "p99",
            "encode",
            "transport",
            "queue",
            "compute",
            "decode",
            "grpc floor"
        );
        for r in &self.overhead {
            s += &format!(
                "{:<6} {:>8}KB {:>8.0}µs {:>8.0}µs {:>8.0}µs {:>7.0}µs {:>8.0}µs {:>7.0}µs {:>6.0}µs {:>6.0}µs {:>9.0}µs\n",
                r.codec,
                r.bytes_on_wire / 1000,
                r.overhead_p50_us,
                r.overhead_p90_us,
                r.overhead_p99_us,
                r.encode_p50_us,
                r.transport_p50_us,
                r.queue_p50_us,
                r.server_compute_p50_us,
                r.decode_p50_us,
                r.grpc_floor_p50_us
            );
        }
        if let Some(t) = &self.throughput {
            s += &format!(
                "{} concurrent clients ({}), {:.1} s: {:.0} frames/s, latency p50 {:.2} ms, p99 {:.2} ms, mean batch {:.2}, {} failed (server: {} workers, max batch {})\n",
                t.clients,
                t.codec,
                t.seconds,
                t.frames_per_s,
                t.latency_p50_ms,
                t.latency_p99_ms,
                t.mean_batch,
                t.failed,
                self.server_workers,
                self.max_batch
            );
        }
        s
    }
}
