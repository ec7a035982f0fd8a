//! Regressions for what fuzzing the codec (`codec_decode` in fuzz/) found: each test is named
//! after the bug and reproduces it with a small input.

use cleave_codec::{Codec, CodecError, EncodeOptions, Encoded, Quant, decode, encode, jpeg};

/// An LZ4 payload of a few bytes whose shape claimed 4 TiB: the decompressor allocated the
/// claimed size before reading a byte (an out-of-memory abort under the fuzzer; at the wire's
/// limit of 2^28 elements, a 1 GiB allocation per tiny request).
#[test]
fn lz4_claimed_size_is_bounded_by_the_payload() {
    let enc = Encoded { codec: Codec::Fp32, shape: vec![1 << 40], quant: None, lz4: true, payload: vec![0x1f; 9] };
    let e = decode(&enc).unwrap_err();
    assert!(matches!(e, CodecError::Corrupt(_)), "{e:?}");
    assert!(e.to_string().contains("cannot decompress"), "{e}");
    // LZ4's best case (a constant tensor) is still within the bound and decodes.
    for codec in [Codec::Fp32, Codec::Int8, Codec::Int2] {
        let zeros = vec![0f32; 1 << 20];
        let enc = encode(&zeros, &[1 << 20], EncodeOptions { codec, per_channel: false, lz4: true }).unwrap();
        assert_eq!(decode(&enc).unwrap(), zeros, "{codec}: {} payload bytes", enc.payload.len());
    }
}

/// The size of a shape whose element count overflows: `estimated_len` saturated the count to
/// `u64::MAX`, then `encoded_len` multiplied it by the bits per element (a panic in debug builds,
/// a wrapped, tiny size in release ones).
#[test]
fn encoded_len_of_a_huge_shape_saturates() {
    use cleave_graph::DType;
    let huge = [1usize << 40, 1 << 40];
    for codec in Codec::ALL.into_iter().chain(Codec::JPEG) {
        assert_eq!(codec.estimated_len(DType::I64, &huge), u64::MAX, "{codec}");
        let f32_len = codec.estimated_len(DType::F32, &huge);
        assert!(f32_len >= u64::MAX / 16, "{codec}: {f32_len}");
    }
    assert_eq!(Codec::Fp32.encoded_len(DType::F32, u64::MAX), u64::MAX);
    assert_eq!(Codec::Int2.encoded_len(DType::F32, u64::MAX), u64::MAX.div_ceil(4));
    assert_eq!(Codec::Int4.encoded_len(DType::F32, 11), 6);
}

/// Per-channel parameters on a tensor with no elements (a 0 in its shape) and huge trailing
/// dimensions: the product of the trailing dimensions overflowed (a panic in debug builds).
/// Encoding had the same product, and allocated a scale for each of its channels.
#[test]
fn per_channel_on_an_empty_tensor_with_huge_dimensions() {
    let enc = Encoded {
        codec: Codec::Int8,
        shape: vec![0, 1, 1 << 33, 1 << 33],
        quant: Some(Quant::PerChannel { axis: 1, scales: vec![1.0], zero_points: vec![0] }),
        lz4: false,
        payload: vec![],
    };
    assert_eq!(decode(&enc).unwrap(), Vec::<f32>::new());
    for shape in [vec![0, 1 << 40], vec![0, 2, 1 << 33, 1 << 33]] {
        let enc = encode(&[], &shape, EncodeOptions { codec: Codec::Int4, per_channel: true, lz4: false }).unwrap();
        assert!(matches!(enc.quant, Some(Quant::PerTensor { .. })), "{shape:?}: {:?}", enc.quant);
        assert_eq!(decode(&enc).unwrap(), Vec::<f32>::new());
    }
}

