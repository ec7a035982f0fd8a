//! # cleave-codec
//!
//! How a tensor crossing a cut is encoded for the network. Pure: no I/O.
//!
//! [`encode`] and [`decode`] turn f32 values into a payload and back (see [`quant`] for the
//! element-wise formats and their error bounds, [`jpeg`] for the image codec);
//! [`Codec::encoded_len`] and [`Codec::estimated_len`] are the sizes the planner uses.
//!
//! **Element-wise codecs.** Float tensors can travel at full precision (`fp32`), halved
//! (`fp16`, `bf16`), or affinely quantized to 8, 4 or 2 bits (`int8`, `int4`, `int2`; 4- and
//! 2-bit values are packed, two or four to a byte). Non-float tensors (indices, masks) always
//! travel raw. They apply to every tensor, their payload size is exact, and [`error_bound`]
//! bounds each element's error.
//!
//! **JPEG** (`jpeg1` … `jpeg100`, the number is the quality; [`Codec::JPEG`] lists the usual
//! three). For a model's *input* when it is an image: an f32 NCHW tensor with 1 or 3 channels
//! ([`Codec::applies_to`]). Each (image, channel) is mapped affinely to 8 bits, then the image is
//! compressed as a grayscale or RGB JPEG. Its size depends on the content: [`Codec::estimated_len`]
//! is a prior measured on photos ([`jpeg::prior_bits_per_pixel`]), which a runtime corrects from
//! the sizes it observes (`cleave_plan::Problem::set_bytes`). Its error has no per-element
//! bound: [`Codec::has_error_bound`] is false and [`error_bound`] is infinite.
//!
//! Quantization parameters travel beside the payload (as request parameters on the wire), so
//! they are not counted in the payload sizes.

pub mod jpeg;
pub mod quant;

pub use quant::{EncodeOptions, Encoded, Quant, decode, encode, error_bound};

use std::fmt;
use std::str::FromStr;

