//! Encoding and decoding f32 tensors (JPEG: see [`crate::jpeg`]; [`encode`] and [`decode`]
//! dispatch to it).
//!
//! Integer codecs are affine, the ONNX `QuantizeLinear` convention: `q = clamp(round(x / s) + z,
//! 0, 2^b − 1)` (ties to even) and `x̂ = (q − z) · s`, with the range widened to include 0 so that the zero
//! point `z` is an integer. Per-tensor or per-channel (axis 1 of a tensor of rank ≥ 2). 4- and
//! 2-bit levels are packed low bits first, two or four to a byte. The error of each element is at
//! most half its scale `s` (rounding to the nearest level; clamping at the range's ends never adds
//! to it, because the range contains every value), plus f32 rounding.
//!
//! `fp16` and `bf16` round to nearest even; `fp16` saturates beyond ±65504.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::{Codec, CodecError};

/// Quantization parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Quant {
    /// One scale and zero point for the whole tensor.
    PerTensor { scale: f32, zero_point: u8 },
    /// One scale and zero point per index along `axis`.
    PerChannel { axis: usize, scales: Vec<f32>, zero_points: Vec<u8> },
}

/// An encoded tensor: enough to decode it, with the payload. (JPEG: the parameters are
/// per (image, channel), see [`crate::jpeg`].)
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub codec: Codec,
    /// The decoded tensor's shape.
    pub shape: Vec<usize>,
    /// For integer codecs.
    pub quant: Option<Quant>,
    /// Whether the payload is LZ4-compressed (never for JPEG).
    pub lz4: bool,
    pub payload: Vec<u8>,
}

/// How to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub codec: Codec,
    /// Integer codecs: one scale per channel (axis 1) instead of one per tensor (when the tensor
    /// has elements and more than one channel).
    pub per_channel: bool,
    /// Compress the payload with LZ4. Ignored by JPEG, whose payload is already entropy-coded.
    pub lz4: bool,
}

impl EncodeOptions {
    pub fn new(codec: Codec) -> Self {
        EncodeOptions { codec, per_channel: false, lz4: false }
    }
}

fn levels(codec: Codec) -> Option<u32> {
    match codec {
        Codec::Int8 => Some(255),
        Codec::Int4 => Some(15),
        Codec::Int2 => Some(3),
        _ => None,
    }
}

/// Elements of a shape, checked.
pub fn volume(shape: &[usize]) -> Result<usize, CodecError> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or(CodecError::TooLarge)
}

/// Bytes of an uncompressed payload of `elements` elements, for element-wise codecs (a JPEG
/// payload has no fixed length: an error).
pub fn payload_len(codec: Codec, elements: usize) -> Result<usize, CodecError> {
    if let Codec::Jpeg(_) = codec {
        return Err(CodecError::NotApplicable {
            codec,
            shape: vec![elements],
            reason: "a JPEG payload's length depends on its content".into(),
        });
    }
    let bits = codec.bits() as usize;
    elements.checked_mul(bits).map(|b| b.div_ceil(8)).ok_or(CodecError::TooLarge)
}

/// Affine parameters for values in [lo, hi] with `l` levels.
pub(crate) fn affine(lo: f32, hi: f32, l: u32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let range = hi - lo;
    if !(range > 0.0) || !range.is_finite() {
        return (1.0, 0);
    }
    let scale = range / l as f32;
    let zp = (-lo / scale).round().clamp(0.0, l as f32) as u8;
    (scale, zp)
}

/// Quantizes a run of values with one scale and zero point, appending the levels to `out`.
///
/// `round(x / s)` is computed as `x · (1/s)` rounded to nearest-even by adding and subtracting
/// 1.5·2^23 (exact for |v| < 2^22, and the values are a few hundred at most), then the zero point
/// is added and the level clamped, all in exact small integers: no libm call per element, and the
/// loop vectorizes. The rounding happens before the zero point is added, so the offset costs no
/// precision.
#[inline]
pub(crate) fn quantize_into(data: &[f32], scale: f32, zp: u8, l: u32, out: &mut Vec<u8>) {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let inv = 1.0 / scale;
    let zp = zp as f32;
    let top = l as f32;
    let start = out.len();
    out.resize(start + data.len(), 0);
    for (q, &x) in out[start..].iter_mut().zip(data) {
        let r = ((x * inv).clamp(-4.0e6, 4.0e6) + MAGIC) - MAGIC;
        let v = r + zp;
        let v = if v < 0.0 { 0.0 } else { v };
        let v = if v > top { top } else { v };
        // SAFETY: `v` is an integer in [0, 255], in range for i32: the conversion is exact.
        *q = unsafe { v.to_int_unchecked::<i32>() } as u8;
    }
}