/// A JPEG header claiming 16384 × 16384 pixels (the wire's limit of 2^28 elements) in a file of a
/// few hundred bytes: `decode` allocated the pixels and the f32 output (1.25 GiB) before the
/// decoder found the file empty. At 65535 × 65535 (JPEG's limit, for the codec alone), 17 GB: an
/// out-of-memory abort. Found by feeding `codec_decode` such a header by hand; the fix bounds the
/// pixels by what the file's bytes can code.
#[test]
fn jpeg_header_claiming_more_pixels_than_its_file_holds() {
    let small = encode(&[0.5; 64], &[1, 1, 8, 8], EncodeOptions::new(Codec::jpeg(50).unwrap())).unwrap();
    let sof = small.payload.windows(2).position(|w| w == [0xff, 0xc0]).expect("a baseline frame header");
    for side in [16384usize, 65535] {
        let mut enc = small.clone();
        enc.shape = vec![1, 1, side, side];
        let dims = (side as u16).to_be_bytes();
        enc.payload[sof + 5..sof + 9].copy_from_slice(&[dims[0], dims[1], dims[0], dims[1]]);
        let e = decode(&enc).unwrap_err();
        assert!(matches!(e, CodecError::Corrupt(_)) && e.to_string().contains("needs at least"), "{side}: {e}");
    }
    // What a real encoder makes of a flat image, JPEG's best case, is well within the bound.
    for shape in [[1, 1, 1024, 1024], [1, 3, 512, 512]] {
        let n: usize = shape.iter().product();
        let enc = encode(&vec![0.25; n], &shape, EncodeOptions::new(Codec::jpeg(1).unwrap())).unwrap();
        let pixels = shape[2] * shape[3];
        assert!(enc.payload.len() * 128 > pixels, "{shape:?}: {} bytes", enc.payload.len());
        assert_eq!(decode(&enc).unwrap().len(), n);
    }
}

/// A corrupt 16 × 16 RGB JPEG on which the JPEG decoder (zune-jpeg 0.5.15) panics in its AVX2
/// IDCT (`idct/avx2.rs:246`, an `unwrap`): the codec's guard must turn it into an error, and the
/// fuzz targets' panic hook must see it as a decoder panic ([`jpeg::in_decoder_call`]) and let
/// it unwind to the guard.
#[test]
fn jpeg_decoder_panic_is_an_error() {
    const PAYLOAD: &[&str] = &[
        "ffd810010200000100ffc00011080010001003011100021101032301ffdb00430003024924924924924a030403030405",
        "0805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f1718161418121415",
        "14ffdb00430103040405040509050509140d0b0d14141414141414141414141414141414141414141414141414141414",
        "141414143d1414141414141414141414141414141414ffc4001f00000105010101010101000000000000000001020304",
        "05060708090a0bffc400b5100002010303020403050504040000017d3f00ff00010405060708090a0b01010101010100",
        "0000000000000001060708090a0bffc400b5100003020103030204030505f8ff0000c3c0c5c6c7c8c9cad28400003f00",
        "ff00010405060708090a0b01010101010100000000000000000708090101010101010000000000000000f7f8f9ffda00",
        "08010100003f00ff00010405060708090a0b01010101010100000000000000000101010000000000000000f7f8f9ffda",
        "0008010100003f00ff000104",
    ];
    let hex = PAYLOAD.concat();
    let payload: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let enc = Encoded {
        codec: Codec::jpeg(90).unwrap(),
        shape: vec![1, 3, 16, 16],
        quant: Some(Quant::PerChannel { axis: 1, scales: vec![1.0; 3], zero_points: vec![0; 3] }),
        lz4: false,
        payload,
    };
    let saw_decoder_panic = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw = saw_decoder_panic.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if jpeg::in_decoder_call() {
            saw.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            hook(info);
        }
    }));
    let r = decode(&enc);
    let _ = std::panic::take_hook();
    assert!(!jpeg::in_decoder_call());
    match r {
        // The decoder panicked (on a CPU with AVX2), and the guard caught it.
        Err(CodecError::Corrupt(m)) if m.contains("panicked") => {
            assert!(saw_decoder_panic.load(std::sync::atomic::Ordering::SeqCst))
        }
        // A decoder that does not panic (no AVX2, or a fixed version) must still refuse or decode it.
        Err(e) => assert!(matches!(e, CodecError::Corrupt(_)), "{e:?}"),
        Ok(v) => assert_eq!(v.len(), 3 * 16 * 16),
    }
}
