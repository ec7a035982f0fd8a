//! A small ONNX graph builder, with seeded weights.
//!
//! It exists so that cleave's tests, examples and shipped demo model are built by cleave itself:
//! no model has to be downloaded to test the cutting machinery. [`zoo`] has the models the tests
//! use (a chain, a residual block, a two-branch block, a model with an early exit, and the
//! `tiny-resnet` that `cleave inspect` runs on when given no model).

use tract_onnx::pb;

use crate::dtype::DType;

/// A deterministic normal-distribution source (SplitMix64 + Box–Muller), so that built models
/// are byte-identical across platforms and dependency versions.
#[derive(Debug, Clone)]
pub struct SeededNormal {
    state: u64,
    spare: Option<f64>,
}

impl SeededNormal {
    pub fn new(seed: u64) -> Self {
        SeededNormal { state: seed ^ 0x9E37_79B9_7F4A_7C15, spare: None }
    }

    /// A uniform sample in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal sample.
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// An attribute value for [`GraphBuilder::node`].
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    /// A one-element f32 tensor (e.g. `ConstantOfShape`'s `value`).
    FloatTensor(f32),
}

/// Builds an ONNX `ModelProto` node by node.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    name: String,
    opset: i64,
    rng: SeededNormal,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    metadata: Vec<(String, String)>,
    counter: usize,
}

impl GraphBuilder {
    /// A new graph at ONNX opset 13, with weights drawn from `seed`.
    pub fn new(name: &str, seed: u64) -> Self {
        GraphBuilder {
            name: name.into(),
            opset: 13,
            rng: SeededNormal::new(seed),
            nodes: vec![],
            initializers: vec![],
            inputs: vec![],
            outputs: vec![],
            metadata: vec![],
            counter: 0,
        }
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    /// Declares a graph input. Dims of 0 are written as symbolic (`N`, `d1`, …).
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> String {
        let dims = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| pb::tensor_shape_proto::Dimension {
                denotation: String::new(),
                value: Some(if d == 0 {
                    pb::tensor_shape_proto::dimension::Value::DimParam(if i == 0 {
                        "N".into()
                    } else {
                        format!("d{i}")
                    })
                } else {
                    pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)
                }),
            })
            .collect();
        self.inputs.push(tensor_value_info(name, dtype, Some(dims)));
        name.into()
    }

    /// Declares a graph output (type only; shapes are inferred by whoever loads the model).
    pub fn output(&mut self, name: &str) {
        self.outputs.push(tensor_value_info(name, DType::F32, None));
    }

    /// Adds a model metadata property.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.into(), value.into()));
    }

    /// Adds an f32 initializer.
    pub fn initializer(&mut self, stem: &str, shape: &[usize], data: Vec<f32>) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer data does not fill its shape");
        let name = self.fresh(stem);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DType::F32.onnx_code(),
            raw_data: data.iter().flat_map(|f| f.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Adds an i64 initializer (shapes, axes).
    pub fn initializer_i64(&mut self, stem: &str, data: &[i64]) -> String {
        let name = self.fresh(stem);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![data.len() as i64],
            data_type: DType::I64.onnx_code(),
            raw_data: data.iter().flat_map(|f| f.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A weight with He-normal initialisation (std = sqrt(2 / fan_in)).
    pub fn he_weight(&mut self, stem: &str, shape: &[usize], fan_in: usize) -> String {
        let std = (2.0 / fan_in.max(1) as f64).sqrt();
        let data = (0..shape.iter().product::<usize>()).map(|_| (self.rng.normal() * std) as f32).collect();
        self.initializer(stem, shape, data)
    }

    /// Values uniform in `[lo, hi)`.
    pub fn uniform_weight(&mut self, stem: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let data = (0..shape.iter().product::<usize>()).map(|_| lo + (hi - lo) * self.rng.uniform() as f32).collect();
        self.initializer(stem, shape, data)
    }

    /// Adds a node with one output and returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    /// Adds a node with `n` outputs.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], n: usize, attrs: &[(&str, Attr)]) -> Vec<String> {
        let name = self.fresh(&op.to_lowercase());
        let outputs: Vec<String> = (0..n).map(|i| if n == 1 { name.clone() } else { format!("{name}:{i}") }).collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: name.clone(),
            op_type: op.into(),
            domain: String::new(),
            attribute: attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
            doc_string: String::new(),
        });
        outputs
    }

    /// Renames the output of the most recent node (e.g. to give a model output a stable name).
    pub fn rename_last(&mut self, new_name: &str) -> String {
        let node = self.nodes.last_mut().expect("no node to rename");
        node.output[0] = new_name.into();
        new_name.into()
    }

    /// `Conv` with a square kernel, He-initialised weights and a bias.
    pub fn conv(&mut self, x: &str, cin: usize, cout: usize, k: usize, stride: usize) -> String {
        self.conv_grouped(x, cin, cout, k, stride, 1)
    }

    /// Grouped (or depthwise, `groups == cin`) `Conv`.
    pub fn conv_grouped(&mut self, x: &str, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> String {
        let w = self.he_weight("w", &[cout, cin / groups, k, k], cin / groups * k * k);
        let b = self.uniform_weight("b", &[cout], -0.1, 0.1);
        let p = (k / 2) as i64;
        self.node(
            "Conv",
            &[x, &w, &b],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(groups as i64)),
            ],
        )
    }

    /// `BatchNormalization` with random but valid statistics.
    pub fn batch_norm(&mut self, x: &str, c: usize) -> String {
        let scale = self.uniform_weight("bn_scale", &[c], 0.5, 1.5);
        let bias = self.uniform_weight("bn_bias", &[c], -0.2, 0.2);
        let mean = self.uniform_weight("bn_mean", &[c], -0.2, 0.2);
        let var = self.uniform_weight("bn_var", &[c], 0.5, 1.5);
        self.node("BatchNormalization", &[x, &scale, &bias, &mean, &var], &[("epsilon", Attr::Float(1e-5))])
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], &[])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], &[])
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, &[("axis", Attr::Int(axis))])
    }

    pub fn max_pool(&mut self, x: &str, k: usize, stride: usize) -> String {
        self.node(
            "MaxPool",
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
            ],
        )
    }

    pub fn global_avg_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], &[])
    }

    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], &[("axis", Attr::Int(1))])
    }

    /// `Gemm` from `k` features to `n`, He-initialised.
    pub fn gemm(&mut self, x: &str, k: usize, n: usize) -> String {
        let w = self.he_weight("fc_w", &[n, k], k);
        let b = self.uniform_weight("fc_b", &[n], -0.1, 0.1);
        self.node("Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))])
    }

    pub fn softmax(&mut self, x: &str) -> String {
        self.node("Softmax", &[x], &[("axis", Attr::Int(-1))])
    }

    /// The finished model.
    pub fn build(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: self.opset }],
            producer_name: "cleave-graph builder".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| pb::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

