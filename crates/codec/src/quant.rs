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
/// is added and the level clamped, all in exact small integers: no libm call per element. A value
/// far outside the range (|v| ≥ 2^22, possible only if `x` lies outside the range the scale was
/// made for) rounds inexactly but is clamped to level 0 or `l` all the same; `x` is finite
/// (checked before). The rounding happens before the zero point is added, so the offset costs no
/// precision. On x86_64 the loop is SSE2, sixteen values per step.
#[inline]
pub(crate) fn quantize_into(data: &[f32], scale: f32, zp: u8, l: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + data.len(), 0);
    let dst = &mut out[start..];
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        let done = unsafe { quantize_sse2(data, scale, zp, l, dst) };
        quantize_lanes(&data[done..], scale, zp, l, &mut dst[done..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    quantize_lanes(data, scale, zp, l, dst);
}

const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23

/// The portable loop of [`quantize_into`].
#[inline]
fn quantize_lanes(data: &[f32], scale: f32, zp: u8, l: u32, dst: &mut [u8]) {
    let inv = 1.0 / scale;
    let zp = zp as f32;
    let top = l as f32;
    for (q, &x) in dst.iter_mut().zip(data) {
        let r = ((x * inv) + MAGIC) - MAGIC;
        let v = r + zp;
        let v = if v < 0.0 { 0.0 } else { v };
        let v = if v > top { top } else { v };
        // SAFETY: `v` is an integer in [0, 255], in range for i32: the conversion is exact.
        *q = unsafe { v.to_int_unchecked::<i32>() } as u8;
    }
}

/// [`quantize_lanes`] sixteen values at a time with SSE2, the same arithmetic in the same
/// order (so the same levels); returns how many values it did (a multiple of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn quantize_sse2(data: &[f32], scale: f32, zp: u8, l: u32, dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let inv = _mm_set1_ps(1.0 / scale);
    let magic = _mm_set1_ps(MAGIC);
    let zp = _mm_set1_ps(zp as f32);
    let (zero, top) = (_mm_setzero_ps(), _mm_set1_ps(l as f32));
    let level = |p: *const f32| {
        // SAFETY: the caller passes a pointer to 4 readable floats.
        let x = unsafe { _mm_loadu_ps(p) };
        let r = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(x, inv), magic), magic);
        let v = _mm_min_ps(_mm_max_ps(_mm_add_ps(r, zp), zero), top);
        _mm_cvttps_epi32(v)
    };
    let n = data.len() / 16 * 16;
    for (c, q) in data[..n].chunks_exact(16).zip(dst[..n].chunks_exact_mut(16)) {
        let p = c.as_ptr();
        // SAFETY: `c` holds 16 floats, read 4 at a time; levels are 0..=255, so the signed
        // 32→16 and unsigned 16→8 saturating packs are exact; `q` holds 16 bytes.
        unsafe {
            let a = _mm_packs_epi32(level(p), level(p.add(4)));
            let b = _mm_packs_epi32(level(p.add(8)), level(p.add(12)));
            _mm_storeu_si128(q.as_mut_ptr().cast(), _mm_packus_epi16(a, b));
        }
    }
    n
}

/// `(q − zp) · scale` for each byte: the same f32 arithmetic as the level table, so the same
/// values; on x86_64 in SSE2, sixteen bytes per step.
fn dequantize_u8(payload: &[u8], scale: f32, zp: u8) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(payload.len());
    let spare = &mut out.spare_capacity_mut()[..payload.len()];
    // SAFETY: SSE2 is part of the x86_64 baseline.
    #[cfg(target_arch = "x86_64")]
    let done = unsafe { dequantize_u8_sse2(payload, scale, zp, spare) };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (o, &q) in spare[done..].iter_mut().zip(&payload[done..]) {
        o.write((q as f32 - zp as f32) * scale);
    }
    // SAFETY: every one of the first `payload.len()` elements was written above.
    unsafe { out.set_len(payload.len()) };
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn dequantize_u8_sse2(payload: &[u8], scale: f32, zp: u8, out: &mut [std::mem::MaybeUninit<f32>]) -> usize {
    use std::arch::x86_64::*;
    let (s, z, zero) = (_mm_set1_ps(scale), _mm_set1_ps(zp as f32), _mm_setzero_si128());
    let n = payload.len() / 16 * 16;
    for (q, o) in payload[..n].chunks_exact(16).zip(out[..n].chunks_exact_mut(16)) {
        // SAFETY: `q` holds 16 bytes and `o` room for 16 floats; unaligned loads and stores.
        unsafe {
            let b = _mm_loadu_si128(q.as_ptr().cast());
            let (lo, hi) = (_mm_unpacklo_epi8(b, zero), _mm_unpackhi_epi8(b, zero));
            let words = [
                _mm_unpacklo_epi16(lo, zero),
                _mm_unpackhi_epi16(lo, zero),
                _mm_unpacklo_epi16(hi, zero),
                _mm_unpackhi_epi16(hi, zero),
            ];
            let p: *mut f32 = o.as_mut_ptr().cast();
            for (k, w) in words.into_iter().enumerate() {
                _mm_storeu_ps(p.add(4 * k), _mm_mul_ps(_mm_sub_ps(_mm_cvtepi32_ps(w), z), s));
            }
        }
    }
    n
}

