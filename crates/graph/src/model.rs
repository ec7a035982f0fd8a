//! Loading and analysing an ONNX model: the tensor table, the compute nodes in execution order,
//! and which tensors are static (weights and shape arithmetic) versus dynamic (activations).

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact, InferenceModelExt};

use crate::dtype::DType;
use crate::error::{GraphError, Result, catch_engine_panic, chain};
use crate::opcost::{self, OpCost};

/// Index of a tensor in [`ModelGraph::tensors`].
pub type TensorId = usize;

/// Shapes pinned by the user, by input name (`--shape x=1,3,48,192`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputShapes(pub BTreeMap<String, Vec<usize>>);

impl InputShapes {
    /// No pinned shapes: symbolic batch dims default to 1, anything else symbolic is an error.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses `NAME=d0,d1,…`.
    pub fn parse_one(spec: &str) -> std::result::Result<(String, Vec<usize>), String> {
        let (name, dims) =
            spec.rsplit_once('=').ok_or_else(|| format!("`{spec}` is not NAME=d0,d1,… (e.g. x=1,3,224,224)"))?;
        let dims = dims
            .split([',', 'x'])
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| format!("`{d}` in `{spec}` is not a dimension (a whole number)"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if name.is_empty() {
            return Err(format!("`{spec}` has no input name before `=`"));
        }
        Ok((name.to_owned(), dims))
    }

    /// Adds or replaces one input's shape.
    pub fn with(mut self, name: impl Into<String>, dims: Vec<usize>) -> Self {
        self.0.insert(name.into(), dims);
        self
    }
}

/// What role a tensor plays in the dataflow graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// A graph input the caller feeds.
    Input,
    /// Computed from the inputs at run time: the only kind that can cross a cut.
    Activation,
    /// Known before any input arrives: initializers, `Constant` outputs, weights computed by
    /// `ConstantOfShape`-style subgraphs, and shape arithmetic on pinned shapes.
    Static,
    /// Produced but never needed for any output (e.g. a `Dropout` mask). May carry no type.
    Unused,
}

/// One named tensor of the model, with its analysed type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

impl TensorInfo {
    /// Number of elements.
    pub fn volume(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Size in bytes at the tensor's own element type.
    pub fn bytes(&self) -> u64 {
        self.volume() * self.dtype.size() as u64
    }

    /// Whether the tensor varies with the input.
    pub fn is_dynamic(&self) -> bool {
        matches!(self.kind, TensorKind::Input | TensorKind::Activation)
    }
}

/// A tensor's name, element type and concrete shape: the contract at a part boundary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * self.dtype.size() as u64
    }
}

impl From<&TensorInfo> for TensorSpec {
    fn from(t: &TensorInfo) -> Self {
        TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }
    }
}

/// A node that runs at inference time (it has at least one live dynamic output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The ONNX node name, or a generated `<op>_<index>` when the file leaves it empty.
    pub name: String,
    pub op_type: String,
    /// Every tensor the node reads: explicit inputs, then tensors its subgraphs capture.
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub cost: OpCost,
    /// Position of the node in the ONNX file's node list.
    pub onnx_index: usize,
}

