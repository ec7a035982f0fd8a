//! # cleave-testkit
//!
//! Helpers shared by cleave's integration tests and benches:
//! - [`shared_dir`] finds the workplace's `../shared` data (models, traces) or says why not;
//! - [`randomize_weights`] gives synthetic-weight models (the `light_*` zoo, every weight 0.02)
//!   seeded random convolution and dense weights, so that outputs depend on the input;
//! - [`check_cuts`] runs head → tail at given cuts and compares with the whole model;
//! - [`pki`] makes a CA and certificates at test time for the TLS tests.

use std::path::PathBuf;

use cleave_engine::{Engine, TensorMap, random_input, relative_error};
use cleave_graph::build::SeededNormal;
use cleave_graph::{DType, InputShapes, ModelGraph, pb};
use prost::Message;

pub mod pki;
pub mod textlines;
pub mod textpages;

/// The `shared/` data directory: `$CLEAVE_SHARED`, else `../shared` beside the workspace.
/// `Err` carries a reason to print when skipping.
pub fn shared_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("CLEAVE_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    if dir.join("models").is_dir() {
        Ok(dir.canonicalize().unwrap_or(dir))
    } else {
        Err(format!("shared data not found at {} (set CLEAVE_SHARED)", dir.display()))
    }
}

/// A file under `shared/`, or `None` after printing why the caller should skip.
pub fn shared_file(rel: &str) -> Option<PathBuf> {
    match shared_dir() {
        Ok(d) if d.join(rel).is_file() => Some(d.join(rel)),
        Ok(d) => {
            eprintln!("SKIP: {} is absent", d.join(rel).display());
            None
        }
        Err(why) => {
            eprintln!("SKIP: {why}");
            None
        }
    }
}

/// Replaces the weight and bias of every `Conv`, `ConvTranspose`, `Gemm` and `MatMul` with seeded
/// He-normal values of the analysed shape; the statistics of every `BatchNormalization` and the
/// constant operands of `Mul`/`Div` and `Add`/`Sub` get valid random values (scales and
/// variances in [0.5, 1.5), biases and means in [-0.2, 0.2)). The
/// original constant subgraphs become dead and are dropped by the analysis.
pub fn randomize_weights(proto: &pb::ModelProto, graph: &ModelGraph, seed: u64) -> pb::ModelProto {
    let mut rng = SeededNormal::new(seed);
    let mut out = proto.clone();
    let g = out.graph.as_mut().expect("model has a graph");
    let mut new_inits = vec![];
    for (ix, node) in g.node.iter_mut().enumerate() {
        // Per-channel affine parameters: batch norm statistics, and constant Mul/Add operands
        // (caffe2 exports write a batch norm's scale and bias that way).
        let affine: Vec<(usize, f64, f64)> = match node.op_type.as_str() {
            "BatchNormalization" => vec![(1, 0.5, 1.5), (2, -0.2, 0.2), (3, -0.2, 0.2), (4, 0.5, 1.5)],
            "Mul" | "Div" => vec![(0, 0.5, 1.5), (1, 0.5, 1.5)],
            "Add" | "Sub" => vec![(0, -0.2, 0.2), (1, -0.2, 0.2)],
            _ => vec![],
        };
        for (slot, lo, hi) in affine {
            let Some(id) = node.input.get(slot).and_then(|n| graph.tensor_id(n)) else { continue };
            let info = graph.tensor(id);
            if info.is_dynamic() || info.dtype != DType::F32 {
                continue;
            }
            let n: usize = info.shape.iter().product();
            let data: Vec<u8> = (0..n).flat_map(|_| ((lo + (hi - lo) * rng.uniform()) as f32).to_le_bytes()).collect();
            let name = format!("{}__random_{ix}_{slot}", info.name);
            new_inits.push(pb::TensorProto {
                name: name.clone(),
                dims: info.shape.iter().map(|&d| d as i64).collect(),
                data_type: DType::F32.onnx_code(),
                raw_data: data,
                ..Default::default()
            });
            node.input[slot] = name;
        }
        if !matches!(node.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul") {
            continue;
        }
        let trans_b = node.attribute.iter().any(|a| a.name == "transB" && a.i != 0);
        for slot in 1..node.input.len().min(3) {
            let Some(id) = graph.tensor_id(&node.input[slot]) else { continue };
            let info = graph.tensor(id);
            if info.is_dynamic() || info.dtype != DType::F32 || info.shape.is_empty() {
                continue;
            }
            let fan_in = match (node.op_type.as_str(), slot) {
                (_, 2) => 1,
                ("Gemm", _) => info.shape[if trans_b { 1 } else { 0 }],
                ("MatMul", _) => info.shape[info.shape.len().saturating_sub(2)],
                _ => info.shape.iter().skip(1).product(),
            };
            let std = if slot == 2 { 0.05 } else { (2.0 / fan_in.max(1) as f64).sqrt() };
            let n: usize = info.shape.iter().product();
            let data: Vec<u8> = (0..n).flat_map(|_| ((rng.normal() * std) as f32).to_le_bytes()).collect();
            let name = format!("{}__random_{ix}_{slot}", info.name);
            new_inits.push(pb::TensorProto {
                name: name.clone(),
                dims: info.shape.iter().map(|&d| d as i64).collect(),
                data_type: DType::F32.onnx_code(),
                raw_data: data,
                ..Default::default()
            });
            node.input[slot] = name;
        }
    }
    g.initializer.extend(new_inits);
    out
}

/// Operators whose output is a probability: their outputs saturate, so tests compare their
/// input (the logits) too.
pub const PROBABILITY_OPS: &[&str] = &["Softmax", "Sigmoid", "LogSoftmax"];

