//! # cleave-cost
//!
//! What things cost, as plain data and pure functions (no I/O, no clocks):
//! - [`Profile`]: measured latency of every segment between consecutive candidate cuts of a
//!   model, on one machine with one engine configuration. `cleave profile` measures it (the
//!   measuring lives in cleave-engine); this crate only holds and queries it.
//! - [`Predictor`]: a per-operator-type linear model of segment latency fitted on a profile, to
//!   predict a machine nobody profiled (with a speed factor).
//! - [`Link`]: uplink and downlink bandwidth, RTT and per-message overhead.
//! - [`EnergyModel`]: device compute power and radio energy, with documented defaults.
//! - [`Calibration`]: measured accuracy of exits and of cut × codec choices.

pub mod calibration;
pub mod energy;
pub mod link;
pub mod predict;
pub mod profile;

pub use calibration::{Calibration, CutCodecAccuracy, ExitCalibration, ThresholdPoint, argmax, confidence};
pub use energy::EnergyModel;
pub use link::{Link, parse_bandwidth, parse_bytes, parse_duration_ms};
pub use predict::{Predictor, SegmentFeatures};
pub use profile::{Profile, SegmentTiming, Timing};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("{0}")]
    Parse(String),
    #[error("profile is for model {profile} but the model is {model}; re-run `cleave profile`")]
    WrongModel { profile: String, model: String },
    #[error("profile does not fit this model: {0}")]
    Mismatch(String),
    #[error("cannot fit a predictor: {0}")]
    Fit(String),
}
