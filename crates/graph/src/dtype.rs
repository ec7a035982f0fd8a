//! Element types, and their mapping to ONNX `TensorProto.DataType` codes and tract `DatumType`s.

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::DatumType;

/// The element type of a tensor. Names serialize as `f32`, `f16`, `i64`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    F64,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::F16 | DType::Bf16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::Bf16 => 16,
        }
    }

    /// From an ONNX `TensorProto.DataType` code; `None` for types cleave does not handle
    /// (strings, complex, 4-bit and 8-bit floats).
    pub fn from_onnx_code(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::Bf16,
            _ => return None,
        })
    }

    /// The ONNX name of an element type code, for error messages.
    pub fn onnx_code_name(code: i32) -> &'static str {
        match code {
            0 => "UNDEFINED",
            8 => "STRING",
            14 => "COMPLEX64",
            15 => "COMPLEX128",
            17..=20 => "FLOAT8",
            21 => "UINT4",
            22 => "INT4",
            23 => "FLOAT4E2M1",
            c => DType::from_onnx_code(c).map(|d| d.onnx_name()).unwrap_or("UNKNOWN"),
        }
    }

    /// The ONNX spelling (`FLOAT`, `INT64`, …).
    pub fn onnx_name(self) -> &'static str {
        match self {
            DType::F32 => "FLOAT",
            DType::F16 => "FLOAT16",
            DType::Bf16 => "BFLOAT16",
            DType::F64 => "DOUBLE",
            DType::I8 => "INT8",
            DType::U8 => "UINT8",
            DType::I16 => "INT16",
            DType::U16 => "UINT16",
            DType::I32 => "INT32",
            DType::U32 => "UINT32",
            DType::I64 => "INT64",
            DType::U64 => "UINT64",
            DType::Bool => "BOOL",
        }
    }

    /// The tract datum type.
    pub fn datum_type(self) -> DatumType {
        match self {
            DType::F32 => DatumType::F32,
            DType::F16 => DatumType::F16,
            DType::Bf16 => DatumType::F16, // tract has no bf16; only used for facts, never for compute
            DType::F64 => DatumType::F64,
            DType::I8 => DatumType::I8,
            DType::U8 => DatumType::U8,
            DType::I16 => DatumType::I16,
            DType::U16 => DatumType::U16,
            DType::I32 => DatumType::I32,
            DType::U32 => DatumType::U32,
            DType::I64 => DatumType::I64,
            DType::U64 => DatumType::U64,
            DType::Bool => DatumType::Bool,
        }
    }

    /// From a tract datum type. tract's symbolic-dimension type `TDim` is ONNX `INT64`.
    pub fn from_datum_type(dt: DatumType) -> Option<DType> {
        Some(match dt {
            DatumType::F32 => DType::F32,
            DatumType::F16 => DType::F16,
            DatumType::F64 => DType::F64,
            DatumType::I8 => DType::I8,
            DatumType::U8 => DType::U8,
            DatumType::I16 => DType::I16,
            DatumType::U16 => DType::U16,
            DatumType::I32 => DType::I32,
            DatumType::U32 => DType::U32,
            DatumType::I64 | DatumType::TDim => DType::I64,
            DatumType::U64 => DType::U64,
            DatumType::Bool => DType::Bool,
            _ => return None,
        })
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16 | DType::F64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::F64,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ];

    #[test]
    fn onnx_codes_round_trip() {
        for d in ALL {
            assert_eq!(DType::from_onnx_code(d.onnx_code()), Some(d));
        }
        assert_eq!(DType::from_onnx_code(8), None, "strings are not tensors cleave can move");
    }

    #[test]
    fn display_is_the_serde_name() {
        assert_eq!(DType::F32.to_string(), "f32");
        assert_eq!(DType::Bf16.to_string(), "bf16");
    }
}
