//! Cut enumeration and part export on models cleave builds itself.

use std::collections::BTreeSet;

use cleave_graph::build::{Attr, GraphBuilder, zoo};
use cleave_graph::{DType, GraphError, InputShapes, ModelGraph, TensorKind, pb};
use proptest::prelude::*;
use prost::Message;

fn analyse(proto: &pb::ModelProto) -> ModelGraph {
    ModelGraph::from_bytes(&proto.encode_to_vec(), &InputShapes::none()).expect("analyses")
}

fn names(cut: &cleave_graph::Cut) -> Vec<String> {
    cut.tensors.iter().map(|t| t.name.clone()).collect()
}

#[test]
fn chain_cuts_are_all_single_tensor_bottlenecks() {
    let g = analyse(&zoo::chain(1));
    let cuts = g.cuts();
    assert_eq!(cuts.len(), g.num_cuts());
    assert_eq!(names(&cuts[0]), vec!["image"]);
    assert!(cuts.last().unwrap().tensors.is_empty());
    assert_eq!(cuts.last().unwrap().position, g.nodes().len());
    for c in &cuts[..cuts.len() - 1] {
        assert!(c.bottleneck, "cut {} of a chain has {:?}", c.index, names(c));
    }
}

#[test]
fn no_cut_separates_an_activation_from_its_producer() {
    let g = analyse(&zoo::chain(1));
    let ops: Vec<&str> = g.nodes().iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]);
    let positions: Vec<usize> = g.cuts().iter().map(|c| c.position).collect();
    assert_eq!(positions, [0, 2, 4, 5, 6, 7]);
    for c in g.cuts() {
        assert_ne!(c.after_op.as_deref(), Some("Conv"), "cut {} splits a Conv from its Relu", c.index);
    }
}

#[test]
fn residual_block_cuts_carry_the_skip_connection() {
    let g = analyse(&zoo::residual_block(1));
    let cuts = g.cuts();
    // stem conv, relu, then [conv, relu, conv] and the Add inside the block: the skip (relu of
    // the stem) crosses every cut strictly inside the block, together with the branch tensor.
    let skip = g.nodes()[1].outputs[0];
    let skip_name = &g.tensor(skip).name;
    let inside: Vec<_> = cuts.iter().filter(|c| (3..=5).contains(&c.position)).collect();
    assert_eq!(inside.len(), 2, "cuts after the block's relu and its second conv");
    for c in inside {
        let n = names(c);
        assert_eq!(n.len(), 2, "cut {}: {n:?}", c.index);
        assert!(n.contains(skip_name), "cut {} lacks the skip tensor: {n:?}", c.index);
        assert!(!c.bottleneck);
    }
    // After the Add and its Relu, one tensor again.
    let after = cuts.iter().find(|c| c.position == 7).expect("a cut after the block");
    assert!(after.bottleneck, "{:?}", names(after));
}

#[test]
fn two_branch_cuts_carry_both_branches() {
    let g = analyse(&zoo::two_branch(1));
    let multi = g.cuts().iter().filter(|c| c.tensors.len() >= 2).count();
    assert!(multi >= 3, "expected several two-tensor frontiers inside the two-branch block");
}

#[test]
fn bytes_and_flops_are_consistent() {
    let g = analyse(&zoo::tiny_resnet(3));
    let cuts = g.cuts();
    let total = g.total_cost().flops;
    for c in &cuts {
        assert_eq!(c.bytes, c.tensors.iter().map(|t| t.bytes()).sum::<u64>());
        assert_eq!(c.head_flops + c.tail_flops, total);
        assert!(c.head_param_bytes <= g.param_bytes());
    }
    assert_eq!(cuts[0].head_flops, 0);
    assert_eq!(cuts.last().unwrap().head_param_bytes, g.param_bytes());
    // Cut 0 is the raw input: 1×3×32×32 f32.
    assert_eq!(cuts[0].bytes, 3 * 32 * 32 * 4);
    // The first conv is 16 × 3 × 3 × 3 MACs per output pixel over 32 × 32 pixels.
    assert_eq!(g.nodes()[0].cost.macs, 32 * 32 * 16 * 27);
}

