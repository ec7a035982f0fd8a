//! Part extraction: the nodes between two cuts as a standalone ONNX model.
//!
//! A part carries exactly the weights its nodes read. Weights stored as initializers are copied;
//! weights computed by constant subgraphs (`Constant`, `ConstantOfShape`, …) are copied with the
//! subgraph that computes them; static values that depend on the pinned input shape (shape
//! arithmetic) are written as initializers holding the analysed value. Boundary tensors keep
//! their ONNX names: names are the contract between parts.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;
use tract_onnx::pb;

use crate::error::{GraphError, Result};
use crate::manifest::{Boundary, BoundaryTensor, Manifest, ModelSummary, PartManifest};
use crate::model::{ModelGraph, TensorId, TensorSpec};
use crate::opcost::OpCost;

/// The nodes between cut `from_cut` and cut `to_cut`, as a standalone ONNX model.
#[derive(Debug, Clone)]
pub struct Part {
    pub from_cut: usize,
    pub to_cut: usize,
    /// What the part reads: the tensors of the `from_cut` frontier its nodes need.
    pub inputs: Vec<TensorSpec>,
    /// What the part writes: original model outputs it computes, then boundary tensors.
    pub outputs: Vec<TensorSpec>,
    /// The original model outputs among `outputs`.
    pub model_outputs: Vec<String>,
    /// Summed cost of its nodes.
    pub cost: OpCost,
    /// Bytes of the weights it carries.
    pub param_bytes: u64,
    pub proto: pb::ModelProto,
}

impl Part {
    /// The part as ONNX protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }
}

/// A model cut at one or more cuts: the parts in order, and the manifest describing them.
#[derive(Debug, Clone)]
pub struct Split {
    pub parts: Vec<Part>,
    pub manifest: Manifest,
}

