//! # cleave-codec
//!
//! How a tensor crossing a cut is encoded for the network. Pure: no I/O.
//!
//! [`encode`] and [`decode`] turn f32 values into a payload and back (see [`quant`] for the
//! formats and their error bounds); [`Codec::encoded_len`] is the size the planner uses.
//!
//! Float tensors can travel at full precision (`fp32`), halved (`fp16`, `bf16`), or affinely
//! quantized to 8, 4 or 2 bits (`int8`, `int4`, `int2`; 4- and 2-bit values are packed, two or
//! four to a byte). Non-float tensors (indices, masks) always travel raw. Quantization
//! parameters travel beside the payload (as request parameters on the wire), so they are not
//! counted in [`Codec::encoded_len`].

pub mod quant;

pub use quant::{EncodeOptions, Encoded, Quant, decode, encode, error_bound};

use std::fmt;
use std::str::FromStr;

use cleave_graph::DType;
use serde::{Deserialize, Serialize};

/// A feature codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
    Int2,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 6] = [Codec::Fp32, Codec::Fp16, Codec::Bf16, Codec::Int8, Codec::Int4, Codec::Int2];

    /// The feature codecs the planner weighs when the accuracy of each has been calibrated.
    pub const FEATURE: [Codec; 5] = [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::Int4, Codec::Int2];

    /// The codecs the planner weighs without calibration data: their accuracy loss on features
    /// is small enough to assume (fp16 rounding, 8-bit affine quantization). 4- and 2-bit
    /// codecs need measured accuracy (`cleave calibrate`) or an explicit `--codecs`.
    pub const UNCALIBRATED_DEFAULT: [Codec; 3] = [Codec::Fp32, Codec::Fp16, Codec::Int8];

    /// Bits per element for float tensors.
    pub fn bits(self) -> u32 {
        match self {
            Codec::Fp32 => 32,
            Codec::Fp16 | Codec::Bf16 => 16,
            Codec::Int8 => 8,
            Codec::Int4 => 4,
            Codec::Int2 => 2,
        }
    }

    /// Whether decoding gives back exactly what was encoded (for f32 tensors).
    pub fn is_lossless(self) -> bool {
        self == Codec::Fp32
    }

    /// Payload bytes for a tensor of `elements` elements of `dtype`. Non-float tensors travel raw;
    /// a codec never widens a tensor.
    pub fn encoded_len(self, dtype: DType, elements: u64) -> u64 {
        if !dtype.is_float() {
            return elements * dtype.size() as u64;
        }
        let bits = (self.bits() as u64).min(8 * dtype.size() as u64);
        (elements * bits).div_ceil(8)
    }

    /// The lowercase name (`fp32`, `int4`, …).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Fp32 => "fp32",
            Codec::Fp16 => "fp16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
            Codec::Int4 => "int4",
            Codec::Int2 => "int2",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
}

/// An unknown codec name.
#[derive(Debug, thiserror::Error)]
#[error("unknown codec `{0}` (known: fp32, fp16, bf16, int8, int4, int2)")]
pub struct UnknownCodec(pub String);

impl FromStr for Codec {
    type Err = UnknownCodec;
    fn from_str(s: &str) -> Result<Codec, UnknownCodec> {
        Codec::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| UnknownCodec(s.into()))
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
    }

    #[test]
    fn names_parse() {
        for c in Codec::ALL {
            assert_eq!(c.name().parse::<Codec>().unwrap(), c);
        }
        assert!("int3".parse::<Codec>().is_err());
    }
}
