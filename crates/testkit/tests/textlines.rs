//! The text-line dataset: deterministic, balanced, preprocessed as PaddleOCR does, written as a
//! valid `.npz`; and the real PP-OCR direction classifier gets it right.
//! Rendering tests skip (with a printed reason) when no font is installed
//! (`apt-get install fonts-dejavu-core`); the classifier test also when `../shared` is absent.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use cleave_engine::{Engine, EngineConfig, Tensor, TensorMap};
use cleave_graph::InputShapes;
use cleave_testkit::textlines::{
    self, CHANNELS, GrayImage, HEIGHT, NO_FONT_HINT, SAMPLE_LEN, Sample, WIDTH, preprocess,
};
use cleave_testkit::{load, shared_file};

fn fonts() -> Option<Vec<PathBuf>> {
    let fonts = textlines::find_fonts();
    if fonts.is_empty() {
        assert!(std::env::var_os("CLEAVE_REQUIRE_FONT").is_none(), "CLEAVE_REQUIRE_FONT is set: {NO_FONT_HINT}");
        eprintln!("SKIP: {NO_FONT_HINT}");
        return None;
    }
    Some(fonts)
}

fn npz_bytes(samples: &[Sample]) -> Vec<u8> {
    let mut out = Cursor::new(vec![]);
    textlines::write_npz_to(&mut out, samples).unwrap();
    out.into_inner()
}

#[test]
fn same_seed_same_bytes() {
    let Some(fonts) = fonts() else { return };
    let a = textlines::render(24, 11, &fonts).unwrap();
    let b = textlines::render(24, 11, &fonts).unwrap();
    assert_eq!(a, b);
    assert_eq!(npz_bytes(&a), npz_bytes(&b));
    // Sample i does not depend on n.
    assert_eq!(textlines::render(10, 11, &fonts).unwrap(), a[..10]);
    // Another seed, other lines.
    let c = textlines::render(24, 12, &fonts).unwrap();
    assert!(a.iter().zip(&c).filter(|(x, y)| x.text == y.text).count() < 3);
}

#[test]
fn labels_are_balanced() {
    let Some(fonts) = fonts() else { return };
    for seed in [0, 7] {
        let samples = textlines::render(100, seed, &fonts).unwrap();
        let rotated = samples.iter().filter(|s| s.label == 1).count();
        assert_eq!(rotated, 50, "seed {seed}");
        assert!(samples.iter().all(|s| s.label <= 1));
        // Not a trivial alternation.
        assert!(samples.windows(2).any(|w| w[0].label == w[1].label));
    }
    for seed in 0..20 {
        for pair in 0..50 {
            assert_eq!(textlines::label_of(seed, 2 * pair) + textlines::label_of(seed, 2 * pair + 1), 1);
        }
    }
}

#[test]
fn shapes_ranges_and_texts() {
    let Some(fonts) = fonts() else { return };
    for s in textlines::render(60, 3, &fonts).unwrap() {
        assert_eq!(s.image.len(), SAMPLE_LEN);
        assert!(s.image.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)), "{}", s.text);
        let plane = HEIGHT * WIDTH;
        assert_eq!(s.image[..plane], s.image[plane..2 * plane], "grey in every channel");
        assert_eq!(s.image[..plane], s.image[2 * plane..], "grey in every channel");
        let n = s.text.chars().count();
        assert!((3..=30).contains(&n), "{:?} has {n} chars", s.text);
        // Some ink (dark) and some background (light) in the line.
        assert!(s.image.iter().any(|&v| v < -0.2) && s.image.iter().any(|&v| v > 0.3), "{}", s.text);
    }
}

