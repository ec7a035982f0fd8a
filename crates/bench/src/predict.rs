//! `cleave bench predict`: how well a profile (measured in an earlier run) and the FLOPs-based
//! predictor fitted on it predict head and tail compute measured now.

use anyhow::Result;
use cleave_cost::{Predictor, Profile};
use cleave_engine::{Engine, EngineConfig};
use cleave_graph::ModelGraph;
use serde::Serialize;

use crate::split::{spread_cuts, time_head_tail};
use crate::stats::{median, median_ms};

/// Results for one model.
#[derive(Debug, Clone, Serialize)]
pub struct PredictReport {
    pub model: String,
    pub profile_device: String,
    pub threads: usize,
    pub rounds: usize,
    pub host: serde_json::Value,
    pub cuts: Vec<CutPrediction>,
    /// Median over cuts and sides (head, tail) of |profile prediction − measured| / measured.
    pub profile_median_rel_error: f64,
    /// The same for the FLOPs-based predictor fitted on the profile.
    pub predictor_median_rel_error: f64,
}

/// Head and tail at one cut: measured now, and predicted.
#[derive(Debug, Clone, Serialize)]
pub struct CutPrediction {
    pub cut: usize,
    pub head_measured_ms: f64,
    pub head_profile_ms: f64,
    pub head_predictor_ms: f64,
    pub tail_measured_ms: f64,
    pub tail_profile_ms: f64,
    pub tail_predictor_ms: f64,
}

/// Measures heads and tails at `cuts` spread cuts and compares them with `profile`.
pub fn run(graph: &ModelGraph, profile: &Profile, cuts: usize, rounds: usize) -> Result<PredictReport> {
    profile.check_model(graph.sha256(), graph.num_cuts())?;
    let features = cleave_plan::segment_features(graph);
    let predictor = Predictor::fit(profile, &features)?;
    let chosen = spread_cuts(graph, cuts);
    let engine = Engine::new(EngineConfig { threads: profile.threads, cache_capacity: 2 * cuts + 2 });
    let times = time_head_tail(&engine, graph, &chosen, rounds)?;
    let prefix = profile.prefix();
    let total = *prefix.last().unwrap_or(&0.0);
    let pred: Vec<f64> = features.iter().map(|f| predictor.predict(f)).collect();
    let pred_prefix = |c: usize| pred[..c].iter().sum::<f64>();
    let pred_total = pred_prefix(pred.len());
    let mut out = vec![];
    let (mut prof_err, mut pred_err) = (vec![], vec![]);
    for (i, &c) in chosen.iter().enumerate() {
        let cp = CutPrediction {
            cut: c,
            head_measured_ms: median_ms(&times.head[i]),
            head_profile_ms: prefix[c],
            head_predictor_ms: pred_prefix(c),
            tail_measured_ms: median_ms(&times.tail[i]),
            tail_profile_ms: total - prefix[c],
            tail_predictor_ms: pred_total - pred_prefix(c),
        };
        let rel = |p: f64, m: f64| (p - m).abs() / m;
        prof_err.push(rel(cp.head_profile_ms, cp.head_measured_ms));
        prof_err.push(rel(cp.tail_profile_ms, cp.tail_measured_ms));
        pred_err.push(rel(cp.head_predictor_ms, cp.head_measured_ms));
        pred_err.push(rel(cp.tail_predictor_ms, cp.tail_measured_ms));
        out.push(cp);
    }
    Ok(PredictReport {
        model: graph.name().to_owned(),
        profile_device: profile.device.clone(),
        threads: profile.threads,
        rounds,
        host: crate::host(),
        cuts: out,
        profile_median_rel_error: median(&mut prof_err),
        predictor_median_rel_error: median(&mut pred_err),
    })
}

impl PredictReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "model {} vs profile from `{}`, {} thread(s), {} rounds\n",
            self.model, self.profile_device, self.threads, self.rounds
        );
        for c in &self.cuts {
            s += &format!(
                "  cut {:>4}: head measured {:.2} ms, profile {:.2} ({:+.1}%), predictor {:.2} ({:+.1}%); tail measured {:.2} ms, profile {:.2} ({:+.1}%), predictor {:.2} ({:+.1}%)\n",
                c.cut,
                c.head_measured_ms,
                c.head_profile_ms,
                pct(c.head_profile_ms, c.head_measured_ms),
                c.head_predictor_ms,
                pct(c.head_predictor_ms, c.head_measured_ms),
                c.tail_measured_ms,
                c.tail_profile_ms,
                pct(c.tail_profile_ms, c.tail_measured_ms),
                c.tail_predictor_ms,
                pct(c.tail_predictor_ms, c.tail_measured_ms),
            );
        }
        s += &format!(
            "  median |error|: profile {:.1}%, FLOPs predictor {:.1}%",
            self.profile_median_rel_error * 100.0,
            self.predictor_median_rel_error * 100.0
        );
        s
    }
}

fn pct(p: f64, m: f64) -> f64 {
    (p / m - 1.0) * 100.0
}
