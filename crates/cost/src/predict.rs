//! Predicting segment latency from FLOPs, for machines nobody profiled.
//!
//! The model is linear and per operator type: a segment's latency is
//! `Σ_op a_op · FLOPs_op + b · bytes moved + c · nodes`, with non-negative coefficients fitted by
//! non-negative least squares (Lawson–Hanson) on a measured [`Profile`]. Multiplying by a speed
//! factor gives a prediction for a slower or faster machine with the same engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CostError;
use crate::profile::Profile;

/// What the predictor knows about a segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentFeatures {
    /// FLOPs by ONNX operator type.
    pub flops_by_op: BTreeMap<String, f64>,
    /// Bytes of dynamic tensors read and written.
    pub io_bytes: f64,
    /// Number of compute nodes.
    pub nodes: f64,
}

/// A fitted latency model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictor {
    /// Milliseconds per FLOP, by operator type.
    pub ms_per_flop: BTreeMap<String, f64>,
    /// Milliseconds per byte moved.
    pub ms_per_byte: f64,
    /// Milliseconds per node (dispatch overhead).
    pub ms_per_node: f64,
    /// Multiplier for the target machine (1 = the profiled machine).
    pub speed_factor: f64,
    /// The profile's [`Profile::segment_scale`]: segments fitted in isolation, predicted as
    /// parts of a run.
    pub segment_scale: f64,
    /// Fit quality on the profile it was fitted on.
    pub fit: FitReport,
}

/// How well the predictor reproduces the profile it was fitted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Median over cuts of |predicted − measured| / measured for the head (cut > 0).
    pub head_median_rel_error: f64,
    /// Median over cuts of the same for the tail (cut < last).
    pub tail_median_rel_error: f64,
    /// Whole model: predicted vs sum of measured segments.
    pub whole_rel_error: f64,
    /// Median over segments of the per-segment relative error (noisy for tiny segments).
    pub segment_median_rel_error: f64,
}

impl Predictor {
    /// Fits the model on `profile`, whose segment `k` has the features `features[k]`.
    pub fn fit(profile: &Profile, features: &[SegmentFeatures]) -> Result<Predictor, CostError> {
        if features.len() != profile.segments.len() {
            return Err(CostError::Fit(format!(
                "{} segments measured but {} described",
                profile.segments.len(),
                features.len()
            )));
        }
        if features.is_empty() {
            return Err(CostError::Fit("the profile has no segments".into()));
        }
        let ops: Vec<String> = {
            let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
            for f in features {
                for (op, &v) in &f.flops_by_op {
                    *totals.entry(op).or_default() += v;
                }
            }
            totals.into_iter().filter(|&(_, v)| v > 0.0).map(|(k, _)| k.to_owned()).collect()
        };
        let cols = ops.len() + 2;
        let row = |f: &SegmentFeatures| -> Vec<f64> {
            let mut r: Vec<f64> = ops.iter().map(|op| f.flops_by_op.get(op).copied().unwrap_or(0.0)).collect();
            r.push(f.io_bytes);
            r.push(f.nodes);
            r
        };
        let a: Vec<Vec<f64>> = features.iter().map(row).collect();
        let b: Vec<f64> = profile.segments.iter().map(|s| s.timing.median_ms).collect();
        // Scale columns to unit maximum for conditioning.
        let scale: Vec<f64> = (0..cols)
            .map(|j| a.iter().map(|r| r[j].abs()).fold(0.0, f64::max))
            .map(|m| if m > 0.0 { m } else { 1.0 })
            .collect();
        let scaled: Vec<Vec<f64>> = a.iter().map(|r| r.iter().zip(&scale).map(|(x, s)| x / s).collect()).collect();
        let x = nnls(&scaled, &b);
        let coef: Vec<f64> = x.iter().zip(&scale).map(|(x, s)| x / s).collect();
        let mut p = Predictor {
            ms_per_flop: ops.iter().cloned().zip(coef.iter().copied()).collect(),
            ms_per_byte: coef[ops.len()],
            ms_per_node: coef[ops.len() + 1],
            speed_factor: 1.0,
            segment_scale: profile.segment_scale(),
            fit: FitReport::default(),
        };
        p.fit = p.report(profile, features);
        Ok(p)
    }

    /// The same model for a machine `factor` times slower.
    pub fn with_speed_factor(mut self, factor: f64) -> Predictor {
        self.speed_factor = factor;
        self
    }