#[test]
fn split_manifest_describes_boundaries_and_outputs() {
    let g = analyse(&zoo::with_exit(1));
    // Find the cut right after the exit's Gemm.
    let exit_cut = g
        .cuts()
        .iter()
        .find(|c| {
            c.after
                .as_deref()
                .is_some_and(|a| g.nodes().iter().any(|n| n.name == a && g.tensor(n.outputs[0]).name == "exit_1"))
        })
        .unwrap()
        .index;
    let split = g.split(&[exit_cut]).unwrap();
    let m = &split.manifest;
    assert_eq!(m.parts.len(), 2);
    assert_eq!(m.parts[0].model_outputs, vec!["exit_1"]);
    assert_eq!(m.parts[1].model_outputs, vec!["final"]);
    assert_eq!(m.boundaries[0].cut, exit_cut);
    for t in &m.boundaries[0].tensors {
        assert_eq!(t.produced_by, Some(0));
    }
    // The head outputs the exit first, then the boundary; the tail reads exactly the boundary.
    assert_eq!(split.parts[0].outputs[0].name, "exit_1");
    let boundary: BTreeSet<_> = m.boundaries[0].tensors.iter().map(|t| t.spec.name.clone()).collect();
    let tail_inputs: BTreeSet<_> = split.parts[1].inputs.iter().map(|t| t.name.clone()).collect();
    assert_eq!(boundary, tail_inputs);
    let json = serde_json::to_string(m).unwrap();
    assert_eq!(&cleave_graph::Manifest::from_json(&json).unwrap(), m);
}

#[test]
fn parts_carry_only_the_weights_they_read() {
    let g = analyse(&zoo::tiny_resnet(1));
    let whole = g.whole().unwrap();
    let split = g.split(&[8]).unwrap();
    let inits = |p: &cleave_graph::Part| p.proto.graph.as_ref().unwrap().initializer.len();
    assert_eq!(inits(&split.parts[0]) + inits(&split.parts[1]), inits(&whole));
    assert!(split.parts[0].param_bytes < split.parts[1].param_bytes);
    let parts_bytes: u64 = split.parts.iter().map(|p| p.param_bytes).sum();
    assert_eq!(parts_bytes, g.param_bytes());
}

#[test]
fn split_rejects_empty_parts() {
    let g = analyse(&zoo::chain(1));
    let last = g.last_cut();
    assert!(matches!(g.split(&[0]), Err(GraphError::BadCuts(_))));
    assert!(matches!(g.split(&[last]), Err(GraphError::BadCuts(_))));
    assert!(matches!(g.split(&[3, 3]), Err(GraphError::BadCuts(_))));
    assert!(matches!(g.split(&[3, 2]), Err(GraphError::BadCuts(_))));
    assert!(matches!(g.split(&[last + 5]), Err(GraphError::CutOutOfRange { .. })));
}

