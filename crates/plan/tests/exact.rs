//! The planner is exact: on thousands of random instances its choice has the brute-force
//! optimum's objective value, for two and three tiers, every objective, with exits and
//! constraints. Infeasible instances fail the same way in both.

use cleave_codec::Codec;
use cleave_cost::{EnergyModel, Link};
use cleave_plan::{Conditions, Constraints, ExitOption, Objective, PlanError, Problem, brute_force, plan};
use proptest::prelude::*;

fn prefix(steps: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0];
    for s in steps {
        out.push(out.last().unwrap() + s);
    }
    out
}

prop_compose! {
    fn problem_and_conditions()(
        n in 2usize..10,
        nq in 1usize..5,
        three in any::<bool>(),
        seed in prop::collection::vec(0.0f64..1.0, 200),
        objective in 0u8..3,
        budget in prop::option::of(0.0f64..0.06),
        min_cut in 0usize..3,
        mem in prop::option::of(0u64..12_000),
        n_exits in 0usize..4,
        bw in 1e4f64..1e9,
        rtt in 0.0f64..200.0,
        queue in 0.0f64..100.0,
    ) -> (Problem, Conditions) {
        let mut r = seed.into_iter().cycle();
        let mut next = move || r.next().unwrap();
        let codecs: Vec<Codec> = Codec::FEATURE[..nq].to_vec();
        let bytes = (0..n).map(|_| (0..nq).map(|_| (next() * 2e6) as u64).collect()).collect();
        let drop = (0..n)
            .map(|_| (0..nq).map(|_| { let x = next(); if x > 0.9 { f64::INFINITY } else { x * 0.05 } }).collect())
            .collect();
        let steps = |next: &mut dyn FnMut() -> f64, scale: f64| (0..n - 1).map(|_| next() * scale).collect::<Vec<_>>();
        let device_ms = prefix(&steps(&mut next, 50.0));
        let server_ms = prefix(&steps(&mut next, 20.0));
        let cloud_ms = three.then(|| prefix(&steps(&mut next, 1.0)));
        let head_param_bytes = {
            let mut acc = 0u64;
            (0..n).map(|i| { if i > 0 { acc += (next() * 3000.0) as u64; } acc }).collect()
        };
        let exits = (0..n_exits)
            .map(|i| ExitOption {
                name: format!("exit_{i}"),
                threshold: Some(0.9),
                cut: (next() * n as f64) as usize % n,
                rate: next(),
                drop: next() * 0.03,
            })
            .collect();
        let objective = match objective {
            0 => Objective::Latency,
            1 => Objective::Energy,
            _ => Objective::Weighted { latency_weight: next() },
        };
        let problem = Problem {
            codecs,
            bytes,
            drop,
            device_ms,
            server_ms,
            cloud_ms,
            head_param_bytes,
            output_bytes: (next() * 10_000.0) as u64,
            exits,
            constraints: Constraints { max_accuracy_drop: budget, min_cut, device_memory: mem },
            objective,
            energy: EnergyModel { wait_w: next(), ..EnergyModel::default() },
        };
        let link = Link { up_bps: bw, down_bps: bw * (0.5 + next()), rtt_ms: rtt, overhead_bytes: 300 };
        let link2 = three.then(|| Link { up_bps: bw * 50.0 * (0.5 + next()), down_bps: bw * 50.0, rtt_ms: rtt * 0.05, overhead_bytes: 300 });
        (problem, Conditions { link, server_queue_ms: queue, link2, cloud_queue_ms: queue * next() })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn planner_matches_brute_force((problem, cond) in problem_and_conditions()) {
        let fast = plan(&problem, &cond);
        let reference = brute_force(&problem, &cond);
        match (&fast, &reference) {
            (Ok(f), Ok(r)) => {
                let tol = 1e-9 * r.objective.abs().max(1.0);
                prop_assert!((f.objective - r.objective).abs() <= tol,
                    "planner {} ({:?}) vs brute force {} ({:?})", f.objective, f.choice, r.objective, r.choice);
                // The plan respects the constraints.
                if let Some(b) = problem.constraints.max_accuracy_drop {
                    prop_assert!(f.predicted.accuracy_drop <= b + 1e-12);
                }
                prop_assert!(f.cuts[0] >= problem.constraints.min_cut.min(problem.last()));
                if let Some(cap) = problem.constraints.device_memory {
                    prop_assert!(problem.head_param_bytes[f.cuts[0]] <= cap);
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "planner {:?} but brute force {:?}", fast.map(|p| p.objective), reference.map(|p| p.objective)),
        }
    }
}

fn toy() -> Problem {
    cleave_plan::build::tests_support::toy_problem()
}

#[test]
fn slow_link_keeps_everything_on_the_device() {
    let p = toy();
    let best = plan(&p, &Conditions::two_tier(Link::symmetric(1e5, 40.0))).unwrap();
    assert_eq!(best.cuts, vec![p.last()]);
    assert!(best.codecs.is_empty());
    assert_eq!(best.predicted.bytes_up, 0.0);
}

#[test]
fn fast_link_offloads_everything() {
    let p = toy();
    let best = plan(&p, &Conditions::two_tier(Link::symmetric(1e9, 1.0))).unwrap();
    assert_eq!(best.cuts, vec![0]);
}

#[test]
fn privacy_keeps_the_raw_input_on_the_device() {
    let mut p = toy();
    p.constraints.min_cut = 1;
    let best = plan(&p, &Conditions::two_tier(Link::symmetric(1e9, 1.0))).unwrap();
    assert!(best.cuts[0] >= 1);
}

#[test]
fn memory_cap_below_every_head_names_the_constraint() {
    let mut p = toy();
    p.constraints.min_cut = 1;
    p.constraints.device_memory = Some(10);
    let err = plan(&p, &Conditions::two_tier(Link::symmetric(1e6, 10.0))).unwrap_err();
    assert!(matches!(err, PlanError::Memory { cap: 10, cut: 1, needed: 1000 }), "{err}");
    assert!(err.to_string().contains("memory cap"), "{err}");
}

#[test]
fn accuracy_budget_no_codec_meets_names_the_constraint() {
    let mut p = toy();
    p.drop = vec![vec![0.02, 0.03, 0.05]; 4];
    p.constraints.max_accuracy_drop = Some(0.01);
    p.constraints.device_memory = Some(6000); // device-only needs 9000
    let err = plan(&p, &Conditions::two_tier(Link::symmetric(1e6, 10.0))).unwrap_err();
    assert!(matches!(err, PlanError::Accuracy { .. }), "{err}");
    assert!(err.to_string().contains("accuracy budget of 1.00%"), "{err}");
}

#[test]
fn the_accuracy_budget_is_never_exceeded() {
    let mut p = toy();
    p.drop = vec![vec![0.0, 0.004, 0.02]; 4];
    for budget in [0.0, 0.005, 0.01, 0.05] {
        p.constraints.max_accuracy_drop = Some(budget);
        for bw in [1e5, 1e6, 1e7, 1e8] {
            let best = plan(&p, &Conditions::two_tier(Link::symmetric(bw, 20.0))).unwrap();
            assert!(best.predicted.accuracy_drop <= budget, "{budget}: {best:?}");
        }
    }
}

#[test]
fn an_exit_is_used_when_it_pays() {
    let mut p = toy();
    p.exits.push(ExitOption { name: "exit_1".into(), threshold: Some(0.9), cut: 1, rate: 0.8, drop: 0.0 });
    let best = plan(&p, &Conditions::two_tier(Link::symmetric(1e5, 40.0))).unwrap();
    assert_eq!(best.exit.as_deref(), Some("exit_1"));
    // 80% of frames answer after 20 ms, the rest run on the device (80 ms).
    assert!((best.predicted.total_ms - (0.8 * 20.0 + 0.2 * 80.0)).abs() < 1e-9, "{:?}", best.predicted);
}

/// The random instances above must exercise every kind of plan, or the equality proves little.
#[test]
fn random_instances_cover_every_kind_of_plan() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = problem_and_conditions();
    let (mut device_only, mut offload, mut three_tier, mut exits, mut infeasible) = (0, 0, 0, 0, 0);
    for _ in 0..2000 {
        let (p, c) = strategy.new_tree(&mut runner).unwrap().current();
        match plan(&p, &c) {
            Ok(best) => {
                if best.cuts[0] == p.last() {
                    device_only += 1;
                } else {
                    offload += 1;
                }
                if best.cuts.len() == 2 && best.cuts[1] < p.last() {
                    three_tier += 1;
                }
                if best.exit.is_some() {
                    exits += 1;
                }
            }
            Err(_) => infeasible += 1,
        }
    }
    for (what, n) in [
        ("device-only", device_only),
        ("offload", offload),
        ("three-tier", three_tier),
        ("exit", exits),
        ("infeasible", infeasible),
    ] {
        assert!(n >= 20, "only {n} of 2000 random instances gave a {what} plan");
    }
}
