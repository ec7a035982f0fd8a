//! `cleave demo`: adaptive collaborative inference end to end, from nothing but the binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cleave_bench::device_proc::FrameSource;
use cleave_bench::trace::{Progress, TraceOptions};
use cleave_codec::Codec;
use indicatif::{ProgressBar, ProgressStyle};

/// The early-exit digits CNN (assets/digits), built into the binary.
const DIGITS_MODEL: &[u8] = include_bytes!("../../../../assets/digits/digits_exits.onnx");
/// 2,500 held-out MNIST digits (uint8) the model never saw in training.
const DIGITS_DATA: &[u8] = include_bytes!("../../../../assets/digits/test.npz");

/// Adaptive collaborative inference, end to end, in under a minute.
///
/// Everything it needs is built in: a trained early-exit digits CNN (assets/digits) and 2,500
/// real held-out digits as frames. It starts an edge (`cleave serve`, a separate process) and a
/// device (another process, made --device-slowdown times slower than this machine), joins them
/// by a link that replays a generated Markov-modulated 0.5–20 Mbit/s uplink with a one-way
/// delay, and runs the same frames under each strategy: device-only, offloading the raw input,
/// static cut × codec choices, and cleave's adaptive device, which re-plans cut × codec for
/// every frame from the bandwidth, RTT and server time it measures. The hindsight oracle (the
/// best choice per frame, knowing the bandwidth each frame really had) is computed afterwards.
///
/// It shows a live progress line, then a table of strategies (mean/p50/p95 latency, bytes
/// sent) and writes a PNG of bandwidth, the chosen cut and latency over time.
///
/// `cleave bench trace` is the same machinery with every knob: any model, any mahimahi trace,
/// a real cgroup CPU limit for the device.
///
/// Examples:
///   cleave demo
///   cleave demo --seed 7 --plot demo7.png --json demo7.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Seed of the generated bandwidth trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Frames per strategy.
    #[arg(long, default_value_t = 40)]
    pub frames: usize,

    /// Frames released per second.
    #[arg(long, default_value_t = 10.0)]
    pub fps: f64,

    /// How many times slower than this machine the device computes (it sleeps the difference).
    /// At 15× the digits CNN takes ~20 ms on the device: offloading wins on a fast link and
    /// loses on a slow one, so the choice has to follow the bandwidth.
    #[arg(long, default_value_t = 15.0)]
    pub device_slowdown: f64,

    /// Instead of --device-slowdown: a real CPU limit for the device process (a fraction of one
    /// core, by a cgroup CFS quota; needs root).
    #[arg(long, value_name = "F")]
    pub device_cpu: Option<f64>,

    /// One-way delay added in each direction.
    #[arg(long, default_value = "5ms", value_parser = crate::cmd::duration)]
    pub delay: Duration,

    /// Where to write the plot (.png or .svg).
    #[arg(long, default_value = "cleave-demo.png")]
    pub plot: PathBuf,

    /// Also write the results as JSON (one object per strategy).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model_path = tmp.path().join("digits_exits.onnx");
    std::fs::write(&model_path, DIGITS_MODEL)?;
    let data_path = tmp.path().join("digits.npz");
    std::fs::write(&data_path, DIGITS_DATA)?;
    let shapes = cleave_graph::InputShapes::default();
    let graph = Arc::new(cleave_graph::ModelGraph::from_bytes(DIGITS_MODEL, &shapes).context("the built-in model")?);
    let rates = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0];
    let trace = cleave_link::Trace::markov(a.seed, 120_000, &rates, 2_000.0)?;
    let static_cuts = cleave_bench::trace::default_static_cuts(&graph);
    let codecs = vec![Codec::Fp32, Codec::Fp16, Codec::Int8];
    println!(
        "cleave demo: digits CNN ({} cuts, exits {}), {} real held-out digits as frames",
        graph.num_cuts(),
        graph.exits().join(", "),
        a.frames
    );
    println!(
        "  link: Markov-modulated uplink over {:?} Mbit/s (seed {}, mean {:.1} Mbit/s), {} ms one-way delay",
        rates,
        a.seed,
        trace.mean_bps() / 1e6,
        a.delay.as_millis()
    );
    println!(
        "  device: {}; edge: a `cleave serve` process on loopback",
        match a.device_cpu {
            Some(f) => format!("limited to {:.0}% of one core", f * 100.0),
            None => format!("{}× slower than this machine", a.device_slowdown),
        }
    );
    let opts = TraceOptions {
        model_path,
        shapes,
        trace,
        trace_name: format!("markov:{} (0.5–20 Mbit/s)", a.seed),
        start_offset_ms: 0,
        frames: a.frames,
        fps: a.fps,
        delay: a.delay,
        device_slowdown: a.device_slowdown,
        device_cpu: a.device_cpu,
        timeout: Duration::from_secs(5),
        static_cuts: Some(static_cuts),
        codecs,
        source: FrameSource::Dataset(data_path, Default::default()),
        server_exe: std::env::current_exe().context("cannot find the cleave executable to run the edge")?,
        max_backlog: Duration::from_secs(10),
        hedge: Default::default(),
        compare_hedges: vec![],
        repeat: 1,
    };

    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let frame_style = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos:>3}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(cleave_bench::trace::run(graph, &opts, &mut |p| match p {
        Progress::Step(m) => bar.set_message(m.to_owned()),
        Progress::Strategy { name, frames } => {
            bar.set_style(frame_style.clone());
            bar.set_prefix(name.to_owned());
            bar.set_length(frames as u64);
            bar.set_position(0);
            bar.set_message("");
        }
        Progress::Frame { frame, cut, last_cut, codec, latency_ms, estimate_mbps } => {
            let place = if cut == last_cut {
                "device-only".to_owned()
            } else {
                format!("cut {cut} {}", codec.map(|c| c.to_string()).unwrap_or_default())
            };
            bar.set_position(frame as u64 + 1);
            bar.set_message(format!("{place:<14} {latency_ms:>7.1} ms   uplink est. {estimate_mbps:>5.1} Mbit/s"));
        }
    }));
    bar.finish_and_clear();
    let report = report?;
    println!("{}", report.render());
    crate::plot::trace_timeline(&a.plot, &report)?;
    println!("wrote {} (bandwidth, the adaptive device's cut and per-frame latency over time)", a.plot.display());
    crate::cmd::bench::write_json(a.json.as_deref(), &report.json_list())
}
