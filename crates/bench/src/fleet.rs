//! `cleave bench fleet`: many devices sharing one edge, under four strategies.
//!
//! ## What is real and what is simulated
//! - **The edge** is a real `cleave serve` child process running the real tails, started afresh
//!   for every (strategy, fleet size); `--coordinate` only for `coordinated`. Its CPU time is
//!   read from `/proc/PID/stat` before and after the run.
//! - **Every request is real**: a device sends, over its own HTTP/2 connection, the encoded
//!   boundary tensor of its chosen (cut, codec), computed once per (cut, codec) at set-up by the
//!   real head on a random input, so the edge decodes and computes exactly what a device would
//!   send.
//! - **Head compute is emulated** by sleeping for the device's profiled time: this machine's
//!   measured per-cut profile times the device's slowdown. That is what lets 64 devices run on
//!   two cores next to the edge.
//! - **The uplink is simulated from a mahimahi trace**: a device's link is a FIFO (a probe or an
//!   earlier frame still on it delays the next one) whose delivery time comes from
//!   [`cleave_link::Trace::transfer_ms`] at the device's own trace offset; the device sleeps
//!   until the last byte would have arrived plus the one-way delay, then sends the real request
//!   over loopback. The answer (a few bytes of logits) comes back after the one-way delay.
//!
//! ## The fleet
//! Device `i` of `n` gets trace `i mod T` of the given traces at a random offset, a slowdown
//! drawn log-uniformly from `slowdown` (default 4–16× one core of this machine: phone and
//! single-board-computer CPUs against an edge core; see docs/FLEET.md), and releases frames at `fps` from a random phase. Frames are handled one at a time
//! (a late frame delays the next, as on a real device); latency is from release to answer. All
//! random draws come from `seed`, so every strategy and fleet size sees the same devices
//! (device `i` is the same in a fleet of 8 and of 64).
//!
//! ## Strategies
//! - `all-local`: every frame on the device.
//! - `all-offload`: every frame's input sent (cut 0, the codec with the fewest bytes).
//! - `independent`: each device alone, per frame: its planner's best plan per cut
//!   ([`cleave_plan::Planner::alternatives`]) from its own estimates ([`LinkEstimates`]: bandwidth
//!   from its transfers, RTT, server time), then [`fleet::best_response`]: the queue wait of
//!   each option predicted from the utilization the server reports (`cleave.server_util`) with
//!   this device's own share moved to that option. While it computes locally it probes the
//!   server once a second (the load signal; a bandwidth probe every 2 s), as `adaptive.rs` does.
//! - `coordinated`: the same devices, estimates and probes, plus: each reports its options
//!   (`cleave.fleet.report`, only when they changed by 15 % or every 2 s) and follows the edge's
//!   recommendation (`cleave.fleet.plan`) when it is one of its current options; without one it
//!   decides as `independent`.
//!
//! A request refused or failed is completed on the device (its tail, emulated), and counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_cost::{Link, Profile};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::{InputShapes, ModelGraph};
use cleave_link::{SplitMix64, Trace};
use cleave_node::LinkEstimates;
use cleave_node::adaptive::{default_candidate_cuts, restrict_cuts};
use cleave_plan::fleet::{self, Capacity, DeviceReport, FleetDevice, FleetObjective, FleetOption};
use cleave_plan::{Conditions, Planner, Problem, ProblemBuilder};
use cleave_proto::inference::ModelInferRequest;
use cleave_proto::wire;
use serde::Serialize;

use crate::edge::{EdgeProcess, EdgeSpec};
use crate::load::{Client, connect, fetch_metrics, metric, proc_cpu_s};
use crate::stats::quantile;

const MODEL_NAME: &str = "m";

/// How the fleet places frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetStrategy {
    AllLocal,
    AllOffload,
    Independent,
    Coordinated,
}

impl FleetStrategy {
    pub const ALL: [FleetStrategy; 4] =
        [FleetStrategy::AllLocal, FleetStrategy::AllOffload, FleetStrategy::Independent, FleetStrategy::Coordinated];

    pub fn name(self) -> &'static str {
        match self {
            FleetStrategy::AllLocal => "all-local",
            FleetStrategy::AllOffload => "all-offload",
            FleetStrategy::Independent => "independent",
            FleetStrategy::Coordinated => "coordinated",
        }
    }
}

