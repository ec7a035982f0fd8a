//! Regressions for what fuzzing the codec (`codec_decode` in fuzz/) found: each test is named
//! after the bug and reproduces it with a small input.

use cleave_codec::{Codec, CodecError, EncodeOptions, Encoded, Quant, decode, encode};

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
