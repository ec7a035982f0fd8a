//! Building a [`Problem`] from a model's cuts, measured profiles and calibration data.

use cleave_codec::Codec;
use cleave_cost::{Calibration, EnergyModel, Profile, SegmentFeatures};
use cleave_graph::{Cut, ModelGraph};

use crate::problem::{Constraints, ExitOption, Objective, Problem};

/// Assembles a [`Problem`].
pub struct ProblemBuilder<'a> {
    graph: &'a ModelGraph,
    cuts: Vec<Cut>,
    device: &'a Profile,
    server: Profile,
    cloud: Option<Profile>,
    codecs: Vec<Codec>,
    calibration: Option<&'a Calibration>,
    constraints: Constraints,
    objective: Objective,
    energy: EnergyModel,
}

impl<'a> ProblemBuilder<'a> {
    /// Starts from a model and the device's profile. The server defaults to the device.
    pub fn new(graph: &'a ModelGraph, device: &'a Profile) -> Self {
        ProblemBuilder {
            graph,
            cuts: graph.cuts(),
            device,
            server: device.clone(),
            cloud: None,
            codecs: Codec::UNCALIBRATED_DEFAULT.to_vec(),
            calibration: None,
            constraints: Constraints::default(),
            objective: Objective::Latency,
            energy: EnergyModel::default(),
        }
    }

    /// The edge/cloud server's profile (for two tiers: the server's).
    pub fn server(mut self, p: Profile) -> Self {
        self.server = p;
        self
    }

    /// A third tier's profile.
    pub fn cloud(mut self, p: Option<Profile>) -> Self {
        self.cloud = p;
        self
    }

    /// The codecs to weigh.
    pub fn codecs(mut self, codecs: Vec<Codec>) -> Self {
        self.codecs = codecs;
        self
    }

    /// Measured accuracy of cut × codec choices and exit policies.
    pub fn calibration(mut self, c: Option<&'a Calibration>) -> Self {
        self.calibration = c;
        self
    }

    pub fn constraints(mut self, c: Constraints) -> Self {
        self.constraints = c;
        self
    }

    pub fn objective(mut self, o: Objective) -> Self {
        self.objective = o;
        self
    }

    pub fn energy(mut self, e: EnergyModel) -> Self {
        self.energy = e;
        self
    }

    /// The problem. A codec that cannot carry a cut's boundary
    /// ([`Codec::applies_to_boundary`]: JPEG anywhere but at an image-shaped boundary, in practice
    /// cut 0 of an image model) is forbidden there (an infinite accuracy cost, so it is never
    /// chosen). Otherwise accuracy costs come from the calibration when it measured a cut ×
    /// codec; unmeasured lossless and near-lossless codecs (fp32, fp16, bf16, int8) are assumed
    /// free, and 4- and 2-bit codecs and JPEG are forbidden under an accuracy budget (allowed, at
    /// zero assumed cost, without one).
    ///
    /// Bytes are [`Codec::estimated_len`] summed over the boundary: exact for element-wise
    /// codecs, a prior for JPEG (replaced by the mean size `cleave calibrate` measured, when the
    /// calibration has it), which a runtime corrects with [`Problem::set_bytes`].
    pub fn build(self) -> Problem {
        let cal = self.calibration;
        let budgeted = self.constraints.max_accuracy_drop.is_some();
        let bytes = self
            .cuts
            .iter()
            .map(|c| {
                self.codecs
                    .iter()
                    .map(|q| {
                        // A content-dependent size measured by `cleave calibrate` beats the prior.
                        let measured = cal
                            .filter(|_| !q.has_exact_len())
                            .and_then(|cal| cal.cuts.iter().find(|e| e.cut == c.index && e.codec == q.name()))
                            .map(|e| e.bytes)
                            .filter(|&b| b > 0);
                        measured.unwrap_or_else(|| c.tensors.iter().map(|t| q.estimated_len(t.dtype, &t.shape)).sum())
                    })
                    .collect()
            })
            .collect();
        let drop = self
            .cuts
            .iter()
            .map(|c| {
                self.codecs
                    .iter()
                    .map(|q| {
                        if !q.applies_to_boundary(c.tensors.iter().map(|t| (t.dtype, t.shape.as_slice()))) {
                            return f64::INFINITY;
                        }
                        match cal.and_then(|cal| cal.drop(c.index, q.name())) {
                            Some(d) => d,
                            None if q.is_near_lossless() || !budgeted => 0.0,
                            None => f64::INFINITY,
                        }
                    })
                    .collect()
            })
            .collect();
        let mut exits = vec![];
        if let Some(cal) = cal {
            for e in &cal.exits {
                let Some(cut) = self.graph.first_cut_after(&e.name) else { continue };
                for t in &e.thresholds {
                    exits.push(ExitOption {
                        name: e.name.clone(),
                        threshold: Some(t.threshold),
                        cut,
                        rate: t.exit_rate.clamp(0.0, 1.0),
                        drop: (cal.baseline_accuracy - t.accuracy).max(0.0),
                    });
                }
            }
        }
        Problem {
            codecs: self.codecs,
            bytes,
            drop,
            device_ms: self.device.prefix(),
            server_ms: self.server.prefix(),
            cloud_ms: self.cloud.as_ref().map(Profile::prefix),
            head_param_bytes: self.cuts.iter().map(|c| c.head_param_bytes).collect(),
            output_bytes: self.graph.outputs().iter().map(|o| o.bytes()).sum(),
            exits,
            constraints: self.constraints,
            objective: self.objective,
            energy: self.energy,
        }
    }
}

/// What the latency predictor knows of each segment between consecutive cuts of `graph`.
pub fn segment_features(graph: &ModelGraph) -> Vec<SegmentFeatures> {
    let cuts = graph.cuts();
    cuts.windows(2)
        .map(|w| {
            let nodes = &graph.nodes()[w[0].position..w[1].position];
            let mut f = SegmentFeatures { nodes: nodes.len() as f64, ..Default::default() };
            for n in nodes {
                *f.flops_by_op.entry(n.op_type.clone()).or_default() += n.cost.flops as f64;
                f.io_bytes += n.cost.io_bytes as f64;
            }
            f
        })
        .collect()
}

/// Support for examples and doc tests.
#[doc(hidden)]
pub mod tests_support {
    use super::*;

    /// A small hand-made problem: 4 cuts, 3 codecs.
    pub fn toy_problem() -> Problem {
        Problem {
            codecs: vec![Codec::Fp32, Codec::Fp16, Codec::Int8],
            bytes: vec![
                vec![600_000, 300_000, 150_000],
                vec![400_000, 200_000, 100_000],
                vec![40_000, 20_000, 10_000],
                vec![0, 0, 0],
            ],
            drop: vec![vec![0.0; 3]; 4],
            device_ms: vec![0.0, 20.0, 60.0, 80.0],
            server_ms: vec![0.0, 2.0, 6.0, 8.0],
            cloud_ms: None,
            head_param_bytes: vec![0, 1000, 5000, 9000],
            output_bytes: 4000,
            exits: vec![],
            constraints: Constraints::default(),
            objective: Objective::Latency,
            energy: EnergyModel::default(),
        }
    }
}