use cleave_graph::DType;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JPEG quality, 1 (smallest) ..= 100 (best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JpegQuality(u8);

impl JpegQuality {
    /// The quality `q`, if it is in 1..=100.
    pub const fn new(q: u8) -> Option<JpegQuality> {
        if q >= 1 && q <= 100 { Some(JpegQuality(q)) } else { None }
    }

    /// The number, 1..=100.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// A codec for a tensor crossing a cut.
///
/// Serialized (serde, [`fmt::Display`], [`FromStr`]) as its lowercase name: `fp32`, `fp16`,
/// `bf16`, `int8`, `int4`, `int2`, `jpeg1` … `jpeg100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
    Int2,
    /// JPEG at a quality, for image-shaped f32 tensors (see [`Codec::applies_to`]).
    Jpeg(JpegQuality),
}

const JPEG_NAMES: [&str; 100] = [
    "jpeg1", "jpeg2", "jpeg3", "jpeg4", "jpeg5", "jpeg6", "jpeg7", "jpeg8", "jpeg9", "jpeg10", "jpeg11", "jpeg12",
    "jpeg13", "jpeg14", "jpeg15", "jpeg16", "jpeg17", "jpeg18", "jpeg19", "jpeg20", "jpeg21", "jpeg22", "jpeg23",
    "jpeg24", "jpeg25", "jpeg26", "jpeg27", "jpeg28", "jpeg29", "jpeg30", "jpeg31", "jpeg32", "jpeg33", "jpeg34",
    "jpeg35", "jpeg36", "jpeg37", "jpeg38", "jpeg39", "jpeg40", "jpeg41", "jpeg42", "jpeg43", "jpeg44", "jpeg45",
    "jpeg46", "jpeg47", "jpeg48", "jpeg49", "jpeg50", "jpeg51", "jpeg52", "jpeg53", "jpeg54", "jpeg55", "jpeg56",
    "jpeg57", "jpeg58", "jpeg59", "jpeg60", "jpeg61", "jpeg62", "jpeg63", "jpeg64", "jpeg65", "jpeg66", "jpeg67",
    "jpeg68", "jpeg69", "jpeg70", "jpeg71", "jpeg72", "jpeg73", "jpeg74", "jpeg75", "jpeg76", "jpeg77", "jpeg78",
    "jpeg79", "jpeg80", "jpeg81", "jpeg82", "jpeg83", "jpeg84", "jpeg85", "jpeg86", "jpeg87", "jpeg88", "jpeg89",
    "jpeg90", "jpeg91", "jpeg92", "jpeg93", "jpeg94", "jpeg95", "jpeg96", "jpeg97", "jpeg98", "jpeg99", "jpeg100",
];

impl Codec {
    /// Every element-wise codec (the JPEG codecs, one per quality, are not listed: see
    /// [`Codec::JPEG`]).
    pub const ALL: [Codec; 6] = [Codec::Fp32, Codec::Fp16, Codec::Bf16, Codec::Int8, Codec::Int4, Codec::Int2];

    /// The feature codecs the planner weighs when the accuracy of each has been calibrated.
    pub const FEATURE: [Codec; 5] = [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::Int4, Codec::Int2];

    /// The codecs the planner weighs without calibration data: their accuracy loss on features
    /// is small enough to assume (fp16 rounding, 8-bit affine quantization). 4- and 2-bit
    /// codecs need measured accuracy (`cleave calibrate`) or an explicit `--codecs`.
    pub const UNCALIBRATED_DEFAULT: [Codec; 3] = [Codec::Fp32, Codec::Fp16, Codec::Int8];

    /// The usual JPEG qualities: `jpeg90`, `jpeg75`, `jpeg50`.
    pub const JPEG: [Codec; 3] =
        [Codec::Jpeg(JpegQuality(90)), Codec::Jpeg(JpegQuality(75)), Codec::Jpeg(JpegQuality(50))];

    /// JPEG at quality `q`, if `q` is in 1..=100.
    pub const fn jpeg(q: u8) -> Option<Codec> {
        match JpegQuality::new(q) {
            Some(q) => Some(Codec::Jpeg(q)),
            None => None,
        }
    }

    /// Bits per element for float tensors. For JPEG, 8: the depth of the samples it compresses
    /// (its payload is smaller and depends on the content: see [`Codec::estimated_len`]).
    pub fn bits(self) -> u32 {
        match self {
            Codec::Fp32 => 32,
            Codec::Fp16 | Codec::Bf16 => 16,
            Codec::Int8 | Codec::Jpeg(_) => 8,
            Codec::Int4 => 4,
            Codec::Int2 => 2,
        }
    }

    /// Whether decoding gives back exactly what was encoded (for f32 tensors).
    pub fn is_lossless(self) -> bool {
        self == Codec::Fp32
    }

    /// Whether the codec's loss is small enough to assume free when its accuracy was not
    /// measured: fp32, fp16, bf16 and int8. 4- and 2-bit codecs and JPEG are not.
    pub fn is_near_lossless(self) -> bool {
        matches!(self, Codec::Fp32 | Codec::Fp16 | Codec::Bf16 | Codec::Int8)
    }

    /// Whether [`error_bound`] bounds each decoded element's error. False for JPEG, whose
    /// error is spread over 8×8 blocks by the DCT and has no useful per-element bound.
    pub fn has_error_bound(self) -> bool {
        !matches!(self, Codec::Jpeg(_))
    }

    /// Whether [`Codec::estimated_len`] is the exact payload size (element-wise codecs) rather
    /// than a prior (JPEG, whose size depends on the content).
    pub fn has_exact_len(self) -> bool {
        !matches!(self, Codec::Jpeg(_))
    }

    /// Whether the codec can encode a tensor of `dtype` and `shape`.
    ///
    /// Element-wise codecs apply to every tensor (non-float tensors travel raw). JPEG applies
    /// to f32 tensors of rank 4, NCHW, with N ≥ 1 images, C ∈ {1, 3} channels (grayscale or
    /// RGB) and 1 ≤ H, W ≤ 65,535 (JPEG's limit).
    pub fn applies_to(self, dtype: DType, shape: &[usize]) -> bool {
        match self {
            Codec::Jpeg(_) => dtype == DType::F32 && jpeg::image_dims(shape).is_ok(),
            _ => true,
        }
    }

    /// Whether the codec can carry a cut's boundary, given each tensor's type and shape (as a
    /// request encodes them: f32 tensors with the codec, the others raw). Element-wise codecs
    /// always can. JPEG can when it applies to at least one tensor and every other tensor is
    /// one that travels raw (not float): an f32 feature map beside the image could not be
    /// encoded.
    pub fn applies_to_boundary<'a>(self, tensors: impl IntoIterator<Item = (DType, &'a [usize])>) -> bool {
        match self {
            Codec::Jpeg(_) => {
                let mut any = false;
                for (dtype, shape) in tensors {
                    if self.applies_to(dtype, shape) {
                        any = true;
                    } else if dtype.is_float() {
                        return false;
                    }
                }
                any
            }
            _ => true,
        }
    }

    /// Payload bytes for a tensor of `elements` elements of `dtype`. Non-float tensors travel raw;
    /// a codec never widens a tensor.
    ///
    /// Exact for element-wise codecs. For JPEG, whose size depends on the content and the
    /// shape, a shape-blind prior: the elements taken as the samples of one RGB image (see
    /// [`Codec::estimated_len`], which knows the shape).
    ///
    /// Saturates at `u64::MAX` (a shape too large to exist, as [`Codec::estimated_len`] passes
    /// for one whose element count overflows).
    pub fn encoded_len(self, dtype: DType, elements: u64) -> u64 {
        let raw = elements.saturating_mul(dtype.size() as u64);
        if !dtype.is_float() {
            return raw;
        }
        if let Codec::Jpeg(q) = self {
            let pixels = elements.div_ceil(3);
            return jpeg::prior_len(q, 3, pixels).min(raw);
        }
        let bits = (self.bits() as u64).min(8 * dtype.size() as u64);
        u64::try_from((elements as u128 * bits as u128).div_ceil(8)).unwrap_or(u64::MAX)
    }

    /// Payload bytes for a tensor of `dtype` and `shape`: what the planner assumes.
    ///
    /// Element-wise codecs: exactly [`Codec::encoded_len`]. JPEG, on a tensor it applies to:
    /// the prior of [`jpeg::prior_len`] for each image (a fixed header plus
    /// [`jpeg::prior_bits_per_pixel`] bits per pixel, measured on photos); the real size depends
    /// on the content, so a runtime should correct the estimate from the sizes it observes. JPEG
    /// on a tensor it does not apply to: the raw size (such a choice is never made).
    pub fn estimated_len(self, dtype: DType, shape: &[usize]) -> u64 {
        let elements = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        match self {
            Codec::Jpeg(q) => match jpeg::image_dims(shape) {
                Ok((n, c, h, w)) if dtype == DType::F32 => {
                    (n as u64).saturating_mul(jpeg::prior_len(q, c, (h as u64).saturating_mul(w as u64)))
                }
                _ => elements.saturating_mul(dtype.size() as u64),
            },
            _ => self.encoded_len(dtype, elements),
        }
    }

    /// The lowercase name (`fp32`, `int4`, `jpeg90`, …).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Fp32 => "fp32",
            Codec::Fp16 => "fp16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
            Codec::Int4 => "int4",
            Codec::Int2 => "int2",
            Codec::Jpeg(q) => JPEG_NAMES[q.0 as usize - 1],
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Codec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Codec, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Codec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a codec name (fp32, fp16, bf16, int8, int4, int2, jpeg1 … jpeg100)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Codec, E> {
                s.parse().map_err(|e: UnknownCodec| E::custom(e))
            }
        }
        d.deserialize_str(V)
    }
}