impl std::str::FromStr for FleetStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FleetStrategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown strategy `{s}` (all-local, all-offload, independent, coordinated)"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub model_path: PathBuf,
    pub model_label: String,
    pub shapes: InputShapes,
    /// The `cleave` executable that runs the edge.
    pub server_exe: PathBuf,
    /// Fleet sizes.
    pub devices: Vec<usize>,
    pub strategies: Vec<FleetStrategy>,
    /// Length of each (strategy, size) run.
    pub seconds: f64,
    /// Frames per second per device.
    pub fps: f64,
    /// Uplink traces, by name; device `i` gets `traces[i % len]`.
    pub traces: Vec<(String, Trace)>,
    /// One-way delay each way.
    pub delay: Duration,
    /// Device slowdown range vs this machine (log-uniform).
    pub slowdown: (f64, f64),
    pub seed: u64,
    /// The edge's `--max-batch`, `--workers`, `--max-queue`.
    pub max_batch: usize,
    pub workers: usize,
    pub queue_bound: usize,
    /// Codecs the devices weigh.
    pub codecs: Vec<Codec>,
    /// The coordinated edge's objective and utilization cap.
    pub objective: FleetObjective,
    pub max_utilization: f64,
    /// Deadline of each request.
    pub timeout: Duration,
}

impl FleetOptions {
    /// Defaults for everything but the model, the executable and the traces.
    pub fn new(model_path: PathBuf, model_label: String, server_exe: PathBuf, traces: Vec<(String, Trace)>) -> Self {
        FleetOptions {
            model_path,
            model_label,
            shapes: InputShapes::none(),
            server_exe,
            devices: vec![8, 32, 64],
            strategies: FleetStrategy::ALL.to_vec(),
            seconds: 20.0,
            fps: 5.0,
            traces,
            delay: Duration::from_millis(10),
            slowdown: (4.0, 16.0),
            seed: 1,
            max_batch: 8,
            workers: 1,
            queue_bound: 256,
            codecs: vec![Codec::Fp16, Codec::Int8],
            objective: FleetObjective::MeanLatency,
            max_utilization: 0.8,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of the set-up (a failed request is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum FleetBenchError {
    #[error("{0}")]
    Options(String),
    #[error("the model: {0}")]
    Model(String),
    #[error("the edge process: {0}")]
    Edge(String),
}

/// One (strategy, fleet size).
#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub strategy: String,
    pub devices: usize,
    /// Frames answered within the run, per second, over the fleet.
    pub throughput_fps: f64,
    /// Frames released per second (the offered load).
    pub offered_fps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Jain's fairness index of the devices' mean latencies (1: all equal).
    pub jain: f64,
    /// Jain's index of the devices' answered frame rates.
    pub jain_throughput: f64,
    pub frames_released: u64,
    pub frames_answered: u64,
    /// Released frames not started by the end (a device that fell behind); their latency is
    /// counted as the time from release to the end of the run.
    pub frames_unanswered: u64,
    /// Share of answered frames that were sent to the edge.
    pub offloaded_share: f64,
    /// Frames completed on the device after a refused or failed request.
    pub fallbacks: u64,
    /// Payload bytes sent by the fleet (frames and probes).
    pub bytes_up: u64,
    /// Edge CPU time over the run, in cores (1.0: one core busy throughout), and as a share of
    /// this machine's cores.
    pub edge_cpu_cores: f64,
    pub edge_cpu_util: f64,
    /// The edge's mean batch size and mean queue time of answered requests.
    pub mean_batch: f64,
    pub server_queue_ms: f64,
    /// Choices made: `CUT:CODEC` → frames.
    pub choices: BTreeMap<String, u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub host: serde_json::Value,
    pub model: String,
    pub fps: f64,
    pub seconds: f64,
    pub delay_ms: f64,
    pub slowdown: (f64, f64),
    pub traces: Vec<String>,
    pub edge_workers: usize,
    pub max_batch: usize,
    pub objective: String,
    /// This machine's profile: whole-model time and the candidate cuts' head time, ms.
    pub model_ms: f64,
    pub results: Vec<FleetResult>,
}

/// What [`run`] reports while it works.
pub enum Event<'a> {
    Step(&'a str),
    /// A run started: its index among `total`.
    Run {
        strategy: FleetStrategy,
        devices: usize,
        index: usize,
        total: usize,
    },
    /// Progress within the current run.
    Tick {
        elapsed_s: f64,
        seconds: f64,
        answered: u64,
    },
}

/// A device's static description.
#[derive(Debug, Clone)]
struct DeviceSpec {
    slowdown: f64,
    trace: usize,
    offset_ms: u64,
    phase: Duration,
}

fn device_specs(n: usize, opts: &FleetOptions) -> Vec<DeviceSpec> {
    let mut rng = SplitMix64(opts.seed);
    let (lo, hi) = (opts.slowdown.0.max(1.0), opts.slowdown.1.max(opts.slowdown.0.max(1.0)));
    (0..n)
        .map(|i| {
            let trace = i % opts.traces.len();
            let period = opts.traces[trace].1.period_ms().max(1);
            DeviceSpec {
                slowdown: lo * (hi / lo).powf(rng.unit()),
                trace,
                offset_ms: rng.below(period),
                phase: Duration::from_secs_f64(rng.unit() / opts.fps),
            }
        })
        .collect()
}

/// A request template per (cut, codec), and its payload bytes.
struct Templates(BTreeMap<(usize, Codec), (ModelInferRequest, u64)>);

fn build_templates(
    engine: &Engine,
    graph: &ModelGraph,
    cuts: &[usize],
    codecs: &[Codec],
) -> Result<Templates, FleetBenchError> {
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 7))).collect();
    let all_cuts = graph.cuts();
    let mut out = BTreeMap::new();
    for &cut in cuts {
        let mut env = inputs.clone();
        if cut > 0 {
            let head = engine.part(graph, 0, cut).map_err(|e| FleetBenchError::Model(format!("head {cut}: {e}")))?;
            env.extend(engine.run(&head, &inputs).map_err(|e| FleetBenchError::Model(format!("head {cut}: {e}")))?);
        }
        let specs = &all_cuts[cut].tensors;
        for &codec in codecs {
            if !codec.applies_to_boundary(specs.iter().map(|t| (t.dtype, t.shape.as_slice()))) {
                continue;
            }
            let mut req = ModelInferRequest { model_name: MODEL_NAME.into(), ..Default::default() };
            req.parameters.insert(wire::PARAM_CUT.into(), wire::int_param(cut as i64));
            req.parameters.insert(wire::PARAM_MODEL_SHA256.into(), wire::str_param(graph.sha256()));
            req.parameters.insert(
                wire::PARAM_INPUT_SHAPES.into(),
                wire::str_param(cleave_node::server::format_shapes(graph.input_shapes())),
            );
            let mut bytes = 0;
            for spec in specs {
                let t = env.get(&spec.name).ok_or_else(|| FleetBenchError::Model(format!("no `{}`", spec.name)))?;
                let (tensor, raw) = wire::encode_input_shared(
                    &spec.name,
                    spec.dtype,
                    &spec.shape,
                    cleave_node::convert::shared_bytes(t),
                    EncodeOptions::new(codec),
                )
                .map_err(|e| FleetBenchError::Model(e.message))?;
                bytes += raw.len() as u64;
                req.inputs.push(tensor);
                req.raw_input_contents.push(raw);
            }
            out.insert((cut, codec), (req, bytes));
        }
    }
    Ok(Templates(out))
}

