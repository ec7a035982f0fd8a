//! JPEG for image inputs: offloading the model's input as a compressed picture.
//!
//! **Applies to** f32 tensors of rank 4, NCHW, with N ≥ 1 images of C ∈ {1, 3} channels
//! (grayscale or RGB) and 1 ≤ H, W ≤ 65,535 ([`image_dims`]).
//!
//! **Encoding.** Each (image, channel) plane is mapped to 8 bits with the `int8` per-channel
//! affine map of [`crate::quant`] (`q = clamp(round(x / s) + z, 0, 255)`, the plane's range
//! `min..max` widened to include 0 so that the zero point is an integer). A tensor that came from
//! u8 pixels by a per-channel affine normalisation whose zero lies at a pixel value in 0..=255
//! (`p / 255`, ImageNet's `(p / 255 − mean) / std`, raw 0..255 values) therefore spans at most
//! 256 pixel values: its step `s` is at most one pixel, and it maps back to its pixels up to
//! rounding. Then each image is compressed by the `image` crate's baseline encoder at the
//! codec's quality (standard libjpeg tables scaled by quality, 4:4:4, no chroma subsampling):
//! grayscale for C = 1, RGB (YCbCr inside the JPEG) for C = 3.
//!
//! **Parameters** travel as an `int8` per-channel [`Quant::PerChannel`] with `axis: 1`, but with
//! one scale and zero point per (image, channel), image-major (N·C of each; N = 1: one per
//! channel, exactly the `int8` layout).
//!
//! **Payload framing.** One image (N = 1): the bare JPEG file, so the payload is a valid `.jpg`.
//! N > 1: the N JPEG files in order, each preceded by its length in bytes as a u32,
//! little-endian; nothing may follow the last.
//!
//! **Decoding** checks the shape, the parameters and the framing, then decodes each JPEG (whose
//! header must give exactly H × W and the expected colour type, and whose file must be long
//! enough to code that many pixels, all checked before any pixel is allocated or decoded) and
//! reverses the affine map. A corrupt or truncated payload is a [`CodecError`],
//! never a panic; the decoder is also run under `catch_unwind` as a second line of defence.
//!
//! **Size.** Content-dependent. [`prior_len`] is the planner's prior: a fixed header plus
//! [`prior_bits_per_pixel`] bits per pixel, measured on photos (see its docs); a runtime corrects
//! it from observed sizes (`cleave_plan::Problem::set_bytes`, fed by the adaptive device).
//!
//! **Error.** JPEG's error is spread over 8×8 blocks by the DCT: it has no useful per-element
//! bound ([`crate::Codec::has_error_bound`] is false, [`crate::error_bound`] is infinite).
//! Measure its effect on accuracy with `cleave calibrate`; the planner forbids an unmeasured
//! JPEG codec under an accuracy budget.

use std::cell::Cell;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::{ColorType, ExtendedColorType, ImageDecoder};

use crate::quant::{Encoded, Quant, affine, min_max, quantize_into};
use crate::{Codec, CodecError, JpegQuality};

/// The largest height or width a JPEG can describe.
pub const MAX_SIDE: usize = 65_535;

/// `(N, C, H, W)` of a shape JPEG applies to, or why it does not.
pub fn image_dims(shape: &[usize]) -> Result<(usize, usize, usize, usize), &'static str> {
    match *shape {
        [n, c, h, w] => {
            if n == 0 {
                Err("it holds no image (N = 0)")
            } else if c != 1 && c != 3 {
                Err("JPEG takes 1 (grayscale) or 3 (RGB) channels")
            } else if h == 0 || w == 0 {
                Err("an image needs H, W ≥ 1")
            } else if h > MAX_SIDE || w > MAX_SIDE {
                Err("a JPEG image is at most 65,535 pixels a side")
            } else {
                Ok((n, c, h, w))
            }
        }
        _ => Err("JPEG takes rank-4 NCHW images"),
    }
}

fn not_applicable(codec: Codec, shape: &[usize], reason: &str) -> CodecError {
    CodecError::NotApplicable { codec, shape: shape.to_vec(), reason: reason.to_owned() }
}