/// A loaded, shape-analysed ONNX model, ready to be cut.
///
/// Construction runs tract's type and shape analysis once, with every input pinned to a
/// concrete shape. Everything else (cuts, parts) is pure computation on the result.
#[derive(Debug, Clone)]
pub struct ModelGraph {
    pub(crate) proto: pb::ModelProto,
    sha256: String,
    input_shapes: InputShapes,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) by_name: HashMap<String, TensorId>,
    /// Compute nodes in execution order; cut `k` lies after the first `k` of them.
    pub(crate) nodes: Vec<NodeInfo>,
    pub(crate) inputs: Vec<TensorId>,
    pub(crate) outputs: Vec<TensorId>,
    /// For each tensor, the position in `nodes` of the compute node producing it.
    pub(crate) producer_pos: Vec<Option<usize>>,
    /// For each tensor, the positions in `nodes` of the compute nodes reading it (ascending).
    pub(crate) consumer_pos: Vec<Vec<usize>>,
    /// Static tensors that can be rebuilt from constants inside a part: tensor → ONNX node index
    /// producing it (`None` for initializers).
    pub(crate) pure_const: HashMap<TensorId, Option<usize>>,
    /// Static tensors that depend on the input's (pinned) shape: their analysed values.
    pub(crate) materialized: HashMap<TensorId, pb::TensorProto>,
    /// Node positions of the candidate cuts (see [`crate::cuts`]).
    pub(crate) positions: Vec<usize>,
    /// Every tensor each ONNX node reads (explicit and captured by subgraphs), by file index.
    pub(crate) onnx_inputs: Vec<Vec<TensorId>>,
    /// Declared early exits, in network order.
    exits: Vec<String>,
}

/// The metadata property declaring early exits: comma-separated output names.
pub const EXITS_KEY: &str = "cleave.exits";

/// Splits a comma-separated list of names, dropping empty entries and spaces.
pub fn parse_exit_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()
}

const NONDETERMINISTIC: &[&str] =
    &["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"];

impl ModelGraph {
    /// Decodes and analyses a model from ONNX protobuf bytes.
    pub fn from_bytes(bytes: &[u8], shapes: &InputShapes) -> Result<ModelGraph> {
        let proto = pb::ModelProto::decode(bytes).map_err(|e| GraphError::Decode(e.to_string()))?;
        let sha256 = hex(&Sha256::digest(bytes));
        Self::from_proto(proto, sha256, shapes)
    }

    /// Analyses an already-decoded model. `sha256` identifies it in manifests and caches.
    pub fn from_proto(proto: pb::ModelProto, sha256: String, shapes: &InputShapes) -> Result<ModelGraph> {
        Self::analyse(proto, sha256, shapes)
    }

    fn analyse(proto: pb::ModelProto, sha256: String, shapes: &InputShapes) -> Result<ModelGraph> {
        let graph = proto.graph.as_ref().ok_or(GraphError::NoGraph)?;
        if graph.node.is_empty() && graph.input.is_empty() {
            return Err(GraphError::NoGraph);
        }
        let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
        for (ix, node) in graph.node.iter().enumerate() {
            check_attributes(node, ix)?;
            if !onnx.op_register.0.contains_key(&node.op_type) {
                let domain = if node.domain.is_empty() || node.domain == "ai.onnx" {
                    String::new()
                } else {
                    format!(" (domain `{}`)", node.domain)
                };
                return Err(GraphError::UnsupportedOp { op: node.op_type.clone(), domain, node: node_name(node, ix) });
            }
        }
        for init in &graph.initializer {
            if init.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
                return Err(GraphError::Unsupported(format!(
                    "initializer `{}` keeps its data in an external file; re-save the model with the data inline",
                    init.name
                )));
            }
        }
        if !graph.sparse_initializer.is_empty() {
            return Err(GraphError::Unsupported("sparse initializers".into()));
        }

