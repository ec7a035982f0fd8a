//! The accuracy budget, end to end through `ProblemBuilder`: whatever the link, the planner never
//! picks a plan whose calibrated accuracy drop (recomputed here from the calibration itself)
//! exceeds `--max-accuracy-drop`.

use cleave_codec::Codec;
use cleave_cost::{
    Calibration, CutCodecAccuracy, ExitCalibration, Link, Profile, SegmentTiming, ThresholdPoint, Timing,
};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_plan::{Conditions, Constraints, ProblemBuilder, plan};
use proptest::prelude::*;
use prost::Message;

fn graph() -> ModelGraph {
    ModelGraph::from_bytes(&zoo::with_exit(5).encode_to_vec(), &InputShapes::none()).unwrap()
}

fn profile(g: &ModelGraph, ms_per_segment: &[f64]) -> Profile {
    let n = g.num_cuts() - 1;
    let t = |ms: f64| Timing { median_ms: ms, p10_ms: ms, p90_ms: ms, samples: 1 };
    Profile {
        format: Profile::FORMAT.into(),
        device: "test".into(),
        host: serde_json::Value::Null,
        engine: "test".into(),
        threads: 1,
        model: g.name().into(),
        model_sha256: g.sha256().into(),
        input_shapes: Default::default(),
        warmup: 0,
        repeats: 1,
        segments: (0..n)
            .map(|k| SegmentTiming { from_cut: k, to_cut: k + 1, timing: t(ms_per_segment[k % ms_per_segment.len()]) })
            .collect(),
        whole: t((0..n).map(|k| ms_per_segment[k % ms_per_segment.len()]).sum()),
    }
}

/// A calibration with random accuracies: baseline 0.95, each cut × codec somewhat lower, and
/// the exit's threshold curve.
fn calibration(g: &ModelGraph, drops: &[f64], exit_points: &[(f64, f64, f64)]) -> Calibration {
    let baseline = 0.95;
    let mut cuts = vec![];
    let mut k = 0;
    for c in 0..g.last_cut() {
        for q in [Codec::Fp16, Codec::Int8, Codec::Int4, Codec::Int2] {
            cuts.push(CutCodecAccuracy {
                cut: c,
                codec: q.name().into(),
                accuracy: baseline - drops[k % drops.len()],
                bytes: 0,
            });
            k += 1;
        }
    }
    Calibration {
        format: Calibration::FORMAT.into(),
        model: g.name().into(),
        model_sha256: g.sha256().into(),
        samples: 1000,
        baseline_accuracy: baseline,
        exits: vec![ExitCalibration {
            name: "exit_1".into(),
            accuracy: 0.9,
            thresholds: exit_points
                .iter()
                .map(|&(threshold, exit_rate, loss)| ThresholdPoint { threshold, exit_rate, accuracy: baseline - loss })
                .collect(),
        }],
        cuts,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn the_calibrated_drop_never_exceeds_the_budget(
        drops in prop::collection::vec(0.0f64..0.05, 1..24),
        exit_points in prop::collection::vec((0.5f64..1.0, 0.0f64..1.0, 0.0f64..0.03), 0..6),
        segment_ms in prop::collection::vec(0.1f64..20.0, 1..6),
        server_speedup in 1.0f64..20.0,
        budget in prop_oneof![Just(0.0), 0.0f64..0.04],
        mbps in 0.1f64..200.0,
        rtt in 0.1f64..100.0,
    ) {
        let g = graph();
        let device = profile(&g, &segment_ms);
        let server = device.scaled(1.0 / server_speedup, "server");
        let cal = calibration(&g, &drops, &exit_points);
        let problem = ProblemBuilder::new(&g, &device)
            .server(server)
            .codecs(Codec::FEATURE.to_vec())
            .calibration(Some(&cal))
            .constraints(Constraints { max_accuracy_drop: Some(budget), ..Default::default() })
            .build();
        let Ok(best) = plan(&problem, &Conditions::two_tier(Link::symmetric(mbps * 1e6, rtt))) else {
            // Device-only with no exit loses nothing, so a plan always exists.
            panic!("no plan");
        };
        // Recompute the drop from the calibration, not from the planner's own bookkeeping.
        let mut drop = 0.0;
        if let (Some(name), Some(t)) = (&best.exit, best.exit_threshold) {
            let e = cal.exits.iter().find(|e| &e.name == name).unwrap();
            let p = e.thresholds.iter().find(|p| p.threshold == t).unwrap();
            drop += (cal.baseline_accuracy - p.accuracy).max(0.0);
        }
        if best.cuts[0] < g.last_cut() {
            let codec = best.codecs[0];
            drop += match cal.drop(best.cuts[0], codec.name()) {
                Some(d) => d,
                None => { prop_assert_eq!(codec, Codec::Fp32); 0.0 }
            };
        }
        prop_assert!(drop <= budget + 1e-9, "drop {drop} > budget {budget}: {best:?}");
    }
}

#[test]
fn a_tight_budget_rules_out_the_lossy_codec_a_slow_link_would_want() {
    let g = graph();
    let device = profile(&g, &[20.0]);
    let server = device.scaled(0.05, "server");
    // int2 loses 3%, int4 1%, int8 0.2%, fp16 nothing.
    let mut cal = calibration(&g, &[0.0], &[]);
    for e in &mut cal.cuts {
        e.accuracy = cal.baseline_accuracy
            - match e.codec.as_str() {
                "int2" => 0.03,
                "int4" => 0.01,
                "int8" => 0.002,
                _ => 0.0,
            };
    }
    cal.exits.clear();
    let pick = |budget: f64| {
        let problem = ProblemBuilder::new(&g, &device)
            .server(server.clone())
            .codecs(Codec::FEATURE.to_vec())
            .calibration(Some(&cal))
            .constraints(Constraints { max_accuracy_drop: Some(budget), ..Default::default() })
            .build();
        plan(&problem, &Conditions::two_tier(Link::symmetric(2e5, 5.0))).unwrap()
    };
    let loose = pick(0.05);
    let tight = pick(0.005);
    assert_eq!(loose.codecs, [Codec::Int2], "{loose:?}");
    assert!(tight.codecs.iter().all(|&c| c == Codec::Int8 || c == Codec::Fp16 || c == Codec::Fp32), "{tight:?}");
    assert!(tight.predicted.accuracy_drop <= 0.005);
}
