//! Measured accuracy costs: what `cleave calibrate` writes and the planner's accuracy
//! constraint reads.

use serde::{Deserialize, Serialize};

use crate::CostError;

/// Accuracy of a model's exits and of its final output at each cut × codec, on labelled data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Format tag, [`Calibration::FORMAT`].
    pub format: String,
    pub model: String,
    pub model_sha256: String,
    /// Labelled samples measured.
    pub samples: usize,
    /// Accuracy (0..1) of the final output with no compression: the reference.
    pub baseline_accuracy: f64,
    /// Early exits, in network order.
    pub exits: Vec<ExitCalibration>,
    /// Final-output accuracy with the features at `cut` sent through `codec`.
    pub cuts: Vec<CutCodecAccuracy>,
}

/// One early exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitCalibration {
    /// The exit's output tensor name.
    pub name: String,
    /// Accuracy (0..1) of the exit's own prediction on every sample.
    pub accuracy: f64,
    /// Exit policies: answer at this exit when its confidence reaches `threshold`.
    pub thresholds: Vec<ThresholdPoint>,
}

/// The effect of one confidence threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdPoint {
    /// Minimum max-softmax probability to answer at the exit.
    pub threshold: f64,
    /// Fraction of samples answered at the exit.
    pub exit_rate: f64,
    /// Accuracy (0..1) of the whole policy: exit when confident, final output otherwise.
    pub accuracy: f64,
}

/// Final-output accuracy with one cut × codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CutCodecAccuracy {
    pub cut: usize,
    pub codec: String,
    pub accuracy: f64,
    /// Bytes sent per frame at this cut with this codec (0 when not recorded).
    #[serde(default)]
    pub bytes: u64,
}

impl Calibration {
    pub const FORMAT: &'static str = "cleave-calibration/1";

    /// Parses and checks the format tag.
    pub fn from_json(s: &str) -> Result<Calibration, CostError> {
        let c: Calibration =
            serde_json::from_str(s).map_err(|e| CostError::Parse(format!("invalid calibration: {e}")))?;
        if c.format != Self::FORMAT {
            return Err(CostError::Parse(format!("calibration format `{}` is not `{}`", c.format, Self::FORMAT)));
        }
        Ok(c)
    }

    /// Accuracy lost (0..1, never negative) by sending cut `cut` through `codec`, if measured.
    pub fn drop(&self, cut: usize, codec: &str) -> Option<f64> {
        self.cuts
            .iter()
            .find(|e| e.cut == cut && e.codec.eq_ignore_ascii_case(codec))
            .map(|e| (self.baseline_accuracy - e.accuracy).max(0.0))
    }
}

/// How sure a classifier's output is: its largest softmax probability, in 0..1.
///
/// `scores` are logits, or probabilities when they already are non-negative and sum to 1
/// (within 1e-3), in which case they are used as they are. Non-finite scores give 0 (never
/// confident). An empty slice gives 0.
pub fn confidence(scores: &[f32]) -> f64 {
    if scores.is_empty() || scores.iter().any(|v| !v.is_finite()) {
        return 0.0;
    }
    let sum: f64 = scores.iter().map(|&v| v as f64).sum();
    if scores.iter().all(|&v| v >= 0.0) && (sum - 1.0).abs() <= 1e-3 {
        return scores.iter().fold(0.0f64, |m, &v| m.max(v as f64));
    }
    let max = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let denom: f64 = scores.iter().map(|&v| (v as f64 - max).exp()).sum();
    1.0 / denom
}

/// Index of the largest score (the predicted class); the first one on ties, `None` when empty.
pub fn argmax(scores: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_of_logits_is_the_top_softmax_probability() {
        let c = confidence(&[2.0, 0.0, 0.0]);
        let e2 = 2f64.exp();
        assert!((c - e2 / (e2 + 2.0)).abs() < 1e-9);
        assert!((confidence(&[0.0, 0.0]) - 0.5).abs() < 1e-12);
        // Large logits do not overflow.
        assert!((confidence(&[1000.0, 0.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn probabilities_are_taken_as_they_are() {
        assert!((confidence(&[0.7, 0.2, 0.1]) - 0.7).abs() < 1e-6);
        // Logits that happen to be non-negative but do not sum to 1 are softmaxed.
        let c = confidence(&[0.5, 0.5, 0.5]);
        assert!((c - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn bad_scores_are_never_confident() {
        assert_eq!(confidence(&[]), 0.0);
        assert_eq!(confidence(&[f32::NAN, 1.0]), 0.0);
        assert_eq!(confidence(&[f32::INFINITY, 1.0]), 0.0);
    }

    #[test]
    fn argmax_picks_the_first_largest() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
