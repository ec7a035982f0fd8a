//! Tails for inference servers cleave did not write (Triton, KServe, MLServer).
//!
//! A cleave server decodes cleave's codecs itself; a foreign Open Inference Protocol server
//! only runs ONNX. So an exported tail takes its boundary tensors in a datatype the protocol
//! knows ([`WireDType`]): `FP32` as they are, `FP16` through a `Cast` prologue, or `UINT8`
//! through a dequantizing prologue, `(q − zero_point) · scale`, the ONNX `DequantizeLinear`
//! convention that cleave's `int8` codec follows. The scale and zero point are either extra
//! inputs (`<name>_scale`, `<name>_zero_point`, shape `[1]`), so every request carries its own
//! per-frame values, or constants fixed at export time ([`QuantParams`]). The boundary tensors
//! keep their ONNX names on the wire; inside the graph the prologue's output takes a fresh
//! name and the tail's nodes are re-pointed at it.
//!
//! At opset ≥ 10 the prologue is a `DequantizeLinear` node. Opsets 7–9 have no
//! `DequantizeLinear`, and raising a model's opset would change the meaning of its other
//! operators (`Slice`, `Upsample`, …), so there the prologue is the same arithmetic written
//! as `Cast`, `Sub` and `Mul`, which computes the identical value.
//!
//! int4 and int2 have no standard datatype: they stay cleave-to-cleave codecs.
//!
//! [`triton_config`], [`mlserver_settings`] and [`kserve_inference_service`] describe an
//! exported tail for each server; [`ExportManifest`] is what a device reads.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::build::{Attr, attribute};
use crate::dtype::DType;
use crate::error::{GraphError, Result};
use crate::manifest::ModelSummary;
use crate::model::{ModelGraph, TensorSpec};
use crate::part::value_info;

/// The datatype a boundary tensor has on the wire to a foreign server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDType {
    Fp32,
    Fp16,
    /// Affine 8-bit, dequantized inside the tail (cleave's `int8` codec, per tensor).
    Uint8,
}

impl WireDType {
    pub const ALL: [WireDType; 3] = [WireDType::Fp32, WireDType::Fp16, WireDType::Uint8];

    pub fn name(self) -> &'static str {
        match self {
            WireDType::Fp32 => "fp32",
            WireDType::Fp16 => "fp16",
            WireDType::Uint8 => "uint8",
        }
    }

    /// The element type an f32 boundary tensor travels as.
    pub fn dtype(self) -> DType {
        match self {
            WireDType::Fp32 => DType::F32,
            WireDType::Fp16 => DType::F16,
            WireDType::Uint8 => DType::U8,
        }
    }

    /// The suffix of the tail's model name: none for fp32, `_fp16`, `_uint8`.
    pub fn suffix(self) -> &'static str {
        match self {
            WireDType::Fp32 => "",
            WireDType::Fp16 => "_fp16",
            WireDType::Uint8 => "_uint8",
        }
    }
}

impl std::fmt::Display for WireDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WireDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(WireDType::Fp32),
            "fp16" | "float16" => Ok(WireDType::Fp16),
            "uint8" | "u8" | "int8" => Ok(WireDType::Uint8),
            "int4" | "int2" => Err(format!(
                "`{s}` has no standard datatype: int4 and int2 are cleave-to-cleave codecs (use `cleave serve`); a foreign server takes fp32, fp16 or uint8"
            )),
            _ => Err(format!("unknown wire datatype `{s}` (fp32, fp16 or uint8)")),
        }
    }
}

/// Where a `UINT8` tail gets its scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum QuantParams {
    /// As inputs `<name>_scale` (FP32 `[1]`) and `<name>_zero_point` (UINT8 `[1]`): each request
    /// carries the frame's own values.
    Inputs,
    /// Fixed at export time.
    Const { scale: f32, zero_point: u8 },
}

