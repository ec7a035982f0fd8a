//! `cleave bench …`: benchmarks that print a table and write JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::model_arg::ModelArgs;

#[derive(Subcommand, Debug)]
pub enum Bench {
    Split(SplitArgs),
    Predict(PredictArgs),
    Rpc(RpcArgs),
    Engines(EnginesArgs),
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

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Split(a) => split(a),
        Bench::Predict(a) => predict(a),
        Bench::Rpc(a) => rpc(a),
        Bench::Engines(a) => engines(a),
    }
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

fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
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