/// What every device of a run shares.
struct Shared {
    opts: FleetOptions,
    strategy: FleetStrategy,
    templates: Templates,
    start: Instant,
    stop: Instant,
    answered: AtomicU64,
    capacity: Capacity,
    /// The cut and codec `all-offload` sends.
    offload: (usize, Codec),
}

/// One finished frame.
struct Frame {
    release_s: f64,
    done_s: f64,
    latency_ms: f64,
    sent: bool,
    choice: String,
}

#[derive(Default)]
struct DeviceOutcome {
    frames: Vec<Frame>,
    released: u64,
    unanswered: Vec<f64>,
    fallbacks: u64,
    bytes_up: u64,
    queue_ms: Vec<f64>,
}

/// One simulated device.
struct SimDevice {
    name: String,
    spec: DeviceSpec,
    problem: Problem,
    trace: Trace,
    client: Client,
    est: LinkEstimates,
    /// When the simulated uplink is free again, ms since the run's start.
    link_free_ms: f64,
    util: f64,
    last_contact: Option<Instant>,
    last_sample: Option<Instant>,
    current: Option<(usize, Option<Codec>)>,
    sent_report: Option<(DeviceReport, Instant)>,
    recommendation: Option<(usize, Option<Codec>)>,
    seq: u64,
}

fn wire_bytes(payload: u64) -> u64 {
    Link::symmetric(1.0, 0.0).wire_bytes(payload).ceil() as u64
}

impl SimDevice {
    fn now_ms(&self, shared: &Shared) -> f64 {
        Instant::now().saturating_duration_since(shared.start).as_secs_f64() * 1e3
    }

