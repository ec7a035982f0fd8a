//! `cleave bench …`: benchmarks that print a table and write JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::model_arg::ModelArgs;

mod fleet;
mod load;

#[derive(Subcommand, Debug)]
pub enum Bench {
    Split(SplitArgs),
    Load(load::LoadArgs),
    Fleet(fleet::FleetArgs),
    Predict(PredictArgs),
    Rpc(RpcArgs),
    Engines(EnginesArgs),
    Trace(TraceArgs),
    Chaos(ChaosArgs),
    /// The device process of `bench trace` (internal: JSON lines on stdin/stdout).
    #[command(hide = true)]
    TraceDevice,
}

/// Adaptive split against every baseline, on a bandwidth trace.
///
/// The edge runs as a separate `cleave serve` process on loopback, and the device as another
/// process (`cleave bench trace-device`), behind a proxy in this process that shapes its uplink
/// by the trace (mahimahi format: one line per 1500-byte delivery
/// opportunity, in ms; it loops) plus a fixed one-way delay each way. Every strategy starts at
/// the same trace millisecond and runs the same frames, released at --fps; a frame's latency is
/// from its release to its answer (frames are handled one at a time, so a slow frame delays the
/// next ones, as on a real device).
///
/// Strategies: device-only; offload-raw-fp32 (cut 0, fp32); offload-raw-u8 (cut 0, 8-bit affine:
/// an input of 0..255 pixels travels exactly as its bytes); offload-jpeg (cut 0 as a JPEG at
/// quality 90, decoded on the edge; image-shaped inputs only); best-static (every static cut ×
/// codec among cut 0 and the bottleneck cuts that shrink the boundary, the best mean in
/// hindsight); adaptive (re-plans cut × codec per frame from the bandwidth, RTT and server time
/// it measures); oracle (per frame, the best choice given the bandwidth the frame really had and
/// the compute measured in the runs; simulated offline).
///
/// The device is made slower than the edge for real with --device-cpu F: its process runs in its
/// own cgroup with a CFS quota of F of one core (cgroup v1 `cpu.cfs_quota_us` or v2 `cpu.max`;
/// needs root). It profiles itself there, so the planner's device times are measured, not
/// assumed. Without --device-cpu, or where no cgroup can be made, the documented fallback is a
/// compute-time multiplier: after each compute step the device sleeps (X − 1) × the measured
/// time (--device-slowdown X, or 1/F when the cgroup failed). The report states the method used
/// and the device/edge speed ratio it measured.
///
/// Inputs are random (seeded per frame) unless --input is given: a .npy (the same input every
/// frame) or an .npz whose `x` holds N inputs (frame k gets sample k mod N, cast to the input
/// type; e.g. assets/digits/test.npz). Latency does not depend on the values, except for early
/// exits and the size of JPEG-coded inputs.
///
/// Examples:
///   cleave bench trace --trace markov:7 --frames 60 --fps 5 --plot trace.png
///   cleave bench trace --model resnet50.onnx --trace ATT-LTE-driving-2016.up \
///       --frames 40 --fps 1 --delay 20ms --device-cpu 0.15 --json att.json --plot att.png
///   cleave bench trace --model assets/digits/digits_exits.onnx --input assets/digits/test.npz \
///       --trace markov:3 --frames 100 --fps 10
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TraceArgs {
    /// ONNX model file (default: the built-in tiny-resnet demo model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Pin an input's shape, e.g. `--shape x=1,3,224,224` (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,

    /// Uplink trace: a mahimahi file, or `markov:SEED` for a generated Markov-modulated
    /// 0.5–20 Mbit/s trace (2 min, mean dwell 3 s).
    #[arg(long, value_name = "PATH|markov:SEED")]
    pub trace: String,

    /// Trace millisecond at which every strategy starts.
    #[arg(long, default_value_t = 0)]
    pub offset_ms: u64,

    /// Frames per strategy.
    #[arg(long, default_value_t = 200)]
    pub frames: usize,

    /// Frames released per second.
    #[arg(long, default_value_t = 10.0)]
    pub fps: f64,

    /// One-way delay added in each direction, e.g. 20ms.
    #[arg(long, default_value = "20ms", value_parser = crate::cmd::duration)]
    pub delay: std::time::Duration,

    /// How many times slower the device computes than this machine (≥ 1), by sleeping after
    /// each compute step. Ignored with --device-cpu (unless the cgroup cannot be made).
    #[arg(long, default_value_t = 4.0)]
    pub device_slowdown: f64,

    /// Run the device process under a real CPU limit: this fraction of one core (e.g. 0.15, a
    /// Raspberry-Pi-class device against this machine), by a cgroup CFS quota (needs root).
    #[arg(long, value_name = "F")]
    pub device_cpu: Option<f64>,

    /// Deadline of each request; past it the device computes the tail itself.
    #[arg(long, default_value = "5s", value_parser = crate::cmd::duration)]
    pub timeout: std::time::Duration,

    /// Static cuts to run for best-static, comma-separated (default: cut 0 and the bottleneck
    /// cuts that shrink the boundary, at most 4).
    #[arg(long, value_delimiter = ',')]
    pub static_cuts: Option<Vec<usize>>,

    /// Codecs for the static runs and the adaptive device (int8 and jpeg90, the input
    /// baselines' codecs, are always added; JPEG applies only to image inputs at cut 0).
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp16,int8,jpeg75")]
    pub codecs: Vec<cleave_codec::Codec>,

    /// A strategy that falls this far behind its frame releases is stopped (and reported so).
    #[arg(long, default_value = "30s", value_parser = crate::cmd::duration)]
    pub max_backlog: std::time::Duration,

    /// When the adaptive device computes the tail itself while a request is out, at the lowest
    /// CPU priority, taking whichever answer comes first (`eager`: as the request is sent;
    /// `race`: once the answer is due, or earlier once the upload stalls; `race-due`: once the
    /// answer is due; all three counted on by the decision; `late`: once the answer is late by
    /// twice the predicted time; `off`).
    /// See `cleave run --help`. Fixed strategies never hedge. Several, comma-separated (e.g.
    /// `race,late`): the first is `adaptive`, each other one runs after it as
    /// `adaptive-hedge-<policy>`, side by side on the same trace and frames.
    #[arg(long, value_name = "POLICY", value_delimiter = ',', default_value = "eager")]
    pub hedge: Vec<cleave_node::adaptive::Hedge>,

    /// Run every strategy N times, in rounds (each round runs all of them once, so that a slow
    /// spell of a shared machine does not fall on one strategy only), and report each frame's
    /// median latency over the rounds. The records file keeps every round (`<strategy>#<round>`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,

    /// Frame inputs (single-input models): a .npy used for every frame, or an .npz whose `x`
    /// holds N samples (frame k gets sample k mod N).
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// How an .npz --input's samples become model inputs: as-stored (cast, values unchanged),
    /// unit (uint8 / 255), imagenet (uint8 RGB, ImageNet mean/std), imagenet-bgr (the same,
    /// channels reversed, as PaddleOCR's detectors expect).
    #[arg(long, default_value = "as-stored")]
    pub pixels: cleave_bench::device_proc::Pixels,

    /// Write the results as JSON: a list with one object per strategy.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Plot bandwidth, the adaptive cut and per-frame latency over time (.png or .svg).
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// Write every frame of every run as the device recorded it (decision, estimate, head,
    /// send, RPC, server queue and compute, status), one JSON object per line with its
    /// `strategy`: for finding out why a frame was slow.
    #[arg(long, value_name = "PATH")]
    pub records: Option<PathBuf>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    cleave_graph::InputShapes::parse_one(s)
}