        let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let real_inputs: Vec<&pb::ValueInfoProto> =
            graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
        for name in shapes.0.keys() {
            if !real_inputs.iter().any(|i| &i.name == name) {
                return Err(GraphError::UnknownInput {
                    name: name.clone(),
                    inputs: real_inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let mut input_specs = Vec::with_capacity(real_inputs.len());
        for input in &real_inputs {
            input_specs.push(resolve_input(input, shapes)?);
        }

        // tract's analysis: types and shapes of every tensor, and values of every static one.
        let (outlets_by_name, model) = catch_engine_panic(|| {
            let parsed = onnx.parse(&proto, None).map_err(|e| GraphError::Analysis(chain(&e)))?;
            if let Some(name) = parsed.unresolved_inputs.first() {
                return Err(GraphError::Malformed(format!("tensor `{name}` is read by a node but never produced")));
            }
            let tract_onnx::model::ParseResult { mut model, outlets_by_name, .. } = parsed;
            let sources = model.input_outlets().map_err(|e| GraphError::Analysis(chain(&e)))?.to_vec();
            for (ix, outlet) in sources.iter().enumerate() {
                let name = &model.node(outlet.node).name;
                let spec = input_specs
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| GraphError::Malformed(format!("engine input `{name}` is not a graph input")))?;
                let fact = InferenceFact::dt_shape(spec.dtype.datum_type(), spec.shape.clone());
                model.set_input_fact(ix, fact).map_err(|e| GraphError::Analysis(chain(&e)))?;
            }
            model.analyse(false).map_err(|e| GraphError::Analysis(chain(&e)))?;
            Ok((outlets_by_name, model))
        })?;

        // The tensor table, in a stable order: graph inputs, initializers, node outputs.
        let mut table = TensorTable::default();
        let fact_of = |name: &str| outlets_by_name.get(name).and_then(|o| model.outlet_fact(*o).ok());
        for i in &graph.input {
            table.add(&i.name, fact_of(&i.name));
        }
        for i in &graph.initializer {
            table.add(&i.name, fact_of(&i.name));
        }
        let mut producer: HashMap<TensorId, usize> = HashMap::new();
        let mut node_inputs: Vec<Vec<TensorId>> = Vec::with_capacity(graph.node.len());
        let mut node_outputs: Vec<Vec<TensorId>> = Vec::with_capacity(graph.node.len());
        for (ix, node) in graph.node.iter().enumerate() {
            let mut outs = vec![];
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                let id = table.add(o, fact_of(o));
                if initializers.contains(o.as_str()) || graph.input.iter().any(|i| &i.name == o) {
                    return Err(GraphError::Malformed(format!(
                        "tensor `{o}` is produced by node `{}` but is also a graph input or initializer",
                        node_name(node, ix)
                    )));
                }
                if producer.insert(id, ix).is_some() {
                    return Err(GraphError::Malformed(format!("tensor `{o}` is produced by two nodes")));
                }
                outs.push(id);
            }
            node_outputs.push(outs);
        }
        let TensorTable { mut tensors, by_name, analysed } = table;
        for (ix, node) in graph.node.iter().enumerate() {
            let mut ins = vec![];
            for i in node.input.iter().filter(|i| !i.is_empty()) {
                let id = *by_name.get(i.as_str()).ok_or_else(|| {
                    GraphError::Malformed(format!(
                        "node `{}` reads tensor `{i}`, which nothing produces",
                        node_name(node, ix)
                    ))
                })?;
                ins.push(id);
            }
            for captured in captured_names(node) {
                if let Some(&id) = by_name.get(&captured)
                    && !ins.contains(&id)
                {
                    ins.push(id);
                }
            }
            node_inputs.push(ins);
        }
        let input_ids: Vec<TensorId> = real_inputs.iter().map(|i| by_name[&i.name]).collect();
        let mut output_ids = vec![];
        for o in &graph.output {
            let id = *by_name
                .get(&o.name)
                .ok_or_else(|| GraphError::Malformed(format!("graph output `{}` is never produced", o.name)))?;
            if input_ids.contains(&id) {
                return Err(GraphError::Unsupported(format!("graph output `{}` is also a graph input", o.name)));
            }
            output_ids.push(id);
        }
        // Input dependence, over all nodes in dependency order: a tensor is dynamic when it
        // depends on a graph input or on a random op. Everything else is static, whether or not
        // tract materialized its value (it does not for large `ConstantOfShape` weights).
        let all_nodes: Vec<usize> = (0..graph.node.len()).collect();
        let all_order = topological(
            &all_nodes,
            |n| node_inputs[n].iter().filter_map(|t| producer.get(t).copied()).collect(),
            |_| 0,
        )
        .ok_or_else(|| GraphError::Malformed("the graph has a cycle".into()))?;
        let mut depends = vec![false; tensors.len()];
        for &id in &input_ids {
            depends[id] = true;
        }
        for &ix in &all_order {
            if NONDETERMINISTIC.contains(&graph.node[ix].op_type.as_str())
                || node_inputs[ix].iter().any(|&t| depends[t])
            {
                for &o in &node_outputs[ix] {
                    depends[o] = true;
                }
            }
        }
        // Static: independent of the inputs, or computed from them with a value the analysis
        // knows (shape arithmetic at the pinned shapes). Graph inputs and outputs never are.
        let is_static = |id: TensorId| -> bool {
            !input_ids.contains(&id) && !output_ids.contains(&id) && (!depends[id] || analysed[id].value.is_some())
        };

        // Liveness: walk back from the outputs through dynamic tensors only.
        let mut live_node = vec![false; graph.node.len()];
        let mut live_tensor = vec![false; tensors.len()];
        let mut stack: Vec<TensorId> = output_ids.clone();
        while let Some(t) = stack.pop() {
            if live_tensor[t] {
                continue;
            }
            live_tensor[t] = true;
            if is_static(t) {
                continue;
            }
            if let Some(&n) = producer.get(&t)
                && !live_node[n]
            {
                live_node[n] = true;
                stack.extend(node_inputs[n].iter().copied());
            }
        }

        // Kinds, and a type for every tensor that matters.
        for id in 0..tensors.len() {
            tensors[id].kind = if input_ids.contains(&id) {
                TensorKind::Input
            } else if is_static(id) {
                TensorKind::Static
            } else if live_tensor[id] {
                TensorKind::Activation
            } else {
                TensorKind::Unused
            };
            let a = &analysed[id];
            let needed = tensors[id].is_dynamic() || (tensors[id].kind == TensorKind::Static && live_tensor[id]);
            match (a.dtype, &a.shape) {
                (Some(dtype), Some(shape)) => {
                    tensors[id].dtype = dtype;
                    tensors[id].shape = shape.clone();
                }
                _ if !needed => {}
                (None, _) if a.raw_dt.is_some() => {
                    return Err(GraphError::UnsupportedDtype {
                        tensor: tensors[id].name.clone(),
                        dtype: format!("{:?}", a.raw_dt.unwrap()),
                    });
                }
                _ => {
                    return Err(GraphError::Analysis(format!(
                        "could not infer the type and shape of tensor `{}`",
                        tensors[id].name
                    )));
                }
            }
        }

        // Execution order of live nodes: Kahn's algorithm. Among ready nodes, the one serving the
        // cheapest model output goes first (so an early exit is computed as soon as its branch
        // can be, and a head that reaches it can stop there), then file order.
        let live: Vec<usize> = (0..graph.node.len()).filter(|&n| live_node[n]).collect();
        let live_deps = |n: usize| -> Vec<usize> {
            node_inputs[n]
                .iter()
                .filter(|&&t| !is_static(t))
                .filter_map(|t| producer.get(t).copied())
                .filter(|&p| live_node[p])
                .collect()
        };
        let rank = output_rank(graph.node.len(), &output_ids, |t| producer.get(&t).copied(), &live_deps);
        let order = topological(&live, live_deps, |n| rank[n])
            .ok_or_else(|| GraphError::Malformed("the graph has a cycle".into()))?;

        // Static tensors independent of the inputs are rebuilt inside parts from the nodes that
        // compute them; the others (shape arithmetic) are written as their analysed value.
        let pure_const: HashMap<TensorId, Option<usize>> = (0..tensors.len())
            .filter(|&t| is_static(t) && !depends[t])
            .map(|t| (t, producer.get(&t).copied()))
            .collect();
        let mut materialized = HashMap::new();
        let mut nodes = Vec::with_capacity(order.len());
        let mut producer_pos = vec![None; tensors.len()];
        let mut consumer_pos = vec![vec![]; tensors.len()];
        for (pos, &ix) in order.iter().enumerate() {
            for &o in &node_outputs[ix] {
                producer_pos[o] = Some(pos);
            }
            for &i in &node_inputs[ix] {
                if consumer_pos[i].last() != Some(&pos) {
                    consumer_pos[i].push(pos);
                }
                if is_static(i) && !pure_const.contains_key(&i) && !materialized.contains_key(&i) {
                    let value = analysed[i].value.as_ref().ok_or_else(|| {
                        GraphError::Analysis(format!("static tensor `{}` has no known value", tensors[i].name))
                    })?;
                    materialized.insert(i, crate::tensor::to_proto(&tensors[i].name, value)?);
                }
            }
        }
        for &ix in &order {
            let node = &graph.node[ix];
            let cost = opcost::node_cost(node, &node_inputs[ix], &node_outputs[ix], &tensors);
            nodes.push(NodeInfo {
                name: node_name(node, ix),
                op_type: node.op_type.clone(),
                inputs: node_inputs[ix].clone(),
                outputs: node_outputs[ix].clone(),
                cost,
                onnx_index: ix,
            });
        }

        let input_shapes = InputShapes(input_specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect());
        let mut graph = ModelGraph {
            proto,
            sha256,
            input_shapes,
            tensors,
            by_name,
            nodes,
            inputs: input_ids,
            outputs: output_ids,
            producer_pos,
            consumer_pos,
            pure_const,
            materialized,
            positions: vec![],
            onnx_inputs: node_inputs,
            exits: vec![],
        };
        graph.positions = graph.candidate_positions();
        let declared = graph.metadata().get(EXITS_KEY).map(|v| parse_exit_list(v)).unwrap_or_default();
        graph.set_exits(declared)?;
        Ok(graph)
    }

    /// The model's early exits, in network order: outputs a device may answer with when it is
    /// confident enough, before the final output exists. Declared by the metadata property
    /// `cleave.exits` (comma-separated output names) or set with [`ModelGraph::set_exits`].
    pub fn exits(&self) -> &[String] {
        &self.exits
    }

    /// Declares the early exits (replacing the model's own declaration): each must be a model
    /// output of a floating-point type other than the last one computed. Stored in the
    /// model's metadata too, so parts and exports carry it.
    pub fn set_exits(&mut self, names: Vec<String>) -> Result<()> {
        let outputs = self.outputs();
        let last_output = outputs
            .iter()
            .max_by_key(|o| self.tensor_id(&o.name).and_then(|t| self.producer_pos[t]))
            .map(|o| o.name.clone());
        let mut exits: Vec<(usize, String)> = vec![];
        for name in names {
            let Some(spec) = outputs.iter().find(|o| o.name == name) else {
                return Err(GraphError::BadExit(format!(
                    "`{name}` is not an output of this model (outputs: {})",
                    outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            };
            if !spec.dtype.is_float() {
                return Err(GraphError::BadExit(format!("`{name}` is {}, not scores or probabilities", spec.dtype)));
            }
            if last_output.as_deref() == Some(name.as_str()) {
                return Err(GraphError::BadExit(format!(
                    "`{name}` is the model's last output, so it is the final answer, not an early exit"
                )));
            }
            if exits.iter().any(|(_, n)| *n == name) {
                return Err(GraphError::BadExit(format!("`{name}` is named twice")));
            }
            let birth = self.tensor_id(&name).map(|t| self.birth(t)).unwrap_or(0);
            exits.push((birth, name));
        }
        exits.sort();
        self.exits = exits.into_iter().map(|(_, n)| n).collect();
        let value = self.exits.join(",");
        self.proto.metadata_props.retain(|p| p.key != EXITS_KEY);
        if !value.is_empty() {
            self.proto.metadata_props.push(pb::StringStringEntryProto { key: EXITS_KEY.into(), value });
        }
        Ok(())
    }

    /// Hex SHA-256 of the model bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// A key identifying this model at these input shapes (for caches).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.sha256.as_bytes());
        h.update(serde_json::to_vec(&self.input_shapes).unwrap_or_default());
        hex(&h.finalize())[..16].to_owned()
    }

    /// The model's graph name, or `model` when the file has none.
    pub fn name(&self) -> &str {
        self.proto.graph.as_ref().map(|g| g.name.as_str()).filter(|n| !n.is_empty()).unwrap_or("model")
    }

    /// The decoded ONNX model.
    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    /// The concrete shapes the inputs were analysed at.
    pub fn input_shapes(&self) -> &InputShapes {
        &self.input_shapes
    }

    /// Every named tensor.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by id.
    pub fn tensor(&self, id: TensorId) -> &TensorInfo {
        &self.tensors[id]
    }

    /// A tensor id by ONNX name.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// Compute nodes, in execution order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Graph inputs the caller feeds, in file order.
    pub fn inputs(&self) -> Vec<TensorSpec> {
        self.inputs.iter().map(|&i| TensorSpec::from(&self.tensors[i])).collect()
    }

    /// Graph outputs, in file order.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        self.outputs.iter().map(|&i| TensorSpec::from(&self.tensors[i])).collect()
    }

    /// Total cost of all compute nodes.
    pub fn total_cost(&self) -> OpCost {
        self.nodes.iter().fold(OpCost::default(), |acc, n| acc + n.cost)
    }

    /// Bytes of distinct static tensors read by compute nodes (the weights).
    pub fn param_bytes(&self) -> u64 {
        (0..self.tensors.len())
            .filter(|&t| self.tensors[t].kind == TensorKind::Static && !self.consumer_pos[t].is_empty())
            .map(|t| self.tensors[t].bytes())
            .sum()
    }

    /// The ONNX metadata properties (`metadata_props`).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
    }
}

/// Type and shape of a graph input after applying pinned shapes.
fn resolve_input(input: &pb::ValueInfoProto, shapes: &InputShapes) -> Result<TensorSpec> {
    let Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tt)), .. }) = &input.r#type else {
        return Err(GraphError::Unsupported(format!("graph input `{}` is not a tensor", input.name)));
    };
    let dtype = DType::from_onnx_code(tt.elem_type).ok_or_else(|| GraphError::UnsupportedDtype {
        tensor: input.name.clone(),
        dtype: DType::onnx_code_name(tt.elem_type).into(),
    })?;
    // Each declared dim: Some(value) when fixed, None when symbolic or unknown.
    let declared: Option<Vec<(Option<usize>, String)>> = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                    (Some(*v as usize), String::new())
                }
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => (None, p.clone()),
                _ => (None, "?".into()),
            })
            .collect()
    });
    if let Some(pinned) = shapes.0.get(&input.name) {
        if let Some(decl) = &declared {
            if decl.len() != pinned.len() {
                return Err(GraphError::BadShape {
                    input: input.name.clone(),
                    reason: format!("the model declares rank {} but {} dims were given", decl.len(), pinned.len()),
                });
            }
            for (axis, ((fixed, _), &given)) in decl.iter().zip(pinned).enumerate() {
                if let Some(f) = fixed
                    && *f != given
                {
                    return Err(GraphError::BadShape {
                        input: input.name.clone(),
                        reason: format!("dimension {axis} is fixed to {f} by the model, {given} was given"),
                    });
                }
            }
        }
        if pinned.contains(&0) {
            return Err(GraphError::BadShape { input: input.name.clone(), reason: "dimensions must be ≥ 1".into() });
        }
        return Ok(TensorSpec { name: input.name.clone(), dtype, shape: pinned.clone() });
    }
    let Some(decl) = declared else {
        return Err(GraphError::UnresolvedDim {
            input: input.name.clone(),
            axis: 0,
            symbol: "unknown rank".into(),
            example: "1,3,224,224".into(),
        });
    };
    let mut shape = Vec::with_capacity(decl.len());
    for (axis, (fixed, symbol)) in decl.iter().enumerate() {
        match fixed {
            Some(v) => shape.push(*v),
            None if axis == 0 => shape.push(1), // a symbolic batch defaults to 1
            None => {
                let example = decl
                    .iter()
                    .enumerate()
                    .map(|(a, (f, _))| match f {
                        Some(v) => v.to_string(),
                        None if a == 0 => "1".into(),
                        None => format!("<dim{a}>"),
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(GraphError::UnresolvedDim {
                    input: input.name.clone(),
                    axis,
                    symbol: symbol.clone(),
                    example,
                });
            }
        }
    }
    Ok(TensorSpec { name: input.name.clone(), dtype, shape })
}

/// What tract's analysis says of one tensor.
#[derive(Default)]
struct Analysed {
    dtype: Option<DType>,
    /// tract's own type, kept to name an unsupported one.
    raw_dt: Option<DatumType>,
    shape: Option<Vec<usize>>,
    value: Option<Arc<Tensor>>,
}

impl Analysed {
    fn from_fact(f: &InferenceFact) -> Analysed {
        let value = f.value.concretize();
        let raw_dt = f.datum_type.concretize().or_else(|| value.as_ref().map(|v| v.datum_type()));
        let shape = f
            .shape
            .concretize()
            .and_then(|dims| dims.iter().map(|d| d.to_i64().ok().map(|v| v as usize)).collect::<Option<Vec<_>>>())
            .or_else(|| value.as_ref().map(|v| v.shape().to_vec()));
        Analysed { dtype: raw_dt.and_then(DType::from_datum_type), raw_dt, shape, value }
    }
}

/// The tensor table under construction.
#[derive(Default)]
struct TensorTable {
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, TensorId>,
    analysed: Vec<Analysed>,
}

impl TensorTable {
    fn add(&mut self, name: &str, fact: Option<&InferenceFact>) -> TensorId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.tensors.len();
        self.tensors.push(TensorInfo {
            name: name.to_owned(),
            dtype: DType::F32,
            shape: vec![],
            kind: TensorKind::Unused,
        });
        self.analysed.push(fact.map(Analysed::from_fact).unwrap_or_default());
        self.by_name.insert(name.to_owned(), id);
        id
    }
}

