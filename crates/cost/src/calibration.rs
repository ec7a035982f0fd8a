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
