//! Measuring a [`Profile`]: the latency of every segment between consecutive candidate cuts.
//!
//! Segments run as a chain, in order, each round, exactly as the parts of a split model run:
//! each segment reads real activations produced by the previous ones, and the caches see the
//! same access pattern as in a whole-model run. The whole model also runs once per round, so the
//! profile can show how close the sum of segments is to it.

use std::time::Instant;

use cleave_cost::{Profile, SegmentTiming, Timing};
use cleave_graph::ModelGraph;

use crate::{CompiledPart, Engine, Result, TensorMap, random_input};

/// How to profile.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Rounds run before timing.
    pub warmup: usize,
    /// Timed rounds.
    pub repeats: usize,
    /// The machine's name, recorded in the profile.
    pub device: String,
    /// A description of the machine (CPU, cores), recorded in the profile.
    pub host: serde_json::Value,
}

/// Where profiling is: `done` of `total` steps (compiling segments, then rounds).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Measures every segment of `graph` on this machine with `engine`'s configuration.
pub fn profile(engine: &Engine, graph: &ModelGraph, opts: &ProfileOptions, progress: Progress) -> Result<Profile> {
    let last = graph.last_cut();
    let rounds = opts.warmup + opts.repeats.max(1);
    let total = last + 1 + rounds;
    let mut done = 0;
    let mut segments: Vec<CompiledPart> = Vec::with_capacity(last);
    for k in 0..last {
        segments.push(engine.compile(&graph.part(k, k + 1)?)?);
        done += 1;
        progress(done, total, "compiling segments");
    }
    let whole = engine.compile(&graph.whole()?)?;
    done += 1;
    progress(done, total, "compiling the whole model");

    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 0))).collect();
    let mut seg_samples = vec![Vec::with_capacity(opts.repeats); last];
    let mut whole_samples = Vec::with_capacity(opts.repeats);
    for round in 0..rounds {
        let timed = round >= opts.warmup;
        let t0 = Instant::now();
        std::hint::black_box(engine.run(&whole, &inputs)?);
        if timed {
            whole_samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let mut env = inputs.clone();
        for (k, seg) in segments.iter().enumerate() {
            let t0 = Instant::now();
            let out = engine.run(seg, &env)?;
            if timed {
                seg_samples[k].push(t0.elapsed().as_secs_f64() * 1e3);
            }
            env.extend(out);
        }
        done += 1;
        progress(done, total, if timed { "timing" } else { "warming up" });
    }
    Ok(Profile {
        format: Profile::FORMAT.into(),
        device: opts.device.clone(),
        host: opts.host.clone(),
        engine: engine.version(),
        threads: engine.config().threads,
        model: graph.name().to_owned(),
        model_sha256: graph.sha256().to_owned(),
        input_shapes: graph.input_shapes().0.clone(),
        warmup: opts.warmup,
        repeats: opts.repeats.max(1),
        segments: seg_samples
            .iter()
            .enumerate()
            .map(|(k, s)| SegmentTiming { from_cut: k, to_cut: k + 1, timing: Timing::from_samples(s) })
            .collect(),
        whole: Timing::from_samples(&whole_samples),
    })
}