// ---------------------------------------------------------------------------------------------
// The size prior

/// Bytes of one JPEG from this encoder besides the entropy-coded data: SOI, the JFIF APP0
/// segment, the frame header, the quantization and Huffman tables, the scan header and EOI
/// (independent of the content and the quality).
pub fn header_bytes(channels: usize) -> u64 {
    if channels == 1 { GRAY_HEADER } else { RGB_HEADER }
}

const GRAY_HEADER: u64 = 330;
const RGB_HEADER: u64 = 625;

/// Measured bits per pixel of the entropy-coded data, `(quality, gray, rgb)`: the median over
/// seven photos (see [`prior_bits_per_pixel`]).
const BPP: [(u8, f64, f64); 9] = [
    (1, 0.132, 0.258),
    (10, 0.298, 0.453),
    (25, 0.511, 0.787),
    (50, 0.753, 1.209),
    (75, 1.099, 1.841),
    (85, 1.448, 2.543),
    (90, 1.830, 3.258),
    (95, 2.641, 4.853),
    (100, 4.301, 9.514),
];

/// The prior: bits per pixel of the entropy-coded data of one image at quality `q`, with 1
/// (grayscale) or 3 (RGB) channels; linear in the quality between the measured qualities.
///
/// Measured with this crate's encoder on seven photos (the `jpeg_prior` example:
/// `cargo run -p cleave-codec --example jpeg_prior -- FILES…`): `grace_hopper.jpg`
/// (matplotlib's sample data), `china.jpg` and `flower.jpg` (scikit-learn's), `rocket.jpg`
/// (scikit-image's), `cat.jpg` and `test.jpg` (the `image` crate's test images) and
/// `tower.jpg` (`jpeg-decoder`'s), each centre-cropped and box-filtered to 224 × 224 and
/// ImageNet-normalised, the median over the photos; grayscale from their luma. At 224 × 224 RGB
/// this gives 21.1 KB at q90, 12.2 KB at q75, 8.2 KB at q50 (the photos span 0.55–1.15× the
/// median). That is more than libjpeg's defaults give (about 15 KB at q90), because this encoder
/// keeps full-resolution chroma (4:4:4) and uses the standard Huffman tables.
///
/// Photos are what an image model's camera sees; simpler content compresses far better (an MNIST
/// digit, mostly black, is about 0.5 KB at q90, two thirds of it header) and detailed content
/// worse, which is why the runtime corrects the estimate from observed sizes.
pub fn prior_bits_per_pixel(q: JpegQuality, channels: usize) -> f64 {
    let col = |e: &(u8, f64, f64)| if channels == 1 { e.1 } else { e.2 };
    let q = q.get();
    let i = BPP.partition_point(|e| e.0 < q);
    if BPP[i].0 == q || i == 0 {
        return col(&BPP[i]);
    }
    let (a, b) = (&BPP[i - 1], &BPP[i]);
    let t = (q - a.0) as f64 / (b.0 - a.0) as f64;
    col(a) + t * (col(b) - col(a))
}