/// Time tract against onnxruntime on the same models, side by side.
///
/// Each model is compiled by both engines and run in alternating order for `--repeats` rounds
/// after warm-up; the report gives each engine's median, the ratio onnxruntime / tract, and the
/// largest relative difference between their outputs (an error above 1e-4). Needs a binary built
/// with `--features ort` and the onnxruntime library (ORT_DYLIB_PATH, else python3's
/// `onnxruntime` package, `pip install onnxruntime`).
///
/// Example:
///   cargo run --release -p cleave-cli --features ort -- bench engines \
///       resnet50.onnx squeezenet.onnx --json engines.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct EnginesArgs {
    /// Models to time (default: the built-in demo model).
    #[arg(value_name = "MODEL")]
    pub models: Vec<PathBuf>,

    /// Threads per inference, for both engines.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Timed rounds per model.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Measure what the framework adds per frame on loopback, beyond computing.
///
/// A server and a device run in this process and talk gRPC over 127.0.0.1. The model's input is
/// the boundary tensor and its tail a global average pool, so nearly all of a frame's time is
/// framework: encoding, the RPC (serialization, HTTP/2, TCP, validation), queueing and decoding.
/// Frames go one at a time per codec; the overhead is each frame's wall time minus the server's
/// reported compute. Then `--clients` connections send frames at once, for throughput with
/// dynamic batching.
///
/// Example:
///   cleave bench rpc --json rpc.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RpcArgs {
    /// Size of the boundary tensor (f32), in KiB.
    #[arg(long, default_value_t = 200)]
    pub boundary_kib: usize,

    /// Timed frames per codec.
    #[arg(long, default_value_t = 500)]
    pub frames: usize,

    /// Codecs to measure (comma-separated); the first is used for the throughput run.
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp16,int8")]
    pub codecs: Vec<cleave_codec::Codec>,

    /// Concurrent clients, each on its own connection (0 skips the throughput run).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,

    /// Length of the throughput run, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,

    /// Largest dynamic batch on the server.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Check a profile against fresh measurements: head and tail compute at spread cuts, measured
