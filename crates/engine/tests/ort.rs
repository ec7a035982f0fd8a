//! The onnxruntime backend agrees with tract: every cut of every model cleave builds itself, run
//! split with onnxruntime, equals the whole model run with tract; every element type crosses the
//! tract ↔ onnxruntime boundary intact; a missing library is an error, not a panic.
//!
//! Needs the onnxruntime shared library: `ORT_DYLIB_PATH`, or the `onnxruntime` Python package
//! (see `cleave_engine::onnxruntime::find_library`). Without it the tests print why and pass,
//! unless `CLEAVE_REQUIRE_ORT=1`, which makes a missing library a failure (for CI).
#![cfg(feature = "ort")]

use std::path::Path;

use cleave_engine::{Backend, Engine, EngineConfig, EngineError, TensorMap, onnxruntime, random_input, relative_error};
use cleave_graph::build::{Attr, GraphBuilder, zoo};
use cleave_graph::{DType, InputShapes, ModelGraph, pb};
use prost::Message;

/// Loads onnxruntime once per test process, or says why the test is skipped.
fn ort_available() -> bool {
    let loaded = onnxruntime::find_library().and_then(|p| onnxruntime::load(&p));
    match loaded {
        Ok(_) => true,
        Err(e) if std::env::var("CLEAVE_REQUIRE_ORT").is_ok_and(|v| v == "1") => {
            panic!("CLEAVE_REQUIRE_ORT=1 but onnxruntime cannot be loaded: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn ort_engine(threads: usize) -> Engine {
    Engine::with_backend(EngineConfig { threads, cache_capacity: 64 }, Backend::Ort).expect("onnxruntime engine")
}

fn analyse(proto: &pb::ModelProto) -> ModelGraph {
    ModelGraph::from_bytes(&proto.encode_to_vec(), &InputShapes::none()).expect("model analyses")
}

/// Runs `graph` whole with tract and split at every interior cut with onnxruntime.
fn check_every_cut(proto: pb::ModelProto, threads: usize) {
    let graph = analyse(&proto);
    let tract = Engine::new(EngineConfig::default());
    let ort = ort_engine(threads);
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();
    let reference = tract.run_split(&graph, &[], &inputs).unwrap().outputs;
    assert!(!reference.is_empty());
    for cuts in std::iter::once(vec![]).chain((1..graph.last_cut()).map(|c| vec![c])) {
        let split = ort.run_split(&graph, &cuts, &inputs).unwrap_or_else(|e| panic!("cuts {cuts:?}: {e}"));
        assert_eq!(split.outputs.len(), reference.len());
        for (name, t) in &reference {
            let got = &split.outputs[name];
            assert_eq!(got.datum_type(), t.datum_type(), "{name}");
            let err = relative_error(got, t).unwrap();
            assert!(err <= 1e-4, "{}: cuts {cuts:?}: output {name} differs by {err:e}", graph.name());
        }
    }
}

#[test]
fn tiny_resnet_every_cut_matches_tract() {
    if !ort_available() {
        return;
    }
    check_every_cut(zoo::tiny_resnet(zoo::TINY_RESNET_SEED), 1);
}

#[test]
fn zoo_every_cut_matches_tract_with_two_threads() {
    if !ort_available() {
        return;
    }
    for proto in [zoo::chain(7), zoo::residual_block(7), zoo::two_branch(7), zoo::with_exit(7)] {
        check_every_cut(proto, 2);
    }
}

#[test]
fn shipped_tiny_resnet_matches_tract() {
    if !ort_available() {
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    let bytes = std::fs::read(&path).expect("models/tiny_resnet.onnx");
    let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap();
    let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 3))).collect();
    let tract = Engine::new(EngineConfig::default()).run_split(&graph, &[], &inputs).unwrap().outputs;
    let ort = ort_engine(1);
    assert_eq!((ort.name(), ort.backend()), ("onnxruntime", Backend::Ort));
    assert!(ort.version().starts_with("onnxruntime 1."), "{}", ort.version());
    let whole = ort.whole(&graph).unwrap();
    assert_eq!(whole.backend(), Backend::Ort);
    assert!(std::sync::Arc::ptr_eq(&whole, &ort.whole(&graph).unwrap()), "sessions are cached");
    let out = ort.run(&whole, &inputs).unwrap();
    for (name, t) in &tract {
        assert!(relative_error(&out[name], t).unwrap() <= 1e-4, "{name}");
    }
}

/// `x` (of `dtype`) → Cast to f32 → `as_f32`, and `as_f32` → Cast back → `back` (of `dtype`).
fn cast_model(dtype: DType) -> pb::ModelProto {
    let mut b = GraphBuilder::new(&format!("cast_{dtype}"), 0);
    let x = b.input("x", dtype, &[2, 3]);
    b.node("Cast", &[&x], &[("to", Attr::Int(DType::F32.onnx_code().into()))]);
    let y = b.rename_last("as_f32");
    b.node("Cast", &[&y], &[("to", Attr::Int(dtype.onnx_code().into()))]);
    b.rename_last("back");
    b.output("as_f32");
    b.output("back");
    let mut proto = b.build();
    // The builder declares outputs as f32; `back` has the input's type.
    if let Some(out) = proto.graph.as_mut().and_then(|g| g.output.iter_mut().find(|o| o.name == "back"))
        && let Some(pb::type_proto::Value::TensorType(t)) = out.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = dtype.onnx_code();
    }
    proto
}

#[test]
fn element_types_cross_intact() {
    if !ort_available() {
        return;
    }
    let tract = Engine::new(EngineConfig::default());
    let ort = ort_engine(1);
    for dtype in
        [DType::F32, DType::F64, DType::F16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool]
    {
        let graph = analyse(&cast_model(dtype));
        let inputs: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 5))).collect();
        let want = tract.run_split(&graph, &[], &inputs).unwrap().outputs;
        let got = ort.run_split(&graph, &[], &inputs).unwrap_or_else(|e| panic!("{dtype}: {e}")).outputs;
        assert_eq!(got["back"].datum_type(), dtype.datum_type(), "{dtype}");
        assert_eq!(got["back"].shape(), &[2, 3], "{dtype}");
        for name in ["as_f32", "back"] {
            let err = relative_error(&got[name], &want[name]).unwrap();
            assert!(err <= 1e-6, "{dtype}: {name} differs by {err:e}");
        }
        assert_eq!(relative_error(&got["back"], &inputs["x"]).unwrap(), 0.0, "{dtype}: round trip");
    }
}

#[test]
fn a_missing_library_is_an_error() {
    let err = onnxruntime::load(Path::new("/nonexistent/libonnxruntime.so.1.32.0")).unwrap_err();
    assert!(matches!(err, EngineError::OrtUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"), "{err}");
}

#[test]
fn wrong_inputs_are_errors() {
    if !ort_available() {
        return;
    }
    let graph = analyse(&zoo::chain(7));
    let ort = ort_engine(1);
    let whole = ort.whole(&graph).unwrap();
    let err = ort.run(&whole, &TensorMap::new()).unwrap_err();
    assert!(matches!(err, EngineError::MissingInput { .. }), "{err}");
    let mut spec = graph.inputs()[0].clone();
    spec.shape[2] += 1;
    let wrong: TensorMap = [(spec.name.clone(), random_input(&spec, 0))].into();
    let err = ort.run(&whole, &wrong).unwrap_err();
    assert!(matches!(err, EngineError::InputMismatch { .. }), "{err}");
}