/// The prior size of one JPEG of `pixels` pixels with `channels` channels at quality `q`:
/// [`header_bytes`] plus [`prior_bits_per_pixel`] × pixels / 8.
pub fn prior_len(q: JpegQuality, channels: usize, pixels: u64) -> u64 {
    header_bytes(channels).saturating_add((prior_bits_per_pixel(q, channels) * pixels as f64 / 8.0).ceil() as u64)
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding

/// Encodes `data` of `shape` (already checked to hold that many finite values).
pub(crate) fn encode(data: &[f32], shape: &[usize], q: JpegQuality) -> Result<(Vec<u8>, Quant), CodecError> {
    let codec = Codec::Jpeg(q);
    let (n, c, h, w) = image_dims(shape).map_err(|r| not_applicable(codec, shape, r))?;
    let plane = h * w;
    let mut scales = Vec::with_capacity(n * c);
    let mut zero_points = Vec::with_capacity(n * c);
    let mut levels = Vec::with_capacity(plane);
    let mut pixels = vec![0u8; plane * c];
    let mut payload = vec![];
    for image in data.chunks_exact(plane * c) {
        for (ch, values) in image.chunks_exact(plane).enumerate() {
            let (lo, hi) = min_max(values);
            let (s, z) = affine(lo, hi, 255);
            scales.push(s);
            zero_points.push(z);
            levels.clear();
            quantize_into(values, s, z, 255, &mut levels);
            if c == 1 {
                pixels.copy_from_slice(&levels);
            } else {
                for (px, &l) in pixels.chunks_exact_mut(3).zip(&levels) {
                    px[ch] = l;
                }
            }
        }
        let mut jpeg = Vec::with_capacity(plane * c / 4 + 1024);
        let color = if c == 1 { ExtendedColorType::L8 } else { ExtendedColorType::Rgb8 };
        JpegEncoder::new_with_quality(&mut jpeg, q.get())
            .encode(&pixels, w as u32, h as u32, color)
            .map_err(|e| CodecError::Corrupt(format!("JPEG encoding failed: {e}")))?;
        if n > 1 {
            let len = u32::try_from(jpeg.len()).map_err(|_| CodecError::TooLarge)?;
            payload.extend_from_slice(&len.to_le_bytes());
        }
        payload.extend_from_slice(&jpeg);
    }
    Ok((payload, Quant::PerChannel { axis: 1, scales, zero_points }))
}

/// The JPEG files of a payload holding `n` of them (see the module docs for the framing).
fn split(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, CodecError> {
    if n == 1 {
        return Ok(vec![payload]);
    }
    let mut files = Vec::with_capacity(n.min(payload.len() / 4 + 1));
    let mut rest = payload;
    for i in 0..n {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| CodecError::Corrupt(format!("the payload ends before image {i}'s length")))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(CodecError::Corrupt(format!("image {i} claims {len} bytes but only {} remain", tail.len())));
        }
        let (file, tail) = tail.split_at(len);
        files.push(file);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(CodecError::Corrupt(format!("{} bytes follow the last image", rest.len())));
    }
    Ok(files)
}

/// The most pixels one byte of a JPEG file can describe. Every scan that codes an 8×8 block's DC
/// coefficient (which a baseline file does for each block, and a progressive file's first scan
/// does) spends at least one bit on it, a Huffman code being at least one bit long: at most
/// 64 pixels per bit, 512 per byte. A file whose header claims more pixels than that is not a
/// JPEG whose pixels were sent, only a size.
const MAX_PIXELS_PER_BYTE: usize = 512;

/// Reads one JPEG file's header and checks it against the shape: the decoder, ready to decode
/// H × W × C bytes.
fn open_file(file: &[u8], c: usize, h: usize, w: usize) -> Result<JpegDecoder<Cursor<&[u8]>>, String> {
    let decoder = JpegDecoder::new(Cursor::new(file)).map_err(|e| e.to_string())?;
    let (dw, dh) = decoder.dimensions();
    if (dw as usize, dh as usize) != (w, h) {
        return Err(format!("the image is {dw}×{dh}, the shape says {w}×{h}"));
    }
    // The pixels are allocated from the header's size: refuse a header its file cannot back.
    if h * w > MAX_PIXELS_PER_BYTE.saturating_mul(file.len()) {
        return Err(format!(
            "a {w}×{h} JPEG needs at least {} bytes of entropy-coded data, the file has {}",
            (h * w).div_ceil(MAX_PIXELS_PER_BYTE),
            file.len()
        ));
    }
    let want = if c == 1 { ColorType::L8 } else { ColorType::Rgb8 };
    let got = decoder.color_type();
    if got != want {
        return Err(format!("the image is {got:?}, the shape needs {want:?}"));
    }
    let need = (h * w * c) as u64;
    if decoder.total_bytes() != need {
        return Err(format!("the image decodes to {} bytes, the shape needs {need}", decoder.total_bytes()));
    }
    Ok(decoder)
}