pub(crate) fn attribute(name: &str, v: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    let mut a = pb::AttributeProto { name: name.into(), ..Default::default() };
    match v {
        Attr::Int(i) => {
            a.i = *i;
            a.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(is) => {
            a.ints = is.clone();
            a.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            a.f = *f;
            a.r#type = AttributeType::Float as i32;
        }
        Attr::FloatTensor(f) => {
            a.t = Some(pb::TensorProto {
                dims: vec![1],
                data_type: DType::F32.onnx_code(),
                raw_data: f.to_le_bytes().to_vec(),
                ..Default::default()
            });
            a.r#type = AttributeType::Tensor as i32;
        }
    }
    a
}

fn tensor_value_info(
    name: &str,
    dtype: DType,
    dims: Option<Vec<pb::tensor_shape_proto::Dimension>>,
) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dtype.onnx_code(),
                shape: dims.map(|dim| pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Models built by cleave for its own tests and demos. All take `1×3×H×W` float input named
/// `image` and are deterministic for a given seed.
pub mod zoo {
    use super::*;

    /// The seed of the shipped `models/tiny_resnet.onnx`.
    pub const TINY_RESNET_SEED: u64 = 2026;

    /// A plain chain: conv → relu → conv → relu → pool → gemm. Every cut is a single tensor.
    pub fn chain(seed: u64) -> pb::ModelProto {
        let mut b = GraphBuilder::new("chain", seed);
        let x = b.input("image", DType::F32, &[1, 3, 16, 16]);
        let x = b.conv(&x, 3, 8, 3, 1);
        let x = b.relu(&x);
        let x = b.conv(&x, 8, 8, 3, 2);
        let x = b.relu(&x);
        let x = b.global_avg_pool(&x);
        let x = b.flatten(&x);
        b.gemm(&x, 8, 5);
        b.rename_last("logits");
        b.output("logits");
        b.build()
    }

    /// One residual block: the skip connection makes the cuts inside it two-tensor frontiers.
    pub fn residual_block(seed: u64) -> pb::ModelProto {
        let mut b = GraphBuilder::new("residual_block", seed);
        let x = b.input("image", DType::F32, &[1, 3, 16, 16]);
        let stem = b.conv(&x, 3, 8, 3, 1);
        let stem = b.relu(&stem);
        let y = b.conv(&stem, 8, 8, 3, 1);
        let y = b.relu(&y);
        let y = b.conv(&y, 8, 8, 3, 1);
        let y = b.add(&y, &stem);
        let y = b.relu(&y);
        let y = b.global_avg_pool(&y);
        let y = b.flatten(&y);
        b.gemm(&y, 8, 5);
        b.rename_last("logits");
        b.output("logits");
        b.build()
    }

    /// An Inception-style two-branch block joined by a concat.
    pub fn two_branch(seed: u64) -> pb::ModelProto {
        let mut b = GraphBuilder::new("two_branch", seed);
        let x = b.input("image", DType::F32, &[1, 3, 16, 16]);
        let stem = b.conv(&x, 3, 8, 3, 1);
        let stem = b.relu(&stem);
        let a = b.conv(&stem, 8, 4, 1, 1);
        let a = b.relu(&a);
        let c = b.conv(&stem, 8, 4, 1, 1);
        let c = b.relu(&c);
        let c = b.conv(&c, 4, 4, 3, 1);
        let c = b.relu(&c);
        let y = b.concat(&[&a, &c], 1);
        let y = b.global_avg_pool(&y);
        let y = b.flatten(&y);
        b.gemm(&y, 8, 5);
        b.rename_last("logits");
        b.output("logits");
        b.build()
    }

    /// A model with an early exit: `exit_1` after the first stage, `final` at the end.
    pub fn with_exit(seed: u64) -> pb::ModelProto {
        let mut b = GraphBuilder::new("with_exit", seed);
        let x = b.input("image", DType::F32, &[1, 3, 16, 16]);
        let s1 = b.conv(&x, 3, 8, 3, 2);
        let s1 = b.relu(&s1);
        let e = b.global_avg_pool(&s1);
        let e = b.flatten(&e);
        b.gemm(&e, 8, 5);
        b.rename_last("exit_1");
        let s2 = b.conv(&s1, 8, 16, 3, 2);
        let s2 = b.relu(&s2);
        let f = b.global_avg_pool(&s2);
        let f = b.flatten(&f);
        b.gemm(&f, 16, 5);
        b.rename_last("final");
        b.output("exit_1");
        b.output("final");
        b.metadata("cleave.exits", "exit_1");
        b.build()
    }

    /// `tiny-resnet`: the model `cleave` uses when given none. A 32×32 image classifier with a
    /// residual block, an Inception-style two-branch block and a batch-normalised residual
    /// block; seeded random weights (structure, not accuracy).
    pub fn tiny_resnet(seed: u64) -> pb::ModelProto {
        tiny_resnet_at(seed, 32)
    }

    /// [`tiny_resnet`] for `side × side` images (its convolutions are padded and it ends with a
    /// global average pool, so any side ≥ 4 works; compute grows with the area). The same
    /// weights for the same seed. `cleave bench fleet` uses 128, a camera frame whose compute is
    /// worth sharing.
    pub fn tiny_resnet_at(seed: u64, side: usize) -> pb::ModelProto {
        let mut b = GraphBuilder::new("tiny_resnet", seed);
        let x = b.input("image", DType::F32, &[0, 3, side, side]);
        let stem = b.conv(&x, 3, 16, 3, 1);
        let stem = b.relu(&stem);
        // residual block
        let y = b.conv(&stem, 16, 16, 3, 1);
        let y = b.relu(&y);
        let y = b.conv(&y, 16, 16, 3, 1);
        let y = b.add(&y, &stem);
        let y = b.relu(&y);
        // downsample
        let y = b.conv(&y, 16, 32, 3, 2);
        let y = b.relu(&y);
        // two-branch block
        let a = b.conv(&y, 32, 16, 1, 1);
        let a = b.relu(&a);
        let c = b.conv(&y, 32, 8, 1, 1);
        let c = b.relu(&c);
        let c = b.conv(&c, 8, 16, 3, 1);
        let c = b.relu(&c);
        let y = b.concat(&[&a, &c], 1);
        let y = b.max_pool(&y, 2, 2);
        // batch-normalised residual block
        let z = b.conv(&y, 32, 32, 3, 1);
        let z = b.batch_norm(&z, 32);
        let z = b.relu(&z);
        let z = b.conv(&z, 32, 32, 3, 1);
        let z = b.batch_norm(&z, 32);
        let z = b.add(&z, &y);
        let z = b.relu(&z);
        let z = b.global_avg_pool(&z);
        let z = b.flatten(&z);
        b.gemm(&z, 32, 10);
        b.rename_last("logits");
        b.output("logits");
        b.build()
    }
}
