//! Criterion bench: cut enumeration on the built-in model and, when `../shared` is present, on
//! densenet121-light (goal: ≤ 50 ms).

use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;

fn cuts(c: &mut Criterion) {
    let tiny = ModelGraph::from_bytes(&zoo::tiny_resnet(1).encode_to_vec(), &InputShapes::none()).unwrap();
    c.bench_function("cuts/tiny_resnet", |b| b.iter(|| tiny.cuts()));
    if let Some(path) = cleave_testkit::shared_file("models/light/light_densenet121.onnx") {
        let g = ModelGraph::from_bytes(&std::fs::read(path).unwrap(), &InputShapes::none()).unwrap();
        c.bench_function("cuts/densenet121-light", |b| b.iter(|| g.cuts()));
    }
}

criterion_group!(benches, cuts);
criterion_main!(benches);
