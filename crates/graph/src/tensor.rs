//! Conversion of analysed tract tensors into ONNX `TensorProto`s (for materialized constants).

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::dtype::DType;
use crate::error::{GraphError, Result, chain};

/// Encodes `t` as an ONNX initializer named `name`. tract's `TDim` becomes `INT64`.
pub(crate) fn to_proto(name: &str, t: &Tensor) -> Result<pb::TensorProto> {
    let cast;
    let t = if t.datum_type() == DatumType::TDim {
        cast = t.cast_to::<i64>().map_err(|e| GraphError::Analysis(chain(&e)))?.into_owned();
        &cast
    } else {
        t
    };
    let dtype = DType::from_datum_type(t.datum_type()).ok_or_else(|| GraphError::UnsupportedDtype {
        tensor: name.to_owned(),
        dtype: format!("{:?}", t.datum_type()),
    })?;
    let plain = t.to_aligned_default().map_err(|e| GraphError::Analysis(chain(&e)))?;
    Ok(pb::TensorProto {
        name: name.to_owned(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: dtype.onnx_code(),
        raw_data: plain.as_bytes().to_vec(),
        ..Default::default()
    })
}