thread_local! {
    static IN_DECODER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside a call into the JPEG decoder, whose panics
/// [`crate::decode`] turns into [`CodecError::Corrupt`]. A process-wide panic hook can use it to
/// stay silent about them (the `codec_decode` and `request_decode` fuzz targets do, and let every
/// other panic abort).
///
/// The decoder (`zune-jpeg` 0.5.15, through `image`) panics on some corrupt files: an `unwrap` in
/// its AVX2 IDCT (found here by `codec_decode`; known upstream as zune-image issue 409).
pub fn in_decoder_call() -> bool {
    IN_DECODER.with(Cell::get)
}

/// Runs `f` on the JPEG decoder, turning an error or a panic into [`CodecError::Corrupt`].
fn guarded<T>(i: usize, f: impl FnOnce() -> Result<T, String>) -> Result<T, CodecError> {
    let outer = IN_DECODER.with(|flag| flag.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_DECODER.with(|flag| flag.set(outer));
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CodecError::Corrupt(format!("image {i}: {e}"))),
        Err(_) => Err(CodecError::Corrupt(format!("image {i}: the JPEG decoder panicked"))),
    }
}

/// Decodes a JPEG payload. The shape, the parameters, the framing and every image's header are
/// checked before anything is allocated for the pixels.
pub(crate) fn decode(enc: &Encoded, q: JpegQuality) -> Result<Vec<f32>, CodecError> {
    let codec = Codec::Jpeg(q);
    let (n, c, h, w) = image_dims(&enc.shape).map_err(|r| not_applicable(codec, &enc.shape, r))?;
    if enc.lz4 {
        return Err(CodecError::Corrupt("a JPEG payload is never LZ4-compressed".into()));
    }
    let (scales, zero_points) = match &enc.quant {
        Some(Quant::PerChannel { axis: 1, scales, zero_points }) => (scales, zero_points),
        other => {
            return Err(CodecError::BadQuant(format!("{codec} needs per-channel parameters on axis 1, got {other:?}")));
        }
    };
    let pairs = n.checked_mul(c).ok_or(CodecError::TooLarge)?;
    if scales.len() != pairs || zero_points.len() != pairs {
        return Err(CodecError::BadQuant(format!(
            "{} scales and {} zero points for {n} images of {c} channels",
            scales.len(),
            zero_points.len()
        )));
    }
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(CodecError::BadQuant(format!("scale {s}")));
    }
    let image_len = h.checked_mul(w).and_then(|p| p.checked_mul(c)).ok_or(CodecError::TooLarge)?;
    let total = image_len.checked_mul(n).ok_or(CodecError::TooLarge)?;
    let files = split(&enc.payload, n)?;
    let decoders = files
        .into_iter()
        .enumerate()
        .map(|(i, file)| guarded(i, || open_file(file, c, h, w)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(total);
    let mut pixels = vec![0u8; image_len];
    for (i, decoder) in decoders.into_iter().enumerate() {
        guarded(i, || decoder.read_image(&mut pixels).map_err(|e| e.to_string()))?;
        for ch in 0..c {
            let (s, z) = (scales[i * c + ch], zero_points[i * c + ch] as f32);
            let table: Vec<f32> = (0..=255u8).map(|l| (l as f32 - z) * s).collect();
            out.extend(pixels.iter().skip(ch).step_by(c).map(|&l| table[l as usize]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_is_monotone_in_quality() {
        for channels in [1, 3] {
            let mut prev = 0.0;
            for q in 1..=100 {
                let b = prior_bits_per_pixel(JpegQuality::new(q).unwrap(), channels);
                assert!(b >= prev && b > 0.0, "q{q}: {b} < {prev}");
                prev = b;
            }
        }
    }

    #[test]
    fn framing() {
        assert_eq!(split(b"abc", 1).unwrap(), vec![&b"abc"[..]]);
        let p = [2u32.to_le_bytes().as_slice(), b"ab", 1u32.to_le_bytes().as_slice(), b"c"].concat();
        assert_eq!(split(&p, 2).unwrap(), vec![&b"ab"[..], &b"c"[..]]);
        assert!(split(&p, 3).is_err());
        assert!(split(&p[..p.len() - 1], 2).is_err());
        assert!(split(&[p.as_slice(), b"x"].concat(), 2).is_err());
        assert!(split(&[0xff; 4], 2).is_err());
    }
}
