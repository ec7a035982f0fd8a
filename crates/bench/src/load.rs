//! `cleave bench load`: many devices against one edge, for a minute: throughput, latency, the
//! server's memory over time and its queue.
//!
//! - **Edge**: a real `cleave serve` child process (the caller passes the executable) on a free
//!   loopback port, with its metrics port, so the memory measured is the server's own: its
//!   `/proc/PID/status` is read every `sample_every` (VmRSS now, VmHWM the peak), and so is the
//!   pending-request gauge of its `/metrics` (`nv_inference_pending_request_count`: requests
//!   waiting in the queue, not those computing), which must stay within the queue bound.
//! - **Devices**: `devices` tokio tasks in this process, each with its own gRPC connection (one
//!   HTTP/2 connection per device, as separate devices would have), sending tail requests at one
//!   cut. The head is computed once per distinct input (`distinct_inputs`, random, seeded) and
//!   the encoded request reused (only its id changes), so a device costs almost nothing here and
//!   the two processes' share of the CPU goes to the server. Requests are built by
//!   [`cleave_node::Device::request`], the code path `cleave run` uses.
//! - **Closed loop** (default): each device keeps one request in flight and sends the next as
//!   soon as the answer comes. **Fixed rate** (`rate_per_device`): each device releases requests
//!   on a schedule whether or not earlier ones were answered (up to `max_in_flight` at once;
//!   releases past that are counted as `skipped_busy`), which is how overload is offered.
//! - Every answer is counted by status: OK, `RESOURCE_EXHAUSTED` (the server's queue is full:
//!   the device honours the `retry-after-ms` hint by sending nothing until it has passed; in
//!   fixed-rate mode the releases in between are counted as `skipped_backoff`), or another error
//!   (counted by gRPC code; the device pauses [`ERROR_PAUSE`] so that a dead server is not
//!   hammered). Latency percentiles are of OK requests, from the call to the answer.
//!
//! The acceptance figure for memory is RSS at the end over RSS after the first 10 s (or after
//! half the run when it is shorter than 20 s): the first seconds compile the tail at each batch
//! size and grow the allocator's pools; after that a server that holds nothing per request stays
//! flat.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::{InputShapes, ModelGraph};
use cleave_node::{Device, DeviceConfig, EdgeClient};
use cleave_proto::GrpcInferenceServiceClient;
use cleave_proto::inference::ModelInferRequest;
use cleave_proto::wire;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::edge::{EdgeProcess, EdgeSpec};
use crate::stats::quantile;

/// After an error other than `RESOURCE_EXHAUSTED` a device waits this long before its next
/// request.
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Backoff after `RESOURCE_EXHAUSTED` when the server gives no `retry-after-ms` hint.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(10);
/// The model's name on the edge.
const MODEL_NAME: &str = "m";

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The model file the edge serves.
    pub model_path: PathBuf,
    /// How the report names the model.
    pub model_label: String,
    /// Pinned input shapes (passed to the edge as `--shape`).
    pub shapes: InputShapes,
    pub devices: usize,
    pub seconds: f64,
    /// The cut (default: [`default_cut`]).
    pub cut: Option<usize>,
    pub codec: Codec,
    /// Requests per second per device; `None`: closed loop.
    pub rate_per_device: Option<f64>,
    /// Fixed-rate mode: most requests one device has in flight.
    pub max_in_flight: usize,
    /// The edge's `--max-queue`.
    pub queue_bound: usize,
    /// The edge's `--max-batch`.
    pub max_batch: usize,
    /// The edge's `--workers` (`None`: its default, cores ÷ threads).
    pub workers: Option<usize>,
    /// Deadline of each request.
    pub timeout: Duration,
    /// Distinct inputs whose heads are computed (requests cycle through them).
    pub distinct_inputs: usize,
    /// How often the edge's memory and queue are sampled.
    pub sample_every: Duration,
    /// The `cleave` executable that runs the edge (`serve`).
    pub server_exe: PathBuf,
}

impl LoadOptions {
    /// Defaults for everything but the model and the executable.
    pub fn new(model_path: PathBuf, model_label: String, server_exe: PathBuf) -> LoadOptions {
        LoadOptions {
            model_path,
            model_label,
            shapes: InputShapes::none(),
            devices: 64,
            seconds: 60.0,
            cut: None,
            codec: Codec::Int8,
            rate_per_device: None,
            max_in_flight: 8,
            queue_bound: 32,
            max_batch: 8,
            workers: None,
            timeout: Duration::from_secs(10),
            distinct_inputs: 4,
            sample_every: Duration::from_millis(250),
            server_exe,
        }
    }
}

