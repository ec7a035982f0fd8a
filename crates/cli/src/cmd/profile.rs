//! `cleave profile`: measure a model's segment latencies on this machine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cleave_cost::{Predictor, Profile};
use cleave_engine::profile::{ProfileOptions, profile};
use cleave_engine::{Engine, EngineConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_arg::ModelArgs;

/// Measure the latency of every segment between consecutive cuts, on this machine.
///
/// Each round runs the whole model once, then every segment in order as a chain (so segments
/// see real activations and realistic caches). After warm-up rounds, the timed rounds give each
/// segment's median and spread (10th–90th percentile). The profile records the machine, engine,
/// threads and the model's hash, and is what `cleave plan --device-profile/--server-profile`
/// reads. The same command profiles a server: run it there.
///
/// It also fits the FLOPs-based latency predictor on the measurements and reports its error, so
/// you know how far to trust `--device-slowdown` style predictions for machines you cannot
/// profile.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Threads per inference.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Untimed rounds first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,

    /// Timed rounds.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,

    /// Name of this machine in the profile (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,

    /// Write the profile as JSON here.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Print the profile as JSON on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let graph = &loaded.graph;
    let p = measure(graph, args.threads, args.warmup, args.repeats, args.name.clone(), !args.json)?;
    let features = cleave_plan::segment_features(graph);
    let predictor = Predictor::fit(&p, &features)?;
    if let Some(path) = &args.output {
        std::fs::write(path, serde_json::to_string_pretty(&p)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    let sum: f64 = p.segments.iter().map(|s| s.timing.median_ms).sum();
    println!("model     {} ({}) on {}, {} thread(s), {}", graph.name(), loaded.source, p.device, p.threads, p.engine);
    println!(
        "segments  {} between {} cuts, {} timed rounds after {} warm-up",
        p.segments.len(),
        graph.num_cuts(),
        p.repeats,
        p.warmup
    );
    println!(
        "whole     {:.2} ms median ({:.2}–{:.2} p10–p90); sum of segment medians {:.2} ms ({:+.1}%)",
        p.whole.median_ms,
        p.whole.p10_ms,
        p.whole.p90_ms,
        sum,
        (sum / p.whole.median_ms - 1.0) * 100.0
    );
    let mut slowest: Vec<_> = p.segments.iter().collect();
    slowest.sort_by(|a, b| b.timing.median_ms.total_cmp(&a.timing.median_ms));
    let top: Vec<String> =
        slowest.iter().take(5).map(|s| format!("{}→{} {:.2} ms", s.from_cut, s.to_cut, s.timing.median_ms)).collect();
    println!("slowest   {}", top.join(", "));
    let f = &predictor.fit;
    println!(
        "predictor FLOPs-based fit on this profile: head error {:.1}% and tail error {:.1}% (medians over cuts), whole {:.1}%, per segment {:.1}%",
        f.head_median_rel_error * 100.0,
        f.tail_median_rel_error * 100.0,
        f.whole_rel_error * 100.0,
        f.segment_median_rel_error * 100.0
    );
    if let Some(path) = &args.output {
        println!("wrote     {}", path.display());
    }
    Ok(())
}

/// Profiles `graph` on this machine with a progress bar on stderr.
pub fn measure(
    graph: &cleave_graph::ModelGraph,
    threads: usize,
    warmup: usize,
    repeats: usize,
    name: Option<String>,
    show_progress: bool,
) -> Result<Profile> {
    let engine = Engine::new(EngineConfig { threads, cache_capacity: 2 });
    let bar = if show_progress { ProgressBar::new(1) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} profiling [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let opts = ProfileOptions { warmup, repeats, device: name.unwrap_or_else(hostname), host: cleave_bench::host() };
    let mut progress = |done: usize, total: usize, what: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_owned());
    };
    let p = profile(&engine, graph, &opts, &mut progress)?;
    bar.finish_and_clear();
    Ok(p)
}

/// This machine's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this-machine".into())
}

/// Reads a profile file and checks it matches the model.
pub fn read_profile(path: &std::path::Path, graph: &cleave_graph::ModelGraph) -> Result<Profile> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read profile {}", path.display()))?;
    let p = Profile::from_json(&s).with_context(|| format!("profile {}", path.display()))?;
    p.check_model(graph.sha256(), graph.num_cuts()).with_context(|| format!("profile {}", path.display()))?;
    Ok(p)
}