/// Weights computed in the graph (the `light_*` zoo style) and shape arithmetic on an
/// activation (the PP-OCR style) are static: they never cross a cut, and parts rebuild or
/// materialize them.
#[test]
fn computed_weights_and_shape_arithmetic_stay_inside_parts() {
    let mut b = GraphBuilder::new("computed", 1);
    let x = b.input("x", DType::F32, &[1, 4, 6, 6]);
    let wshape = b.initializer_i64("wshape", &[4, 4, 1, 1]);
    let w = b.node("ConstantOfShape", &[&wshape], &[("value", Attr::FloatTensor(0.5))]);
    let y = b.node("Conv", &[&x, &w], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
    let y = b.relu(&y);
    let shape = b.node("Shape", &[&y], &[]);
    let y2 = b.relu(&y);
    let r = b.node("Reshape", &[&y2, &shape], &[]);
    b.output(&r);
    let g = analyse(&b.build());
    let kind = |n: &str| g.tensor(g.tensor_id(n).unwrap()).kind;
    assert_eq!(kind(&w), TensorKind::Static);
    assert_eq!(kind(&shape), TensorKind::Static);
    assert_eq!(g.nodes().iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["Conv", "Relu", "Relu", "Reshape"]);
    for c in g.cuts() {
        assert!(c.tensors.iter().all(|t| t.name != w && t.name != shape), "a static tensor crosses cut {}", c.index);
    }
    assert_eq!(g.num_cuts(), 3, "the two Relus fuse with the Conv: cuts before, before Reshape, after");
    let split = g.split(&[1]).unwrap();
    let head = split.parts[0].proto.graph.as_ref().unwrap();
    assert!(head.node.iter().any(|n| n.op_type == "ConstantOfShape"), "the head rebuilds its weight");
    let tail = split.parts[1].proto.graph.as_ref().unwrap();
    assert!(tail.initializer.iter().any(|t| t.name == shape), "the tail holds the analysed shape");
    assert!(!tail.node.iter().any(|n| n.op_type == "Shape"));
    // Both parts analyse on their own.
    for p in &split.parts {
        ModelGraph::from_bytes(&p.to_bytes(), &InputShapes::none()).unwrap();
    }
}

#[test]
fn dead_nodes_are_not_compute_nodes() {
    let mut b = GraphBuilder::new("dead", 1);
    let x = b.input("x", DType::F32, &[1, 4]);
    let y = b.relu(&x);
    let _dead = b.node("Sigmoid", &[&x], &[]);
    let z = b.relu(&y);
    b.output(&z);
    let g = analyse(&b.build());
    assert_eq!(g.nodes().len(), 2);
}

#[test]
fn shapes_are_pinned_and_checked() {
    let mut b = GraphBuilder::new("dyn", 1);
    let x = b.input("x", DType::F32, &[0, 3, 0, 5]);
    let y = b.relu(&x);
    b.output(&y);
    let bytes = b.build().encode_to_vec();
    let err = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap_err();
    assert!(matches!(err, GraphError::UnresolvedDim { axis: 2, .. }), "{err}");
    let g = ModelGraph::from_bytes(&bytes, &InputShapes::none().with("x", vec![2, 3, 4, 5])).unwrap();
    assert_eq!(g.inputs()[0].shape, vec![2, 3, 4, 5]);
    let err = ModelGraph::from_bytes(&bytes, &InputShapes::none().with("x", vec![1, 4, 4, 5])).unwrap_err();
    assert!(err.to_string().contains("dimension 1 is fixed to 3"), "{err}");
    let err = ModelGraph::from_bytes(&bytes, &InputShapes::none().with("y", vec![1])).unwrap_err();
    assert!(matches!(err, GraphError::UnknownInput { .. }), "{err}");
    assert!(InputShapes::parse_one("x=1,3,48,192").is_ok());
    assert!(InputShapes::parse_one("x=1,a").is_err());
    assert!(InputShapes::parse_one("1,2").is_err());
}

#[test]
fn garbage_is_a_decode_error() {
    assert!(matches!(ModelGraph::from_bytes(&[0xff, 0xff, 0xff], &InputShapes::none()), Err(GraphError::Decode(_))));
    assert!(matches!(ModelGraph::from_bytes(&[], &InputShapes::none()), Err(GraphError::NoGraph)));
}

/// A random DAG of element-wise nodes: each new node reads one or two earlier tensors.
fn random_dag(choices: &[(u8, u8, bool)]) -> pb::ModelProto {
    let mut b = GraphBuilder::new("dag", 1);
    let x = b.input("x", DType::F32, &[1, 8]);
    let mut tensors = vec![x];
    for &(i, j, binary) in choices {
        let a = tensors[i as usize % tensors.len()].clone();
        let c = tensors[j as usize % tensors.len()].clone();
        let y = if binary { b.add(&a, &c) } else { b.relu(&a) };
        tensors.push(y);
    }
    let out = tensors.last().unwrap().clone();
    b.output(&out);
    b.build()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The sweep's frontier equals the definition: tensors produced before the cut and read after.
    #[test]
    fn frontier_matches_the_definition(choices in prop::collection::vec((any::<u8>(), any::<u8>(), any::<bool>()), 1..25)) {
        let g = analyse(&random_dag(&choices));
        let nodes = g.nodes();
        for cut in g.cuts() {
            let k = cut.position;
            let mut expected = BTreeSet::new();
            for n in nodes.iter().skip(k) {
                for &i in &n.inputs {
                    let produced_before = match nodes.iter().position(|m| m.outputs.contains(&i)) {
                        Some(p) => p < k,
                        None => g.tensor(i).kind == TensorKind::Input,
                    };
                    if produced_before {
                        expected.insert(g.tensor(i).name.clone());
                    }
                }
            }
            let got: BTreeSet<String> = names(&cut).into_iter().collect();
            prop_assert_eq!(got, expected, "cut {}", k);
        }
    }

    /// Splitting at any increasing set of cuts gives parts whose inputs are covered by what
    /// came before, and which together contain every compute node once.
    #[test]
    fn parts_partition_the_nodes(choices in prop::collection::vec((any::<u8>(), any::<u8>(), any::<bool>()), 3..25), seed in any::<u64>()) {
        let g = analyse(&random_dag(&choices));
        let last = g.last_cut();
        prop_assume!(last >= 3);
        let mut cuts: Vec<usize> = (1..last).filter(|c| (seed >> (c % 64)) & 1 == 1).collect();
        cuts.truncate(4);
        let split = g.split(&cuts).unwrap();
        let mut available: BTreeSet<String> = g.inputs().into_iter().map(|s| s.name).collect();
        let mut count = 0;
        for p in &split.parts {
            for i in &p.inputs {
                prop_assert!(available.contains(&i.name), "part {}..{} reads {} before it exists", p.from_cut, p.to_cut, i.name);
            }
            available.extend(p.outputs.iter().map(|o| o.name.clone()));
            count += g.position(p.to_cut).unwrap() - g.position(p.from_cut).unwrap();
        }
        prop_assert_eq!(count, g.nodes().len());
        for o in g.outputs() {
            prop_assert!(available.contains(&o.name));
        }
    }
}

/// resnet50-light computes its 8 MB classifier weight with `ConstantOfShape`; tract's analysis
/// does not materialize values that large, and the weight used to be classed as an activation
/// that crossed every cut.
#[test]
fn regression_large_computed_weights_never_cross_a_cut() {
    let mut b = GraphBuilder::new("big_weight", 1);
    let x = b.input("x", DType::F32, &[1, 1024]);
    let wshape = b.initializer_i64("wshape", &[1024, 2048]);
    let w = b.node("ConstantOfShape", &[&wshape], &[("value", Attr::FloatTensor(0.02))]);
    let y = b.relu(&x);
    let y = b.node("Sigmoid", &[&y], &[]);
    let y = b.node("Tanh", &[&y], &[]);
    let z = b.node("MatMul", &[&y, &w], &[]);
    b.output(&z);
    let g = analyse(&b.build());
    assert_eq!(g.tensor(g.tensor_id(&w).unwrap()).kind, TensorKind::Static);
    assert!(g.nodes().iter().all(|n| n.op_type != "ConstantOfShape"));
    for c in g.cuts() {
        assert!(c.bytes <= 1024 * 4, "cut {} sends {} bytes: {:?}", c.index, c.bytes, names(&c));
    }
    let last = g.nodes().len() - 1;
    assert_eq!(g.nodes()[last].cost.param_bytes, 1024 * 2048 * 4);
}

/// Found by fuzzing: a Conv whose `pads` list is too short made tract index out of bounds.
#[test]
fn regression_fuzz_conv_pads_too_short() {
    let mut b = GraphBuilder::new("bad_pads", 1);
    let x = b.input("x", DType::F32, &[1, 3, 8, 8]);
    let w = b.he_weight("w", &[4, 3, 3, 3], 27);
    let y = b.node("Conv", &[&x, &w], &[("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1]))]);
    b.output(&y);
    let err = ModelGraph::from_bytes(&b.build().encode_to_vec(), &InputShapes::none()).unwrap_err();
    assert!(matches!(err, GraphError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("pads has 1 entries"), "{err}");
}

/// Engine panics that get past the attribute checks still become errors.
#[test]
fn engine_panics_become_errors() {
    let r = cleave_graph::error::guard_engine(|| -> u32 { panic!("inside tract") });
    assert_eq!(r.unwrap_err(), "inside tract");
    assert!(!cleave_graph::error::in_engine_call());
}