    /// Predicted latency of one segment, in ms.
    pub fn predict(&self, f: &SegmentFeatures) -> f64 {
        let flops: f64 = f.flops_by_op.iter().map(|(op, v)| self.ms_per_flop.get(op).copied().unwrap_or(0.0) * v).sum();
        (flops + self.ms_per_byte * f.io_bytes + self.ms_per_node * f.nodes) * self.speed_factor * self.segment_scale
    }

    /// A synthetic profile with predicted segment latencies (for planning a machine nobody
    /// profiled).
    pub fn predicted_profile(&self, template: &Profile, features: &[SegmentFeatures], device: &str) -> Profile {
        let mut p = template.clone();
        p.device = device.to_owned();
        for (s, f) in p.segments.iter_mut().zip(features) {
            let t = self.predict(f);
            s.timing = crate::profile::Timing { median_ms: t, p10_ms: t, p90_ms: t, samples: 0 };
        }
        let total: f64 = p.segments.iter().map(|s| s.timing.median_ms).sum();
        p.whole = crate::profile::Timing { median_ms: total, p10_ms: total, p90_ms: total, samples: 0 };
        p
    }

    /// Errors of this predictor (at its speed factor) against a measured profile.
    pub fn report(&self, profile: &Profile, features: &[SegmentFeatures]) -> FitReport {
        let pred: Vec<f64> = features.iter().map(|f| self.predict(f)).collect();
        let scale = profile.segment_scale();
        let meas: Vec<f64> = profile.segments.iter().map(|s| s.timing.median_ms * scale).collect();
        let prefix = |v: &[f64]| {
            let mut out = vec![0.0];
            for x in v {
                out.push(out.last().unwrap() + x);
            }
            out
        };
        let (pp, mp) = (prefix(&pred), prefix(&meas));
        let n = meas.len();
        let (pt, mt) = (pp[n], mp[n]);
        let rel = |p: f64, m: f64| if m > 0.0 { (p - m).abs() / m } else { 0.0 };
        let mut head: Vec<f64> = (1..=n).map(|k| rel(pp[k], mp[k])).collect();
        let mut tail: Vec<f64> = (0..n).map(|k| rel(pt - pp[k], mt - mp[k])).collect();
        let mut seg: Vec<f64> = pred.iter().zip(&meas).map(|(p, m)| rel(*p, *m)).collect();
        FitReport {
            head_median_rel_error: median(&mut head),
            tail_median_rel_error: median(&mut tail),
            whole_rel_error: rel(pt, mt),
            segment_median_rel_error: median(&mut seg),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Non-negative least squares, `min ‖Ax − b‖ subject to x ≥ 0` (Lawson–Hanson active set).
pub fn nnls(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let m = a.len();
    let n = a.first().map(|r| r.len()).unwrap_or(0);
    let mut x = vec![0.0; n];
    let mut passive = vec![false; n];
    let tol = 1e-10 * (1.0 + b.iter().map(|v| v.abs()).fold(0.0, f64::max));
    let gradient = |x: &[f64]| -> Vec<f64> {
        let r: Vec<f64> = (0..m).map(|i| b[i] - (0..n).map(|j| a[i][j] * x[j]).sum::<f64>()).collect();
        (0..n).map(|j| (0..m).map(|i| a[i][j] * r[i]).sum()).collect()
    };
    for _ in 0..(3 * n + 10) {
        let w = gradient(&x);
        let candidate = (0..n).filter(|&j| !passive[j] && w[j] > tol).max_by(|&i, &j| w[i].total_cmp(&w[j]));
        let Some(t) = candidate else { break };
        passive[t] = true;
        loop {
            let p: Vec<usize> = (0..n).filter(|&j| passive[j]).collect();
            let s_p = least_squares(a, b, &p);
            let mut s = vec![0.0; n];
            for (k, &j) in p.iter().enumerate() {
                s[j] = s_p[k];
            }
            if p.iter().all(|&j| s[j] > 0.0) {
                x = s;
                break;
            }
            let alpha = p
                .iter()
                .filter(|&&j| s[j] <= 0.0)
                .map(|&j| x[j] / (x[j] - s[j]))
                .fold(f64::INFINITY, f64::min)
                .clamp(0.0, 1.0);
            for j in 0..n {
                x[j] += alpha * (s[j] - x[j]);
            }
            for &j in &p {
                if x[j] <= 1e-15 {
                    passive[j] = false;
                    x[j] = 0.0;
                }
            }
            if !passive.iter().any(|&q| q) {
                break;
            }
        }
    }
    x
}

/// Least squares on the columns `cols` of `a`, by the normal equations with a tiny ridge.
fn least_squares(a: &[Vec<f64>], b: &[f64], cols: &[usize]) -> Vec<f64> {
    let k = cols.len();
    let mut ata = vec![vec![0.0; k]; k];
    let mut atb = vec![0.0; k];
    for (row, &bi) in a.iter().zip(b) {
        for (p, &cp) in cols.iter().enumerate() {
            atb[p] += row[cp] * bi;
            for (q, &cq) in cols.iter().enumerate() {
                ata[p][q] += row[cp] * row[cq];
            }
        }
    }
    for (p, r) in ata.iter_mut().enumerate() {
        r[p] += 1e-12 * (1.0 + r[p]);
    }
    solve(ata, atb)
}

/// Gaussian elimination with partial pivoting.
fn solve(mut m: Vec<Vec<f64>>, mut v: Vec<f64>) -> Vec<f64> {
    let n = v.len();
    for c in 0..n {
        let piv = (c..n).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs())).unwrap_or(c);
        m.swap(c, piv);
        v.swap(c, piv);
        let d = m[c][c];
        if d.abs() < 1e-300 {
            continue;
        }
        for r in (c + 1)..n {
            let f = m[r][c] / d;
            if f != 0.0 {
                for k in c..n {
                    m[r][k] -= f * m[c][k];
                }
                v[r] -= f * v[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for c in (0..n).rev() {
        let s: f64 = ((c + 1)..n).map(|k| m[c][k] * x[k]).sum();
        x[c] = if m[c][c].abs() < 1e-300 { 0.0 } else { (v[c] - s) / m[c][c] };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{SegmentTiming, Timing};

    #[test]
    fn nnls_recovers_nonnegative_coefficients() {
        // b = 2·x0 + 0·x1 + 3·x2 exactly.
        let a: Vec<Vec<f64>> = (0..20).map(|i| vec![i as f64, ((i * 7) % 5) as f64, 1.0]).collect();
        let b: Vec<f64> = a.iter().map(|r| 2.0 * r[0] + 3.0 * r[2]).collect();
        let x = nnls(&a, &b);
        assert!((x[0] - 2.0).abs() < 1e-6 && x[1].abs() < 1e-6 && (x[2] - 3.0).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn nnls_clamps_what_would_be_negative() {
        // Unconstrained least squares wants a negative slope; NNLS must give x ≥ 0.
        let a: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64, 1.0]).collect();
        let b: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        let x = nnls(&a, &b);
        assert!(x.iter().all(|&v| v >= 0.0), "{x:?}");
    }

    #[test]
    fn fits_and_predicts_a_linear_machine() {
        let features: Vec<SegmentFeatures> = (0..30)
            .map(|i| SegmentFeatures {
                flops_by_op: [
                    ("Conv".to_string(), 1e6 * (i % 7 + 1) as f64),
                    ("Relu".to_string(), 1e4 * (i % 3) as f64),
                ]
                .into_iter()
                .collect(),
                io_bytes: 1e5 * (i % 4 + 1) as f64,
                nodes: (i % 2 + 1) as f64,
            })
            .collect();
        let truth = |f: &SegmentFeatures| f.flops_by_op["Conv"] * 1e-7 + f.io_bytes * 1e-7 + f.nodes * 0.01;
        let profile = Profile {
            format: Profile::FORMAT.into(),
            device: "t".into(),
            host: serde_json::Value::Null,
            engine: "tract".into(),
            threads: 1,
            model: "m".into(),
            model_sha256: "x".into(),
            input_shapes: Default::default(),
            warmup: 0,
            repeats: 1,
            segments: features
                .iter()
                .enumerate()
                .map(|(k, f)| SegmentTiming { from_cut: k, to_cut: k + 1, timing: Timing::from_samples(&[truth(f)]) })
                .collect(),
            whole: Timing::from_samples(&[features.iter().map(truth).sum()]),
        };
        let p = Predictor::fit(&profile, &features).unwrap();
        assert!(p.fit.head_median_rel_error < 1e-6, "{:?}", p.fit);
        let slow = p.clone().with_speed_factor(3.0);
        assert!((slow.predict(&features[3]) - 3.0 * truth(&features[3])).abs() < 1e-6);
    }
}