/// now, versus the profile's prediction (sums of segment medians) and the FLOPs-based predictor
/// fitted on it. Profile in one run, measure in another: that is the honest test of a profile.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The profile to check (from `cleave profile -o`).
    #[arg(long, value_name = "PATH")]
    pub profile: PathBuf,

    /// Number of cuts to check.
    #[arg(long, default_value_t = 3)]
    pub cuts: usize,

    /// Timed rounds.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Time cut enumeration and the cost of splitting.
///
/// For each model: load + analysis time, cut enumeration time (median of many runs), and at
/// `--cuts` bottleneck cuts spread over the model, the ratio (head time + tail time) / whole-model
/// time, from runs alternated side by side in one process (medians). A ratio near 1.00 means
/// splitting costs nothing beyond the transfer.
#[derive(clap::Args, Debug)]
pub struct SplitArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Number of cuts at which to measure the split overhead.
    #[arg(long, default_value_t = 3)]
    pub cuts: usize,

    /// Timed rounds (each round runs whole, then every head and tail once).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,

    /// Threads per inference.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Fault tolerance under a nemesis: no frame lost or duplicated, none late, none wrong.
///
/// One device (this process) streams --frames frames at --fps to two edge replicas, real
/// `cleave serve` processes on loopback, each behind its own proxy. The device lists them in
/// order and fails over between them (health probes every --probe-interval that must answer
/// within --probe-timeout, plus every request's outcome); a request that failed is re-sent to
/// the other replica with the same id. Meanwhile a nemesis waits 1–3 s, picks a replica, and
/// injects the next of a shuffled cycle of faults: kill -9 (restarted on the same port 1–3 s
/// later), a blackholed link for 1–5 s, a reset of every connection, or a partition (both
/// links silent for 1–3 s: the device answers by itself, degraded).
///
/// Then it checks every frame: exactly one result; a remote result equal to the tail run
/// locally on what was sent, with the boundary within the codec's error bound; a degraded one
/// (the device computed the tail itself because no replica answered in time) equal to the
/// whole model run locally; none after its --deadline.
///
/// Reported: lost, duplicated, degraded, late, wrong; detection time (fault → the device marks
/// the replica down; kills, blackholes and partitions) and failover time (a frame's failed attempt → the
/// other replica's answer), p50 and p99; throughput. --json writes it as one object.
///
/// Examples:
///   cleave bench chaos --json chaos.json
///   cleave bench chaos models/resnet50.onnx --cut 40 --frames 500 --fps 10 --deadline 2s
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Frames to stream.
    #[arg(long, default_value_t = 2000)]
    pub frames: usize,

    /// Frames released per second.
    #[arg(long, default_value_t = 50.0)]
    pub fps: f64,

    /// Each frame's deadline, from its release.
    #[arg(long, default_value = "500ms", value_parser = crate::cmd::duration)]
    pub deadline: std::time::Duration,

    /// The cut (default: the model's middle cut).
    #[arg(long)]
    pub cut: Option<usize>,

    /// How the boundary tensors travel.
    #[arg(long, default_value = "int8")]
    pub codec: cleave_codec::Codec,

    /// Health probe period of each healthy replica.
    #[arg(long, default_value = "50ms", value_parser = crate::cmd::duration)]
    pub probe_interval: std::time::Duration,

    /// A probe slower than this marks the replica down.
    #[arg(long, default_value = "100ms", value_parser = crate::cmd::duration)]
    pub probe_timeout: std::time::Duration,

    /// Seed of the nemesis' schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

