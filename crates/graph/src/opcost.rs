//! Per-node compute cost: multiply-accumulates, floating-point operations, weight bytes and the
//! bytes a node reads and writes. Counts follow the usual conventions (one MAC = two FLOPs;
//! element-wise ops count one FLOP per output element, transcendental ones a few).

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::model::{TensorId, TensorInfo, TensorKind};

/// The cost of one node, or a sum of nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCost {
    /// Multiply-accumulates (convolutions and matrix products).
    pub macs: u64,
    /// Floating-point operations, MACs counted twice.
    pub flops: u64,
    /// Bytes of static inputs (weights, biases, normalisation parameters).
    pub param_bytes: u64,
    /// Bytes of dynamic inputs read plus outputs written.
    pub io_bytes: u64,
}

impl std::ops::Add for OpCost {
    type Output = OpCost;
    fn add(self, o: OpCost) -> OpCost {
        OpCost {
            macs: self.macs + o.macs,
            flops: self.flops + o.flops,
            param_bytes: self.param_bytes + o.param_bytes,
            io_bytes: self.io_bytes + o.io_bytes,
        }
    }
}

/// How an operator is costed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Convolutions, matrix products: dominated by MACs.
    Linear,
    /// Pooling and reductions: one FLOP per element of the window.
    Pooling,
    /// Element-wise and normalisation: a few FLOPs per output element.
    Elementwise,
    /// Data movement (reshape, concat, transpose, …): no arithmetic.
    Movement,
    /// Anything else, costed as one FLOP per output element.
    Other,
}

/// The cost class of an ONNX operator type.
pub fn op_class(op: &str) -> OpClass {
    match op {
        "Conv" | "ConvTranspose" | "ConvInteger" | "QLinearConv" | "Gemm" | "MatMul" | "MatMulInteger"
        | "QLinearMatMul" | "Einsum" | "Attention" | "LSTM" | "GRU" | "RNN" => OpClass::Linear,
        "MaxPool" | "AveragePool" | "LpPool" | "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool"
        | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceLogSumExp" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => OpClass::Pooling,
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Transpose" | "Concat" | "Split" | "Slice" | "Gather"
        | "GatherElements" | "GatherND" | "Identity" | "Dropout" | "Cast" | "Pad" | "Tile" | "Expand"
        | "DepthToSpace" | "SpaceToDepth" | "Shape" | "Size" | "ConstantOfShape" | "Constant" | "ScatterND"
        | "ScatterElements" => OpClass::Movement,
        "Add"
        | "Sub"
        | "Mul"
        | "Div"
        | "Relu"
        | "LeakyRelu"
        | "PRelu"
        | "Clip"
        | "Sigmoid"
        | "HardSigmoid"
        | "HardSwish"
        | "Tanh"
        | "Exp"
        | "Log"
        | "Sqrt"
        | "Pow"
        | "Erf"
        | "Gelu"
        | "Elu"
        | "Selu"
        | "Softplus"
        | "Softsign"
        | "Abs"
        | "Neg"
        | "Max"
        | "Min"
        | "Sum"
        | "Mean"
        | "BatchNormalization"
        | "InstanceNormalization"
        | "LayerNormalization"
        | "GroupNormalization"
        | "LRN"
        | "Softmax"
        | "LogSoftmax"
        | "Reciprocal"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Sign"
        | "Equal"
        | "Less"
        | "Greater"
        | "Where"
        | "Not"
        | "And"
        | "Or"
        | "Mish"
        | "Resize"
        | "Upsample"
        | "QuantizeLinear"
        | "DequantizeLinear" => OpClass::Elementwise,
        _ => OpClass::Other,
    }
}

/// FLOPs per output element for element-wise ops.
fn elementwise_factor(op: &str, n_inputs: usize) -> u64 {
    match op {
        "Sum" | "Mean" | "Max" | "Min" => n_inputs.saturating_sub(1).max(1) as u64,
        "BatchNormalization" => 2,
        "Sigmoid" | "Tanh" | "Exp" | "Log" | "Erf" | "Elu" | "Selu" | "Softplus" | "Mish" => 4,
        "HardSigmoid" | "HardSwish" | "Clip" => 3,
        "Gelu" => 8,
        "Softmax" | "LogSoftmax" | "InstanceNormalization" | "LayerNormalization" | "GroupNormalization" => 5,
        "Resize" | "Upsample" => 4,
        _ => 1,
    }
}

