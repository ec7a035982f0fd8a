//! `cleave bench load`: the arguments, a progress bar, the table and the JSON; the work is in
//! `cleave_bench::load`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_arg::ModelArgs;

/// Many devices against one edge: throughput, latency, the edge's memory and its queue.
///
/// The edge is a real `cleave serve` child process on a free loopback port, so the memory
/// measured is its own: VmRSS is read from /proc/PID/status every 250 ms (VmHWM for the peak),
/// and the pending-request gauge of its /metrics (`nv_inference_pending_request_count`, the
/// requests waiting in its queue) with it. --devices simulated devices run in this process, each
/// with its own gRPC connection, and send tail requests at one cut: the head is computed once
/// per distinct input (--inputs) and the encoded request reused, so the devices cost little and
/// the CPU goes to the edge.
///
/// Closed loop (default): each device sends its next request as soon as the previous one is
/// answered. --rate-per-device HZ: each device releases HZ requests per second whether or not
/// earlier ones were answered (at most --max-in-flight at once), to offer a fixed load.
///
/// Overload must show as refusals, not as latency: past --queue-bound waiting requests the edge
/// answers RESOURCE_EXHAUSTED with a `retry-after-ms` hint, and a refused device sends nothing
/// until the hint has passed. The default bound (32) is below the default 64 devices, so the
/// default run overloads the edge on purpose. Every answer is counted: OK, RESOURCE_EXHAUSTED,
/// or another error by gRPC code.
///
/// The report: requests, OK answers per second, latency of OK requests (p50/p90/p99/max), the
/// largest queue depth seen against the bound, and the edge's RSS when idle, after the first
/// 10 s (half the run if it is shorter than 20 s), at the end and at its peak. The end over the
/// 10 s figure shows whether the server holds memory per request: it should stay within 10 %.
/// --json also writes a per-second timeline (answers, p50/p99, queue depth, RSS).
///
/// Examples:
///   cleave bench load --devices 64 --seconds 60 --json load.json
///   cleave bench load --model resnet50.onnx --cut 60 --codec int8 --devices 64 --seconds 60
///   cleave bench load --devices 16 --rate-per-device 50 --queue-bound 8 --seconds 20
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct LoadArgs {
    /// ONNX model file (default: the built-in tiny-resnet demo model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Pin an input's shape, e.g. `--shape x=1,3,224,224` (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,

    /// Simulated devices, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub devices: usize,

    /// Length of the load, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,

    /// The cut the devices send (default: the single-tensor cut nearest half the model's FLOPs;
    /// `cleave inspect` lists the cuts).
    #[arg(long)]
    pub cut: Option<usize>,

    /// Codec of the tensors crossing the cut.
    #[arg(long, default_value = "int8")]
    pub codec: cleave_codec::Codec,

    /// Requests per second per device, sent whether or not earlier ones were answered
    /// (default: closed loop, one request in flight per device).
    #[arg(long, value_name = "HZ")]
    pub rate_per_device: Option<f64>,

    /// With --rate-per-device: most requests one device has in flight; releases past it are
    /// counted as not sent.
    #[arg(long, default_value_t = 8)]
    pub max_in_flight: usize,

    /// The edge's queue bound (its --max-queue): requests waiting past it are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 32)]
    pub queue_bound: usize,

    /// The edge's largest dynamic batch (its --max-batch, 1 by default: no batching). Run it
    /// with and without, e.g. 8 and 1, to see whether batching pays on this machine.
    #[arg(long, default_value_t = 1)]
    pub max_batch: usize,

    /// The edge's compute workers (its --workers; default: its own, cores ÷ threads).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Deadline of each request.
    #[arg(long, default_value = "10s", value_parser = crate::cmd::duration)]
    pub timeout: Duration,

    /// Distinct random inputs whose heads are computed; requests cycle through them.
    #[arg(long, default_value_t = 4)]
    pub inputs: usize,

    /// Write the report as JSON (one object, with a per-second timeline).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    cleave_graph::InputShapes::parse_one(s)
}

pub fn run(a: LoadArgs) -> Result<()> {
    use std::sync::Arc;

    use cleave_bench::load::{Event, LoadOptions};
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
    let exe = std::env::current_exe().context("cannot find the cleave executable to run the edge")?;
    let mut opts = LoadOptions::new(model_path, loaded.source.clone(), exe);
    opts.shapes = model_args.input_shapes();
    opts.devices = a.devices;
    opts.seconds = a.seconds;
    opts.cut = a.cut;
    opts.codec = a.codec;
    opts.rate_per_device = a.rate_per_device;
    opts.max_in_flight = a.max_in_flight;
    opts.queue_bound = a.queue_bound;
    opts.max_batch = a.max_batch.max(1);
    opts.workers = a.workers;
    opts.timeout = a.timeout;
    opts.distinct_inputs = a.inputs.max(1);

    let bar = ProgressBar::new((a.seconds.max(0.0) * 10.0).ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg}").expect("valid template").progress_chars("=> "),
    );
    bar.set_prefix("bench load");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::load::run(Arc::new(loaded.graph), &opts, &mut |e| match e {
        Event::Step(m) => bar.set_message(m.to_owned()),
        Event::Tick(p) => {
            bar.set_position((p.elapsed_s * 10.0) as u64);
            bar.set_message(format!(
                "{:>4.0}/{:.0} s  ok {}  RESOURCE_EXHAUSTED {}  errors {}  queue {}  edge RSS {}",
                p.elapsed_s,
                p.seconds,
                p.ok,
                p.resource_exhausted,
                p.errors,
                p.queue.map_or("?".into(), |q| q.to_string()),
                p.rss_kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ));
        }
    }));
    bar.finish_and_clear();
    let report = report?;
    println!("{}", report.render());
    super::write_json(a.json.as_deref(), &report)
}