fn chaos(a: ChaosArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let tmp = tempfile::tempdir()?;
    let model_path = match &a.model.model {
        Some(p) => p.clone(),
        None => {
            let p = tmp.path().join("model.onnx");
            std::fs::write(&p, &loaded.bytes)?;
            p
        }
    };
    let exe = std::env::current_exe().context("cannot find the cleave executable to run the replicas")?;
    let mut opts = cleave_bench::chaos::ChaosOptions::new(exe, model_path);
    opts.shapes = a.model.input_shapes();
    opts.frames = a.frames;
    opts.fps = a.fps;
    opts.deadline = a.deadline;
    opts.cut = a.cut;
    opts.codec = a.codec;
    opts.seed = a.seed;
    opts.failover.probe_interval = a.probe_interval;
    opts.failover.probe_timeout = a.probe_timeout;
    eprintln!(
        "bench chaos: {} frames at {} fps to 2 replicas of {} (about {:.0} s)",
        a.frames,
        a.fps,
        loaded.source,
        a.frames as f64 / a.fps
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::chaos::run(std::sync::Arc::new(loaded.graph), &opts, |line| {
        eprintln!("bench chaos: {line}")
    }))?;
    println!("{}", report.render());
    write_json(a.json.as_deref(), &report)
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Split(a) => split(a),
        Bench::Load(a) => load::run(a),
        Bench::Fleet(a) => fleet::run(a),
        Bench::Predict(a) => predict(a),
        Bench::Rpc(a) => rpc(a),
        Bench::Engines(a) => engines(a),
        Bench::Trace(a) => trace(a),
        Bench::Chaos(a) => chaos(a),
        Bench::TraceDevice => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(rt.block_on(cleave_bench::device_proc::worker())?)
        }
    }
}

