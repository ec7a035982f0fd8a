//! Criterion bench: one tract run of a whole model on the calling thread (warm), on a fresh
//! thread per run (how the adaptive device started its race before `Worker`), and on a
//! long-lived [`cleave_node::priority::Worker::idle`]. Only the run itself is timed.
//!
//! `cargo bench -p cleave-bench --bench race_thread`; resnet50-light is added when `../shared` is
//! present. To see it under a device's CPU quota, start the bench inside a cgroup with a CFS quota.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_node::priority::Worker;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;

fn bench_model(c: &mut Criterion, name: &str, graph: ModelGraph) {
    let engine = Arc::new(Engine::new(EngineConfig { threads: 1, cache_capacity: 4 }));
    let part = engine.whole(&graph).unwrap();
    let env: TensorMap = graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, 1))).collect();
    let env = Arc::new(env);
    let timed = {
        let (engine, part, env) = (engine.clone(), part.clone(), env.clone());
        move || {
            let t = Instant::now();
            engine.run(&part, &env).unwrap();
            t.elapsed()
        }
    };
    let mut group = c.benchmark_group(format!("race_thread/{name}"));
    group.sample_size(20);
    let t = timed.clone();
    group.bench_function("calling thread", |b| b.iter_custom(|n| (0..n).map(|_| t()).sum::<Duration>()));
    let t = timed.clone();
    group.bench_function("fresh thread", |b| {
        b.iter_custom(|n| (0..n).map(|_| std::thread::spawn(t.clone()).join().unwrap()).sum::<Duration>())
    });
    let worker = Worker::idle("cleave-bench-idle");
    let t = timed.clone();
    group.bench_function("idle worker", |b| {
        b.iter_custom(|n| (0..n).map(|_| worker.run(t.clone()).unwrap().blocking_recv().unwrap()).sum::<Duration>())
    });
    group.finish();
}

fn race_thread(c: &mut Criterion) {
    let tiny = ModelGraph::from_bytes(&zoo::tiny_resnet(1).encode_to_vec(), &InputShapes::none()).unwrap();
    bench_model(c, "tiny_resnet", tiny);
    if let Some(path) = cleave_testkit::shared_file("models/light/light_resnet50.onnx") {
        let g = ModelGraph::from_bytes(&std::fs::read(path).unwrap(), &InputShapes::none()).unwrap();
        bench_model(c, "resnet50-light", g);
    }
}

criterion_group!(benches, race_thread);
criterion_main!(benches);
