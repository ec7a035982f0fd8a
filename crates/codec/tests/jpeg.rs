//! The JPEG codec on real images: 2,500 MNIST digits (`assets/digits/test.npz`) for grayscale,
//! and an RGB picture composed from them; quality, sizes, framing, and hostile payloads.

use std::sync::OnceLock;

use cleave_codec::{Codec, CodecError, EncodeOptions, Encoded, Quant, decode, encode, error_bound};
use cleave_data::{DatumType, Labelled};
use cleave_graph::DType;
use proptest::prelude::*;

/// The digits, as u8 pixels of 28 × 28.
fn digits() -> &'static Vec<Vec<u8>> {
    static D: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    D.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/digits/test.npz");
        let set = Labelled::from_npz(std::fs::File::open(path).expect("assets/digits/test.npz")).unwrap();
        assert_eq!(set.sample_shape(), &[1, 28, 28]);
        (0..set.len())
            .map(|i| {
                let t = set.sample(i, &[28 * 28], DatumType::U8).unwrap();
                t.to_plain_array_view::<u8>().unwrap().iter().copied().collect()
            })
            .collect()
    })
}

const MNIST: (f32, f32) = (0.1307, 0.3081);
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A 224 × 224 RGB picture from the digits: an 8 × 8 mosaic of the first 64 digits, each in
/// its own colour of ink (as handwriting on paper), on a smooth colour gradient, so that the
/// channels are correlated as in a photo and the picture has flat areas, mid-tones and the
/// digits' edges. Planar, u8.
fn rgb_picture() -> Vec<u8> {
    let d = digits();
    let mut px = vec![0u8; 3 * 224 * 224];
    for y in 0..224 {
        for x in 0..224 {
            let k = (y / 28) * 8 + x / 28;
            let ink = d[k][(y % 28) * 28 + x % 28] as f32 / 255.0;
            let colour = [(k * 37 % 200) as f32, (k * 91 % 200) as f32, (k * 53 % 200) as f32];
            let ground = [
                150.0 + 100.0 * x as f32 / 223.0,
                140.0 + 90.0 * y as f32 / 223.0,
                230.0 - 80.0 * (x + y) as f32 / 446.0,
            ];
            for c in 0..3 {
                px[(c * 224 + y) * 224 + x] = (ground[c] * (1.0 - ink) + colour[c] * ink).round() as u8;
            }
        }
    }
    px
}

/// ImageNet normalisation of planar RGB pixels, and back.
fn normalise_rgb(px: &[u8]) -> Vec<f32> {
    let plane = px.len() / 3;
    px.iter()
        .enumerate()
        .map(|(i, &p)| (p as f32 / 255.0 - IMAGENET_MEAN[i / plane]) / IMAGENET_STD[i / plane])
        .collect()
}

fn pixels_rgb(x: &[f32]) -> Vec<f32> {
    let plane = x.len() / 3;
    x.iter().enumerate().map(|(i, &v)| (v * IMAGENET_STD[i / plane] + IMAGENET_MEAN[i / plane]) * 255.0).collect()
}