fn trace(a: TraceArgs) -> Result<()> {
    use std::sync::Arc;
    let trace = match a.trace.strip_prefix("markov:") {
        Some(seed) => {
            let seed: u64 =
                seed.parse().with_context(|| format!("--trace {}: the seed must be an integer", a.trace))?;
            cleave_link::Trace::markov(seed, 120_000, &[0.5, 2.0, 5.0, 10.0, 20.0], 3_000.0)?
        }
        None => {
            let text = std::fs::read_to_string(&a.trace).with_context(|| format!("cannot read trace {}", a.trace))?;
            cleave_link::Trace::parse(&text).with_context(|| format!("trace {}", a.trace))?
        }
    };
    let model_args = ModelArgs { model: a.model.clone(), shapes: a.shapes.clone(), exits: None };
    let loaded = model_args.load()?;
    let tmp = tempfile::tempdir()?;
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => {
            let p = tmp.path().join("tiny_resnet.onnx");
            std::fs::write(&p, crate::model_arg::DEFAULT_MODEL)?;
            p
        }
    };
    let graph = Arc::new(loaded.graph);
    use cleave_bench::device_proc::FrameSource;
    let source = match &a.input {
        None => FrameSource::Random,
        Some(p) => {
            let p = std::path::absolute(p).with_context(|| format!("--input {}", p.display()))?;
            let source = if p.extension().is_some_and(|e| e == "npz") {
                FrameSource::Dataset(p, a.pixels)
            } else {
                FrameSource::Npy(p)
            };
            // Check here, where the error reaches the user directly, not only in the device.
            cleave_bench::device_proc::load_frames(&graph, &source, 1).map_err(|e| anyhow::anyhow!("--input: {e}"))?;
            source
        }
    };
    let opts = cleave_bench::trace::TraceOptions {
        model_path,
        shapes: model_args.input_shapes(),
        trace,
        trace_name: a.trace.clone(),
        start_offset_ms: a.offset_ms,
        frames: a.frames,
        fps: a.fps,
        delay: a.delay,
        device_slowdown: a.device_slowdown,
        device_cpu: a.device_cpu,
        timeout: a.timeout,
        static_cuts: a.static_cuts.clone(),
        codecs: a.codecs.clone(),
        source,
        server_exe: std::env::current_exe().context("cannot find the cleave executable to run the edge")?,
        max_backlog: a.max_backlog,
        hedge: a.hedge.first().copied().unwrap_or_default(),
        compare_hedges: a.hedge.iter().skip(1).copied().collect(),
        repeat: a.repeat as usize,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::trace::run(graph, &opts, &mut |p| {
        use cleave_bench::trace::Progress;
        match p {
            Progress::Step(m) => eprintln!("bench trace: {m}"),
            Progress::Strategy { name, frames } => eprintln!("bench trace: {name} ({frames} frames)"),
            Progress::Frame { .. } => {}
        }
    }))?;
    println!("{}", report.render());
    if let Some(p) = &a.plot {
        crate::plot::trace_timeline(p, &report)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.records {
        let mut out = String::new();
        for (strategy, records) in &report.records {
            for r in records {
                let mut v = serde_json::to_value(r)?;
                v["strategy"] = serde_json::Value::String(strategy.clone());
                out.push_str(&serde_json::to_string(&v)?);
                out.push('\n');
            }
        }
        std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    write_json(a.json.as_deref(), &report.json_list())
}

fn engines(a: EnginesArgs) -> Result<()> {
    crate::cmd::load_onnxruntime()?;
    let tmp;
    let models: Vec<(String, PathBuf)> = if a.models.is_empty() {
        tmp = tempfile::tempdir()?;
        let p = tmp.path().join("tiny_resnet.onnx");
        std::fs::write(&p, crate::model_arg::DEFAULT_MODEL)?;
        vec![("tiny_resnet".into(), p)]
    } else {
        a.models
            .iter()
            .map(|p| (p.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned(), p.clone()))
            .collect()
    };
    let report = cleave_bench::engines::bench_engines(&models, a.threads, a.repeats)?;
    println!("{}", report.render());
    write_json(a.json.as_deref(), &report)
}

fn rpc(a: RpcArgs) -> Result<()> {
    let opts = cleave_bench::rpc::RpcOptions {
        boundary_kib: a.boundary_kib,
        frames: a.frames,
        codecs: a.codecs,
        clients: a.clients,
        seconds: a.seconds,
        max_batch: a.max_batch,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::rpc::run(&opts))?;
    println!("{}", report.render());
    write_json(a.json.as_deref(), &report)
}

fn predict(a: PredictArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let profile = crate::cmd::profile::read_profile(&a.profile, &loaded.graph)?;
    let report = cleave_bench::predict::run(&loaded.graph, &profile, a.cuts, a.rounds)?;
    println!("{}", report.render());
    write_json(a.json.as_deref(), &report)
}

pub(crate) fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn split(a: SplitArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let report = cleave_bench::split::run(
        &loaded.bytes,
        &loaded.source,
        &a.model.input_shapes(),
        &cleave_bench::split::Options { cuts: a.cuts, rounds: a.rounds, threads: a.threads },
    )?;
    println!("{}", report.render());
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
