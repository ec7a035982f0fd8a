//! The planning problem: everything static about a model on a set of machines (built once),
//! and the conditions that change per frame (link, queue delays).

use cleave_codec::Codec;
use cleave_cost::{EnergyModel, Link};
use serde::{Deserialize, Serialize};

use crate::search::PlanError;

/// An early-exit policy the device may apply: answer at exit `name` when its confidence reaches
/// `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitOption {
    /// The exit's output tensor.
    pub name: String,
    /// The confidence threshold of this policy, when known.
    pub threshold: Option<f64>,
    /// The first cut whose head computes the exit: the exit is usable at cuts ≥ this.
    pub cut: usize,
    /// Fraction of frames answered at the exit.
    pub rate: f64,
    /// Accuracy lost by the policy (0..1).
    pub drop: f64,
}

/// What a plan must respect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// Largest accuracy loss allowed (0..1), summed over codecs and the exit policy. `None`: no
    /// limit.
    pub max_accuracy_drop: Option<f64>,
    /// Smallest cut allowed for the first boundary: 1 keeps the raw input on the device
    /// (privacy); more keeps more layers there.
    pub min_cut: usize,
    /// Largest head weight footprint the device can hold, in bytes.
    pub device_memory: Option<u64>,
}

/// What the planner minimises. Expected values over the exit policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objective {
    /// End-to-end latency in ms.
    Latency,
    /// Device energy in J.
    Energy,
    /// `w · latency_ms + (1 − w) · energy_mJ`.
    Weighted { latency_weight: f64 },
}

impl Objective {
    /// The objective's value for a latency (ms) and a device energy (J).
    #[inline]
    pub fn value(self, latency_ms: f64, energy_j: f64) -> f64 {
        let (wl, we) = self.weights();
        wl * latency_ms + we * energy_j
    }

    /// The weights of latency (per ms) and energy (per J) in the objective.
    #[inline]
    pub fn weights(self) -> (f64, f64) {
        match self {
            Objective::Latency => (1.0, 0.0),
            Objective::Energy => (0.0, 1.0),
            Objective::Weighted { latency_weight: w } => (w, (1.0 - w) * 1e3),
        }
    }
}

/// Everything static about planning one model on one set of machines.
///
/// Cuts are indexed `0..num_cuts()` as in `ModelGraph::cuts()`; codecs by position in
/// [`Problem::codecs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub codecs: Vec<Codec>,
    /// Payload bytes crossing cut `c` with codec `q`: `bytes[c][q]`. Exact for element-wise
    /// codecs; an estimate for content-dependent ones (JPEG), corrected at run time with
    /// [`Problem::set_bytes`].
    pub bytes: Vec<Vec<u64>>,
    /// Accuracy lost (0..1) by sending cut `c` with codec `q`; `f64::INFINITY` forbids it (as
    /// [`crate::ProblemBuilder`] does where the codec cannot carry the boundary, e.g. JPEG at a
    /// cut whose boundary is not an image).
    pub drop: Vec<Vec<f64>>,
    /// Device time to run everything before cut `c`, in ms (prefix sums of the device profile).
    pub device_ms: Vec<f64>,
    /// The same on the server (edge): the tail after cut `c` costs `server_ms[last] − server_ms[c]`.
    pub server_ms: Vec<f64>,
    /// The same on the cloud, for three-tier plans.
    pub cloud_ms: Option<Vec<f64>>,
    /// Bytes of the weights the head before cut `c` reads.
    pub head_param_bytes: Vec<u64>,
    /// Bytes of the model outputs, sent back to the device.
    pub output_bytes: u64,
    pub exits: Vec<ExitOption>,
    pub constraints: Constraints,
    pub objective: Objective,
    pub energy: EnergyModel,
}

/// What changes from frame to frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// Device ↔ edge.
    pub link: Link,
    /// Time a request waits in the edge's queue, in ms.
    pub server_queue_ms: f64,
    /// Edge ↔ cloud, for three-tier plans.
    pub link2: Option<Link>,
    /// Time a request waits in the cloud's queue, in ms.
    pub cloud_queue_ms: f64,
}

impl Conditions {
    /// Two tiers over `link`, with an idle server.
    pub fn two_tier(link: Link) -> Conditions {
        Conditions { link, server_queue_ms: 0.0, link2: None, cloud_queue_ms: 0.0 }
    }
}

impl Problem {
    /// Number of candidate cuts.
    pub fn num_cuts(&self) -> usize {
        self.device_ms.len()
    }

    /// The device-only cut.
    pub fn last(&self) -> usize {
        self.device_ms.len() - 1
    }

    /// Whether a cloud tier is described.
    pub fn has_cloud(&self) -> bool {
        self.cloud_ms.is_some()
    }

    /// The position of `codec` in [`Problem::codecs`].
    pub fn codec_index(&self, codec: Codec) -> Option<usize> {
        self.codecs.iter().position(|&c| c == codec)
    }

    /// Corrects the payload bytes of (`cut`, `codec`), e.g. from the sizes a runtime observes
    /// for a content-dependent codec such as JPEG. O(codecs).
    ///
    /// A [`crate::Planner`] borrows the problem and caches each cut's cheapest allowed codec,
    /// which depends on the bytes: the change takes effect in the next `Planner::new` (which
    /// costs one pass over cuts × codecs per exit policy; the adaptive device builds one per
    /// frame). Fails when the cut or the codec is not in the problem.
    pub fn set_bytes(&mut self, cut: usize, codec: Codec, bytes: u64) -> Result<(), PlanError> {
        let q = self
            .codec_index(codec)
            .ok_or_else(|| PlanError::Invalid(format!("codec {codec} is not one the problem weighs")))?;
        let n = self.bytes.len();
        let row = self
            .bytes
            .get_mut(cut)
            .ok_or_else(|| PlanError::Invalid(format!("cut {cut} is not a cut of the problem (it has {n})")))?;
        let slot = row.get_mut(q).ok_or_else(|| PlanError::Invalid(format!("cut {cut} does not list every codec")))?;
        *slot = bytes;
        Ok(())
    }

    /// Checks that the arrays agree in length and hold sane numbers.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.device_ms.len();
        if n == 0 {
            return Err("a problem needs at least one cut".into());
        }
        if self.codecs.is_empty() {
            return Err("no codec to choose from".into());
        }
        let check = |name: &str, len: usize| {
            if len == n { Ok(()) } else { Err(format!("{name} has {len} entries for {n} cuts")) }
        };
        check("bytes", self.bytes.len())?;
        check("drop", self.drop.len())?;
        check("server_ms", self.server_ms.len())?;
        check("head_param_bytes", self.head_param_bytes.len())?;
        if let Some(c) = &self.cloud_ms {
            check("cloud_ms", c.len())?;
        }
        for (c, row) in self.bytes.iter().enumerate() {
            if row.len() != self.codecs.len() || self.drop[c].len() != self.codecs.len() {
                return Err(format!("cut {c} does not list every codec"));
            }
        }
        for e in &self.exits {
            if e.cut >= n || !(0.0..=1.0).contains(&e.rate) || e.drop.is_nan() {
                return Err(format!("exit `{}` is out of range", e.name));
            }
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite() && *x >= 0.0);
        if !finite(&self.device_ms) || !finite(&self.server_ms) || !self.cloud_ms.as_deref().is_none_or(finite) {
            return Err("compute times must be finite and non-negative".into());
        }
        if self.head_param_bytes.windows(2).any(|w| w[0] > w[1]) {
            return Err("head weight bytes must not decrease along the cuts".into());
        }
        Ok(())
    }
}
