//! Every cut of every shared model: tail(head(x)) equals the whole model within 1e-5.
//! Skips (with a printed reason) when `../shared` is absent.

use cleave_engine::{Engine, EngineConfig};
use cleave_graph::InputShapes;
use cleave_testkit::{assert_frontiers_depend_on_inputs, check_cuts, load, shared_file};

fn every_cut(rel: &str, shapes: InputShapes, randomize: bool) {
    let Some(path) = shared_file(rel) else { return };
    // On the model as shipped (weights computed in-graph for light_*), nothing static crosses.
    assert_frontiers_depend_on_inputs(&load(&path, &shapes, false));
    let graph = load(&path, &shapes, randomize);
    let engine = Engine::new(EngineConfig { threads: 1, cache_capacity: 4 });
    let t0 = std::time::Instant::now();
    let report = check_cuts(&engine, &graph, 1..graph.last_cut());
    eprintln!(
        "{rel}: {} cuts, worst relative error {:e} (cut {}, {}), {:.1} s",
        report.cuts_checked,
        report.worst_error,
        report.worst_cut,
        report.worst_output,
        t0.elapsed().as_secs_f64()
    );
    assert!(report.worst_error <= 1e-5, "{rel}: {report:?}");
}

macro_rules! light {
    ($name:ident) => {
        #[test]
        fn $name() {
            every_cut(concat!("models/light/", stringify!($name), ".onnx"), InputShapes::none(), true);
        }
    };
}

light!(light_bvlc_alexnet);
light!(light_densenet121);
light!(light_inception_v1);
light!(light_inception_v2);
light!(light_resnet50);
light!(light_shufflenet);
light!(light_squeezenet);
light!(light_vgg19);
light!(light_zfnet512);

#[test]
fn ppocr_cls() {
    every_cut("models/ch_ppocr_mobile_v2.0_cls_infer.onnx", InputShapes::none().with("x", vec![1, 3, 48, 192]), false);
}

#[test]
fn ppocr_det() {
    every_cut("models/ch_PP-OCRv4_det_infer.onnx", InputShapes::none().with("x", vec![1, 3, 64, 64]), false);
}