    /// Puts `bytes` on the simulated uplink now: when the last byte arrives, ms since start.
    fn transmit(&mut self, shared: &Shared, bytes: u64) -> f64 {
        let start = self.now_ms(shared).max(self.link_free_ms);
        let t = self.trace.transfer_ms(self.spec.offset_ms + start.round() as u64, bytes) as f64;
        self.link_free_ms = start + t;
        start + t
    }

    fn delay_ms(shared: &Shared) -> f64 {
        shared.opts.delay.as_secs_f64() * 1e3
    }

    /// The device's options under its current estimates (queueing excluded).
    fn options(&self) -> Vec<FleetOption> {
        let e = self.est.estimate();
        let link = Link::symmetric(e.up_bps, e.rtt_ms);
        let cond = Conditions::two_tier(link);
        match Planner::new(&self.problem).and_then(|p| p.alternatives(&cond, usize::MAX)) {
            Ok(plans) => plans.iter().map(FleetOption::from_plan).collect(),
            Err(_) => vec![],
        }
    }

    fn fleet_device(&self, shared: &Shared, options: Vec<FleetOption>) -> FleetDevice {
        FleetDevice { fps: shared.opts.fps, options }
    }

    /// The device's own choice: best response to the reported load.
    fn independent(&self, shared: &Shared, options: &[FleetOption]) -> (usize, Option<Codec>) {
        let last = self.problem.last();
        let d = self.fleet_device(shared, options.to_vec());
        let current = self.current.and_then(|c| options.iter().position(|o| (o.cut, o.codec) == c));
        match fleet::best_response(&d, current, self.util, None, &shared.capacity) {
            Some(k) => (options[k].cut, options[k].codec),
            None => (last, None),
        }
    }

    fn decide(&self, shared: &Shared, options: &[FleetOption]) -> (usize, Option<Codec>) {
        let last = self.problem.last();
        match shared.strategy {
            FleetStrategy::AllLocal => (last, None),
            FleetStrategy::AllOffload => (shared.offload.0, Some(shared.offload.1)),
            FleetStrategy::Independent => self.independent(shared, options),
            FleetStrategy::Coordinated => {
                // The device's own constraint: a recommendation to send that its current
                // estimates predict slower than computing locally even with an empty queue is
                // stale (its link got worse since its report) and is not followed.
                let local =
                    options.iter().filter(|o| !o.offloads()).map(|o| o.latency_ms).fold(f64::INFINITY, f64::min);
                match self.recommendation.and_then(|r| options.iter().find(|o| (o.cut, o.codec) == r)) {
                    Some(o) if !o.offloads() || o.latency_ms <= local => (o.cut, o.codec),
                    _ => self.independent(shared, options),
                }
            }
        }
    }

    /// Parameters identifying the device, and its report when it is due.
    fn fleet_params(&mut self, shared: &Shared, req: &mut ModelInferRequest, options: &[FleetOption]) {
        if shared.strategy != FleetStrategy::Coordinated {
            return;
        }
        req.parameters.insert(wire::PARAM_DEVICE.into(), wire::str_param(self.name.clone()));
        let report = DeviceReport { fps: shared.opts.fps, options: options.to_vec() };
        let due = match &self.sent_report {
            None => true,
            Some((r, at)) => r.differs(&report, 0.15) || at.elapsed() > Duration::from_secs(2),
        };
        if due && !options.is_empty() {
            req.parameters.insert(wire::PARAM_FLEET_REPORT.into(), wire::str_param(report.encode()));
            self.sent_report = Some((report, Instant::now()));
        }
    }

    fn read_answer(&mut self, resp: &cleave_proto::inference::ModelInferResponse) {
        if let Some(u) = wire::get_f64(&resp.parameters, wire::PARAM_SERVER_UTIL) {
            self.util = u;
        }
        if let Ok(Some(r)) = wire::get_str(&resp.parameters, wire::PARAM_FLEET_PLAN)
            && let Ok(r) = fleet::parse_recommendation(r)
        {
            self.recommendation = Some(r);
        }
        self.last_contact = Some(Instant::now());
    }