/// Errors of the set-up (a failed request is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum LoadBenchError {
    #[error("{0}")]
    Options(String),
    #[error("the model: {0}")]
    Model(String),
    #[error("the edge process: {0}")]
    Edge(String),
    #[error("the devices: {0}")]
    Client(String),
}

/// Latency of OK requests, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The edge's memory, in KiB (`/proc/PID/status`).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// VmRSS after start-up and one request per distinct input, before the load.
    pub idle_kib: u64,
    /// When the reference sample was taken, seconds into the load (10, or half of a shorter run).
    pub ref_at_s: f64,
    /// VmRSS then.
    pub ref_kib: u64,
    /// VmRSS at the end of the load (the last sample before the devices stopped).
    pub end_kib: u64,
    /// `end_kib / ref_kib`.
    pub end_over_ref: f64,
    /// Whether the end is within 10 % of the reference (the acceptance criterion).
    pub within_10pct: bool,
    /// The largest VmRSS sampled during the load.
    pub max_sampled_kib: u64,
    /// VmHWM at the end: the peak resident size since the edge started (start-up included).
    pub peak_kib: u64,
}

/// The edge's queue, from its `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// The edge's `--max-queue`.
    pub bound: usize,
    /// Largest `nv_inference_pending_request_count` sampled.
    pub max_depth: i64,
    pub mean_depth: f64,
    pub samples: usize,
    /// `max_depth <= bound`.
    pub bounded: bool,
}

/// The edge's own counters at the end (Triton's meanings).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCounters {
    pub success: u64,
    pub failure_rejected: u64,
    pub failure_canceled: u64,
    pub failure_backend: u64,
    pub inference_count: u64,
    pub exec_count: u64,
    /// `inference_count / exec_count`.
    pub mean_batch: f64,
}

/// One second of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Start of the window, seconds into the load.
    pub t_s: f64,
    pub ok: u64,
    pub resource_exhausted: u64,
    pub errors: u64,
    /// Latency of the OK requests answered in this window (NaN → null when none).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_queue: Option<i64>,
    /// The last VmRSS sampled in this window.
    pub rss_kib: Option<u64>,
}

/// The report `cleave bench load` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub host: serde_json::Value,
    pub model: String,
    pub cut: usize,
    pub codec: String,
    /// Payload bytes of one request's boundary tensors.
    pub request_bytes: u64,
    pub devices: usize,
    /// `closed-loop` or `fixed-rate`.
    pub mode: String,
    pub rate_per_device_hz: Option<f64>,
    /// The load's length as run.
    pub seconds: f64,
    pub queue_bound: usize,
    pub max_batch: usize,
    pub workers: Option<usize>,
    /// Requests sent (each answered: OK, RESOURCE_EXHAUSTED or another error).
    pub requests: u64,
    pub ok: u64,
    pub resource_exhausted: u64,
    /// Errors other than RESOURCE_EXHAUSTED.
    pub errors: u64,
    /// Those errors by gRPC code, with the first message seen.
    pub errors_by_code: BTreeMap<String, ErrorCount>,
    /// Fixed rate: releases not sent because the device was backing off after a refusal.
    pub skipped_backoff: u64,
    /// Fixed rate: releases not sent because the device had `max_in_flight` requests out.
    pub skipped_busy: u64,
    /// OK answers per second over the load.
    pub throughput_ok_per_s: f64,
    /// Requests sent per second.
    pub offered_per_s: f64,
    pub latency: Latency,
    /// Queue time the edge reported on OK answers (`cleave.queue_ms`).
    pub server_queue_p50_ms: f64,
    pub server_queue_p99_ms: f64,
    /// CPU seconds the edge used during the load (user + system, every thread).
    pub edge_cpu_s: f64,
    /// CPU seconds this process (the devices) used during the load: the devices share the
    /// machine with the edge, so what they use is not the edge's.
    pub devices_cpu_s: f64,
    /// The `retry-after-ms` hints received (the first seen; all equal today).
    pub retry_after_ms: Option<u64>,
    pub memory: Memory,
    pub queue: QueueStats,
    pub server: ServerCounters,
    /// Requests sent before the load (one per distinct input: the edge compiles the tail), not
    /// counted above; the edge's counters include them.
    pub warmup_requests: u64,
    pub timeline: Vec<Window>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub count: u64,
    pub first_message: String,
}

