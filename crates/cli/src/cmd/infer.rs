//! `cleave infer`: run a model whole or split.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cleave_engine::{Engine, EngineConfig, Tensor, TensorMap, random_input, relative_error};
use serde_json::json;

use crate::model_arg::ModelArgs;
use crate::npy;

/// Run a model whole, or head → tail at one or more cuts, and print the outputs and timing.
///
/// Inputs are .npy files: `--input x.npy` for a single-input model, `--input NAME=x.npy` per
/// input otherwise. Without `--input`, a seeded random input of the model's shape is used. With
/// `--cut`, the parts run one after the other in this process, exactly as they would on device
/// and server; `--check` also runs the whole model and reports the largest relative difference.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Input tensor as .npy: `PATH` or `NAME=PATH` (repeatable).
    #[arg(long = "input", value_name = "[NAME=]PATH")]
    pub inputs: Vec<String>,

    /// Cut index to split at (repeatable, increasing). Without it, the whole model runs.
    #[arg(long = "cut", value_name = "N")]
    pub cuts: Vec<usize>,

    /// Write the output as .npy: a file for a single-output model, else a directory.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Threads per inference.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Runs to time; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,

    /// Seed of the random input used when no --input is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// With --cut: also run the whole model and report the largest relative error.
    #[arg(long)]
    pub check: bool,

    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let g = &loaded.graph;
    if !args.cuts.is_empty() {
        g.check_split(&args.cuts)?;
    }
    let specs = g.inputs();
    let mut inputs = TensorMap::new();
    for arg in &args.inputs {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
            None if specs.len() == 1 => (specs[0].name.clone(), PathBuf::from(arg)),
            None => bail!(
                "this model has {} inputs ({}): name each one, --input NAME=PATH",
                specs.len(),
                specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            bail!(
                "--input names `{name}`, which is not an input of this model (inputs: {})",
                specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        };
        let t = npy::read(&path)?;
        cleave_engine::check_input(spec, &t).with_context(|| format!("input file {}", path.display()))?;
        inputs.insert(name, std::sync::Arc::new(t));
    }
    for spec in &specs {
        if !inputs.contains_key(&spec.name) {
            if !args.inputs.is_empty() {
                bail!("missing --input for model input `{}`", spec.name);
            }
            if !args.json {
                eprintln!("no --input: using a seeded random input for `{}` (seed {})", spec.name, args.seed);
            }
            inputs.insert(spec.name.clone(), random_input(spec, args.seed));
        }
    }

    let engine = Engine::new(EngineConfig { threads: args.threads, ..Default::default() });
    let bounds = cleave_graph::part_bounds(&args.cuts, g.last_cut());
    let mut compile = Duration::ZERO;
    for &(a, b) in &bounds {
        compile += engine.part(g, a, b)?.compile_time;
    }
    let mut runs = vec![];
    let mut last = None;
    for _ in 0..args.repeat.max(1) {
        let r = engine.run_split(g, &args.cuts, &inputs)?;
        runs.push(r.part_times.clone());
        last = Some(r);
    }
    let result = last.expect("at least one run");
    let part_medians: Vec<Duration> = (0..bounds.len()).map(|i| median(runs.iter().map(|r| r[i]).collect())).collect();
    let total = median(runs.iter().map(|r| r.iter().sum()).collect());

    let mut check = None;
    if args.check && !args.cuts.is_empty() {
        let whole = engine.run_split(g, &[], &inputs)?.outputs;
        let mut worst: f64 = 0.0;
        for (name, t) in &whole {
            worst = worst.max(relative_error(&result.outputs[name], t)?);
        }
        check = Some(worst);
    }

    if let Some(out) = &args.output {
        npy::write_outputs(out, &result.outputs)?;
    }

    if args.json {
        let outputs: Vec<_> = result
            .outputs
            .iter()
            .map(|(n, t)| {
                let s = summary(t);
                json!({"name": n, "dtype": format!("{:?}", t.datum_type()), "shape": t.shape(), "min": s.min, "max": s.max, "mean": s.mean, "top": s.top})
            })
            .collect();
        let out = json!({
            "model": g.name(),
            "cuts": args.cuts,
            "threads": engine.config().threads,
            "compile_ms": ms(compile),
            "part_ms": part_medians.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "total_ms": ms(total),
            "repeat": args.repeat.max(1),
            "outputs": outputs,
            "boundary_bytes": result.boundaries.iter().map(|b| b.values().map(|t| (t.len() * t.datum_type().size_of()) as u64).sum::<u64>()).collect::<Vec<_>>(),
            "max_relative_error": check,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("model    {} ({})", g.name(), loaded.source);
    if args.cuts.is_empty() {
        println!("ran      whole model, {} thread(s)", engine.config().threads);
    } else {
        println!("ran      {} parts (cuts {:?}), {} thread(s)", bounds.len(), args.cuts, engine.config().threads);
    }
    for (name, t) in &result.outputs {
        let s = summary(t);
        println!(
            "output   {name} {:?} {:?}  min {:.4}  max {:.4}  mean {:.4}",
            t.datum_type(),
            t.shape(),
            s.min,
            s.max,
            s.mean
        );
        if !s.top.is_empty() {
            let top: Vec<String> = s.top.iter().map(|(i, v)| format!("{i}:{v:.4}")).collect();
            println!("         top-{}: {}", s.top.len(), top.join("  "));
        }
    }
    println!("compile  {:.1} ms", ms(compile));
    let per_part: Vec<String> = part_medians.iter().map(|d| format!("{:.2}", ms(*d))).collect();
    println!(
        "time     {:.2} ms{} (median of {})",
        ms(total),
        if bounds.len() > 1 { format!(" = {} ms per part", per_part.join(" + ")) } else { String::new() },
        args.repeat.max(1)
    );
    for (i, b) in result.boundaries.iter().enumerate() {
        let bytes: usize = b.values().map(|t| t.len() * t.datum_type().size_of()).sum();
        println!("boundary cut {}: {} tensor(s), {} bytes", args.cuts[i], b.len(), bytes);
    }
    if let Some(err) = check {
        println!("check    max relative error vs whole model: {err:.3e}");
    }
    if let Some(out) = &args.output {
        println!("wrote    {}", out.display());
    }
    Ok(())
}

struct Summary {
    min: f64,
    max: f64,
    mean: f64,
    top: Vec<(usize, f64)>,
}

fn summary(t: &Tensor) -> Summary {
    let Ok(f) = t.cast_to::<f64>() else {
        return Summary { min: f64::NAN, max: f64::NAN, mean: f64::NAN, top: vec![] };
    };
    let Ok(v) = f.to_plain_array_view::<f64>() else {
        return Summary { min: f64::NAN, max: f64::NAN, mean: f64::NAN, top: vec![] };
    };
    let vals: Vec<f64> = v.iter().copied().collect();
    let n = vals.len().max(1) as f64;
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = vals.iter().sum::<f64>() / n;
    // Class scores: a [1, C] or [C] output gets its top entries listed.
    let classes = match t.shape() {
        [c] | [1, c] if *c > 1 && *c <= 100_000 => *c,
        _ => 0,
    };
    let mut top = vec![];
    if classes > 0 {
        let mut idx: Vec<usize> = (0..classes).collect();
        idx.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        top = idx.into_iter().take(5).map(|i| (i, vals[i])).collect();
    }
    Summary { min, max, mean, top }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