    /// A device computing locally keeps learning: a load probe each second, a bandwidth probe
    /// every 2 s (through the simulated link, in the background).
    async fn probe(&mut self, shared: &Shared, out: &mut DeviceOutcome, options: &[FleetOption]) {
        if matches!(shared.strategy, FleetStrategy::AllLocal | FleetStrategy::AllOffload) {
            return;
        }
        let now = Instant::now();
        let delay = Self::delay_ms(shared);
        if self.last_sample.is_none_or(|t| now - t > Duration::from_secs(2)) {
            let bytes = 32 * 1024u64;
            let t0 = self.now_ms(shared).max(self.link_free_ms);
            let arrive = self.transmit(shared, wire_bytes(bytes));
            let rpc = Duration::from_secs_f64((arrive - t0 + 2.0 * delay).max(0.0) / 1e3);
            self.est.observe_transfer(Instant::now(), wire_bytes(bytes), rpc, Duration::ZERO);
            out.bytes_up += bytes;
            self.last_sample = Some(now);
        }
        if self.last_contact.is_none_or(|t| now - t > Duration::from_secs(1)) {
            let mut req = ModelInferRequest {
                model_name: MODEL_NAME.into(),
                id: format!("{}-probe-{}", self.name, self.seq),
                ..Default::default()
            };
            self.seq += 1;
            req.parameters.insert(wire::PARAM_PROBE.into(), wire::int_param(1));
            self.fleet_params(shared, &mut req, options);
            let mut r = tonic::Request::new(req);
            r.set_timeout(Duration::from_secs(5));
            if let Ok(resp) = self.client.model_infer(r).await {
                self.read_answer(resp.get_ref());
            }
            self.est.observe_rtt(Duration::from_secs_f64(2.0 * delay / 1e3));
        }
    }

    async fn run(mut self, shared: Arc<Shared>) -> DeviceOutcome {
        let mut out = DeviceOutcome::default();
        let period = Duration::from_secs_f64(1.0 / shared.opts.fps);
        let delay = Duration::from_secs_f64(Self::delay_ms(&shared) / 1e3);
        let last = self.problem.last();
        self.est.observe_rtt(2 * delay);
        let grace = shared.stop + Duration::from_secs(2);
        let mut k = 0u64;
        loop {
            let release = shared.start + self.spec.phase + period * k as u32;
            if release >= shared.stop {
                break;
            }
            out.released += 1;
            let now = Instant::now();
            if now >= grace {
                out.unanswered.push(now.saturating_duration_since(release).as_secs_f64() * 1e3);
                k += 1;
                continue;
            }
            tokio::time::sleep_until(release.into()).await;
            k += 1;
            let options = self.options();
            let (cut, codec) = self.decide(&shared, &options);
            self.current = Some((cut, codec));
            // The head (or the whole model), emulated.
            tokio::time::sleep(Duration::from_secs_f64(self.problem.device_ms[cut] / 1e3)).await;
            let mut sent = false;
            let mut fell_back = false;
            if let (true, Some(q)) = (cut < last, codec)
                && let Some((template, bytes)) = shared.templates.0.get(&(cut, q))
            {
                let bytes = *bytes;
                let t_send = Instant::now();
                let arrive = self.transmit(&shared, wire_bytes(bytes));
                let at = shared.start + Duration::from_secs_f64(arrive / 1e3) + delay;
                tokio::time::sleep_until(at.into()).await;
                let mut req = template.clone();
                req.id = format!("{}-{}", self.name, self.seq);
                self.seq += 1;
                self.fleet_params(&shared, &mut req, &options);
                let mut r = tonic::Request::new(req);
                r.set_timeout(shared.opts.timeout);
                out.bytes_up += bytes;
                match self.client.model_infer(r).await {
                    Ok(resp) => {
                        tokio::time::sleep(delay).await;
                        let resp = resp.into_inner();
                        let q = wire::get_f64(&resp.parameters, wire::PARAM_QUEUE_MS).unwrap_or(0.0);
                        let c = wire::get_f64(&resp.parameters, wire::PARAM_COMPUTE_MS).unwrap_or(0.0);
                        self.read_answer(&resp);
                        self.est.observe_server(q, c);
                        let server = Duration::from_secs_f64((q + c).max(0.0) / 1e3);
                        if self
                            .est
                            .observe_transfer(Instant::now(), wire_bytes(bytes), t_send.elapsed(), server)
                            .is_some()
                        {
                            self.last_sample = Some(Instant::now());
                        }
                        out.queue_ms.push(q);
                        sent = true;
                    }
                    Err(_) => {
                        // Completed on the device: its tail, emulated.
                        let tail = self.problem.device_ms[last] - self.problem.device_ms[cut];
                        tokio::time::sleep(Duration::from_secs_f64(tail.max(0.0) / 1e3)).await;
                        out.fallbacks += 1;
                        fell_back = true;
                    }
                }
            }
            let done = Instant::now();
            out.frames.push(Frame {
                release_s: release.saturating_duration_since(shared.start).as_secs_f64(),
                done_s: done.saturating_duration_since(shared.start).as_secs_f64(),
                latency_ms: done.saturating_duration_since(release).as_secs_f64() * 1e3,
                sent: sent || fell_back,
                choice: format!("{cut}:{}", codec.filter(|_| cut < last).map_or("-", |c| c.name())),
            });
            shared.answered.fetch_add(1, Ordering::Relaxed);
            if !sent {
                let next = shared.start + self.spec.phase + period * k as u32;
                if next > Instant::now() + 2 * delay {
                    self.probe(&shared, &mut out, &options).await;
                }
            }
        }
        out
    }
}

