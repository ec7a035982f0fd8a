//! `cleave bench split`: cut enumeration time and the overhead of running a model in parts.

use std::time::{Duration, Instant};

use anyhow::Result;
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::{InputShapes, ModelGraph};
use serde::Serialize;

use crate::stats::median_ms;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many cuts to time head + tail at.
    pub cuts: usize,
    /// Alternated timing rounds.
    pub rounds: usize,
    /// Threads per inference.
    pub threads: usize,
}

/// Results for one model.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub model: String,
    pub source: String,
    pub host: serde_json::Value,
    pub threads: usize,
    pub rounds: usize,
    /// Decode + tract analysis, median of 5.
    pub analysis_ms: f64,
    pub num_cuts: usize,
    /// `ModelGraph::cuts()` on the analysed model, median.
    pub cut_enumeration_ms: f64,
    pub cut_enumeration_runs: usize,
    /// Whole-model inference, median over rounds.
    pub whole_ms: f64,
    pub cuts: Vec<CutTiming>,
    /// Median over cuts of the (head + tail) / whole ratio.
    pub median_ratio: f64,
}

/// Head and tail timing at one cut.
#[derive(Debug, Clone, Serialize)]
pub struct CutTiming {
    pub cut: usize,
    pub boundary_bytes: u64,
    pub head_fraction_of_flops: f64,
    pub head_ms: f64,
    pub tail_ms: f64,
    /// (median head + median tail) / median whole.
    pub ratio: f64,
}

/// Picks `k` interior cuts spread by cumulative FLOPs, preferring single-tensor bottlenecks.
pub fn spread_cuts(graph: &ModelGraph, k: usize) -> Vec<usize> {
    let cuts = graph.cuts();
    let total = cuts.last().map(|c| c.head_flops).unwrap_or(0).max(1) as f64;
    let interior: Vec<_> = cuts.iter().filter(|c| c.index > 0 && c.index < graph.last_cut()).collect();
    let bottlenecks: Vec<_> = interior.iter().filter(|c| c.bottleneck).copied().collect();
    let pool = if bottlenecks.len() >= k { bottlenecks } else { interior };
    let mut chosen = vec![];
    for i in 1..=k {
        let target = total * i as f64 / (k + 1) as f64;
        if let Some(c) = pool
            .iter()
            .filter(|c| !chosen.contains(&c.index))
            .min_by(|a, b| (a.head_flops as f64 - target).abs().total_cmp(&(b.head_flops as f64 - target).abs()))
        {
            chosen.push(c.index);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// Runs the benchmark on one model.
pub fn run(bytes: &[u8], source: &str, shapes: &InputShapes, opts: &Options) -> Result<SplitReport> {
    let mut analysis = vec![];
    let mut graph = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        graph = Some(ModelGraph::from_bytes(bytes, shapes)?);
        analysis.push(t0.elapsed());
    }
    let graph = graph.expect("analysed");

    // Cut enumeration: at least 20 runs and 0.5 s.
    let mut enumeration = vec![];
    let start = Instant::now();
    while enumeration.len() < 20 || start.elapsed() < Duration::from_millis(500) {
        let t0 = Instant::now();
        let cuts = graph.cuts();
        enumeration.push(t0.elapsed());
        std::hint::black_box(cuts);
    }

    let chosen = spread_cuts(&graph, opts.cuts);
    let all_cuts = graph.cuts();
    let engine = Engine::new(EngineConfig { threads: opts.threads, cache_capacity: 2 * opts.cuts + 2 });
    let HeadTailTimes { whole: whole_t, head: head_t, tail: tail_t } =
        time_head_tail(&engine, &graph, &chosen, opts.rounds)?;
    let whole_ms = median_ms(&whole_t);
    let total_flops = graph.total_cost().flops.max(1) as f64;
    let cuts: Vec<CutTiming> = chosen
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let head_ms = median_ms(&head_t[i]);
            let tail_ms = median_ms(&tail_t[i]);
            CutTiming {
                cut: c,
                boundary_bytes: all_cuts[c].bytes,
                head_fraction_of_flops: all_cuts[c].head_flops as f64 / total_flops,
                head_ms,
                tail_ms,
                ratio: (head_ms + tail_ms) / whole_ms,
            }
        })
        .collect();
    let mut ratios: Vec<f64> = cuts.iter().map(|c| c.ratio).collect();
    Ok(SplitReport {
        model: graph.name().to_owned(),
        source: source.to_owned(),
        host: crate::host(),
        threads: engine.config().threads,
        rounds: opts.rounds.max(1),
        analysis_ms: median_ms(&analysis),
        num_cuts: graph.num_cuts(),
        cut_enumeration_ms: median_ms(&enumeration),
        cut_enumeration_runs: enumeration.len(),
        whole_ms,
        cuts,
        median_ratio: crate::stats::median(&mut ratios),
    })
}