/// Whether every value is finite: `x · 0` is 0 for finite `x` and NaN otherwise; summed in eight
/// lanes so that it vectorizes.
fn all_finite(data: &[f32]) -> bool {
    let mut acc = [0f32; 8];
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] * 0.0;
        }
    }
    acc.iter().chain(rest).all(|x| (x * 0.0) == 0.0)
}

/// Smallest and largest value (the data is finite), in eight lanes so that it vectorizes.
pub(crate) fn min_max(data: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
            hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
        }
    }
    let mut l = rest.iter().copied().fold(f32::INFINITY, f32::min);
    let mut h = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for k in 0..8 {
        l = l.min(lo[k]);
        h = h.max(hi[k]);
    }
    (l, h)
}

/// Little-endian bytes of f32 values.
fn f32_le_bytes(data: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice::<f32, u8>(data).to_vec()
    } else {
        data.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// f32 values from little-endian bytes (any alignment).
fn f32_from_le_bytes(payload: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec::<u8, f32>(payload)
    } else {
        payload.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// Converts in blocks with the vectorized conversions of `half` (F16C when the CPU has it).
fn to_half<H: bytemuck::Pod + Default>(data: &[f32], convert: impl Fn(&[f32], &mut [H])) -> Vec<u8> {
    let mut halves = vec![H::default(); data.len()];
    for (src, dst) in data.chunks(1024).zip(halves.chunks_mut(1024)) {
        convert(src, dst);
    }
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice::<H, u8>(&halves).to_vec()
    } else {
        halves.iter().flat_map(|h| bytemuck::cast::<H, u16>(*h).to_le_bytes()).collect()
    }
}

fn from_half<H: bytemuck::Pod + Default>(payload: &[u8], convert: impl Fn(&[H], &mut [f32])) -> Vec<f32> {
    let halves: Vec<H> = if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec::<u8, H>(payload)
    } else {
        payload.chunks_exact(2).map(|b| bytemuck::cast::<u16, H>(u16::from_le_bytes([b[0], b[1]]))).collect()
    };
    let mut out = vec![0f32; halves.len()];
    convert(&halves, &mut out);
    out
}