/// Summary of which parts a split of `n` compute nodes makes, as cut positions.
pub fn part_bounds(cuts: &[usize], last_cut: usize) -> Vec<(usize, usize)> {
    let mut points = vec![0];
    points.extend_from_slice(cuts);
    points.push(last_cut);
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

impl ModelGraph {
    /// Checks that `cuts` are strictly increasing interior cuts, so that every part is non-empty.
    pub fn check_split(&self, cuts: &[usize]) -> Result<()> {
        let last = self.last_cut();
        for &c in cuts {
            self.check_cut(c)?;
            if c == 0 {
                return Err(GraphError::BadCuts(
                    "cut 0 is the model input: the first part would be empty (offload the whole model instead)".into(),
                ));
            }
            if c == last {
                return Err(GraphError::BadCuts(format!(
                    "cut {c} is after the last node: the last part would be empty (run the whole model instead)"
                )));
            }
        }
        if let Some(w) = cuts.windows(2).find(|w| w[0] >= w[1]) {
            return Err(GraphError::BadCuts(format!(
                "cuts must be strictly increasing: {} then {} would make an empty part",
                w[0], w[1]
            )));
        }
        Ok(())
    }

    /// The whole model as one part (cut 0 to the last cut).
    pub fn whole(&self) -> Result<Part> {
        self.part(0, self.last_cut())
    }

    /// The nodes between cut `from` and cut `to` (cut indices) as a standalone model.
    pub fn part(&self, from: usize, to: usize) -> Result<Part> {
        self.check_cut(from)?;
        self.check_cut(to)?;
        if from >= to {
            return Err(GraphError::BadCuts(format!("part from cut {from} to cut {to} has no nodes")));
        }
        let graph = self.proto.graph.as_ref().ok_or(GraphError::NoGraph)?;
        let (pf, pt) = (self.positions[from], self.positions[to]);
        let range = pf..pt;

        // Inputs: dynamic tensors read in the range and produced before it.
        let mut inputs: Vec<(usize, TensorId)> = vec![];
        let mut seen = HashSet::new();
        for node in &self.nodes[range.clone()] {
            for &i in &node.inputs {
                if self.tensors[i].is_dynamic() && self.birth(i) <= pf && seen.insert(i) {
                    inputs.push((self.birth(i), i));
                }
            }
        }
        inputs.sort_unstable();

        // Outputs: model outputs first (in file order), then tensors read after the range.
        let mut outputs: Vec<TensorId> = self
            .outputs
            .iter()
            .copied()
            .filter(|&o| self.producer_pos[o].is_some_and(|p| range.contains(&p)))
            .collect();
        let model_outputs: Vec<String> = outputs.iter().map(|&o| self.tensors[o].name.clone()).collect();
        let mut boundary: Vec<(usize, TensorId)> = vec![];
        for node in &self.nodes[range.clone()] {
            for &o in &node.outputs {
                if self.tensors[o].is_dynamic()
                    && self.consumer_pos[o].last().is_some_and(|&l| l >= pt)
                    && !outputs.contains(&o)
                {
                    boundary.push((self.birth(o), o));
                }
            }
        }
        boundary.sort_unstable();
        outputs.extend(boundary.into_iter().map(|(_, t)| t));

        // Static closure of the nodes in range.
        let mut consts = ConstClosure::default();
        let mut param_bytes = 0;
        for node in &self.nodes[range.clone()] {
            for &i in &node.inputs {
                if self.tensors[i].kind == crate::model::TensorKind::Static {
                    if !consts.seen.contains(&i) {
                        param_bytes += self.tensors[i].bytes();
                    }
                    consts.include(self, i);
                }
            }
        }
        let initializers_by_name: HashMap<&str, &pb::TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut initializer: Vec<pb::TensorProto> = vec![];
        for &t in &consts.initializers {
            let name = self.tensors[t].name.as_str();
            initializer.push(
                (*initializers_by_name
                    .get(name)
                    .ok_or_else(|| GraphError::Malformed(format!("initializer `{name}` disappeared")))?)
                .clone(),
            );
        }
        for &t in &consts.materialized {
            initializer.push(self.materialized[&t].clone());
        }
        let mut node: Vec<pb::NodeProto> = consts.nodes.iter().map(|&ix| graph.node[ix].clone()).collect();
        node.extend(self.nodes[range.clone()].iter().map(|n| graph.node[n.onnx_index].clone()));

        let spec = |t: TensorId| TensorSpec::from(&self.tensors[t]);
        let inputs: Vec<TensorSpec> = inputs.into_iter().map(|(_, t)| spec(t)).collect();
        let outputs: Vec<TensorSpec> = outputs.into_iter().map(spec).collect();
        let cost = self.nodes[range].iter().fold(OpCost::default(), |acc, n| acc + n.cost);

        let mut metadata: Vec<pb::StringStringEntryProto> = self.proto.metadata_props.clone();
        let mut meta = |k: &str, v: String| metadata.push(pb::StringStringEntryProto { key: k.into(), value: v });
        meta("cleave.source_sha256", self.sha256().to_owned());
        meta("cleave.from_cut", from.to_string());
        meta("cleave.to_cut", to.to_string());
        let graph_proto = pb::GraphProto {
            node,
            name: format!("{}_c{from}_c{to}", self.name()),
            initializer,
            doc_string: String::new(),
            input: inputs.iter().map(value_info).collect(),
            output: outputs.iter().map(value_info).collect(),
            ..Default::default()
        };
        let proto = pb::ModelProto {
            // IR 4 lets initializers stay out of the graph inputs; older files list them there.
            ir_version: self.proto.ir_version.max(4),
            opset_import: self.proto.opset_import.clone(),
            producer_name: "cleave".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: self.proto.domain.clone(),
            model_version: self.proto.model_version,
            doc_string: format!("cut {from}..{to} of {}", self.name()),
            graph: Some(graph_proto),
            metadata_props: metadata,
            training_info: vec![],
            functions: self.proto.functions.clone(),
        };
        Ok(Part { from_cut: from, to_cut: to, inputs, outputs, model_outputs, cost, param_bytes, proto })
    }

    /// Cuts the model at `cuts` (strictly increasing, interior): `cuts.len() + 1` parts.
    pub fn split(&self, cuts: &[usize]) -> Result<Split> {
        self.check_split(cuts)?;
        let bounds = part_bounds(cuts, self.last_cut());
        let parts = bounds.iter().map(|&(a, b)| self.part(a, b)).collect::<Result<Vec<_>>>()?;
        let part_of =
            |pos: usize| bounds.iter().position(|&(a, b)| (self.positions[a]..self.positions[b]).contains(&pos));
        let boundaries = cuts
            .iter()
            .map(|&c| {
                let tensors: Vec<BoundaryTensor> = self
                    .frontier_at(self.positions[c])
                    .into_iter()
                    .map(|t| BoundaryTensor {
                        spec: TensorSpec::from(&self.tensors[t]),
                        produced_by: self.producer_pos[t].and_then(part_of),
                    })
                    .collect();
                Boundary { cut: c, bytes: tensors.iter().map(|t| t.spec.bytes()).sum(), tensors }
            })
            .collect();
        let manifest = Manifest {
            format: Manifest::FORMAT.into(),
            model: ModelSummary {
                name: self.name().to_owned(),
                sha256: self.sha256().to_owned(),
                inputs: self.inputs(),
                outputs: self.outputs(),
                num_cuts: self.num_cuts(),
                input_shapes: self.input_shapes().0.clone(),
            },
            cuts: cuts.to_vec(),
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, p)| PartManifest {
                    index: i,
                    file: format!("part{i}.onnx"),
                    from_cut: p.from_cut,
                    to_cut: p.to_cut,
                    inputs: p.inputs.clone(),
                    outputs: p.outputs.clone(),
                    model_outputs: p.model_outputs.clone(),
                    flops: p.cost.flops,
                    param_bytes: p.param_bytes,
                })
                .collect(),
            boundaries,
            metadata: BTreeMap::new(),
        };
        Ok(Split { parts, manifest })
    }
}

/// The static tensors a set of nodes needs, and how each is provided.
#[derive(Default)]
struct ConstClosure {
    seen: HashSet<TensorId>,
    initializers: Vec<TensorId>,
    materialized: Vec<TensorId>,
    /// ONNX node indices of constant subgraph nodes, in dependency order.
    nodes: Vec<usize>,
    seen_nodes: HashSet<usize>,
}

impl ConstClosure {
    fn include(&mut self, g: &ModelGraph, t: TensorId) {
        if !self.seen.insert(t) {
            return;
        }
        match g.pure_const.get(&t) {
            Some(None) => {
                self.initializers.push(t);
            }
            Some(Some(ix)) => {
                let ix = *ix;
                if self.seen_nodes.insert(ix) {
                    for &i in &g.onnx_inputs[ix] {
                        self.include(g, i);
                    }
                    self.nodes.push(ix); // post-order: after everything it reads
                }
            }
            None => {
                self.materialized.push(t);
            }
        }
    }
}

pub(crate) fn value_info(t: &TensorSpec) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: t.name.clone(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: t.dtype.onnx_code(),
                shape: Some(pb::TensorShapeProto {
                    dim: t
                        .shape
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}