/// Jain's fairness index of `x` (1: all equal; 1/n: one has everything).
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let s2: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || s2 <= 0.0 { f64::NAN } else { s * s / (x.len() as f64 * s2) }
}

/// Runs every (strategy, fleet size) and reports (call inside a multi-threaded tokio runtime).
pub async fn run(
    graph: Arc<ModelGraph>,
    opts: &FleetOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<FleetReport, FleetBenchError> {
    let bad = |m: String| Err(FleetBenchError::Options(m));
    if opts.devices.is_empty() || opts.devices.contains(&0) {
        return bad("--devices needs fleet sizes of at least 1, e.g. 8,32,64".into());
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return bad(format!("--seconds {} must be a positive number", opts.seconds));
    }
    if !(opts.fps.is_finite() && opts.fps > 0.0) {
        return bad(format!("--fps {} must be a positive number", opts.fps));
    }
    if opts.traces.is_empty() {
        return bad("no uplink trace".into());
    }
    if !(opts.slowdown.0 >= 1.0 && opts.slowdown.1 >= opts.slowdown.0 && opts.slowdown.1.is_finite()) {
        return bad(format!("--slowdown {}..{} must be 1 ≤ lo ≤ hi", opts.slowdown.0, opts.slowdown.1));
    }
    if opts.strategies.is_empty() {
        return bad("no strategy to run".into());
    }

    progress(Event::Step("profiling this machine's compute per cut"));
    let engine = Arc::new(Engine::new(EngineConfig { threads: 1, cache_capacity: 64 }));
    let popts =
        cleave_engine::profile::ProfileOptions { warmup: 2, repeats: 5, device: "edge".into(), host: crate::host() };
    let edge_profile: Profile =
        cleave_engine::profile::profile(&engine, &graph, &popts, &mut |_: usize, _: usize, _: &str| {})
            .map_err(|e| FleetBenchError::Model(e.to_string()))?;
    let cand = default_candidate_cuts(&graph);
    let last = graph.last_cut();
    let sent_cuts: Vec<usize> = cand.iter().copied().filter(|&c| c < last).collect();
    progress(Event::Step("encoding a boundary tensor per cut and codec"));
    let templates = build_templates(&engine, &graph, &sent_cuts, &opts.codecs)?;
    drop(engine);
    let offload = templates
        .0
        .iter()
        .filter(|((c, _), _)| *c == 0)
        .min_by_key(|(_, (_, b))| *b)
        .map(|(k, _)| *k)
        .ok_or_else(|| FleetBenchError::Model("no codec applies to the model's input".into()))?;
    let base_problem = |slowdown: f64| {
        let device = edge_profile.scaled(slowdown, "device");
        let mut p =
            ProblemBuilder::new(&graph, &device).server(edge_profile.clone()).codecs(opts.codecs.clone()).build();
        restrict_cuts(&mut p, &cand);
        p
    };

    let runs: Vec<(usize, FleetStrategy)> =
        opts.devices.iter().flat_map(|&n| opts.strategies.iter().map(move |&s| (n, s))).collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let mut results = vec![];
    for (index, &(n, strategy)) in runs.iter().enumerate() {
        progress(Event::Run { strategy, devices: n, index, total: runs.len() });
        let mut extra = vec![];
        if strategy == FleetStrategy::Coordinated {
            extra = vec![
                "--coordinate".into(),
                "--fleet-objective".into(),
                opts.objective.to_string(),
                "--fleet-max-utilization".into(),
                opts.max_utilization.to_string(),
            ];
        }
        let spec = EdgeSpec {
            server_exe: opts.server_exe.clone(),
            model_name: MODEL_NAME.into(),
            model_path: opts.model_path.clone(),
            shapes: opts.shapes.clone(),
            queue_bound: opts.queue_bound,
            max_batch: opts.max_batch,
            workers: Some(opts.workers),
            extra_args: extra,
            grpc_port: 0,
        };
        let mut edge = EdgeProcess::spawn(&spec).map_err(FleetBenchError::Edge)?;
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(connect(edge.grpc).await.map_err(FleetBenchError::Edge)?);
        }
        // Warm the edge: every tail at every batch size the run may use.
        for ((cut, codec), (req, _)) in &templates.0 {
            let mut set = tokio::task::JoinSet::new();
            for j in 0..opts.max_batch.max(1) * 2 {
                let mut c = clients[j % clients.len()].clone();
                let mut r = req.clone();
                r.id = format!("warm-{cut}-{codec}-{j}");
                set.spawn(async move {
                    let mut r = tonic::Request::new(r);
                    r.set_timeout(Duration::from_secs(60));
                    c.model_infer(r).await.map(|_| ()).map_err(|e| e.message().to_owned())
                });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    return Err(FleetBenchError::Edge(format!("a warm-up request failed: {e}")));
                }
            }
        }

        let specs = device_specs(n, opts);
        let start = Instant::now() + Duration::from_millis(200);
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            strategy,
            templates: Templates(templates.0.clone()),
            start,
            stop: start + Duration::from_secs_f64(opts.seconds),
            answered: AtomicU64::new(0),
            capacity: Capacity { workers: opts.workers.max(1), max_utilization: opts.max_utilization },
            offload,
        });
        let cpu_before = proc_cpu_s(edge.pid());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (client, spec)) in clients.into_iter().zip(specs).enumerate() {
            let trace = opts.traces[spec.trace].1.clone();
            let dev = SimDevice {
                name: format!("dev{i}"),
                problem: base_problem(spec.slowdown),
                spec,
                trace,
                client,
                est: LinkEstimates::new(),
                link_free_ms: 0.0,
                util: 0.0,
                last_contact: None,
                last_sample: None,
                current: None,
                sent_report: None,
                recommendation: None,
                seq: 0,
            };
            tasks.spawn(dev.run(shared.clone()));
        }
        let mut outcomes = vec![];
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    edge.check_alive().map_err(FleetBenchError::Edge)?;
                    progress(Event::Tick {
                        elapsed_s: Instant::now().saturating_duration_since(start).as_secs_f64().min(opts.seconds),
                        seconds: opts.seconds,
                        answered: shared.answered.load(Ordering::Relaxed),
                    });
                }
                done = tasks.join_next() => match done {
                    Some(r) => outcomes.push(r.map_err(|e| FleetBenchError::Edge(format!("a device failed: {e}")))?),
                    None => break,
                },
            }
        }
        let cpu_after = proc_cpu_s(edge.pid());
        let metrics = fetch_metrics(edge.metrics).await.unwrap_or_default();
        edge.check_alive().map_err(FleetBenchError::Edge)?;
        drop(edge);
        let edge_cpu_s = cpu_before.zip(cpu_after).map_or(f64::NAN, |(a, b)| b - a);
        let m = |name: &str| metric(&metrics, name, "").unwrap_or(0.0);
        let mean_batch = m("nv_inference_count") / m("nv_inference_exec_count").max(1.0);
        results.push(summarise(strategy, n, opts, &shared, outcomes, edge_cpu_s, cores, mean_batch));
    }
    Ok(FleetReport {
        host: crate::host(),
        model: opts.model_label.clone(),
        fps: opts.fps,
        seconds: opts.seconds,
        delay_ms: opts.delay.as_secs_f64() * 1e3,
        slowdown: opts.slowdown,
        traces: opts.traces.iter().map(|t| t.0.clone()).collect(),
        edge_workers: opts.workers,
        max_batch: opts.max_batch,
        objective: opts.objective.to_string(),
        model_ms: edge_profile.prefix().last().copied().unwrap_or(0.0),
        results,
    })
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    strategy: FleetStrategy,
    n: usize,
    opts: &FleetOptions,
    shared: &Shared,
    outcomes: Vec<DeviceOutcome>,
    edge_cpu_s: f64,
    cores: f64,
    mean_batch: f64,
) -> FleetResult {
    let _ = shared;
    let mut lat = vec![];
    let mut per_dev_mean = vec![];
    let mut per_dev_rate = vec![];
    let (mut released, mut answered, mut unanswered, mut sent, mut fallbacks, mut bytes_up) = (0, 0, 0, 0, 0, 0);
    let mut in_window = 0u64;
    let mut queue = vec![];
    let mut choices: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        released += o.released;
        answered += o.frames.len() as u64;
        unanswered += o.unanswered.len() as u64;
        fallbacks += o.fallbacks;
        bytes_up += o.bytes_up;
        queue.extend(o.queue_ms);
        let mut dev = vec![];
        let mut done = 0;
        for f in &o.frames {
            lat.push(f.latency_ms);
            dev.push(f.latency_ms);
            sent += u64::from(f.sent);
            *choices.entry(f.choice.clone()).or_default() += 1;
            if f.done_s <= opts.seconds && f.release_s >= 0.0 {
                in_window += 1;
                done += 1;
            }
        }
        lat.extend(o.unanswered.iter().copied());
        dev.extend(o.unanswered.iter().copied());
        per_dev_mean.push(if dev.is_empty() { 0.0 } else { dev.iter().sum::<f64>() / dev.len() as f64 });
        per_dev_rate.push(done as f64 / opts.seconds);
    }
    let mean_ms = if lat.is_empty() { f64::NAN } else { lat.iter().sum::<f64>() / lat.len() as f64 };
    FleetResult {
        strategy: strategy.name().into(),
        devices: n,
        throughput_fps: in_window as f64 / opts.seconds,
        offered_fps: released as f64 / opts.seconds,
        p50_ms: quantile(&mut lat, 0.5),
        p99_ms: quantile(&mut lat, 0.99),
        mean_ms,
        jain: jain(&per_dev_mean),
        jain_throughput: jain(&per_dev_rate),
        frames_released: released,
        frames_answered: answered,
        frames_unanswered: unanswered,
        offloaded_share: sent as f64 / answered.max(1) as f64,
        fallbacks,
        bytes_up,
        edge_cpu_cores: edge_cpu_s / opts.seconds,
        edge_cpu_util: edge_cpu_s / opts.seconds / cores,
        mean_batch,
        server_queue_ms: if queue.is_empty() { 0.0 } else { queue.iter().sum::<f64>() / queue.len() as f64 },
        choices,
    }
}