/// Encodes f32 values of `shape`. A codec that does not apply to the shape
/// ([`Codec::applies_to`]) is a [`CodecError::NotApplicable`].
pub fn encode(data: &[f32], shape: &[usize], opts: EncodeOptions) -> Result<Encoded, CodecError> {
    let n = volume(shape)?;
    if n != data.len() {
        return Err(CodecError::Shape { expected: n, got: data.len() });
    }
    if !all_finite(data) {
        let i = data.iter().position(|x| !x.is_finite()).unwrap_or(0);
        return Err(CodecError::NotFinite(i));
    }
    if let Codec::Jpeg(q) = opts.codec {
        let (payload, quant) = crate::jpeg::encode(data, shape, q)?;
        return Ok(Encoded { codec: opts.codec, shape: shape.to_vec(), quant: Some(quant), lz4: false, payload });
    }
    let (payload, quant) = match opts.codec {
        Codec::Fp32 => (f32_le_bytes(data), None),
        Codec::Fp16 => (
            to_half::<f16>(data, |src, dst| {
                let mut clamped = [0f32; 1024];
                for (c, &x) in clamped.iter_mut().zip(src) {
                    *c = x.clamp(-65504.0, 65504.0);
                }
                dst.convert_from_f32_slice(&clamped[..src.len()]);
            }),
            None,
        ),
        Codec::Bf16 => (to_half::<bf16>(data, |src, dst| dst.convert_from_f32_slice(src)), None),
        c => {
            let l = levels(c).expect("integer codec");
            // An empty tensor is quantized per tensor: with a 0 elsewhere in its shape, its channel
            // count and the product of its trailing dimensions are unbounded.
            let per_channel = opts.per_channel && n > 0 && shape.len() >= 2 && shape[1] > 1;
            let (q, quant): (Vec<u8>, Quant) = if per_channel {
                let channels = shape[1];
                let inner: usize = shape[2..].iter().product();
                let mut lo = vec![f32::INFINITY; channels];
                let mut hi = vec![f32::NEG_INFINITY; channels];
                for (i, &x) in data.iter().enumerate() {
                    let ch = (i / inner.max(1)) % channels;
                    lo[ch] = lo[ch].min(x);
                    hi[ch] = hi[ch].max(x);
                }
                let params: Vec<(f32, u8)> = lo.iter().zip(&hi).map(|(&a, &b)| affine(a, b, l)).collect();
                let mut q = Vec::with_capacity(data.len());
                for (i, run) in data.chunks(inner.max(1)).enumerate() {
                    let (s, z) = params[i % channels];
                    quantize_into(run, s, z, l, &mut q);
                }
                (
                    q,
                    Quant::PerChannel {
                        axis: 1,
                        scales: params.iter().map(|p| p.0).collect(),
                        zero_points: params.iter().map(|p| p.1).collect(),
                    },
                )
            } else {
                let (lo, hi) = min_max(data);
                let (s, z) = affine(lo, hi, l);
                let mut q = Vec::with_capacity(data.len());
                quantize_into(data, s, z, l, &mut q);
                (q, Quant::PerTensor { scale: s, zero_point: z })
            };
            (pack(&q, c), Some(quant))
        }
    };
    let payload = if opts.lz4 { lz4_flex::block::compress(&payload) } else { payload };
    Ok(Encoded { codec: opts.codec, shape: shape.to_vec(), quant, lz4: opts.lz4, payload })
}

fn pack(q: &[u8], codec: Codec) -> Vec<u8> {
    match codec {
        Codec::Int8 => q.to_vec(),
        Codec::Int4 => q.chunks(2).map(|c| c[0] | (c.get(1).copied().unwrap_or(0) << 4)).collect(),
        Codec::Int2 => {
            q.chunks(4).map(|c| c.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | (v << (2 * i)))).collect()
        }
        _ => unreachable!("only integer codecs pack"),
    }
}

/// The level of element `i` in a packed payload.
#[inline]
fn unpack(payload: &[u8], codec: Codec, i: usize) -> u8 {
    match codec {
        Codec::Int8 => payload[i],
        Codec::Int4 => (payload[i / 2] >> (4 * (i % 2))) & 0x0f,
        Codec::Int2 => (payload[i / 4] >> (2 * (i % 4))) & 0x03,
        _ => unreachable!("only integer codecs pack"),
    }
}

/// The most bytes one byte of an LZ4 block decompresses to. A block is a run of sequences; each
/// output byte is a literal (one input byte each) or part of a match, whose length is 4 plus a
/// token nibble (≤ 15) plus extension bytes adding at most 255 each, and a sequence costs at least
/// three bytes (token and offset): so at most 255 output bytes per input byte.
const LZ4_MAX_RATIO: usize = 255;