/// Why encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("the shape holds {expected} elements but {got} were given")]
    Shape { expected: usize, got: usize },
    #[error("element {0} is not finite (NaN or infinite values cannot be quantized)")]
    NotFinite(usize),
    #[error("the tensor is too large")]
    TooLarge,
    #[error("the payload has {got} bytes, the shape and codec need {expected}")]
    PayloadLength { expected: usize, got: usize },
    #[error("invalid quantization parameters: {0}")]
    BadQuant(String),
    #[error("corrupt compressed payload: {0}")]
    Corrupt(String),
    #[error("{codec} does not apply to a tensor of shape {shape:?}: {reason}")]
    NotApplicable { codec: Codec, shape: Vec<usize>, reason: String },
}

/// An unknown codec name.
#[derive(Debug, thiserror::Error)]
#[error("unknown codec `{0}` (known: fp32, fp16, bf16, int8, int4, int2, and jpegN for a JPEG quality N in 1..=100)")]
pub struct UnknownCodec(pub String);

impl FromStr for Codec {
    type Err = UnknownCodec;
    /// A codec's name, any case, surrounding spaces ignored. `jpegN` takes N without sign or
    /// leading zeros, so that every codec has one name.
    fn from_str(s: &str) -> Result<Codec, UnknownCodec> {
        let t = s.trim();
        if let Some(c) = Codec::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(t)) {
            return Ok(c);
        }
        let jpeg = t
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("jpeg"))
            .map(|_| &t[4..])
            .filter(|n| !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u8>().ok())
            .and_then(Codec::jpeg);
        jpeg.ok_or_else(|| UnknownCodec(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Codec::Fp32.encoded_len(DType::F32, 10), 40);
        assert_eq!(Codec::Fp16.encoded_len(DType::F32, 10), 20);
        assert_eq!(Codec::Int8.encoded_len(DType::F32, 10), 10);
        assert_eq!(Codec::Int4.encoded_len(DType::F32, 11), 6);
        assert_eq!(Codec::Int2.encoded_len(DType::F32, 9), 3);
        // Non-float tensors travel raw; f16 is never widened.
        assert_eq!(Codec::Int2.encoded_len(DType::I64, 3), 24);
        assert_eq!(Codec::Fp32.encoded_len(DType::F16, 3), 6);
        // Element-wise codecs: the shape-aware size is the same.
        for c in Codec::ALL {
            assert_eq!(c.estimated_len(DType::F32, &[2, 3, 5]), c.encoded_len(DType::F32, 30));
        }
    }

    #[test]
    fn jpeg_prior_sizes() {
        let q90 = Codec::jpeg(90).unwrap();
        let q50 = Codec::jpeg(50).unwrap();
        let rgb = [1, 3, 224, 224];
        // Smaller than int8 (one byte per sample), larger at a higher quality, per image.
        let (a, b) = (q90.estimated_len(DType::F32, &rgb), q50.estimated_len(DType::F32, &rgb));
        assert!(b < a && a < 3 * 224 * 224, "{a} {b}");
        assert_eq!(q90.estimated_len(DType::F32, &[4, 3, 224, 224]), 4 * a);
        assert!(q90.estimated_len(DType::F32, &[1, 1, 224, 224]) < a);
        // Not an image: the raw size.
        assert_eq!(q90.estimated_len(DType::F32, &[1, 16, 8, 8]), 4 * 16 * 64);
        assert_eq!(q90.estimated_len(DType::I64, &[1, 3, 8, 8]), 8 * 3 * 64);
    }

    #[test]
    fn names_parse() {
        for c in Codec::ALL.into_iter().chain((1..=100).map(|q| Codec::jpeg(q).unwrap())) {
            assert_eq!(c.name().parse::<Codec>().unwrap(), c);
            assert_eq!(c.to_string(), c.name());
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<Codec>(&json).unwrap(), c);
        }
        assert_eq!("jpeg90".parse::<Codec>().unwrap(), Codec::JPEG[0]);
        assert_eq!(" JPEG75 ".parse::<Codec>().unwrap(), Codec::JPEG[1]);
        assert_eq!(Codec::JPEG.map(|c| c.name()), ["jpeg90", "jpeg75", "jpeg50"]);
        for bad in ["int3", "jpeg", "jpeg0", "jpeg101", "jpeg090", "jpeg+9", "jpeg-1", "jpeg256", "jpegx", "jpe"] {
            assert!(bad.parse::<Codec>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Codec>("\"jpeg0\"").is_err());
        // The names the calibration and profile files use are unchanged.
        assert_eq!(serde_json::to_string(&Codec::ALL).unwrap(), r#"["fp32","fp16","bf16","int8","int4","int2"]"#);
    }

    #[test]
    fn applicability() {
        let q = Codec::JPEG[0];
        assert!(q.applies_to(DType::F32, &[1, 3, 224, 224]));
        assert!(q.applies_to(DType::F32, &[8, 1, 28, 28]));
        assert!(q.applies_to(DType::F32, &[1, 1, 1, 1]));
        for shape in
            [&[1, 2, 8, 8][..], &[1, 4, 8, 8], &[3, 224, 224], &[1, 3, 0, 8], &[0, 3, 8, 8], &[1, 3, 70_000, 8]]
        {
            assert!(!q.applies_to(DType::F32, shape), "{shape:?}");
        }
        assert!(!q.applies_to(DType::F16, &[1, 3, 8, 8]));
        assert!(!q.applies_to(DType::U8, &[1, 3, 8, 8]));
        for c in Codec::ALL {
            assert!(c.applies_to(DType::F32, &[1, 16, 8, 8]) && c.applies_to(DType::F32, &[7]));
        }
        let img: &[usize] = &[1, 3, 8, 8];
        let feat: &[usize] = &[1, 16, 8, 8];
        assert!(q.applies_to_boundary([(DType::F32, img)]));
        assert!(q.applies_to_boundary([(DType::F32, img), (DType::I64, &[1][..])]));
        assert!(!q.applies_to_boundary([(DType::F32, img), (DType::F32, feat)]));
        assert!(!q.applies_to_boundary([(DType::I64, &[1][..])]));
        assert!(!q.applies_to_boundary(std::iter::empty::<(DType, &[usize])>()));
        assert!(Codec::Int8.applies_to_boundary([(DType::F32, feat)]));
    }
}
