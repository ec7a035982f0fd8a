//! Codecs that cannot carry a boundary (JPEG anywhere but at the image input) are never chosen,
//! and run-time corrections of a codec's bytes steer the next decision.

use cleave_codec::Codec;
use cleave_cost::{Link, Profile, SegmentTiming, Timing};
use cleave_graph::build::zoo;
use cleave_graph::{InputShapes, ModelGraph};
use cleave_plan::{Conditions, Constraints, Planner, ProblemBuilder, alternatives, brute_force, plan};
use prost::Message;

fn graph() -> ModelGraph {
    ModelGraph::from_bytes(&zoo::with_exit(5).encode_to_vec(), &InputShapes::none()).unwrap()
}

fn profile(g: &ModelGraph, ms: f64) -> Profile {
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
        segments: (0..n).map(|k| SegmentTiming { from_cut: k, to_cut: k + 1, timing: t(ms) }).collect(),
        whole: t(ms * n as f64),
    }
}

fn codecs() -> Vec<Codec> {
    vec![Codec::Fp32, Codec::Int8, Codec::JPEG[0], Codec::JPEG[2]]
}

#[test]
fn jpeg_is_allowed_only_where_the_boundary_is_an_image() {
    let g = graph();
    let (device, server) = (profile(&g, 10.0), profile(&g, 0.5));
    let mut p = ProblemBuilder::new(&g, &device).server(server).codecs(codecs()).build();
    let cuts = g.cuts();
    assert_eq!(cuts[0].tensors[0].shape, vec![1, 3, 16, 16]);
    for (c, cut) in cuts.iter().enumerate().take(g.last_cut()) {
        let image = cut.tensors.iter().all(|t| t.shape.len() == 4 && t.shape[1] == 3);
        for q in [2, 3] {
            assert_eq!(p.drop[c][q].is_finite(), image, "cut {c} {}: {:?}", p.codecs[q], cut.tensors);
        }
        // The element-wise codecs stay allowed everywhere.
        assert!(p.drop[c][0] == 0.0 && p.drop[c][1] == 0.0);
    }
    assert!(p.bytes[0][2] < p.bytes[0][1], "the JPEG prior is below int8's one byte per sample");
    // Make JPEG look free at every cut: it must still only ever be chosen at cut 0.
    for c in 0..p.num_cuts() {
        for q in [Codec::JPEG[0], Codec::JPEG[2]] {
            p.set_bytes(c, q, 1).unwrap();
        }
    }
    let mut chosen_at_0 = 0;
    for mbps in [0.05, 0.5, 2.0, 10.0, 100.0, 1000.0] {
        for rtt in [1.0, 40.0] {
            let cond = Conditions::two_tier(Link::symmetric(mbps * 1e6, rtt));
            let best = plan(&p, &cond).unwrap();
            assert_eq!(best.objective, brute_force(&p, &cond).unwrap().objective);
            for alt in alternatives(&p, &cond, 100).unwrap().iter().chain([&best]) {
                for (i, codec) in alt.codecs.iter().enumerate() {
                    if matches!(codec, Codec::Jpeg(_)) {
                        assert_eq!(alt.cuts[i], 0, "{mbps} Mbit/s: {alt:?}");
                    }
                }
            }
            chosen_at_0 += (best.cuts[0] == 0 && matches!(best.codecs[0], Codec::Jpeg(_))) as usize;
        }
    }
    assert!(chosen_at_0 > 0, "a one-byte JPEG of the input should win somewhere");
}

#[test]
fn unmeasured_jpeg_is_forbidden_under_an_accuracy_budget() {
    let g = graph();
    let device = profile(&g, 10.0);
    let p = ProblemBuilder::new(&g, &device)
        .codecs(codecs())
        .constraints(Constraints { max_accuracy_drop: Some(0.01), ..Default::default() })
        .build();
    assert!(p.drop[0][2].is_infinite() && p.drop[0][3].is_infinite());
    assert_eq!(p.drop[0][1], 0.0);
}

#[test]
fn set_bytes_steers_the_next_decision() {
    let g = graph();
    let (device, server) = (profile(&g, 10.0), profile(&g, 0.5));
    let mut p = ProblemBuilder::new(&g, &device).server(server).codecs(codecs()).build();
    let jpeg = Codec::JPEG[0];
    let cond = Conditions::two_tier(Link::symmetric(1e6, 20.0));
    // Small pictures: JPEG of the input is the best plan.
    p.set_bytes(0, jpeg, 200).unwrap();
    let best = Planner::new(&p).unwrap().plan(&cond).unwrap();
    assert_eq!((best.cuts[0], best.codecs[0]), (0, jpeg), "{best:?}");
    assert_eq!(best.predicted.bytes_up, 200.0);
    // The content turns out expensive: JPEG is no longer chosen.
    p.set_bytes(0, jpeg, 10_000_000).unwrap();
    let best = Planner::new(&p).unwrap().plan(&cond).unwrap();
    assert!(!(best.cuts[0] == 0 && best.codecs.first() == Some(&jpeg)), "{best:?}");
    assert_eq!(best.objective, brute_force(&p, &cond).unwrap().objective);
    // Unknown cut or codec: an error, nothing changed.
    let before = p.clone();
    assert!(p.set_bytes(p.num_cuts(), jpeg, 1).is_err());
    assert!(p.set_bytes(0, Codec::Int4, 1).is_err());
    assert_eq!(p, before);
}
