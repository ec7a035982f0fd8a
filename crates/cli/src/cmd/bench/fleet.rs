//! `cleave bench fleet`: the arguments, the traces, a progress bar, the table and the JSON; the
//! work is in `cleave_bench::fleet`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_arg::ModelArgs;
use cleave_bench::fleet::FleetStrategy;

/// Many devices sharing one edge: all-local, all-offload, independent and coordinated.
///
/// For each fleet size and strategy a fresh `cleave serve` runs the real tails, and simulated
/// devices in this process send it real encoded boundary tensors over their own connections.
/// A device's head compute is emulated by sleeping for this machine's profiled time times its
/// slowdown (drawn log-uniformly from --slowdown), and its uplink by the delivery schedule of its
/// trace (one of --trace-dir's `*.up` files, or generated Markov traces, each device at its own
/// offset) plus --delay each way. Frames are released at --fps and handled one at a time; latency
/// is from release to answer.
///
/// Strategies: all-local (never send); all-offload (send the input, cut 0); independent (each
/// device plans alone from its own estimates and the load the edge reports on every answer,
/// `cleave.server_util`, predicting the queue it would add); coordinated (the same devices also
/// report their options, and the edge, run with --coordinate, plans them jointly within its
/// capacity and answers each with a recommended cut and codec).
///
/// The table and the JSON (a list, one object per strategy and fleet size) give throughput,
/// p50/p99 latency, Jain's fairness index of the devices' mean latencies, the share of frames
/// offloaded, the edge's CPU use (from /proc) and its mean batch.
///
/// Examples:
///   cleave bench fleet --devices 8,32,64 --json fleet.json
///   cleave bench fleet --devices 64 --trace-dir ../shared/traces --seconds 30
///   cleave bench fleet --model resnet50.onnx --devices 16 --fps 2 --strategies independent,coordinated
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct FleetArgs {
    /// ONNX model file (default: the built-in tiny-resnet demo model, for 128 × 128 images).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Without --model: the side of the built-in model's square input images (it is
    /// resolution-agnostic; 32 is the shipped model, whose 1 ms of compute is never worth
    /// offloading).
    #[arg(long, default_value_t = 96)]
    pub image_side: usize,

    /// Pin an input's shape, e.g. `--shape x=1,3,224,224` (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,

    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    pub devices: Vec<usize>,

    /// Strategies to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "all-local,all-offload,independent,coordinated")]
    pub strategies: Vec<FleetStrategy>,

    /// Directory of mahimahi uplink traces (`*.up`); device i gets trace i mod N. Default: 8
    /// generated Markov traces (0.5–20 Mbit/s, mean dwell 3 s, seeds 1..8), as `bench trace
    /// --trace markov:SEED` makes them.
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,

    /// Seconds per strategy and fleet size.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,

    /// Frames per second each device releases.
    #[arg(long, default_value_t = 5.0)]
    pub fps: f64,

    /// One-way delay each way between a device and the edge.
    #[arg(long, default_value = "10ms", value_parser = crate::cmd::duration)]
    pub delay: Duration,

    /// Range of device slowdowns against this machine, `LO..HI` (log-uniform).
    #[arg(long, default_value = "4..16", value_parser = parse_range)]
    pub slowdown: (f64, f64),

    /// Seed of the devices' slowdowns, trace offsets and phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The edge's compute workers (its --workers).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// The edge's largest dynamic batch (its --max-batch; 1 disables batching). 8 here, unlike
    /// `cleave serve`'s default of 1, so that the published fleet figures stay reproducible.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,

    /// Codecs the devices weigh for a boundary.
    #[arg(long, value_delimiter = ',', default_value = "fp16,int8")]
    pub codecs: Vec<cleave_codec::Codec>,

    /// What the coordinated edge minimises: mean-latency, max-latency or energy.
    #[arg(long, default_value = "mean-latency")]
    pub objective: cleave_plan::fleet::FleetObjective,

    /// Share of the edge's workers the coordinated plan may fill.
    #[arg(long, default_value_t = 0.8)]
    pub max_utilization: f64,

    /// Write the results as JSON: a list with one object per strategy and fleet size.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write the whole report (settings and results) as JSON.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    cleave_graph::InputShapes::parse_one(s)
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}` is not LO..HI, e.g. 2..8"))?;
    let p = |v: &str| v.trim().parse::<f64>().map_err(|_| format!("`{v}` is not a number"));
    let (a, b) = (p(a)?, p(b)?);
    if !(a >= 1.0 && b >= a && b.is_finite()) {
        return Err(format!("`{s}` must satisfy 1 ≤ LO ≤ HI"));
    }
    Ok((a, b))
}

/// The traces: every `*.up` file of `dir`, sorted by name, or 8 generated ones.
fn load_traces(dir: Option<&Path>) -> Result<Vec<(String, cleave_link::Trace)>> {
    let Some(dir) = dir else {
        return (1..=8u64)
            .map(|seed| {
                let t = cleave_link::Trace::markov(seed, 120_000, &[0.5, 2.0, 5.0, 10.0, 20.0], 3_000.0)?;
                Ok((format!("markov:{seed}"), t))
            })
            .collect();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --trace-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "up"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--trace-dir {} has no `*.up` mahimahi uplink trace", dir.display());
    }
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let t = cleave_link::Trace::parse(&text).with_context(|| format!("trace {}", p.display()))?;
            Ok((p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), t))
        })
        .collect()
}

pub fn run(a: FleetArgs) -> Result<()> {
    use std::sync::Arc;

    use cleave_bench::fleet::{Event, FleetOptions};
    let model_args = ModelArgs { model: a.model.clone(), shapes: a.shapes.clone(), exits: None };
    let tmp = tempfile::tempdir()?;
    let (graph, label, model_path) = match &a.model {
        Some(p) => {
            let loaded = model_args.load()?;
            (loaded.graph, loaded.source, p.clone())
        }
        None => {
            // The built-in tiny-resnet at --image-side: at its shipped 32 × 32 the whole model
            // takes ~1 ms here, so no device ever gains by offloading and there is nothing to
            // share.
            use prost::Message;
            let side = a.image_side;
            let bytes = cleave_graph::build::zoo::tiny_resnet_at(cleave_graph::build::zoo::TINY_RESNET_SEED, side)
                .encode_to_vec();
            let p = tmp.path().join("tiny_resnet.onnx");
            std::fs::write(&p, &bytes)?;
            let graph = cleave_graph::ModelGraph::from_bytes(&bytes, &model_args.input_shapes())
                .context("the built-in model")?;
            (graph, format!("tiny_resnet (built in) at 3×{side}×{side}"), p)
        }
    };
    let traces = load_traces(a.trace_dir.as_deref())?;
    let exe = std::env::current_exe().context("cannot find the cleave executable to run the edge")?;
    let mut opts = FleetOptions::new(model_path, label, exe, traces);
    opts.shapes = model_args.input_shapes();
    opts.devices = a.devices.clone();
    opts.strategies = a.strategies.clone();
    opts.seconds = a.seconds;
    opts.fps = a.fps;
    opts.delay = a.delay;
    opts.slowdown = a.slowdown;
    opts.seed = a.seed;
    opts.workers = a.workers.max(1);
    opts.max_batch = a.max_batch.max(1);
    opts.codecs = a.codecs.clone();
    opts.objective = a.objective;
    opts.max_utilization = a.max_utilization;

    let runs = (a.devices.len() * a.strategies.len()) as u64;
    let bar = ProgressBar::new(runs * 100);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("bench fleet");
    let mut current = (0usize, String::new());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::fleet::run(Arc::new(graph), &opts, &mut |e| match e {
        Event::Step(m) => bar.set_message(m.to_owned()),
        Event::Run { strategy, devices, index, total } => {
            current = (index, format!("{} × {devices} ({}/{total})", strategy.name(), index + 1));
            bar.set_position(index as u64 * 100);
            bar.set_message(current.1.clone());
        }
        Event::Tick { elapsed_s, seconds, answered } => {
            bar.set_position(current.0 as u64 * 100 + (100.0 * elapsed_s / seconds) as u64);
            bar.set_message(format!("{}: {elapsed_s:>3.0}/{seconds:.0} s, {answered} frames answered", current.1));
        }
    }));
    bar.finish_and_clear();
    let report = report?;
    println!("{}", report.render());
    super::write_json(a.json.as_deref(), &report.results)?;
    super::write_json(a.report.as_deref(), &report)
}