/// Whether every value is finite: `x · 0` is 0 for finite `x` and NaN otherwise, summed.
fn all_finite(data: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { all_finite_sse2(data) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
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
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn all_finite_sse2(data: &[f32]) -> bool {
    use std::arch::x86_64::*;
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    let zero = _mm_setzero_ps();
    let (mut a0, mut a1) = (zero, zero);
    for c in chunks {
        // SAFETY: `c` holds 8 floats; unaligned loads are allowed.
        let (x, y) = unsafe { (_mm_loadu_ps(c.as_ptr()), _mm_loadu_ps(c.as_ptr().add(4))) };
        a0 = _mm_add_ps(a0, _mm_mul_ps(x, zero));
        a1 = _mm_add_ps(a1, _mm_mul_ps(y, zero));
    }
    let mut acc = [0f32; 4];
    // SAFETY: a 4-float array receives a 4-float store.
    unsafe { _mm_storeu_ps(acc.as_mut_ptr(), _mm_add_ps(a0, a1)) };
    acc.iter().chain(rest).all(|x| (x * 0.0) == 0.0)
}

/// Smallest and largest value (the data is finite).
pub(crate) fn min_max(data: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline, so the target feature is always there.
        unsafe { min_max_sse2(data) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        min_max_lanes(data)
    }
}

/// [`min_max`] in eight portable lanes (compare-and-select per lane).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn min_max_lanes(data: &[f32]) -> (f32, f32) {
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

/// [`min_max`] with SSE2 `minps`/`maxps`, two accumulators each (LLVM's own vectorization of
/// the portable loop came out as shuffles, about 8 instructions per element; this is about 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn min_max_sse2(data: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let chunks = data.chunks_exact(8);
    let rest = chunks.remainder();
    let (mut lo0, mut lo1) = (_mm_set1_ps(f32::INFINITY), _mm_set1_ps(f32::INFINITY));
    let (mut hi0, mut hi1) = (_mm_set1_ps(f32::NEG_INFINITY), _mm_set1_ps(f32::NEG_INFINITY));
    for c in chunks {
        // SAFETY: `c` holds 8 floats; both loads are in bounds and unaligned loads are allowed.
        let (a, b) = unsafe { (_mm_loadu_ps(c.as_ptr()), _mm_loadu_ps(c.as_ptr().add(4))) };
        lo0 = _mm_min_ps(a, lo0);
        lo1 = _mm_min_ps(b, lo1);
        hi0 = _mm_max_ps(a, hi0);
        hi1 = _mm_max_ps(b, hi1);
    }
    let (mut l4, mut h4) = ([0f32; 4], [0f32; 4]);
    // SAFETY: 4-float arrays receive 4-float stores.
    unsafe {
        _mm_storeu_ps(l4.as_mut_ptr(), _mm_min_ps(lo0, lo1));
        _mm_storeu_ps(h4.as_mut_ptr(), _mm_max_ps(hi0, hi1));
    }
    let l = l4.iter().chain(rest).copied().fold(f32::INFINITY, f32::min);
    let h = h4.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max);
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
/// Converts in blocks with the vectorized conversions of `half` (F16C when the CPU has it),
/// through a block on the stack: the payload is written once, without a zeroed buffer or a
/// second copy.
fn to_half<H: bytemuck::Pod + Default>(data: &[f32], convert: impl Fn(&[f32], &mut [H])) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut block = [H::default(); 1024];
    for src in data.chunks(1024) {
        let dst = &mut block[..src.len()];
        convert(src, dst);
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytemuck::cast_slice::<H, u8>(dst));
        } else {
            out.extend(dst.iter().flat_map(|h| bytemuck::cast::<H, u16>(*h).to_le_bytes()));
        }
    }
    out
}

/// fp16 of values clamped to ±65504 (the largest finite half), with `half`'s conversions.
fn to_f16_portable(src: &[f32], dst: &mut [f16]) {
    let mut clamped = [0f32; 1024];
    for (c, &x) in clamped.iter_mut().zip(src) {
        *c = x.clamp(-65504.0, 65504.0);
    }
    dst.convert_from_f32_slice(&clamped[..src.len()]);
}

/// fp16 conversions eight values per instruction with F16C: `half`'s own F16C path makes a
/// call per eight values, which cost more than the conversion. Round to nearest even, as
/// `half` does, so the bits are the same.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    /// Clamps to ±65504 and converts; returns how many values it did (a multiple of 8).
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn to_f16(src: &[f32], dst: &mut [u16]) -> usize {
        let (lo, hi) = (_mm256_set1_ps(-65504.0), _mm256_set1_ps(65504.0));
        let n = src.len().min(dst.len()) / 8 * 8;
        for (x, h) in src[..n].chunks_exact(8).zip(dst[..n].chunks_exact_mut(8)) {
            // SAFETY: `x` holds 8 floats and `h` room for 8 halves; unaligned loads and stores.
            unsafe {
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(x.as_ptr()), lo), hi);
                _mm_storeu_si128(h.as_mut_ptr().cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
            }
        }
        n
    }

    /// Converts halves to f32; returns how many it did (a multiple of 8).
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn from_f16(src: &[u16], dst: &mut [f32]) -> usize {
        let n = src.len().min(dst.len()) / 8 * 8;
        for (h, x) in src[..n].chunks_exact(8).zip(dst[..n].chunks_exact_mut(8)) {
            // SAFETY: `h` holds 8 halves and `x` room for 8 floats; unaligned loads and stores.
            unsafe { _mm256_storeu_ps(x.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()))) };
        }
        n
    }
}