/// What an input of an exported tail carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    /// A boundary tensor (in the wire datatype).
    Tensor,
    /// The scale of the boundary tensor `of`.
    Scale,
    /// The zero point of the boundary tensor `of`.
    ZeroPoint,
}

/// One input of an exported tail, as a request must send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInput {
    #[serde(flatten)]
    pub spec: TensorSpec,
    pub role: InputRole,
    /// The boundary tensor this input carries or parameterizes.
    pub of: String,
    /// The boundary tensor's type before the wire conversion.
    pub source_dtype: DType,
}

/// A tail exported for a foreign server.
#[derive(Debug, Clone)]
pub struct ExportedTail {
    /// The model name on the server: `<model>_tail_c<cut>` plus [`WireDType::suffix`].
    pub name: String,
    pub cut: usize,
    pub dtype: WireDType,
    /// With [`WireDType::Uint8`]: where scale and zero point come from.
    pub quant: Option<QuantParams>,
    pub inputs: Vec<ExportInput>,
    pub outputs: Vec<TensorSpec>,
    /// `DequantizeLinear`, `Cast-Sub-Mul` (opset < 10), `Cast` (fp16) or none (fp32).
    pub prologue: Option<String>,
    pub proto: pb::ModelProto,
}

impl ExportedTail {
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message;
        self.proto.encode_to_vec()
    }
}

/// The default model name of a tail on a server.
pub fn tail_model_name(model: &str, cut: usize, dtype: WireDType) -> String {
    let stem: String =
        model.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    format!("{stem}_tail_c{cut}{}", dtype.suffix())
}