#[test]
fn npz_holds_x_and_y() {
    let Some(fonts) = fonts() else { return };
    let samples = textlines::render(6, 5, &fonts).unwrap();
    let bytes = npz_bytes(&samples);
    let arrays = cleave_data::npz::read(std::io::Cursor::new(bytes.clone()), 1 << 30).unwrap();
    assert_eq!(arrays.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["x", "y"]);
    let x = &arrays[0].1;
    assert_eq!(x.shape(), [6, CHANNELS, HEIGHT, WIDTH]);
    let x: Vec<f32> = x.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    assert_eq!(x, samples.iter().flat_map(|s| s.image.iter().copied()).collect::<Vec<_>>());
    let y: Vec<i64> = arrays[1].1.to_plain_array_view::<i64>().unwrap().iter().copied().collect();
    assert_eq!(y, samples.iter().map(|s| s.label as i64).collect::<Vec<_>>());
    // What `cleave calibrate --data` reads.
    let set = cleave_data::Labelled::from_npz(std::io::Cursor::new(bytes.clone())).unwrap();
    assert_eq!(set.len(), 6);

    let path = std::env::temp_dir().join(format!("cleave-textlines-{}.npz", std::process::id()));
    textlines::write_npz(&path, &samples).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn preprocess_matches_paddleocr_resize_norm_img() {
    // White 10×20 → height 48, width ceil(48·20/10) = 96, value (1 − 0.5)/0.5 = 1; padding 0.
    let white = GrayImage { width: 20, height: 10, pixels: vec![255; 200] };
    let x = preprocess(&white);
    assert_eq!(x.len(), SAMPLE_LEN);
    for c in 0..CHANNELS {
        for y in 0..HEIGHT {
            let row = &x[(c * HEIGHT + y) * WIDTH..][..WIDTH];
            assert!(row[..96].iter().all(|&v| v == 1.0) && row[96..].iter().all(|&v| v == 0.0));
        }
    }
    // Wider than 4:1 is squeezed to the full 192; black is −1.
    let black = GrayImage { width: 1000, height: 40, pixels: vec![0; 40_000] };
    assert!(preprocess(&black).iter().all(|&v| v == -1.0));
    // Width rounds up: 48·7/10 = 33.6 → 34.
    let grey = GrayImage { width: 7, height: 10, pixels: vec![51; 70] };
    let x = preprocess(&grey);
    let expected = (51.0f32 / 255.0 - 0.5) / 0.5;
    assert!(x[..34].iter().all(|&v| (v - expected).abs() < 1e-6) && x[34..WIDTH].iter().all(|&v| v == 0.0));
    // Left half black, right half white, exactly 48 px high at 4:1: kept as is (no resize).
    let mut pixels = vec![0u8; 48 * 192];
    for row in pixels.chunks_mut(192) {
        row[96..].fill(255);
    }
    let x = preprocess(&GrayImage { width: 192, height: 48, pixels });
    assert!(x[..96].iter().all(|&v| v == -1.0) && x[96..192].iter().all(|&v| v == 1.0));
}

#[test]
fn rotation_flips_both_axes() {
    let img = GrayImage { width: 3, height: 2, pixels: vec![1, 2, 3, 4, 5, 6] };
    let r = img.rotated_180();
    assert_eq!(r.pixels, [6, 5, 4, 3, 2, 1]);
    assert_eq!((r.width, r.height), (3, 2));
    assert_eq!(r.rotated_180(), img);
}

/// The real classifier on 200 rendered lines: accuracy ≥ 0.9 (a wrong preprocessing or
/// inverted labels would put it near 0.5 or 0).
#[test]
fn ppocr_classifier_reads_the_lines() {
    let Some(fonts) = fonts() else { return };
    let Some(model) = shared_file("models/ch_ppocr_mobile_v2.0_cls_infer.onnx") else { return };
    const N: usize = 200;
    let t0 = std::time::Instant::now();
    let samples = textlines::render(N, 2024, &fonts).unwrap();
    let render_time = t0.elapsed();

    let graph = load(&model, &InputShapes::none().with("x", vec![1, CHANNELS, HEIGHT, WIDTH]), false);
    // Softmax → Identity → output: the probabilities are the (first) graph output.
    let probs = graph.outputs()[0].name.clone();
    let engine = Engine::new(EngineConfig { threads: 1, cache_capacity: 2 });
    let whole = engine.whole(&graph).unwrap();
    let input = graph.inputs()[0].name.clone();

    let t1 = std::time::Instant::now();
    let mut correct = [0usize; 2];
    let mut wrong = vec![];
    for s in &samples {
        let x = Tensor::from_shape(&[1, CHANNELS, HEIGHT, WIDTH], &s.image).unwrap();
        let inputs: TensorMap = [(input.clone(), Arc::new(x))].into_iter().collect();
        let out = engine.run(&whole, &inputs).unwrap();
        let p: Vec<f32> = out[&probs].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(p.len(), 2);
        let predicted = u8::from(p[1] > p[0]);
        if predicted == s.label {
            correct[s.label as usize] += 1;
        } else {
            wrong.push(format!("[{}] {:?} p={p:?}", textlines::LABELS[s.label as usize], s.text));
        }
    }
    let accuracy = (correct[0] + correct[1]) as f64 / N as f64;
    eprintln!(
        "PP-OCR cls on {N} rendered lines: accuracy {accuracy:.3} (upright {}/{}, rotated {}/{}); \
         rendering {:.2} s, inference {:.2} s",
        correct[0],
        N / 2,
        correct[1],
        N / 2,
        render_time.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    for w in &wrong {
        eprintln!("  wrong: {w}");
    }
    assert!(accuracy >= 0.9, "accuracy {accuracy:.3} < 0.9");
}