/// Checks the attributes tract relies on without checking (window sizes, strides, pads): a
/// hostile model must be an error naming the node, not an engine panic.
fn check_attributes(node: &pb::NodeProto, ix: usize) -> Result<()> {
    if !matches!(
        node.op_type.as_str(),
        "Conv" | "ConvTranspose" | "ConvInteger" | "QLinearConv" | "MaxPool" | "AveragePool" | "LpPool"
    ) {
        return Ok(());
    }
    let ints = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice());
    let bad =
        |what: String| GraphError::Malformed(format!("node `{}` ({}): {what}", node_name(node, ix), node.op_type));
    let kernel = ints("kernel_shape");
    let spatial = kernel.map(|k| k.len());
    if let Some(k) = kernel
        && (k.is_empty() || k.iter().any(|&d| d < 1))
    {
        return Err(bad(format!("kernel_shape {k:?} must list positive sizes")));
    }
    for (attr, min) in [("strides", 1), ("dilations", 1)] {
        if let Some(v) = ints(attr) {
            if v.iter().any(|&d| d < min) {
                return Err(bad(format!("{attr} {v:?} must be ≥ {min}")));
            }
            if spatial.is_some_and(|n| n != v.len()) {
                return Err(bad(format!("{attr} has {} entries for a {}-d kernel", v.len(), spatial.unwrap_or(0))));
            }
        }
    }
    if let Some(p) = ints("pads") {
        if p.iter().any(|&d| d < 0) {
            return Err(bad(format!("pads {p:?} must be ≥ 0")));
        }
        if p.len() % 2 != 0 || spatial.is_some_and(|n| 2 * n != p.len()) {
            return Err(bad(format!("pads has {} entries; it needs two per spatial axis", p.len())));
        }
    }
    if matches!(node.op_type.as_str(), "MaxPool" | "AveragePool" | "LpPool") && kernel.is_none() {
        return Err(bad("kernel_shape is required".into()));
    }
    Ok(())
}