impl ModelGraph {
    /// The tail after `cut` (0 ≤ cut < last cut) taking its f32 boundary tensors as `dtype`.
    /// Boundary tensors of other types travel as they are. `quant` is required with
    /// [`WireDType::Uint8`] and refused otherwise.
    pub fn export_tail(
        &self,
        cut: usize,
        dtype: WireDType,
        quant: Option<QuantParams>,
        name: &str,
    ) -> Result<ExportedTail> {
        let last = self.last_cut();
        self.check_cut(cut)?;
        if cut == last {
            return Err(GraphError::BadCuts(format!(
                "cut {cut} is after the last node: there is no tail to export (cuts 0..{last})"
            )));
        }
        let quant = match (dtype, quant) {
            (WireDType::Uint8, None) => Some(QuantParams::Inputs),
            (WireDType::Uint8, q) => q,
            (_, None) => None,
            (d, Some(_)) => {
                return Err(GraphError::BadCuts(format!("a scale and zero point apply to uint8 tails, not {d}")));
            }
        };
        if let Some(QuantParams::Const { scale, .. }) = quant
            && !(scale.is_finite() && scale > 0.0)
        {
            return Err(GraphError::BadCuts(format!("the scale {scale} must be a positive finite number")));
        }
        let part = self.part(cut, last)?;
        let opset = default_opset(&part.proto);
        let mut proto = part.proto;
        let graph = proto.graph.as_mut().ok_or(GraphError::NoGraph)?;
        let mut names = Names::of(graph);
        let mut prologue_nodes: Vec<pb::NodeProto> = vec![];
        let mut new_inputs: Vec<pb::ValueInfoProto> = vec![];
        let mut inputs: Vec<ExportInput> = vec![];
        let mut prologue: Option<String> = None;
        let mut scalar_shape: Option<String> = None;
        for spec in &part.inputs {
            let convert = spec.dtype == DType::F32 && dtype != WireDType::Fp32;
            let wire = TensorSpec { dtype: if convert { dtype.dtype() } else { spec.dtype }, ..spec.clone() };
            new_inputs.push(value_info(&wire));
            inputs.push(ExportInput {
                spec: wire.clone(),
                role: InputRole::Tensor,
                of: spec.name.clone(),
                source_dtype: spec.dtype,
            });
            if !convert {
                continue;
            }
            let inner = names.fresh(&format!("{}.cleave_f32", spec.name));
            rename_uses(&mut graph.node, &spec.name, &inner);
            match (dtype, quant) {
                (WireDType::Fp16, _) => {
                    prologue_nodes.push(node("Cast", &[&spec.name], &inner, &[("to", Attr::Int(1))]));
                    prologue = Some("Cast".into());
                }
                (WireDType::Uint8, Some(q)) => {
                    let (scale, zp) = match q {
                        QuantParams::Inputs => {
                            let s = names.fresh(&format!("{}_scale", spec.name));
                            let z = names.fresh(&format!("{}_zero_point", spec.name));
                            for (n, d, role) in
                                [(&s, DType::F32, InputRole::Scale), (&z, DType::U8, InputRole::ZeroPoint)]
                            {
                                let ts = TensorSpec { name: n.clone(), dtype: d, shape: vec![1] };
                                new_inputs.push(value_info(&ts));
                                inputs.push(ExportInput {
                                    spec: ts,
                                    role,
                                    of: spec.name.clone(),
                                    source_dtype: spec.dtype,
                                });
                            }
                            (s, z)
                        }
                        QuantParams::Const { scale, zero_point } => {
                            let s = names.fresh(&format!("{}_scale", spec.name));
                            let z = names.fresh(&format!("{}_zero_point", spec.name));
                            graph.initializer.push(pb::TensorProto {
                                name: s.clone(),
                                dims: vec![],
                                data_type: DType::F32.onnx_code(),
                                raw_data: scale.to_le_bytes().to_vec(),
                                ..Default::default()
                            });
                            graph.initializer.push(pb::TensorProto {
                                name: z.clone(),
                                dims: vec![],
                                data_type: DType::U8.onnx_code(),
                                raw_data: vec![zero_point],
                                ..Default::default()
                            });
                            (s, z)
                        }
                    };
                    if opset >= 10 {
                        // DequantizeLinear (opset 10–12) takes scalars: inputs of shape [1]
                        // are reshaped to rank 0.
                        let (s0, z0) = if q == QuantParams::Inputs {
                            let shape = scalar_shape
                                .get_or_insert_with(|| {
                                    let n = names.fresh("cleave.scalar_shape");
                                    graph.initializer.push(pb::TensorProto {
                                        name: n.clone(),
                                        dims: vec![0],
                                        data_type: DType::I64.onnx_code(),
                                        ..Default::default()
                                    });
                                    n
                                })
                                .clone();
                            let s0 = names.fresh(&format!("{scale}.scalar"));
                            let z0 = names.fresh(&format!("{zp}.scalar"));
                            prologue_nodes.push(node("Reshape", &[&scale, &shape], &s0, &[]));
                            prologue_nodes.push(node("Reshape", &[&zp, &shape], &z0, &[]));
                            (s0, z0)
                        } else {
                            (scale, zp)
                        };
                        prologue_nodes.push(node("DequantizeLinear", &[&spec.name, &s0, &z0], &inner, &[]));
                        prologue = Some("DequantizeLinear".into());
                    } else if opset >= 7 {
                        let xf = names.fresh(&format!("{}.cleave_cast", spec.name));
                        let zf = names.fresh(&format!("{zp}.cleave_cast"));
                        let d = names.fresh(&format!("{}.cleave_centered", spec.name));
                        prologue_nodes.push(node("Cast", &[&spec.name], &xf, &[("to", Attr::Int(1))]));
                        prologue_nodes.push(node("Cast", &[&zp], &zf, &[("to", Attr::Int(1))]));
                        prologue_nodes.push(node("Sub", &[&xf, &zf], &d, &[]));
                        prologue_nodes.push(node("Mul", &[&d, &scale], &inner, &[]));
                        prologue = Some("Cast-Sub-Mul".into());
                    } else {
                        return Err(GraphError::Unsupported(format!(
                            "a uint8 tail needs opset ≥ 7 (this model has opset {opset}); export it as fp32"
                        )));
                    }
                }
                _ => unreachable!("fp32 is not converted; uint8 always has quantization parameters"),
            }
        }
        prologue_nodes.append(&mut graph.node);
        graph.node = prologue_nodes;
        graph.input = new_inputs;
        graph.name = name.to_owned();
        proto
            .metadata_props
            .push(pb::StringStringEntryProto { key: "cleave.wire_dtype".into(), value: dtype.to_string() });
        Ok(ExportedTail { name: name.to_owned(), cut, dtype, quant, inputs, outputs: part.outputs, prologue, proto })
    }
}