/// Decodes to f32 values. Every length and parameter is checked before any allocation that
/// depends on them; a hostile payload is an error, never a panic or an oversized allocation.
pub fn decode(enc: &Encoded) -> Result<Vec<f32>, CodecError> {
    let n = volume(&enc.shape)?;
    if let Codec::Jpeg(q) = enc.codec {
        return crate::jpeg::decode(enc, q);
    }
    let expected = payload_len(enc.codec, n)?;
    let raw;
    let payload: &[u8] = if enc.lz4 {
        // The decompressor allocates the size the shape claims before it reads a byte: refuse a
        // claim the payload cannot back (`n` is bounded by the caller's limits, not by the bytes
        // received, so a few bytes could otherwise cost gigabytes).
        if expected > enc.payload.len().saturating_mul(LZ4_MAX_RATIO) {
            return Err(CodecError::Corrupt(format!(
                "{} LZ4 bytes cannot decompress to the {expected} bytes the shape needs",
                enc.payload.len()
            )));
        }
        raw = lz4_flex::block::decompress(&enc.payload, expected).map_err(|e| CodecError::Corrupt(e.to_string()))?;
        &raw
    } else {
        &enc.payload
    };
    if payload.len() != expected {
        return Err(CodecError::PayloadLength { expected, got: payload.len() });
    }
    match enc.codec {
        Codec::Fp32 => Ok(f32_from_le_bytes(payload)),
        Codec::Fp16 => Ok(from_half::<f16>(payload, |src, dst| src.convert_to_f32_slice(dst))),
        Codec::Bf16 => Ok(from_half::<bf16>(payload, |src, dst| src.convert_to_f32_slice(dst))),
        c => {
            let l = levels(c).expect("integer codec") as u8;
            let check = |s: f32, z: u8| {
                if !(s.is_finite() && s > 0.0) || z > l {
                    Err(CodecError::BadQuant(format!("scale {s}, zero point {z}")))
                } else {
                    Ok(())
                }
            };
            match &enc.quant {
                Some(Quant::PerTensor { scale, zero_point }) => {
                    check(*scale, *zero_point)?;
                    // A table of the decoded levels: one lookup per element.
                    let table: Vec<f32> = (0..=l).map(|q| (q as f32 - *zero_point as f32) * scale).collect();
                    if c == Codec::Int8 {
                        let table: &[f32; 256] = table.as_slice().try_into().expect("256 levels");
                        return Ok(payload.iter().map(|&q| table[q as usize]).collect());
                    }
                    Ok((0..n).map(|i| table[unpack(payload, c, i) as usize]).collect())
                }
                Some(Quant::PerChannel { axis, scales, zero_points }) => {
                    if *axis != 1 || enc.shape.len() < 2 {
                        return Err(CodecError::BadQuant(format!(
                            "per-channel axis {axis} on rank {}",
                            enc.shape.len()
                        )));
                    }
                    let channels = enc.shape[1];
                    if scales.len() != channels || zero_points.len() != channels {
                        return Err(CodecError::BadQuant(format!(
                            "{} scales and {} zero points for {channels} channels",
                            scales.len(),
                            zero_points.len()
                        )));
                    }
                    for (s, z) in scales.iter().zip(zero_points) {
                        check(*s, *z)?;
                    }
                    // Overflows only when a dimension is 0 (`n` = 0: nothing is decoded).
                    let inner = volume(&enc.shape[2..]).unwrap_or(1).max(1);
                    Ok((0..n)
                        .map(|i| {
                            let ch = (i / inner) % channels;
                            (unpack(payload, c, i) as f32 - zero_points[ch] as f32) * scales[ch]
                        })
                        .collect())
                }
                None => Err(CodecError::BadQuant(format!("{c} needs a scale and zero point"))),
            }
        }
    }
}

/// The largest absolute error decoding can introduce for an element whose original value is
/// `x`, given the encoding's parameters (per-channel: the largest scale).
///
/// JPEG has no per-element bound ([`Codec::has_error_bound`] is false): `f32::INFINITY`.
/// Callers that check errors against the bound must skip such codecs, not read the infinite
/// bound as "anything goes".
pub fn error_bound(enc: &Encoded, x: f32) -> f32 {
    match enc.codec {
        Codec::Fp32 => 0.0,
        Codec::Jpeg(_) => f32::INFINITY,
        // Round to nearest: half an ulp; subnormal spacing near zero.
        Codec::Fp16 => x.abs().min(65504.0) * 2f32.powi(-11) + 2f32.powi(-25) + (x.abs() - 65504.0).max(0.0),
        Codec::Bf16 => x.abs() * 2f32.powi(-8) + f32::MIN_POSITIVE,
        _ => {
            let s = match &enc.quant {
                Some(Quant::PerTensor { scale, .. }) => *scale,
                Some(Quant::PerChannel { scales, .. }) => scales.iter().copied().fold(0.0, f32::max),
                None => return f32::INFINITY,
            };
            // Half a step, plus f32 rounding in x / s and (q − z) · s.
            0.5 * s * (1.0 + 1e-5) + 1e-6 * x.abs()
        }
    }
}
