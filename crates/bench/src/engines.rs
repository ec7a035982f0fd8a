//! `cleave bench engines`: tract against onnxruntime on whole models.
//!
//! For each model, both backends compile the whole model (at its pinned input shapes, exactly as
//! cleave runs it) and then run it in rounds alternated side by side: after [`WARMUP`] warm-up
//! rounds, each round runs both engines once, tract first in even rounds and onnxruntime first in
//! odd ones, so that neither always inherits the other's caches or a noisy neighbour's burst.
//! Reported are the medians per engine, their ratio, and the largest relative difference between
//! the two engines' outputs, which must not exceed [`TOLERANCE`]: comparing the speed of engines
//! that compute different things would mean nothing.
//!
//! Timings include what cleave pays around the engine: inputs are handed to onnxruntime as views
//! (no copy), its outputs are copied once into tract tensors.
//!
//! The onnxruntime backend needs the `ort` feature (of this crate, forwarded to cleave-engine) and
//! the onnxruntime shared library at run time; see [`cleave_engine::onnxruntime`]. Without the
//! feature, [`bench_engines`] fails with cleave-engine's "built without the `ort` feature" error.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cleave_engine::{Backend, Engine, EngineConfig, EngineError, TensorMap, onnxruntime, random_input, relative_error};
use cleave_graph::{InputShapes, ModelGraph};
use serde::Serialize;

use crate::stats::median_ms;

/// Warm-up rounds (both engines) before timing.
pub const WARMUP: usize = 3;

/// The largest relative output difference (max |ort − tract| / max |tract|) accepted.
pub const TOLERANCE: f64 = 1e-4;

/// Results for every model.
#[derive(Debug, Clone, Serialize)]
pub struct EnginesReport {
    pub host: serde_json::Value,
    /// Threads per inference, for both engines.
    pub threads: usize,
    pub warmup: usize,
    /// Timed rounds per model.
    pub repeats: usize,
    /// `tract 0.23.9`.
    pub tract: String,
    /// `onnxruntime 1.32.0`.
    pub onnxruntime: String,
    /// The onnxruntime shared library that ran.
    pub onnxruntime_library: String,
    /// Bound on `max_rel_diff` (checked).
    pub tolerance: f64,
    pub models: Vec<EngineComparison>,
}

/// Both engines on one model.
#[derive(Debug, Clone, Serialize)]
pub struct EngineComparison {
    /// The name given by the caller.
    pub name: String,
    pub path: String,
    /// FLOPs of one inference (cleave-graph's count).
    pub flops: u64,
    pub tract_compile_ms: f64,
    pub ort_compile_ms: f64,
    /// Median wall time of one inference.
    pub tract_ms: f64,
    pub ort_ms: f64,
    /// Fastest run.
    pub tract_min_ms: f64,
    pub ort_min_ms: f64,
    /// `ort_ms / tract_ms`: below 1, onnxruntime is faster.
    pub ratio: f64,
    /// Largest relative difference between the engines' outputs, over all outputs.
    pub max_rel_diff: f64,
    /// Whether the outputs change with the input (tract, two random inputs). When they do not
    /// (a model with placeholder weights, such as the `light_*` zoo whose every weight is 0.02),
    /// `max_rel_diff` says little about whether the engines agree.
    pub outputs_vary: bool,
}

