//! Decision time of the planner: 300 cuts × 5 codecs × 4 exit policies (goal: median ≤ 20 µs
//! for two tiers), plus the three-tier search for reference.
//! Run: `cargo bench -p cleave-plan --bench plan`.

use cleave_codec::Codec;
use cleave_cost::{EnergyModel, Link};
use cleave_plan::{Conditions, Constraints, ExitOption, Objective, Planner, Problem, plan};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn problem(cuts: usize, three: bool) -> Problem {
    let mut rng = cleave_graph::build::SeededNormal::new(7);
    let mut prefix = |scale: f64| {
        let mut acc = 0.0;
        (0..cuts)
            .map(|i| {
                if i > 0 {
                    acc += rng.uniform() * scale;
                }
                acc
            })
            .collect::<Vec<f64>>()
    };
    let device_ms = prefix(2.0);
    let server_ms = prefix(0.3);
    let cloud_ms = three.then(|| prefix(0.1));
    let codecs = Codec::FEATURE.to_vec();
    let mut rng = cleave_graph::build::SeededNormal::new(8);
    let bytes = (0..cuts)
        .map(|c| {
            let base = 600_000.0 * (1.0 - c as f64 / cuts as f64) + 1000.0 + rng.uniform() * 50_000.0;
            codecs.iter().map(|q| (base * q.bits() as f64 / 32.0) as u64).collect()
        })
        .collect();
    let drop =
        (0..cuts).map(|_| codecs.iter().map(|q| (32 - q.bits()) as f64 * 0.0005 * rng.uniform()).collect()).collect();
    let exits = (0..4)
        .map(|i| ExitOption {
            name: format!("exit_{i}"),
            threshold: Some(0.8),
            cut: (i + 1) * cuts / 5,
            rate: 0.2 + 0.15 * i as f64,
            drop: 0.002 * i as f64,
        })
        .collect();
    Problem {
        codecs,
        bytes,
        drop,
        device_ms,
        server_ms,
        cloud_ms,
        head_param_bytes: (0..cuts as u64).map(|c| c * 10_000).collect(),
        output_bytes: 4000,
        exits,
        constraints: Constraints { max_accuracy_drop: Some(0.01), min_cut: 1, device_memory: None },
        objective: Objective::Latency,
        energy: EnergyModel::default(),
    }
}

fn bench(c: &mut Criterion) {
    let two = problem(300, false);
    let three = problem(300, true);
    let mut g = c.benchmark_group("plan");
    // Per frame: the problem is prepared once per model and machines; each frame only plans.
    let planner = Planner::new(&two).unwrap();
    for bw in [1e6, 1e7, 1e8] {
        let cond = Conditions { server_queue_ms: 5.0, ..Conditions::two_tier(Link::symmetric(bw, 30.0)) };
        g.bench_with_input(BenchmarkId::new("two_tier_300x5x4_per_frame", bw as u64), &cond, |b, cond| {
            b.iter(|| planner.plan(std::hint::black_box(cond)).unwrap())
        });
    }
    // One-shot: validation and preparation included.
    let cond = Conditions { server_queue_ms: 5.0, ..Conditions::two_tier(Link::symmetric(1e7, 30.0)) };
    g.bench_function("two_tier_300x5x4_one_shot", |b| b.iter(|| plan(std::hint::black_box(&two), &cond).unwrap()));
    let cond3 = Conditions {
        link: Link::symmetric(1e7, 30.0),
        server_queue_ms: 5.0,
        link2: Some(Link::symmetric(1e9, 10.0)),
        cloud_queue_ms: 2.0,
    };
    g.bench_function("three_tier_300x5x4", |b| b.iter(|| plan(std::hint::black_box(&three), &cond3).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