/// Wall times of the whole model and of heads and tails at some cuts.
pub struct HeadTailTimes {
    pub whole: Vec<Duration>,
    /// Per cut, per round.
    pub head: Vec<Vec<Duration>>,
    pub tail: Vec<Vec<Duration>>,
}

/// Times the whole model, and the head and tail at each of `cuts`, in rounds alternated side by
/// side (after 3 warm-up rounds). Tails read real head outputs.
pub fn time_head_tail(engine: &Engine, graph: &ModelGraph, cuts: &[usize], rounds: usize) -> Result<HeadTailTimes> {
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 0))).collect();
    let whole = engine.whole(graph)?;
    let parts: Vec<_> = cuts
        .iter()
        .map(|&c| Ok((engine.part(graph, 0, c)?, engine.part(graph, c, graph.last_cut())?)))
        .collect::<Result<_>>()?;
    // Tail inputs: the head's outputs plus the model inputs (for skip connections from the input).
    let mut tail_inputs = vec![];
    for (head, _) in &parts {
        let mut env = inputs.clone();
        env.extend(engine.run(head, &inputs)?);
        tail_inputs.push(env);
    }
    for _ in 0..3 {
        engine.run(&whole, &inputs)?;
        for ((head, tail), env) in parts.iter().zip(&tail_inputs) {
            engine.run(head, &inputs)?;
            engine.run(tail, env)?;
        }
    }
    let mut times = HeadTailTimes { whole: vec![], head: vec![vec![]; parts.len()], tail: vec![vec![]; parts.len()] };
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        std::hint::black_box(engine.run(&whole, &inputs)?);
        times.whole.push(t0.elapsed());
        for (i, ((head, tail), env)) in parts.iter().zip(&tail_inputs).enumerate() {
            let t0 = Instant::now();
            std::hint::black_box(engine.run(head, &inputs)?);
            times.head[i].push(t0.elapsed());
            let t0 = Instant::now();
            std::hint::black_box(engine.run(tail, env)?);
            times.tail[i].push(t0.elapsed());
        }
    }
    Ok(times)
}

impl SplitReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "model {} ({}), {} thread(s), {} rounds\n  analysis          {:.2} ms (median of 5)\n  cut enumeration   {:.3} ms for {} cuts (median of {})\n  whole model       {:.2} ms\n",
            self.model,
            self.source,
            self.threads,
            self.rounds,
            self.analysis_ms,
            self.cut_enumeration_ms,
            self.num_cuts,
            self.cut_enumeration_runs,
            self.whole_ms
        );
        for c in &self.cuts {
            s += &format!(
                "  cut {:>4} ({:>4.0}% of FLOPs, {:>8} B): head {:.2} ms + tail {:.2} ms = {:.3}× whole\n",
                c.cut,
                c.head_fraction_of_flops * 100.0,
                c.boundary_bytes,
                c.head_ms,
                c.tail_ms,
                c.ratio
            );
        }
        s += &format!("  median ratio      {:.3}", self.median_ratio);
        s
    }
}
