//! `.npy` bytes ↔ tract tensors.

use std::io::Write;

use npyz::{DType, TypeChar, WriterBuilder};

use crate::{DataError, DatumType, Result, Tensor};

fn npy_err(e: impl std::fmt::Display) -> DataError {
    DataError::Npy(e.to_string())
}

/// Parses a C-ordered `.npy` of a numeric or boolean type.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| DataError::Npy(format!("not a .npy array: {e}")))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(DataError::Npy("it is Fortran-ordered; save it with np.ascontiguousarray(a)".into()));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let volume = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let DType::Plain(ts) = npy.dtype() else { return Err(DataError::Npy("structured arrays are not tensors".into())) };
    // The header's shape must fit the bytes that follow it, checked before anything is allocated.
    let need = volume.and_then(|v| v.checked_mul(ts.size_field() as usize));
    if need.is_none_or(|n| n > bytes.len()) {
        return Err(DataError::Npy(format!("shape {shape:?} needs more data than the file holds (truncated?)")));
    }
    macro_rules! get {
        ($ty:ty) => {
            Tensor::from_shape(&shape, &npy.into_vec::<$ty>().map_err(npy_err)?).map_err(npy_err)?
        };
    }
    let t = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 2) => get!(half::f16),
        (TypeChar::Float, 4) => get!(f32),
        (TypeChar::Float, 8) => get!(f64),
        (TypeChar::Int, 1) => get!(i8),
        (TypeChar::Int, 2) => get!(i16),
        (TypeChar::Int, 4) => get!(i32),
        (TypeChar::Int, 8) => get!(i64),
        (TypeChar::Uint, 1) => get!(u8),
        (TypeChar::Uint, 2) => get!(u16),
        (TypeChar::Uint, 4) => get!(u32),
        (TypeChar::Uint, 8) => get!(u64),
        (TypeChar::Bool, _) => get!(bool),
        (c, s) => return Err(DataError::Npy(format!("element type {c:?}{s} is not supported"))),
    };
    Ok(t)
}

/// Writes a tensor as `.npy` (f16 stays f16; other types tract has and NumPy lacks are errors).
pub fn write(w: &mut impl Write, t: &Tensor) -> Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($ty:ty) => {{
            let view = t.to_plain_array_view::<$ty>().map_err(npy_err)?;
            let mut wr = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut *w).begin_nd()?;
            wr.extend(view.iter().copied())?;
            wr.finish()?;
        }};
    }
    match t.datum_type() {
        DatumType::F16 => put!(half::f16),
        DatumType::F32 => put!(f32),
        DatumType::F64 => put!(f64),
        DatumType::I8 => put!(i8),
        DatumType::I16 => put!(i16),
        DatumType::I32 => put!(i32),
        DatumType::I64 => put!(i64),
        DatumType::U8 => put!(u8),
        DatumType::U16 => put!(u16),
        DatumType::U32 => put!(u32),
        DatumType::U64 => put!(u64),
        DatumType::Bool => put!(bool),
        other => return Err(DataError::Npy(format!("cannot write {other:?} tensors as .npy"))),
    }
    Ok(())
}

/// [`write`] into a new buffer.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let mut out = vec![];
    write(&mut out, t)?;
    Ok(out)
}
