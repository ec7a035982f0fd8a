//! Every cut of every model cleave builds itself: head then tail equals the whole model.

use cleave_engine::{Engine, EngineConfig, TensorMap, random_input, relative_error};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph, pb};
use prost::Message;

fn check_every_cut(proto: pb::ModelProto) {
    let bytes = proto.encode_to_vec();
    let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none()).expect("zoo model analyses");
    let engine = Engine::new(EngineConfig::default());
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();
    let whole = engine.run_split(&graph, &[], &inputs).unwrap().outputs;
    // The comparison means something only if the output depends on the input.
    let other: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 2))).collect();
    let whole2 = engine.run_split(&graph, &[], &other).unwrap().outputs;
    for (name, t) in &whole {
        assert!(relative_error(&whole2[name], t).unwrap() > 1e-3, "{name} does not vary with the input");
    }
    for cut in 1..graph.last_cut() {
        let split = engine.run_split(&graph, &[cut], &inputs).unwrap();
        for (name, t) in &whole {
            let err = relative_error(&split.outputs[name], t).unwrap();
            assert!(err <= 1e-5, "{}: cut {cut}: output {name} differs by {err:e}", graph.name());
        }
    }
}

#[test]
fn chain_every_cut() {
    check_every_cut(zoo::chain(7));
}

#[test]
fn residual_block_every_cut() {
    check_every_cut(zoo::residual_block(7));
}

#[test]
fn two_branch_every_cut() {
    check_every_cut(zoo::two_branch(7));
}

#[test]
fn early_exit_every_cut() {
    check_every_cut(zoo::with_exit(7));
}

#[test]
fn tiny_resnet_every_cut() {
    check_every_cut(zoo::tiny_resnet(7));
}
