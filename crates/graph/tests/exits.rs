//! Early exits: declaration, validation, and an execution order that computes each exit as
//! soon as its branch can be.

use cleave_graph::build::{GraphBuilder, zoo as models};
use cleave_graph::{DType, GraphError, InputShapes, ModelGraph, pb};
use prost::Message;

fn load(proto: &pb::ModelProto) -> Result<ModelGraph, GraphError> {
    ModelGraph::from_bytes(&proto.encode_to_vec(), &InputShapes::none())
}

/// Like `models::with_exit`, but the exit's branch comes last in the file, as exporters often
/// write it.
fn exit_branch_last_in_file(declare: bool) -> pb::ModelProto {
    let mut b = GraphBuilder::new("exit_last", 3);
    let x = b.input("image", DType::F32, &[1, 3, 16, 16]);
    let s1 = b.conv(&x, 3, 8, 3, 2);
    let s1 = b.relu(&s1);
    let s2 = b.conv(&s1, 8, 16, 3, 2);
    let s2 = b.relu(&s2);
    let s3 = b.conv(&s2, 16, 16, 3, 1);
    let s3 = b.relu(&s3);
    let f = b.global_avg_pool(&s3);
    let f = b.flatten(&f);
    b.gemm(&f, 16, 5);
    b.rename_last("final");
    let e = b.global_avg_pool(&s1);
    let e = b.flatten(&e);
    b.gemm(&e, 8, 5);
    b.rename_last("exit_1");
    b.output("exit_1");
    b.output("final");
    if declare {
        b.metadata("cleave.exits", "exit_1");
    }
    b.build()
}

#[test]
fn exits_come_from_metadata() {
    let g = load(&models::with_exit(1)).unwrap();
    assert_eq!(g.exits(), ["exit_1"]);
    let g = load(&models::tiny_resnet(1)).unwrap();
    assert!(g.exits().is_empty());
}

#[test]
fn an_exit_branch_written_last_is_still_computed_right_after_its_stage() {
    let g = load(&exit_branch_last_in_file(true)).unwrap();
    let exit_cut = g.first_cut_after("exit_1").unwrap();
    let final_cut = g.first_cut_after("final").unwrap();
    // The head up to the exit holds one conv (+relu) and the exit branch, not the later stages.
    let conv_before_exit = g.nodes()[..g.position(exit_cut).unwrap()].iter().filter(|n| n.op_type == "Conv").count();
    assert_eq!(conv_before_exit, 1, "the exit should not wait for the trunk's later stages");
    assert!(exit_cut < final_cut);
    // After the exit, a single tensor (the stage-1 activation) crosses: a cheap place to cut.
    let cut = g.cut(exit_cut).unwrap();
    let names: Vec<&str> = cut.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // The head that contains the exit outputs it.
    let head = g.part(0, exit_cut).unwrap();
    assert!(head.model_outputs.contains(&"exit_1".to_string()));
}

#[test]
fn the_order_does_not_depend_on_the_declaration() {
    // Device and server must number cuts the same way whether or not they were told about exits.
    let a = load(&exit_branch_last_in_file(true)).unwrap();
    let b = load(&exit_branch_last_in_file(false)).unwrap();
    let names = |g: &ModelGraph| g.nodes().iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert_eq!(a.num_cuts(), b.num_cuts());
}

#[test]
fn single_output_models_keep_file_order() {
    let g = load(&models::tiny_resnet(1)).unwrap();
    let idx: Vec<usize> = g.nodes().iter().map(|n| n.onnx_index).collect();
    let mut sorted = idx.clone();
    sorted.sort_unstable();
    assert_eq!(idx, sorted);
}

#[test]
fn set_exits_validates_names() {
    let mut g = load(&exit_branch_last_in_file(false)).unwrap();
    assert!(g.exits().is_empty());
    g.set_exits(vec!["exit_1".into()]).unwrap();
    assert_eq!(g.exits(), ["exit_1"]);
    assert_eq!(g.metadata().get("cleave.exits").map(String::as_str), Some("exit_1"));
    let e = g.set_exits(vec!["nope".into()]).unwrap_err().to_string();
    assert!(e.contains("`nope` is not an output") && e.contains("exit_1, final"), "{e}");
    let e = g.set_exits(vec!["final".into()]).unwrap_err().to_string();
    assert!(e.contains("final answer"), "{e}");
    let e = g.set_exits(vec!["exit_1".into(), "exit_1".into()]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    g.set_exits(vec![]).unwrap();
    assert!(g.metadata().get("cleave.exits").is_none());
}

#[test]
fn a_bad_declaration_in_the_file_is_a_clear_error() {
    let mut p = models::with_exit(1);
    for m in &mut p.metadata_props {
        if m.key == "cleave.exits" {
            m.value = "exit_9".into();
        }
    }
    let e = load(&p).unwrap_err().to_string();
    assert!(e.starts_with("early exit: `exit_9` is not an output"), "{e}");
}