fn attr_ints<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice())
}

fn attr_int(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Costs one node from its ONNX definition and the analysed shapes of its tensors.
pub(crate) fn node_cost(
    node: &pb::NodeProto,
    inputs: &[TensorId],
    outputs: &[TensorId],
    tensors: &[TensorInfo],
) -> OpCost {
    let t = |id: TensorId| &tensors[id];
    let explicit = |slot: usize| -> Option<&TensorInfo> {
        let name = node.input.get(slot).filter(|n| !n.is_empty())?;
        inputs.iter().map(|&i| t(i)).find(|ti| &ti.name == name)
    };
    let out_vol: u64 = outputs.first().map(|&o| t(o).volume()).unwrap_or(0);
    let param_bytes: u64 =
        inputs.iter().map(|&i| t(i)).filter(|ti| ti.kind == TensorKind::Static).map(|ti| ti.bytes()).sum();
    let io_bytes: u64 = inputs.iter().map(|&i| t(i)).filter(|ti| ti.is_dynamic()).map(|ti| ti.bytes()).sum::<u64>()
        + outputs.iter().map(|&o| t(o)).filter(|ti| ti.kind != TensorKind::Unused).map(|ti| ti.bytes()).sum::<u64>();
    let op = node.op_type.as_str();
    let (macs, flops) = match op_class(op) {
        OpClass::Linear => {
            let macs = match op {
                "Conv" | "ConvInteger" | "QLinearConv" => {
                    let w = explicit(if op == "QLinearConv" { 3 } else { 1 });
                    w.map(|w| out_vol * w.shape.iter().skip(1).map(|&d| d as u64).product::<u64>()).unwrap_or(0)
                }
                "ConvTranspose" => {
                    let x = explicit(0);
                    let w = explicit(1);
                    match (x, w) {
                        (Some(x), Some(w)) => x.volume() * w.shape.iter().skip(1).map(|&d| d as u64).product::<u64>(),
                        _ => 0,
                    }
                }
                "Gemm" => {
                    let trans_a = attr_int(node, "transA").unwrap_or(0) != 0;
                    let k = explicit(0).and_then(|a| if trans_a { a.shape.first() } else { a.shape.get(1) });
                    k.map(|&k| out_vol * k as u64).unwrap_or(0)
                }
                "MatMul" | "MatMulInteger" | "QLinearMatMul" => {
                    let k = explicit(0).and_then(|a| a.shape.last());
                    k.map(|&k| out_vol * k as u64).unwrap_or(0)
                }
                _ => inputs.iter().map(|&i| t(i).volume()).max().unwrap_or(0).max(out_vol),
            };
            let bias =
                if matches!(op, "Conv" | "Gemm" | "ConvTranspose") && explicit(2).is_some() { out_vol } else { 0 };
            (macs, 2 * macs + bias)
        }
        OpClass::Pooling => {
            let flops = match op {
                "MaxPool" | "AveragePool" | "LpPool" => {
                    let k: u64 = attr_ints(node, "kernel_shape")
                        .map(|k| k.iter().map(|&d| d.max(1) as u64).product())
                        .unwrap_or(1);
                    out_vol * k
                }
                _ => explicit(0).map(|x| x.volume()).unwrap_or(out_vol),
            };
            (0, flops)
        }
        OpClass::Elementwise => {
            let factor = elementwise_factor(op, node.input.len());
            let flops = if op == "LRN" {
                let size = attr_int(node, "size").unwrap_or(1).max(1) as u64;
                out_vol * (size + 3)
            } else {
                out_vol * factor
            };
            (0, flops)
        }
        OpClass::Movement => (0, 0),
        OpClass::Other => (0, out_vol),
    };
    OpCost { macs, flops, param_bytes, io_bytes }
}