/// Live counts, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed_s: f64,
    pub seconds: f64,
    pub ok: u64,
    pub resource_exhausted: u64,
    pub errors: u64,
    pub queue: Option<i64>,
    pub rss_kib: Option<u64>,
}

/// What [`run`] reports while it works.
pub enum Event<'a> {
    Step(&'a str),
    Tick(Progress),
}

/// The default cut: a single-tensor (bottleneck) cut whose head has about half the model's
/// FLOPs (any cut with a tail when there is no bottleneck cut).
pub fn default_cut(graph: &ModelGraph) -> usize {
    let cuts = graph.cuts();
    let last = graph.last_cut();
    let total = cuts[0].tail_flops.max(1) as f64;
    let with_tail = || cuts[..last].iter();
    let distance = |c: &&cleave_graph::Cut| ((c.head_flops as f64 / total) - 0.5).abs();
    let best = with_tail()
        .filter(|c| c.index > 0 && c.bottleneck)
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .or_else(|| with_tail().min_by(|a, b| distance(a).total_cmp(&distance(b))));
    best.map(|c| c.index).unwrap_or(0)
}

/// `(VmRSS, VmHWM)` of a process, in KiB.
pub fn proc_memory(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/PID/stat` (clock ticks
/// of 1/100 s, Linux's USER_HZ on every architecture it runs cleave on).
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// GET `/metrics` over plain HTTP/1.1 (the edge's metrics port), the body as text.
pub(crate) async fn fetch_metrics(addr: SocketAddr) -> Result<String, String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("`{}`", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.map_err(|_| "timed out".to_string())?
}

/// The value of the series `name{model="m",…extra}` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str, extra: &str) -> Option<f64> {
    let prefix = format!("{name}{{model=\"{MODEL_NAME}\",version=\"1\"{extra}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// How one request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Exhausted,
    Error,
}

/// One answered request.
#[derive(Clone, Copy)]
struct Record {
    /// When the answer came, seconds after the start.
    done_s: f32,
    latency_ms: f32,
    /// The edge's reported queue time (OK only; NaN otherwise).
    queue_ms: f32,
    kind: Kind,
}

enum Outcome {
    Ok { queue_ms: f64 },
    Exhausted(Option<u64>),
    Error(String, String),
}

/// What every device shares.
struct Shared {
    requests: Vec<ModelInferRequest>,
    start: Instant,
    stop: Instant,
    timeout: Duration,
    ok: AtomicU64,
    exhausted: AtomicU64,
    errors: AtomicU64,
}

/// What one device saw.
#[derive(Default)]
struct DeviceResult {
    records: Vec<Record>,
    errors: BTreeMap<String, ErrorCount>,
    skipped_backoff: u64,
    skipped_busy: u64,
    retry_after_ms: Option<u64>,
}

impl DeviceResult {
    fn add(&mut self, shared: &Shared, t0: Instant, outcome: &Outcome) {
        let now = Instant::now();
        let (kind, queue_ms) = match outcome {
            Outcome::Ok { queue_ms } => (Kind::Ok, *queue_ms as f32),
            Outcome::Exhausted(hint) => {
                self.retry_after_ms = self.retry_after_ms.or(*hint);
                (Kind::Exhausted, f32::NAN)
            }
            Outcome::Error(code, message) => {
                self.errors
                    .entry(code.clone())
                    .or_insert_with(|| ErrorCount { count: 0, first_message: message.clone() })
                    .count += 1;
                (Kind::Error, f32::NAN)
            }
        };
        match kind {
            Kind::Ok => &shared.ok,
            Kind::Exhausted => &shared.exhausted,
            Kind::Error => &shared.errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.records.push(Record {
            done_s: now.saturating_duration_since(shared.start).as_secs_f32(),
            latency_ms: (now - t0).as_secs_f32() * 1e3,
            queue_ms,
            kind,
        });
    }
}

pub(crate) type Client = GrpcInferenceServiceClient<Channel>;

pub(crate) async fn connect(addr: SocketAddr) -> Result<Client, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .initial_stream_window_size(cleave_node::server::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(cleave_node::server::HTTP2_CONNECTION_WINDOW)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// Sends request `seq` of `device` and waits for its answer.
async fn call(client: &mut Client, shared: &Shared, device: usize, seq: u64) -> Outcome {
    let mut req = shared.requests[seq as usize % shared.requests.len()].clone();
    // Unique per request: a server may recognise retries by id.
    req.id = format!("load-{device}-{seq}");
    let mut request = tonic::Request::new(req);
    request.set_timeout(shared.timeout);
    // The server answers DEADLINE_EXCEEDED at the deadline; this only catches a hung connection.
    let answer = tokio::time::timeout(shared.timeout + Duration::from_secs(1), client.model_infer(request)).await;
    match answer {
        Err(_) => Outcome::Error("ClientTimeout".into(), format!("no answer within {:?}", shared.timeout)),
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            if resp.outputs.is_empty() {
                return Outcome::Error("Malformed".into(), "an OK answer without outputs".into());
            }
            Outcome::Ok { queue_ms: wire::get_f64(&resp.parameters, wire::PARAM_QUEUE_MS).unwrap_or(f64::NAN) }
        }
        Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => Outcome::Exhausted(
            status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
        ),
        Ok(Err(status)) => Outcome::Error(format!("{:?}", status.code()), status.message().to_owned()),
    }
}

fn backoff(hint: Option<u64>) -> Duration {
    hint.map(Duration::from_millis).unwrap_or(DEFAULT_BACKOFF)
}

/// One request in flight at a time, until `stop`.
async fn closed_loop(mut client: Client, shared: Arc<Shared>, device: usize) -> DeviceResult {
    let mut result = DeviceResult::default();
    // Spread the devices' first requests over the first 100 ms.
    let offset = Duration::from_micros((device as u64 * 100_000) / 1024);
    tokio::time::sleep_until((shared.start + offset).into()).await;
    let mut seq = 0u64;
    while Instant::now() < shared.stop {
        let t0 = Instant::now();
        let outcome = call(&mut client, &shared, device, seq).await;
        seq += 1;
        result.add(&shared, t0, &outcome);
        let pause = match outcome {
            Outcome::Ok { .. } => continue,
            Outcome::Exhausted(hint) => backoff(hint),
            Outcome::Error(..) => ERROR_PAUSE,
        };
        tokio::time::sleep_until((Instant::now() + pause).min(shared.stop).into()).await;
    }
    result
}

/// Requests released every `1 / hz`, at most `max_in_flight` out at once, until `stop`.
async fn fixed_rate(client: Client, shared: Arc<Shared>, device: usize, hz: f64, max_in_flight: usize) -> DeviceResult {
    let mut result = DeviceResult::default();
    let period = Duration::from_secs_f64(1.0 / hz);
    // Devices' schedules are staggered evenly over one period.
    let mut next = shared.start + period.mul_f64((device % 1024) as f64 / 1024.0);
    let mut backoff_until = shared.start;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()), if next < shared.stop => {
                next += period;
                let now = Instant::now();
                if now < backoff_until {
                    result.skipped_backoff += 1;
                } else if in_flight.len() >= max_in_flight.max(1) {
                    result.skipped_busy += 1;
                } else {
                    let (mut client, shared) = (client.clone(), shared.clone());
                    let s = seq;
                    seq += 1;
                    in_flight.spawn(async move {
                        let t0 = Instant::now();
                        let outcome = call(&mut client, &shared, device, s).await;
                        (t0, outcome)
                    });
                }
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((t0, outcome)) = done else { continue };
                result.add(&shared, t0, &outcome);
                let pause = match outcome {
                    Outcome::Ok { .. } => Duration::ZERO,
                    Outcome::Exhausted(hint) => backoff(hint),
                    Outcome::Error(..) => ERROR_PAUSE,
                };
                backoff_until = backoff_until.max(Instant::now() + pause);
            }
            else => break,
        }
    }
    result
}

/// A memory and queue sample, seconds into the load.
struct Sample {
    t_s: f64,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    queue: Option<i64>,
}

/// Runs the load and reports (call inside a multi-threaded tokio runtime).
pub async fn run(
    graph: Arc<ModelGraph>,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<LoadReport, LoadBenchError> {
    let bad = |m: String| Err(LoadBenchError::Options(m));
    if opts.devices == 0 {
        return bad("--devices must be at least 1".into());
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return bad(format!("--seconds {} must be a positive number", opts.seconds));
    }
    if let Some(hz) = opts.rate_per_device
        && !(hz.is_finite() && hz > 0.0)
    {
        return bad(format!("--rate-per-device {hz} must be a positive number"));
    }
    if opts.queue_bound == 0 {
        return bad("--queue-bound must be at least 1".into());
    }
    let last = graph.last_cut();
    let cut = opts.cut.unwrap_or_else(|| default_cut(&graph));
    if cut >= last {
        return bad(format!(
            "--cut {cut} leaves nothing for the edge: this model's cuts with a tail are 0..{} (`cleave inspect` lists them)",
            last - 1
        ));
    }
    let boundary = graph.cut(cut).map_err(|e| LoadBenchError::Model(e.to_string()))?;
    if !opts.codec.applies_to_boundary(boundary.tensors.iter().map(|t| (t.dtype, t.shape.as_slice()))) {
        return bad(format!("--codec {} cannot encode the tensors crossing cut {cut}", opts.codec));
    }

    progress(Event::Step("computing the heads"));
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let head = engine.part(&graph, 0, cut).map_err(|e| LoadBenchError::Model(format!("the head of cut {cut}: {e}")))?;
    let mut envs = vec![];
    for k in 0..opts.distinct_inputs.max(1) {
        let inputs: TensorMap =
            graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1000 + k as u64))).collect();
        let mut env = inputs.clone();
        env.extend(engine.run(&head, &inputs).map_err(|e| LoadBenchError::Model(format!("the head: {e}")))?);
        envs.push(env);
    }

    progress(Event::Step("starting the edge (`cleave serve`)"));
    let spec = EdgeSpec {
        server_exe: opts.server_exe.clone(),
        model_name: MODEL_NAME.into(),
        model_path: opts.model_path.clone(),
        shapes: opts.shapes.clone(),
        queue_bound: opts.queue_bound,
        max_batch: opts.max_batch,
        workers: opts.workers,
        extra_args: vec![],
        grpc_port: 0,
    };
    let mut edge = EdgeProcess::spawn(&spec).map_err(LoadBenchError::Edge)?;
    let addr = edge.grpc.to_string();
    let edge_client = EdgeClient::connect(&addr, 64 << 20).await.map_err(|e| LoadBenchError::Client(e.to_string()))?;
    let config = DeviceConfig {
        model_name: MODEL_NAME.into(),
        cut,
        encode: EncodeOptions::new(opts.codec),
        max_in_flight: 1,
        timeout: Some(opts.timeout),
        fps: None,
        check: false,
    };
    let device =
        Device::new(engine.clone(), graph.clone(), Some(edge_client), config).map_err(LoadBenchError::Model)?;
    let mut requests = vec![];
    let mut request_bytes = 0;
    for (k, env) in envs.iter().enumerate() {
        let (req, bytes) = device.request(k, env).map_err(|e| LoadBenchError::Model(format!("encoding: {e}")))?;
        request_bytes = bytes;
        requests.push(req);
    }

    progress(Event::Step("connecting the devices"));
    let mut clients = Vec::with_capacity(opts.devices);
    for _ in 0..opts.devices {
        clients.push(connect(edge.grpc).await.map_err(LoadBenchError::Client)?);
    }
    // One request per distinct input first: the edge compiles the tail, and a model it cannot
    // run fails here, clearly, instead of as a minute of errors.
    let warm = Shared {
        requests: requests.clone(),
        start: Instant::now(),
        stop: Instant::now(),
        timeout: opts.timeout.max(Duration::from_secs(60)),
        ok: AtomicU64::new(0),
        exhausted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    for k in 0..requests.len() {
        if let Outcome::Error(code, message) = call(&mut clients[0], &warm, usize::MAX, k as u64).await {
            return Err(LoadBenchError::Edge(format!("the first request failed: {code}: {message}")));
        }
    }
    let warmup_requests = requests.len() as u64;
    let idle = proc_memory(edge.pid()).map(|m| m.0).unwrap_or(0);

    progress(Event::Step("loading"));
    let cpu_before = (proc_cpu_s(edge.pid()), proc_cpu_s(std::process::id()));
    let start = Instant::now() + Duration::from_millis(100);
    let stop = start + Duration::from_secs_f64(opts.seconds);
    let shared = Arc::new(Shared {
        requests,
        start,
        stop,
        timeout: opts.timeout,
        ok: AtomicU64::new(0),
        exhausted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (d, client) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        match opts.rate_per_device {
            None => tasks.spawn(closed_loop(client, shared, d)),
            Some(hz) => tasks.spawn(fixed_rate(client, shared, d, hz, opts.max_in_flight)),
        };
    }

    // Sample the edge until every device is done.
    let mut samples: Vec<Sample> = vec![];
    let mut ticker = tokio::time::interval_at(start.into(), opts.sample_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut results = vec![];
    let mut metrics_error = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                edge.check_alive().map_err(LoadBenchError::Edge)?;
                let t_s = Instant::now().saturating_duration_since(start).as_secs_f64();
                let mem = proc_memory(edge.pid());
                let queue = match fetch_metrics(edge.metrics).await {
                    Ok(text) => metric(&text, "nv_inference_pending_request_count", "").map(|v| v as i64),
                    Err(e) => {
                        metrics_error.get_or_insert(e);
                        None
                    }
                };
                samples.push(Sample { t_s, rss_kib: mem.map(|m| m.0), hwm_kib: mem.map(|m| m.1), queue });
                progress(Event::Tick(Progress {
                    elapsed_s: t_s.min(opts.seconds),
                    seconds: opts.seconds,
                    ok: shared.ok.load(Ordering::Relaxed),
                    resource_exhausted: shared.exhausted.load(Ordering::Relaxed),
                    errors: shared.errors.load(Ordering::Relaxed),
                    queue,
                    rss_kib: mem.map(|m| m.0),
                }));
            }
            done = tasks.join_next() => match done {
                Some(r) => results.push(r.map_err(|e| LoadBenchError::Client(format!("a device failed: {e}")))?),
                None => break,
            },
        }
    }
    let seconds = opts.seconds;
    let cpu_after = (proc_cpu_s(edge.pid()), proc_cpu_s(std::process::id()));
    let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(f64::NAN, |(a, b)| b - a);
    let (edge_cpu_s, devices_cpu_s) = (used(cpu_before.0, cpu_after.0), used(cpu_before.1, cpu_after.1));
    let final_metrics = fetch_metrics(edge.metrics).await;
    let hwm = proc_memory(edge.pid()).map(|m| m.1);
    edge.check_alive().map_err(LoadBenchError::Edge)?;
    drop(edge);
    let text = final_metrics.map_err(|e| LoadBenchError::Edge(format!("its /metrics: {e}")))?;
    if samples.iter().all(|s| s.queue.is_none()) {
        return Err(LoadBenchError::Edge(format!(
            "no queue gauge in its /metrics ({})",
            metrics_error.unwrap_or_else(|| "nv_inference_pending_request_count is missing".into())
        )));
    }

    // Counts.
    let mut records: Vec<Record> = vec![];
    let mut errors_by_code: BTreeMap<String, ErrorCount> = BTreeMap::new();
    let (mut skipped_backoff, mut skipped_busy, mut retry_after_ms) = (0, 0, None);
    for r in results {
        records.extend(r.records);
        for (code, e) in r.errors {
            errors_by_code.entry(code).or_insert(ErrorCount { count: 0, first_message: e.first_message }).count +=
                e.count;
        }
        skipped_backoff += r.skipped_backoff;
        skipped_busy += r.skipped_busy;
        retry_after_ms = retry_after_ms.or(r.retry_after_ms);
    }
    let count = |k: Kind| records.iter().filter(|r| r.kind == k).count() as u64;
    let (ok, exhausted, errors) = (count(Kind::Ok), count(Kind::Exhausted), count(Kind::Error));
    let ok_in_window = records.iter().filter(|r| r.kind == Kind::Ok && (r.done_s as f64) <= seconds).count();
    let mut lat: Vec<f64> = records.iter().filter(|r| r.kind == Kind::Ok).map(|r| r.latency_ms as f64).collect();
    let mean_ms = if lat.is_empty() { f64::NAN } else { lat.iter().sum::<f64>() / lat.len() as f64 };
    let latency = Latency {
        p50_ms: quantile(&mut lat, 0.5),
        p90_ms: quantile(&mut lat, 0.9),
        p99_ms: quantile(&mut lat, 0.99),
        max_ms: quantile(&mut lat, 1.0),
        mean_ms,
    };
    let mut queue_ms: Vec<f64> =
        records.iter().filter(|r| r.kind == Kind::Ok && r.queue_ms.is_finite()).map(|r| r.queue_ms as f64).collect();

    // Memory: the reference at 10 s (half of a shorter run), the end at the last sample in the load.
    let ref_at_s = if seconds >= 20.0 { 10.0 } else { seconds / 2.0 };
    let during: Vec<&Sample> = samples.iter().filter(|s| s.t_s <= seconds + 1e-3 && s.rss_kib.is_some()).collect();
    let at = |t: f64| {
        during
            .iter()
            .min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs()))
            .and_then(|s| s.rss_kib)
            .unwrap_or(0)
    };
    let (ref_kib, end_kib) = (at(ref_at_s), during.last().and_then(|s| s.rss_kib).unwrap_or(0));
    let end_over_ref = end_kib as f64 / ref_kib.max(1) as f64;
    let memory = Memory {
        idle_kib: idle,
        ref_at_s,
        ref_kib,
        end_kib,
        end_over_ref,
        within_10pct: (end_over_ref - 1.0).abs() <= 0.10,
        max_sampled_kib: during.iter().filter_map(|s| s.rss_kib).max().unwrap_or(0),
        peak_kib: hwm.or_else(|| samples.iter().filter_map(|s| s.hwm_kib).max()).unwrap_or(0),
    };
    let depths: Vec<i64> = samples.iter().filter_map(|s| s.queue).collect();
    let max_depth = depths.iter().copied().max().unwrap_or(0);
    let queue = QueueStats {
        bound: opts.queue_bound,
        max_depth,
        mean_depth: depths.iter().sum::<i64>() as f64 / depths.len().max(1) as f64,
        samples: depths.len(),
        bounded: max_depth <= opts.queue_bound as i64,
    };
    let m = |name: &str, extra: &str| metric(&text, name, extra).unwrap_or(0.0) as u64;
    let mut server = ServerCounters {
        success: m("nv_inference_request_success", ""),
        failure_rejected: m("nv_inference_request_failure", ",reason=\"REJECTED\""),
        failure_canceled: m("nv_inference_request_failure", ",reason=\"CANCELED\""),
        failure_backend: m("nv_inference_request_failure", ",reason=\"BACKEND\""),
        inference_count: m("nv_inference_count", ""),
        exec_count: m("nv_inference_exec_count", ""),
        mean_batch: 0.0,
    };
    server.mean_batch = server.inference_count as f64 / server.exec_count.max(1) as f64;

    // One window per second.
    let n_windows = seconds.ceil().max(1.0) as usize;
    let mut timeline: Vec<Window> = (0..n_windows)
        .map(|i| Window {
            t_s: i as f64,
            ok: 0,
            resource_exhausted: 0,
            errors: 0,
            p50_ms: None,
            p99_ms: None,
            max_queue: None,
            rss_kib: None,
        })
        .collect();
    let mut window_lat: Vec<Vec<f64>> = vec![vec![]; n_windows];
    for r in &records {
        let i = (r.done_s as usize).min(n_windows - 1);
        match r.kind {
            Kind::Ok => {
                timeline[i].ok += 1;
                window_lat[i].push(r.latency_ms as f64);
            }
            Kind::Exhausted => timeline[i].resource_exhausted += 1,
            Kind::Error => timeline[i].errors += 1,
        }
    }
    for (w, mut l) in timeline.iter_mut().zip(window_lat) {
        w.p50_ms = finite(quantile(&mut l, 0.5));
        w.p99_ms = finite(quantile(&mut l, 0.99));
    }
    for s in &samples {
        let i = (s.t_s.max(0.0) as usize).min(n_windows - 1);
        if let Some(q) = s.queue {
            timeline[i].max_queue = Some(timeline[i].max_queue.map_or(q, |m| m.max(q)));
        }
        if s.rss_kib.is_some() && s.t_s <= seconds + 1e-3 {
            timeline[i].rss_kib = s.rss_kib;
        }
    }

    let requests_sent = ok + exhausted + errors;
    Ok(LoadReport {
        host: crate::host(),
        model: opts.model_label.clone(),
        cut,
        codec: opts.codec.to_string(),
        request_bytes,
        devices: opts.devices,
        mode: if opts.rate_per_device.is_some() { "fixed-rate" } else { "closed-loop" }.into(),
        rate_per_device_hz: opts.rate_per_device,
        seconds,
        queue_bound: opts.queue_bound,
        max_batch: opts.max_batch,
        workers: opts.workers,
        requests: requests_sent,
        ok,
        resource_exhausted: exhausted,
        errors,
        errors_by_code,
        skipped_backoff,
        skipped_busy,
        throughput_ok_per_s: ok_in_window as f64 / seconds,
        offered_per_s: requests_sent as f64 / seconds,
        latency,
        server_queue_p50_ms: quantile(&mut queue_ms, 0.5),
        server_queue_p99_ms: quantile(&mut queue_ms, 0.99),
        edge_cpu_s,
        devices_cpu_s,
        retry_after_ms,
        memory,
        queue,
        server,
        warmup_requests,
        timeline,
    })
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl LoadReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mode = match self.rate_per_device_hz {
            Some(hz) => format!("{hz} requests/s each"),
            None => "closed loop".into(),
        };
        let mut s = format!(
            "{} devices ({mode}) for {:.0} s against one `cleave serve`: {} cut {} {} ({} B per request)\n",
            self.devices, self.seconds, self.model, self.cut, self.codec, self.request_bytes
        );
        s += &format!(
            "edge: queue bound {}, max batch {}, workers {}\n\n",
            self.queue_bound,
            self.max_batch,
            self.workers.map_or("default".into(), |w| w.to_string())
        );
        let row = |k: &str, v: String| format!("  {k:<22} {v}\n");
        s += &row("requests", format!("{} ({:.0}/s)", self.requests, self.offered_per_s));
        s += &row("ok", format!("{} ({:.1} ok/s)", self.ok, self.throughput_ok_per_s));
        s += &row(
            "RESOURCE_EXHAUSTED",
            format!(
                "{}{}",
                self.resource_exhausted,
                self.retry_after_ms.map_or(String::new(), |h| format!(" (retry-after-ms {h}, honoured)"))
            ),
        );
        let codes: Vec<String> = self.errors_by_code.iter().map(|(c, e)| format!("{c} {}", e.count)).collect();
        s += &row(
            "other errors",
            if codes.is_empty() { "0".into() } else { format!("{} ({})", self.errors, codes.join(", ")) },
        );
        if self.rate_per_device_hz.is_some() {
            s += &row(
                "not sent",
                format!("{} backing off, {} at max in flight", self.skipped_backoff, self.skipped_busy),
            );
        }
        let l = &self.latency;
        s += &row(
            "latency (ok)",
            format!("p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
        );
        s += &row(
            "edge queue time (ok)",
            format!("p50 {:.2} ms, p99 {:.2} ms", self.server_queue_p50_ms, self.server_queue_p99_ms),
        );
        s += &row("mean batch", format!("{:.2}", self.server.mean_batch));
        s += &row(
            "CPU during the load",
            format!(
                "edge {:.1} s ({:.2} cores), devices (this process) {:.1} s ({:.2} cores)",
                self.edge_cpu_s,
                self.edge_cpu_s / self.seconds,
                self.devices_cpu_s,
                self.devices_cpu_s / self.seconds
            ),
        );
        let q = &self.queue;
        s += &row(
            "queue depth",
            format!(
                "max {} of bound {} ({}), mean {:.1}",
                q.max_depth,
                q.bound,
                if q.bounded { "bounded" } else { "OVER THE BOUND" },
                q.mean_depth
            ),
        );
        let m = &self.memory;
        s += &row(
            "edge RSS",
            format!(
                "idle {:.1} MiB, at {} s {:.1} MiB, end {:.1} MiB, peak {:.1} MiB",
                mib(m.idle_kib),
                m.ref_at_s,
                mib(m.ref_kib),
                mib(m.end_kib),
                mib(m.peak_kib)
            ),
        );
        s += &row(
            "RSS end / ref",
            format!(
                "{:.3} ({})",
                m.end_over_ref,
                if m.within_10pct { "within 10 %" } else { "GREW OR SHRANK BY MORE THAN 10 %" }
            ),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_triton_series() {
        let text = "# TYPE nv_inference_pending_request_count gauge\n\
            nv_inference_pending_request_count{model=\"m\",version=\"1\"} 17\n\
            nv_inference_request_failure{model=\"m\",version=\"1\",reason=\"REJECTED\"} 5\n";
        assert_eq!(metric(text, "nv_inference_pending_request_count", ""), Some(17.0));
        assert_eq!(metric(text, "nv_inference_request_failure", ",reason=\"REJECTED\""), Some(5.0));
        assert_eq!(metric(text, "nv_inference_request_success", ""), None);
    }

    #[test]
    fn reads_own_memory() {
        let (rss, hwm) = proc_memory(std::process::id()).expect("/proc/self/status");
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
    }

    #[test]
    fn reads_own_cpu_time() {
        let t0 = proc_cpu_s(std::process::id()).expect("/proc/self/stat");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(start.elapsed());
        }
        let t1 = proc_cpu_s(std::process::id()).unwrap();
        assert!(t0 >= 0.0 && t1 >= t0, "{t0} {t1}");
    }

    #[test]
    fn default_cut_has_a_tail() {
        use prost::Message;
        let bytes = cleave_graph::build::zoo::tiny_resnet(3).encode_to_vec();
        let g = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap();
        let c = default_cut(&g);
        assert!(c > 0 && c < g.last_cut(), "cut {c} of {}", g.last_cut());
    }
}