/// A node's display name: its ONNX name, else `<op>_<index>`.
pub(crate) fn node_name(node: &pb::NodeProto, ix: usize) -> String {
    if node.name.is_empty() { format!("{}_{ix}", node.op_type) } else { node.name.clone() }
}

/// For each node (ONNX index), the number of nodes that the cheapest model output it
/// contributes to depends on (`usize::MAX` for nodes no output needs). With one output every
/// node gets the same rank; with an early exit, the exit's branch ranks before the trunk after it.
fn output_rank(
    nodes: usize,
    outputs: &[TensorId],
    producer: impl Fn(TensorId) -> Option<usize>,
    deps: impl Fn(usize) -> Vec<usize>,
) -> Vec<usize> {
    let mut rank = vec![usize::MAX; nodes];
    for &o in outputs {
        let Some(start) = producer(o) else { continue };
        let mut seen = vec![false; nodes];
        let mut stack = vec![start];
        let mut members = vec![];
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            members.push(n);
            stack.extend(deps(n));
        }
        for &n in &members {
            rank[n] = rank[n].min(members.len());
        }
    }
    rank
}

/// Kahn's algorithm over `nodes` (ONNX indices); among ready nodes the lowest `(priority(n), n)`
/// goes first, so equal priorities keep file order. `deps(n)` lists the nodes `n` reads from
/// (others are ignored). `None` on a cycle.
fn topological(
    nodes: &[usize],
    deps: impl Fn(usize) -> Vec<usize>,
    priority: impl Fn(usize) -> usize,
) -> Option<Vec<usize>> {
    let members: HashSet<usize> = nodes.iter().copied().collect();
    let mut indegree: HashMap<usize, usize> = HashMap::new();
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for &n in nodes {
        let mut d: Vec<usize> = deps(n).into_iter().filter(|p| members.contains(p) && *p != n).collect();
        d.sort_unstable();
        d.dedup();
        indegree.insert(n, d.len());
        for p in d {
            dependents.entry(p).or_default().push(n);
        }
    }
    let mut ready: BinaryHeap<std::cmp::Reverse<(usize, usize)>> =
        nodes.iter().filter(|n| indegree[n] == 0).map(|&n| std::cmp::Reverse((priority(n), n))).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse((_, n))) = ready.pop() {
        order.push(n);
        for &d in dependents.get(&n).map(|v| v.as_slice()).unwrap_or(&[]) {
            let e = indegree.get_mut(&d).expect("dependent is a member");
            *e -= 1;
            if *e == 0 {
                ready.push(std::cmp::Reverse((priority(d), d)));
            }
        }
    }
    (order.len() == nodes.len()).then_some(order)
}

/// Names an `If`/`Loop`/`Scan` body reads from the enclosing scope.
fn captured_names(node: &pb::NodeProto) -> Vec<String> {
    let mut out = vec![];
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            collect_captures(g, &mut out);
        }
    }
    out
}

fn collect_captures(g: &pb::GraphProto, out: &mut Vec<String>) {
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    defined.extend(g.initializer.iter().map(|i| i.name.as_str()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(i.as_str()) && !out.contains(i) {
                out.push(i.clone());
            }
        }
        let mut inner = vec![];
        for a in &n.attribute {
            for sub in a.g.iter().chain(a.graphs.iter()) {
                collect_captures(sub, &mut inner);
            }
        }
        for i in inner {
            if !defined.contains(i.as_str()) && !out.contains(&i) {
                out.push(i);
            }
        }
    }
}

/// The sha256 of `bytes`, in lowercase hex (as [`ModelGraph::sha256`] gives for a file).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
