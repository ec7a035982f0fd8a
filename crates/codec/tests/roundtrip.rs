//! Round trips: every codec stays within its stated error bound; fp32 is exact; hostile payloads
//! are errors.

use cleave_codec::{Codec, CodecError, EncodeOptions, Encoded, Quant, decode, encode, error_bound};
use proptest::prelude::*;

fn tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (prop::collection::vec(1usize..6, 1..5), any::<u64>(), 0.001f32..1000.0, -1.0f32..1.0).prop_map(
        |(shape, seed, mag, shift)| {
            let n: usize = shape.iter().product();
            let mut rng = seed | 1;
            let data = (0..n)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    ((rng % 20001) as f32 / 10000.0 - 1.0 + shift) * mag
                })
                .collect();
            (shape, data)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_codec_meets_its_bound((shape, data) in tensor(), per_channel in any::<bool>(), lz4 in any::<bool>()) {
        for codec in Codec::ALL {
            let enc = encode(&data, &shape, EncodeOptions { codec, per_channel, lz4 }).unwrap();
            let dec = decode(&enc).unwrap();
            prop_assert_eq!(dec.len(), data.len());
            for (x, y) in data.iter().zip(&dec) {
                let bound = error_bound(&enc, *x);
                prop_assert!((x - y).abs() <= bound, "{codec}: {x} decoded as {y}, bound {bound}");
            }
            if codec == Codec::Fp32 {
                prop_assert_eq!(&dec, &data);
            }
            prop_assert_eq!(enc.payload.len() > 0 || data.is_empty(), true);
            if !lz4 {
                prop_assert_eq!(enc.payload.len() as u64, codec.encoded_len(cleave_graph::DType::F32, data.len() as u64));
            }
        }
    }

    /// Decoding arbitrary bytes with arbitrary parameters never panics.
    #[test]
    fn decoding_garbage_is_an_error_not_a_panic(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        shape in prop::collection::vec(0usize..40, 0..4),
        codec in prop::sample::select(Codec::ALL.to_vec()),
        lz4 in any::<bool>(),
        scale in any::<f32>(),
        zp in any::<u8>(),
    ) {
        let enc = Encoded { codec, shape, quant: Some(Quant::PerTensor { scale, zero_point: zp }), lz4, payload };
        let _ = decode(&enc);
    }
}

#[test]
fn per_channel_int8_is_tighter_on_uneven_channels() {
    // Channel 0 spans ±1000, channel 1 spans ±0.01.
    let shape = [1, 2, 8];
    let data: Vec<f32> =
        (0..16).map(|i| if i < 8 { (i as f32 - 4.0) * 250.0 } else { (i as f32 - 12.0) * 0.0025 }).collect();
    let per_tensor = decode(&encode(&data, &shape, EncodeOptions::new(Codec::Int8)).unwrap()).unwrap();
    let enc = encode(&data, &shape, EncodeOptions { codec: Codec::Int8, per_channel: true, lz4: false }).unwrap();
    let per_channel = decode(&enc).unwrap();
    let err = |d: &[f32]| d[8..].iter().zip(&data[8..]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(err(&per_channel) < err(&per_tensor) / 100.0, "{} vs {}", err(&per_channel), err(&per_tensor));
}

#[test]
fn packing_sizes() {
    let data = vec![0.5f32; 9];
    assert_eq!(encode(&data, &[9], EncodeOptions::new(Codec::Int4)).unwrap().payload.len(), 5);
    assert_eq!(encode(&data, &[9], EncodeOptions::new(Codec::Int2)).unwrap().payload.len(), 3);
    assert_eq!(encode(&data, &[9], EncodeOptions::new(Codec::Fp16)).unwrap().payload.len(), 18);
}

#[test]
fn hostile_inputs_are_named_errors() {
    assert_eq!(encode(&[1.0, f32::NAN], &[2], EncodeOptions::new(Codec::Int8)).unwrap_err(), CodecError::NotFinite(1));
    assert!(matches!(encode(&[1.0], &[2], EncodeOptions::new(Codec::Fp32)), Err(CodecError::Shape { .. })));
    let truncated = Encoded {
        codec: Codec::Int4,
        shape: vec![9],
        quant: Some(Quant::PerTensor { scale: 1.0, zero_point: 0 }),
        lz4: false,
        payload: vec![0; 4],
    };
    assert_eq!(decode(&truncated).unwrap_err(), CodecError::PayloadLength { expected: 5, got: 4 });
    let huge = Encoded { codec: Codec::Fp32, shape: vec![usize::MAX, 2], quant: None, lz4: true, payload: vec![0; 4] };
    assert_eq!(decode(&huge).unwrap_err(), CodecError::TooLarge);
    let bad_scale = Encoded {
        codec: Codec::Int8,
        shape: vec![1],
        quant: Some(Quant::PerTensor { scale: f32::NAN, zero_point: 0 }),
        lz4: false,
        payload: vec![0],
    };
    assert!(matches!(decode(&bad_scale), Err(CodecError::BadQuant(_))));
    let channels = Encoded {
        codec: Codec::Int8,
        shape: vec![1, 3],
        quant: Some(Quant::PerChannel { axis: 1, scales: vec![1.0; 2], zero_points: vec![0; 2] }),
        lz4: false,
        payload: vec![0; 3],
    };
    assert!(matches!(decode(&channels), Err(CodecError::BadQuant(_))));
}