impl FleetReport {
    /// A human-readable summary (the table).
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} at {} fps per device, {:.0} s per run, one-way delay {:.0} ms, devices {:.1}–{:.1}× slower than this machine (whole model {:.1} ms here)\n",
            self.model, self.fps, self.seconds, self.delay_ms, self.slowdown.0, self.slowdown.1, self.model_ms
        );
        s += &format!(
            "edge: `cleave serve`, {} worker(s), max batch {}; coordinated objective {}; traces: {}\n\n",
            self.edge_workers,
            self.max_batch,
            self.objective,
            self.traces.join(", ")
        );
        s += &format!(
            "{:<12} {:>7} {:>10} {:>9} {:>9} {:>6} {:>9} {:>8} {:>7} {:>8}\n",
            "strategy", "devices", "thr fps", "p50 ms", "p99 ms", "jain", "offload", "edge cpu", "batch", "unans."
        );
        for r in &self.results {
            s += &format!(
                "{:<12} {:>7} {:>10.1} {:>9.1} {:>9.1} {:>6.3} {:>8.0}% {:>7.0}% {:>7.2} {:>8}\n",
                r.strategy,
                r.devices,
                r.throughput_fps,
                r.p50_ms,
                r.p99_ms,
                r.jain,
                100.0 * r.offloaded_share,
                100.0 * r.edge_cpu_util,
                r.mean_batch,
                r.frames_unanswered
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index() {
        assert!((jain(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!(jain(&[]).is_nan());
    }

    #[test]
    fn strategies_parse() {
        for s in FleetStrategy::ALL {
            assert_eq!(s.name().parse::<FleetStrategy>().unwrap(), s);
        }
        assert!("greedy".parse::<FleetStrategy>().is_err());
    }

    #[test]
    fn devices_are_the_same_in_every_fleet() {
        let opts = FleetOptions::new(
            "m.onnx".into(),
            "m".into(),
            "cleave".into(),
            vec![("c".into(), Trace::constant(5e6).unwrap())],
        );
        let a = device_specs(8, &opts);
        let b = device_specs(64, &opts);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.slowdown, y.slowdown);
            assert_eq!(x.offset_ms, y.offset_ms);
        }
        assert!(b.iter().all(|d| (4.0..=16.0).contains(&d.slowdown)));
    }
}
