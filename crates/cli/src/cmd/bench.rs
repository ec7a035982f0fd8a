//! `cleave bench …`: benchmarks that print a table and write JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::model_arg::ModelArgs;

#[derive(Subcommand, Debug)]
pub enum Bench {
    Split(SplitArgs),
    Predict(PredictArgs),
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
    }
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
