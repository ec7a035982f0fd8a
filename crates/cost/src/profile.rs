//! Measured segment latencies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CostError;

/// Summary of repeated timings of one thing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_ms: f64,
    /// 10th and 90th percentiles: the spread.
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub samples: usize,
}

impl Timing {
    /// Summarises samples (milliseconds). An empty slice gives zeros.
    pub fn from_samples(samples: &[f64]) -> Timing {
        if samples.is_empty() {
            return Timing { median_ms: 0.0, p10_ms: 0.0, p90_ms: 0.0, samples: 0 };
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Timing { median_ms: median, p10_ms: q(0.1), p90_ms: q(0.9), samples: n }
    }
}

/// The latency of the nodes between two consecutive candidate cuts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentTiming {
    pub from_cut: usize,
    pub to_cut: usize,
    pub timing: Timing,
}

/// A model's segment latencies on one machine, as `cleave profile` writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Format tag, [`Profile::FORMAT`].
    pub format: String,
    /// The machine's name (hostname or `--name`).
    pub device: String,
    /// CPU model, cores.
    pub host: serde_json::Value,
    /// Engine and version, e.g. `tract 0.23.9`.
    pub engine: String,
    pub threads: usize,
    pub model: String,
    pub model_sha256: String,
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    pub warmup: usize,
    pub repeats: usize,
    /// One per pair of consecutive candidate cuts, in order: segment `k` is cut `k` → `k+1`.
    pub segments: Vec<SegmentTiming>,
    /// The whole model run as one plan, for comparison with the sum of segments.
    pub whole: Timing,
}

impl Profile {
    pub const FORMAT: &'static str = "cleave-profile/1";

    /// Parses a profile and checks its format tag.
    pub fn from_json(s: &str) -> Result<Profile, CostError> {
        let p: Profile = serde_json::from_str(s).map_err(|e| CostError::Parse(format!("invalid profile: {e}")))?;
        if p.format != Self::FORMAT {
            return Err(CostError::Parse(format!("profile format `{}` is not `{}`", p.format, Self::FORMAT)));
        }
        for (k, s) in p.segments.iter().enumerate() {
            if s.from_cut != k || s.to_cut != k + 1 {
                return Err(CostError::Parse(format!("segment {k} spans cuts {}..{}", s.from_cut, s.to_cut)));
            }
        }
        Ok(p)
    }

    /// Checks that the profile was measured on this model at these shapes with these cuts.
    pub fn check_model(&self, sha256: &str, num_cuts: usize) -> Result<(), CostError> {
        if self.model_sha256 != sha256 {
            return Err(CostError::WrongModel { profile: short(&self.model_sha256), model: short(sha256) });
        }
        if self.segments.len() + 1 != num_cuts {
            return Err(CostError::Mismatch(format!(
                "it has {} segments but the model has {num_cuts} cuts (different --shape?)",
                self.segments.len()
            )));
        }
        Ok(())
    }

    /// The factor that makes segment medians add up to the whole-model median.
    ///
    /// A segment run as its own plan costs a little more than the same nodes inside a whole
    /// run (layout conversions and allocation at its boundaries), and a profile has one such
    /// boundary per segment, where a head or a tail has one in all. Scaling every segment by
    /// `whole / Σ segments` removes that bias (resnet50-light: Σ segments = 1.09 × whole). 1 when
    /// the profile has no whole-model timing.
    pub fn segment_scale(&self) -> f64 {
        let sum: f64 = self.segments.iter().map(|s| s.timing.median_ms).sum();
        if self.whole.samples > 0 && self.whole.median_ms > 0.0 && sum > 0.0 { self.whole.median_ms / sum } else { 1.0 }
    }

    /// Predicted cumulative latency at each cut: `prefix()[k]` is the time to run everything
    /// before cut `k` (`prefix()[0] == 0`, and the last entry is the whole model). Segment medians
    /// scaled by [`Profile::segment_scale`].
    pub fn prefix(&self) -> Vec<f64> {
        let scale = self.segment_scale();
        let mut out = Vec::with_capacity(self.segments.len() + 1);
        let mut acc = 0.0;
        out.push(0.0);
        for s in &self.segments {
            acc += s.timing.median_ms * scale;
            out.push(acc);
        }
        out
    }

    /// Predicted time between two cuts (scaled like [`Profile::prefix`]).
    pub fn range_ms(&self, from: usize, to: usize) -> f64 {
        self.segments[from.min(to)..to.max(from)].iter().map(|s| s.timing.median_ms).sum::<f64>() * self.segment_scale()
    }

    /// The same profile on a machine `factor` times slower (`factor` < 1: faster).
    pub fn scaled(&self, factor: f64, device: &str) -> Profile {
        let scale = |t: Timing| Timing {
            median_ms: t.median_ms * factor,
            p10_ms: t.p10_ms * factor,
            p90_ms: t.p90_ms * factor,
            samples: t.samples,
        };
        Profile {
            device: device.to_owned(),
            segments: self
                .segments
                .iter()
                .map(|s| SegmentTiming { from_cut: s.from_cut, to_cut: s.to_cut, timing: scale(s.timing) })
                .collect(),
            whole: scale(self.whole),
            ..self.clone()
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(times: &[f64]) -> Profile {
        Profile {
            format: Profile::FORMAT.into(),
            device: "test".into(),
            host: serde_json::Value::Null,
            engine: "tract".into(),
            threads: 1,
            model: "m".into(),
            model_sha256: "abc".into(),
            input_shapes: BTreeMap::new(),
            warmup: 1,
            repeats: 1,
            segments: times
                .iter()
                .enumerate()
                .map(|(k, &t)| SegmentTiming { from_cut: k, to_cut: k + 1, timing: Timing::from_samples(&[t]) })
                .collect(),
            whole: Timing::from_samples(&[times.iter().sum()]),
        }
    }

    #[test]
    fn prefix_and_ranges() {
        let p = profile(&[1.0, 2.0, 3.0]);
        assert_eq!(p.prefix(), vec![0.0, 1.0, 3.0, 6.0]);
        assert_eq!(p.range_ms(1, 3), 5.0);
        assert_eq!(p.scaled(2.0, "slow").prefix(), vec![0.0, 2.0, 6.0, 12.0]);
    }

    #[test]
    fn segments_are_scaled_to_the_whole() {
        let mut p = profile(&[1.0, 2.0, 3.0]);
        p.whole = Timing::from_samples(&[3.0]);
        assert_eq!(p.segment_scale(), 0.5);
        assert_eq!(p.prefix(), vec![0.0, 0.5, 1.5, 3.0]);
        assert_eq!(p.range_ms(1, 3), 2.5);
    }

    #[test]
    fn timing_summary() {
        let t = Timing::from_samples(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(t.median_ms, 3.0);
        assert_eq!(t.p10_ms, 1.0);
        assert_eq!(t.p90_ms, 5.0);
    }

    #[test]
    fn json_round_trip_and_checks() {
        let p = profile(&[1.0, 2.0]);
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(Profile::from_json(&s).unwrap(), p);
        assert!(p.check_model("abc", 3).is_ok());
        assert!(matches!(p.check_model("zzz", 3), Err(CostError::WrongModel { .. })));
        assert!(matches!(p.check_model("abc", 4), Err(CostError::Mismatch(_))));
    }
}