/// The opset of the default ONNX domain.
fn default_opset(m: &pb::ModelProto) -> i64 {
    m.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version)
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_owned()],
        name: format!("cleave_prologue_{output}"),
        op_type: op.into(),
        domain: String::new(),
        attribute: attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
        doc_string: String::new(),
    }
}

/// Every name a graph uses, to make fresh ones.
struct Names(HashSet<String>);

impl Names {
    fn of(g: &pb::GraphProto) -> Names {
        let mut s = HashSet::new();
        fn walk(g: &pb::GraphProto, s: &mut HashSet<String>) {
            s.extend(g.input.iter().map(|v| v.name.clone()));
            s.extend(g.output.iter().map(|v| v.name.clone()));
            s.extend(g.initializer.iter().map(|t| t.name.clone()));
            s.extend(g.value_info.iter().map(|v| v.name.clone()));
            for n in &g.node {
                s.extend(n.input.iter().cloned());
                s.extend(n.output.iter().cloned());
                s.insert(n.name.clone());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(a.graphs.iter()) {
                        walk(sub, s);
                    }
                }
            }
        }
        walk(g, &mut s);
        Names(s)
    }

    fn fresh(&mut self, want: &str) -> String {
        let mut name = want.to_owned();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{want}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// Re-points every node input named `from` (in subgraphs too) at `to`.
fn rename_uses(nodes: &mut [pb::NodeProto], from: &str, to: &str) {
    for n in nodes {
        for i in n.input.iter_mut().filter(|i| *i == from) {
            *i = to.to_owned();
        }
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rename_uses(&mut sub.node, from, to);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server descriptions

/// Triton's name of an element type (`TYPE_FP32`, …).
pub fn triton_type(d: DType) -> &'static str {
    match d {
        DType::Bool => "TYPE_BOOL",
        DType::U8 => "TYPE_UINT8",
        DType::U16 => "TYPE_UINT16",
        DType::U32 => "TYPE_UINT32",
        DType::U64 => "TYPE_UINT64",
        DType::I8 => "TYPE_INT8",
        DType::I16 => "TYPE_INT16",
        DType::I32 => "TYPE_INT32",
        DType::I64 => "TYPE_INT64",
        DType::F16 => "TYPE_FP16",
        DType::Bf16 => "TYPE_BF16",
        DType::F32 => "TYPE_FP32",
        DType::F64 => "TYPE_FP64",
    }
}

/// The Open Inference Protocol's name of an element type (`FP32`, …).
pub fn oip_type(d: DType) -> &'static str {
    triton_type(d).trim_start_matches("TYPE_")
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Triton's `config.pbtxt` for an exported tail (onnxruntime backend). Parts are exported at
/// the pinned input shapes, batch included, so `max_batch_size` is 0 and `dims` are the full
/// shapes: Triton does not batch these requests itself.
pub fn triton_config(tail: &ExportedTail) -> String {
    let mut s = String::new();
    s.push_str(&format!("# Written by cleave export: the tail after cut {} ({}).\n", tail.cut, tail.dtype));
    s.push_str(&format!("name: {}\n", quoted(&tail.name)));
    s.push_str("backend: \"onnxruntime\"\n");
    s.push_str("max_batch_size: 0\n");
    let block = |s: &mut String, key: &str, specs: &[&TensorSpec]| {
        s.push_str(&format!("{key} [\n"));
        for (i, t) in specs.iter().enumerate() {
            let dims = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            s.push_str(&format!(
                "  {{\n    name: {}\n    data_type: {}\n    dims: [ {dims} ]\n  }}{}\n",
                quoted(&t.name),
                triton_type(t.dtype),
                if i + 1 < specs.len() { "," } else { "" }
            ));
        }
        s.push_str("]\n");
    };
    block(&mut s, "input", &tail.inputs.iter().map(|i| &i.spec).collect::<Vec<_>>());
    block(&mut s, "output", &tail.outputs.iter().collect::<Vec<_>>());
    s.push_str("instance_group [ { kind: KIND_CPU } ]\n");
    s
}

/// MLServer's `model-settings.json` for an exported tail served by `implementation` (a
/// `module.Class` runtime that runs `model.onnx` next to it).
pub fn mlserver_settings(tail: &ExportedTail, implementation: &str) -> serde_json::Value {
    let meta = |t: &TensorSpec| serde_json::json!({"name": t.name, "datatype": oip_type(t.dtype), "shape": t.shape});
    serde_json::json!({
        "name": tail.name,
        "implementation": implementation,
        "parameters": {"uri": "./model.onnx", "version": "1"},
        "inputs": tail.inputs.iter().map(|i| meta(&i.spec)).collect::<Vec<_>>(),
        "outputs": tail.outputs.iter().map(meta).collect::<Vec<_>>(),
    })
}

/// A KServe `InferenceService` serving the Triton-layout repository at `storage_uri` with
/// KServe's Triton runtime, over the v2 protocol (gRPC).
pub fn kserve_inference_service(name: &str, storage_uri: &str) -> String {
    let name: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!(
        "# Written by cleave export. Upload this directory to STORAGE_URI, then kubectl apply -f this file.\n\
         apiVersion: serving.kserve.io/v1beta1\n\
         kind: InferenceService\n\
         metadata:\n  name: {name}\n\
         spec:\n  predictor:\n    model:\n      modelFormat:\n        name: triton\n      protocolVersion: v2\n\
         \x20     runtime: kserve-tritonserver\n      storageUri: {}\n      ports:\n        - name: h2c\n          protocol: TCP\n          containerPort: 9000\n",
        quoted(storage_uri)
    )
}

/// `manifest.json` of an export: what a device needs to use the exported tails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    /// [`ExportManifest::FORMAT`].
    pub format: String,
    /// `triton`, `mlserver` or `kserve`.
    pub server: String,
    pub model: ModelSummary,
    pub tails: Vec<TailManifest>,
}

impl ExportManifest {
    pub const FORMAT: &'static str = "cleave-export/1";

    /// Parses a manifest, checking its format tag.
    pub fn from_json(s: &str) -> std::result::Result<ExportManifest, String> {
        let m: ExportManifest = serde_json::from_str(s).map_err(|e| format!("invalid export manifest.json: {e}"))?;
        if m.format != Self::FORMAT {
            return Err(format!("manifest format `{}` is not `{}`", m.format, Self::FORMAT));
        }
        Ok(m)
    }

    /// The tail exported at `cut` for `dtype`.
    pub fn tail(&self, cut: usize, dtype: WireDType) -> Option<&TailManifest> {
        self.tails.iter().find(|t| t.cut == cut && t.dtype == dtype)
    }
}

/// One exported tail, and the head that feeds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailManifest {
    pub cut: usize,
    /// The model name on the server.
    pub name: String,
    pub dtype: WireDType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prologue: Option<String>,
    /// The head part (cut 0 to `cut`) for the device, relative to the manifest (none at cut 0:
    /// the device sends the model's inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The sha256 of the head's file (absent in older exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
    /// The tail's ONNX file, relative to the manifest.
    pub file: String,
    /// The sha256 of the tail's file (absent in older exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub inputs: Vec<ExportInput>,
    pub outputs: Vec<TensorSpec>,
}