fn from_half<H: bytemuck::Pod + Default>(payload: &[u8], convert: impl Fn(&[H], &mut [f32])) -> Vec<f32> {
    let n = payload.len() / 2;
    let mut out = vec![0f32; n];
    let mut block = [H::default(); 1024];
    for (src, dst) in payload.chunks(2048).zip(out.chunks_mut(1024)) {
        let halves = &mut block[..src.len() / 2];
        if cfg!(target_endian = "little") {
            bytemuck::cast_slice_mut::<H, u8>(halves).copy_from_slice(src);
        } else {
            for (h, b) in halves.iter_mut().zip(src.chunks_exact(2)) {
                *h = bytemuck::cast::<u16, H>(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        convert(halves, dst);
    }
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
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
                    // SAFETY: the CPU has F16C and AVX (checked just above).
                    let done = unsafe { f16c::to_f16(src, bytemuck::cast_slice_mut(dst)) };
                    return to_f16_portable(&src[done..], &mut dst[done..]);
                }
                to_f16_portable(src, dst)
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
            (if c == Codec::Int8 { q } else { pack(&q, c) }, Some(quant))
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
        Codec::Fp16 => Ok(from_half::<f16>(payload, |src, dst| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has F16C and AVX (checked just above).
                let done = unsafe { f16c::from_f16(bytemuck::cast_slice(src), dst) };
                return src[done..].convert_to_f32_slice(&mut dst[done..]);
            }
            src.convert_to_f32_slice(dst)
        })),
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
                        return Ok(dequantize_u8(payload, *scale, *zero_point));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every kind the codecs meet: zeros, negatives, tiny and large magnitudes, and
    /// lengths that leave remainders after the SIMD chunks.
    fn samples(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                match i % 5 {
                    0 => 0.0,
                    1 => (u - 0.5) * 20.0,
                    2 => u * 1e-3,
                    3 => -(u * 300.0),
                    _ => u,
                }
            })
            .collect()
    }

    #[test]
    fn the_sse2_paths_equal_the_portable_ones_exactly() {
        for (seed, n) in [(1, 0), (2, 1), (3, 15), (4, 16), (5, 17), (6, 1000), (7, 51_200 + 9)] {
            let x = samples(seed, n);
            let (lo, hi) = min_max(&x);
            assert_eq!((lo, hi), min_max_lanes(&x), "min_max, n = {n}");
            for l in [3, 15, 255] {
                let (s, z) = affine(lo, hi, l);
                let mut fast = vec![];
                quantize_into(&x, s, z, l, &mut fast);
                let mut slow = vec![0; n];
                quantize_lanes(&x, s, z, l, &mut slow);
                assert_eq!(fast, slow, "levels {l}, n = {n}");
            }
            assert!(all_finite(&x));
        }
    }

    #[test]
    fn fp16_through_f16c_equals_half_bit_for_bit() {
        let mut x = samples(11, 4099);
        x.extend([65504.0, 65520.0, 1e9, -1e9, 6.0e-8, -6.0e-8, 1.0e-10, 0.0, -0.0]);
        let mut want = vec![f16::ZERO; x.len()];
        for (w, &v) in want.iter_mut().zip(&x) {
            *w = f16::from_f32(v.clamp(-65504.0, 65504.0));
        }
        let enc = encode(&x, &[x.len()], EncodeOptions::new(Codec::Fp16)).unwrap();
        let got: Vec<u16> = enc.payload.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(got, want.iter().map(|h| h.to_bits()).collect::<Vec<_>>());
        let back = decode(&enc).unwrap();
        let want_back: Vec<f32> = want.iter().map(|h| h.to_f32()).collect();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want_back.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn dequantizing_bytes_equals_the_level_table() {
        for n in [0usize, 1, 15, 16, 17, 1000] {
            let q: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let (s, z) = (0.0371f32, 131u8);
            let table: Vec<f32> = (0..=255u8).map(|v| (v as f32 - z as f32) * s).collect();
            let want: Vec<f32> = q.iter().map(|&v| table[v as usize]).collect();
            assert_eq!(dequantize_u8(&q, s, z), want, "n = {n}");
        }
    }

    #[test]
    fn a_non_finite_value_anywhere_is_found() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for i in [0, 7, 8, 15, 16, 33] {
                let mut x = samples(9, 34);
                x[i] = bad;
                assert!(!all_finite(&x), "{bad} at {i}");
            }
        }
    }
}