/// Adds, for every graph output computed by a Softmax/Sigmoid, that node's input (the logits)
/// as an extra graph output. On saturated outputs (a near-one-hot softmax, a sigmoid map near 0
/// on a noise input) a relative comparison is meaningless; on the logits it is not.
pub fn expose_logits(proto: &pb::ModelProto) -> pb::ModelProto {
    let mut out = proto.clone();
    let g = out.graph.as_mut().expect("model has a graph");
    let mut extra = vec![];
    for o in &g.output {
        if let Some(n) =
            g.node.iter().find(|n| n.output.contains(&o.name) && PROBABILITY_OPS.contains(&n.op_type.as_str()))
            && let Some(logits) = n.input.first()
            && !g.output.iter().any(|x| &x.name == logits)
            && !extra.iter().any(|x: &pb::ValueInfoProto| &x.name == logits)
        {
            extra.push(pb::ValueInfoProto { name: logits.clone(), ..o.clone() });
        }
    }
    g.output.extend(extra);
    out
}

/// Names of the graph outputs computed by a Softmax/Sigmoid (probabilities).
pub fn probability_outputs(graph: &ModelGraph) -> Vec<String> {
    let g = graph.proto().graph.as_ref().expect("model has a graph");
    g.output
        .iter()
        .filter(|o| g.node.iter().any(|n| n.output.contains(&o.name) && PROBABILITY_OPS.contains(&n.op_type.as_str())))
        .map(|o| o.name.clone())
        .collect()
}

/// Loads `path` at `shapes`, exposing the logits of probability outputs; with `randomize`,
/// gives it seeded random weights first.
pub fn load(path: &std::path::Path, shapes: &InputShapes, randomize: bool) -> ModelGraph {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let graph = ModelGraph::from_bytes(&bytes, shapes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let proto = if randomize { randomize_weights(graph.proto(), &graph, 42) } else { graph.proto().clone() };
    ModelGraph::from_bytes(&expose_logits(&proto).encode_to_vec(), shapes).expect("modified model analyses")
}

/// The comparison used by the conformance tests: relative error `max|a−b| / max|b|`, except that
/// probabilities (outputs of Softmax/Sigmoid) are compared on their natural scale of 1,
/// `max|a−b| / max(1, max|b|)`; their logits are compared by plain relative error.
pub fn output_error(
    graph: &ModelGraph,
    name: &str,
    got: &cleave_engine::Tensor,
    reference: &cleave_engine::Tensor,
) -> f64 {
    let rel = relative_error(got, reference).expect("comparable tensors");
    if !probability_outputs(graph).iter().any(|p| p == name) {
        return rel;
    }
    let scale = reference
        .cast_to::<f64>()
        .ok()
        .and_then(|t| t.to_plain_array_view::<f64>().ok().map(|v| v.iter().fold(0f64, |m, x| m.max(x.abs()))))
        .unwrap_or(0.0);
    if scale >= 1.0 || scale == 0.0 { rel } else { rel * scale }
}

/// Seeded random inputs for every graph input.
pub fn inputs_for(graph: &ModelGraph, seed: u64) -> TensorMap {
    graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, seed))).collect()
}

/// Checks, independently of the analysis, that every tensor crossing any cut derives from a
/// graph input: weights and constants must never be sent.
pub fn assert_frontiers_depend_on_inputs(graph: &ModelGraph) {
    let g = graph.proto().graph.as_ref().expect("model has a graph");
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut derived: std::collections::HashSet<String> =
        g.input.iter().filter(|i| !inits.contains(i.name.as_str())).map(|i| i.name.clone()).collect();
    // Fixed point over the node list (order-independent).
    loop {
        let before = derived.len();
        for n in &g.node {
            if n.input.iter().any(|i| derived.contains(i)) {
                derived.extend(n.output.iter().cloned());
            }
        }
        if derived.len() == before {
            break;
        }
    }
    for cut in graph.cuts() {
        for t in &cut.tensors {
            assert!(
                derived.contains(&t.name),
                "{}: cut {} sends `{}`, which does not depend on any input",
                graph.name(),
                cut.index,
                t.name
            );
        }
    }
}

/// Worst relative error over outputs and cuts, and where it occurred.
#[derive(Debug, Clone, Default)]
pub struct CutReport {
    pub cuts_checked: usize,
    pub worst_error: f64,
    pub worst_cut: usize,
    pub worst_output: String,
}

/// Runs head → tail at every cut in `cuts` and compares each model output with the whole model.
/// Also checks that the outputs vary with the input, so the comparison can fail.
pub fn check_cuts(engine: &Engine, graph: &ModelGraph, cuts: impl IntoIterator<Item = usize>) -> CutReport {
    let inputs = inputs_for(graph, 1);
    let whole = engine.run_split(graph, &[], &inputs).expect("whole model runs").outputs;
    let whole2 = engine.run_split(graph, &[], &inputs_for(graph, 2)).expect("whole model runs").outputs;
    let probabilities = probability_outputs(graph);
    for (name, t) in &whole {
        if probabilities.contains(name) {
            continue; // may saturate; its logits are checked instead
        }
        let spread = relative_error(&whole2[name], t).unwrap();
        assert!(spread > 1e-3, "{}: output {name} barely depends on the input ({spread:e})", graph.name());
    }
    let mut report = CutReport::default();
    for cut in cuts {
        let split =
            engine.run_split(graph, &[cut], &inputs).unwrap_or_else(|e| panic!("{}: cut {cut}: {e}", graph.name()));
        for (name, t) in &whole {
            let err = output_error(graph, name, &split.outputs[name], t);
            if err > report.worst_error || report.cuts_checked == 0 {
                report.worst_error = report.worst_error.max(err);
                report.worst_cut = cut;
                report.worst_output = name.clone();
            }
        }
        report.cuts_checked += 1;
    }
    report
}