/// Compares tract and onnxruntime on each of `models` (`(name, path to an .onnx file)`), with
/// `threads` threads per inference and `repeats` alternated timed rounds (after [`WARMUP`]).
///
/// Reads the model files. If no onnxruntime library is loaded yet, loads the one
/// [`onnxruntime::find_library`] finds (`ORT_DYLIB_PATH`, else the `onnxruntime` Python package).
/// Fails when a model cannot be read or run by either engine, or when the engines' outputs differ
/// by more than [`TOLERANCE`].
pub fn bench_engines<N: AsRef<str>, P: AsRef<Path>>(
    models: &[(N, P)],
    threads: usize,
    repeats: usize,
) -> Result<EnginesReport> {
    let threads = threads.max(1);
    let repeats = repeats.max(1);
    if !Backend::Ort.is_built() {
        return Err(EngineError::OrtNotBuilt.into());
    }
    let runtime = match onnxruntime::loaded() {
        Some(r) => r,
        None => onnxruntime::load(&onnxruntime::find_library()?)?,
    };
    let config = EngineConfig { threads, cache_capacity: 1 };
    let tract = Engine::new(config.clone());
    let ort = Engine::with_backend(config, Backend::Ort)?;
    let mut out = Vec::with_capacity(models.len());
    for (name, path) in models {
        let (name, path) = (name.as_ref(), path.as_ref());
        out.push(compare(&tract, &ort, name, path, repeats).with_context(|| format!("{name} ({})", path.display()))?);
    }
    Ok(EnginesReport {
        host: crate::host(),
        threads,
        warmup: WARMUP,
        repeats,
        tract: tract.version(),
        onnxruntime: ort.version(),
        onnxruntime_library: runtime.path.display().to_string(),
        tolerance: TOLERANCE,
        models: out,
    })
}

/// Compiles, checks and times one model on both engines.
fn compare(tract: &Engine, ort: &Engine, name: &str, path: &Path, repeats: usize) -> Result<EngineComparison> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none())?;
    let whole = graph.whole()?;
    let tract_part = tract.compile(&whole)?;
    let ort_part = ort.compile(&whole)?;
    drop(whole);
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 0))).collect();

    let reference = tract.run(&tract_part, &inputs)?;
    let got = ort.run(&ort_part, &inputs)?;
    let mut max_rel_diff: f64 = 0.0;
    for (out, t) in &reference {
        let o = got.get(out).with_context(|| format!("onnxruntime did not return output `{out}`"))?;
        max_rel_diff = max_rel_diff.max(relative_error(o, t)?);
    }
    if max_rel_diff.is_nan() || max_rel_diff > TOLERANCE {
        bail!("onnxruntime and tract outputs differ by {max_rel_diff:e} (more than {TOLERANCE:e})");
    }
    let other: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();
    let other = tract.run(&tract_part, &other)?;
    let mut variation: f64 = 0.0;
    for (out, t) in &reference {
        if let Some(o) = other.get(out) {
            variation = variation.max(relative_error(o, t)?);
        }
    }

    let (mut tract_t, mut ort_t): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
    for round in 0..WARMUP + repeats {
        let timed = round >= WARMUP;
        let order = if round % 2 == 0 {
            [(tract, &tract_part), (ort, &ort_part)]
        } else {
            [(ort, &ort_part), (tract, &tract_part)]
        };
        for (engine, part) in order {
            let t0 = Instant::now();
            std::hint::black_box(engine.run(part, &inputs)?);
            let dt = t0.elapsed();
            if timed {
                let samples = if engine.backend() == Backend::Ort { &mut ort_t } else { &mut tract_t };
                samples.push(dt);
            }
        }
    }
    let (tract_ms, ort_ms) = (median_ms(&tract_t), median_ms(&ort_t));
    let min_ms = |v: &[Duration]| v.iter().min().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Ok(EngineComparison {
        name: name.to_owned(),
        path: path.display().to_string(),
        flops: graph.total_cost().flops,
        tract_compile_ms: tract_part.compile_time.as_secs_f64() * 1e3,
        ort_compile_ms: ort_part.compile_time.as_secs_f64() * 1e3,
        tract_ms,
        ort_ms,
        tract_min_ms: min_ms(&tract_t),
        ort_min_ms: min_ms(&ort_t),
        ratio: ort_ms / tract_ms,
        max_rel_diff,
        outputs_vary: variation > 1e-6,
    })
}

impl EnginesReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} vs {} ({}), {} thread(s), {} warm-up + {} alternated rounds\n",
            self.tract, self.onnxruntime, self.onnxruntime_library, self.threads, self.warmup, self.repeats
        );
        for m in &self.models {
            s += &format!(
                "  {:<24} tract {:>9.2} ms   onnxruntime {:>9.2} ms   ort/tract {:>5.2}   max rel diff {:.1e}{}\n",
                m.name,
                m.tract_ms,
                m.ort_ms,
                m.ratio,
                m.max_rel_diff,
                if m.outputs_vary { "" } else { " (outputs do not depend on the input)" }
            );
        }
        s.pop();
        s
    }
}