/// PSNR in dB of reconstructed pixel values against u8 originals, peak 255.
fn psnr(orig: &[u8], got: &[f32]) -> f64 {
    assert_eq!(orig.len(), got.len());
    let mse = orig.iter().zip(got).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / orig.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

fn q(n: u8) -> Codec {
    Codec::jpeg(n).unwrap()
}

#[test]
fn grayscale_digits_round_trip_at_35_db_and_shrink_with_quality() {
    let d = &digits()[..500];
    let mut report = vec![];
    let mut sizes = vec![];
    for quality in [95u8, 90, 75, 50] {
        let (mut orig, mut got, mut bytes) = (vec![], vec![], 0usize);
        for digit in d {
            let x: Vec<f32> = digit.iter().map(|&p| (p as f32 / 255.0 - MNIST.0) / MNIST.1).collect();
            let enc = encode(&x, &[1, 1, 28, 28], EncodeOptions::new(q(quality))).unwrap();
            assert_eq!(&enc.payload[..2], &[0xFF, 0xD8], "one image: a bare JPEG file");
            assert!(!enc.lz4);
            bytes += enc.payload.len();
            let y = decode(&enc).unwrap();
            got.extend(y.iter().map(|v| (v * MNIST.1 + MNIST.0) * 255.0));
            orig.extend_from_slice(digit);
        }
        let p = psnr(&orig, &got);
        report.push(format!("q{quality}: {p:.1} dB, {:.0} B/digit", bytes as f64 / d.len() as f64));
        if quality >= 90 {
            assert!(p >= 35.0, "q{quality}: PSNR {p:.2} dB < 35 dB");
        }
        sizes.push(bytes);
    }
    eprintln!("MNIST 1×1×28×28 ({} digits): {}", d.len(), report.join("; "));
    assert!(sizes.windows(2).all(|w| w[0] > w[1]), "sizes must shrink with quality: {sizes:?}");
}

#[test]
fn rgb_picture_round_trips_at_35_db_and_shrinks_with_quality() {
    let px = rgb_picture();
    let x = normalise_rgb(&px);
    let mut sizes = vec![];
    let mut report = vec![];
    for quality in [95u8, 90, 75, 50] {
        let enc = encode(&x, &[1, 3, 224, 224], EncodeOptions::new(q(quality))).unwrap();
        let y = decode(&enc).unwrap();
        let p = psnr(&px, &pixels_rgb(&y));
        let prior = q(quality).estimated_len(DType::F32, &[1, 3, 224, 224]);
        report.push(format!("q{quality}: {p:.1} dB, {} B (prior {prior} B)", enc.payload.len()));
        if quality >= 90 {
            assert!(p >= 35.0, "q{quality}: PSNR {p:.2} dB < 35 dB");
        }
        sizes.push(enc.payload.len());
    }
    eprintln!("RGB 1×3×224×224 from digits: {}", report.join("; "));
    // Below the 150,528 bytes of int8 even on this edge-dense picture.
    assert!(sizes.iter().all(|&s| s < 3 * 224 * 224 / 2), "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] > w[1]), "sizes must shrink with quality: {sizes:?}");
}

/// The affine map loses nothing a u8 picture had: quality 100 reproduces the pixels within the
/// JPEG transform's own rounding (a couple of levels), far better than a lossy quality.
#[test]
fn quality_100_nearly_reproduces_the_pixels() {
    let px = rgb_picture();
    let enc = encode(&normalise_rgb(&px), &[1, 3, 224, 224], EncodeOptions::new(q(100))).unwrap();
    let got = pixels_rgb(&decode(&enc).unwrap());
    let p = psnr(&px, &got);
    assert!(p >= 45.0, "q100: {p:.2} dB");
    match &enc.quant {
        Some(Quant::PerChannel { axis: 1, scales, zero_points }) => {
            assert_eq!((scales.len(), zero_points.len()), (3, 3));
            // Each channel's step is at most one pixel level (in normalised units, 1/255/std).
            for (c, s) in scales.iter().enumerate() {
                assert!(*s <= 1.0 / 255.0 / IMAGENET_STD[c] * 1.0001, "channel {c}: step {s}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_is_length_prefixed_images_each_decoded_alike() {
    let d = digits();
    let n = 5;
    let x: Vec<f32> = d[..n].iter().flatten().map(|&p| p as f32 / 255.0).collect();
    let enc = encode(&x, &[n, 1, 28, 28], EncodeOptions::new(q(90))).unwrap();
    let Some(Quant::PerChannel { scales, .. }) = &enc.quant else { panic!("{:?}", enc.quant) };
    assert_eq!(scales.len(), n);
    let all = decode(&enc).unwrap();
    // Walk the framing and compare with encoding each image alone.
    let mut rest = &enc.payload[..];
    for (i, chunk) in x.chunks(28 * 28).enumerate() {
        let one = encode(chunk, &[1, 1, 28, 28], EncodeOptions::new(q(90))).unwrap();
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(&rest[4..4 + len], &one.payload[..], "image {i}");
        rest = &rest[4 + len..];
        assert_eq!(&all[i * 784..(i + 1) * 784], &decode(&one).unwrap()[..], "image {i}");
    }
    assert!(rest.is_empty());
}

#[test]
fn jpeg_has_no_per_element_bound() {
    let enc = encode(&[0.5; 64], &[1, 1, 8, 8], EncodeOptions::new(q(90))).unwrap();
    assert!(!enc.codec.has_error_bound());
    assert_eq!(error_bound(&enc, 0.5), f32::INFINITY);
    assert!(Codec::ALL.iter().all(|c| c.has_error_bound()));
}

#[test]
fn tensors_jpeg_does_not_apply_to_are_refused() {
    for shape in [&[1usize, 2, 4, 4][..], &[3, 4, 4], &[1, 4, 2, 2], &[48]] {
        let n: usize = shape.iter().product();
        let e = encode(&vec![0.0; n], shape, EncodeOptions::new(q(90))).unwrap_err();
        assert!(matches!(e, CodecError::NotApplicable { .. }), "{shape:?}: {e}");
        assert!(e.to_string().contains("jpeg90 does not apply"), "{e}");
    }
    // Non-finite values are refused as for every codec.
    assert_eq!(encode(&[f32::NAN; 4], &[1, 1, 2, 2], EncodeOptions::new(q(90))).unwrap_err(), CodecError::NotFinite(0));
}

/// A digit encoded as it is sent: the starting point of the hostile variants below.
fn sample() -> Encoded {
    let x: Vec<f32> = digits()[7].iter().map(|&p| p as f32 / 255.0).collect();
    encode(&x, &[1, 1, 28, 28], EncodeOptions::new(q(75))).unwrap()
}

#[test]
fn corrupt_payloads_and_parameters_are_errors() {
    let good = sample();
    assert!(decode(&good).is_ok());
    let corrupt = |f: &dyn Fn(&mut Encoded)| {
        let mut e = good.clone();
        f(&mut e);
        decode(&e).unwrap_err()
    };
    let errors = [
        ("truncated", corrupt(&|e| e.payload.truncate(e.payload.len() / 2))),
        ("empty", corrupt(&|e| e.payload.clear())),
        ("not a JPEG", corrupt(&|e| e.payload.iter_mut().for_each(|b| *b = 0x42))),
        ("size does not match the shape", corrupt(&|e| e.shape = vec![1, 1, 28, 14])),
        ("taller than the shape", corrupt(&|e| e.shape = vec![1, 1, 14, 28])),
        ("grayscale image for an RGB shape", corrupt(&|e| e.shape = vec![1, 3, 28, 28])),
        ("two images claimed", corrupt(&|e| e.shape = vec![2, 1, 28, 28])),
        ("not an image shape", corrupt(&|e| e.shape = vec![784])),
        ("lz4 claimed", corrupt(&|e| e.lz4 = true)),
        ("no parameters", corrupt(&|e| e.quant = None)),
        ("per-tensor parameters", corrupt(&|e| e.quant = Some(Quant::PerTensor { scale: 1.0, zero_point: 0 }))),
        (
            "zero scale",
            corrupt(&|e| e.quant = Some(Quant::PerChannel { axis: 1, scales: vec![0.0], zero_points: vec![0] })),
        ),
        (
            "too many scales",
            corrupt(&|e| e.quant = Some(Quant::PerChannel { axis: 1, scales: vec![1.0; 2], zero_points: vec![0; 2] })),
        ),
    ];
    for (what, e) in errors {
        assert!(
            matches!(e, CodecError::Corrupt(_) | CodecError::BadQuant(_) | CodecError::NotApplicable { .. }),
            "{what}: {e:?}"
        );
    }
    // The size mismatch names both sizes.
    let e = corrupt(&|e| e.shape = vec![1, 1, 28, 14]);
    assert!(e.to_string().contains("28×28") && e.to_string().contains("14×28"), "{e}");
    // A batch whose framing lies.
    let two = encode(&[0.25f32; 2 * 64], &[2, 1, 8, 8], EncodeOptions::new(q(90))).unwrap();
    assert!(decode(&two).is_ok());
    for bad in [
        two.payload[..two.payload.len() - 1].to_vec(),
        [two.payload.as_slice(), &[0]].concat(),
        [&[0xff, 0xff, 0xff, 0x7f][..], &two.payload[4..]].concat(),
        [&[0, 0, 0, 0][..], &two.payload[4..]].concat(),
    ] {
        let e = decode(&Encoded { payload: bad, ..two.clone() }).unwrap_err();
        assert!(matches!(e, CodecError::Corrupt(_)), "{e:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes, with valid parameters and an image shape, never panic the decoder.
    #[test]
    fn arbitrary_payloads_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..2000),
        n in 1usize..3,
        c in prop::sample::select(vec![1usize, 3]),
        h in 1usize..40,
        w in 1usize..40,
        quality in 1u8..=100,
    ) {
        let enc = Encoded {
            codec: q(quality),
            shape: vec![n, c, h, w],
            quant: Some(Quant::PerChannel { axis: 1, scales: vec![0.01; n * c], zero_points: vec![0; n * c] }),
            lz4: false,
            payload,
        };
        if let Ok(v) = decode(&enc) {
            prop_assert_eq!(v.len(), n * c * h * w);
        }
    }

    /// A real JPEG with bytes overwritten or cut short never panics the decoder either (random
    /// bytes rarely get past the header; these reach the entropy decoder).
    #[test]
    fn damaged_jpegs_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut enc = sample();
        for (at, b) in edits {
            let i = at.index(enc.payload.len());
            enc.payload[i] = b;
        }
        if truncate {
            let keep = cut.index(enc.payload.len());
            enc.payload.truncate(keep);
        }
        if let Ok(v) = decode(&enc) {
            prop_assert_eq!(v.len(), 28 * 28);
        }
    }
}
