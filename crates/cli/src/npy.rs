//! `.npy` files ↔ tract tensors.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use cleave_engine::Tensor;
use npyz::WriterBuilder;
use npyz::{DType, TypeChar};

/// Reads a C-ordered `.npy` of a numeric or boolean type.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    from_bytes(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
}

/// Parses `.npy` bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes)?;
    if npy.order() == npyz::Order::Fortran {
        bail!("it is Fortran-ordered; save it with np.ascontiguousarray(a)");
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let DType::Plain(ts) = npy.dtype() else { bail!("structured arrays are not tensors") };
    let t = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => Tensor::from_shape(&shape, &npy.into_vec::<f32>()?)?,
        (TypeChar::Float, 8) => Tensor::from_shape(&shape, &npy.into_vec::<f64>()?)?,
        (TypeChar::Int, 1) => Tensor::from_shape(&shape, &npy.into_vec::<i8>()?)?,
        (TypeChar::Int, 2) => Tensor::from_shape(&shape, &npy.into_vec::<i16>()?)?,
        (TypeChar::Int, 4) => Tensor::from_shape(&shape, &npy.into_vec::<i32>()?)?,
        (TypeChar::Int, 8) => Tensor::from_shape(&shape, &npy.into_vec::<i64>()?)?,
        (TypeChar::Uint, 1) => Tensor::from_shape(&shape, &npy.into_vec::<u8>()?)?,
        (TypeChar::Uint, 2) => Tensor::from_shape(&shape, &npy.into_vec::<u16>()?)?,
        (TypeChar::Uint, 4) => Tensor::from_shape(&shape, &npy.into_vec::<u32>()?)?,
        (TypeChar::Uint, 8) => Tensor::from_shape(&shape, &npy.into_vec::<u64>()?)?,
        (TypeChar::Bool, _) => Tensor::from_shape(&shape, &npy.into_vec::<bool>()?)?,
        (c, s) => bail!("element type {c:?}{s} is not supported"),
    };
    Ok(t)
}

/// Writes outputs as `.npy`: `path` is the file for a single output, else a directory holding
/// one file per output (names made file-safe).
pub fn write_outputs(path: &Path, outputs: &cleave_engine::TensorMap) -> Result<()> {
    if outputs.len() == 1 {
        return write(path, outputs.values().next().expect("one output"));
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    for (name, t) in outputs {
        let file: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        write(&path.join(format!("{file}.npy")), t)?;
    }
    Ok(())
}

/// Writes a tensor as `.npy` (f16 is widened to f32).
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    write_to(&mut w, t)?;
    w.flush()?;
    Ok(())
}

fn write_to(w: &mut impl Write, t: &Tensor) -> Result<()> {
    use cleave_engine::Tensor as T;
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($ty:ty, $t:expr) => {{
            let t: &T = $t;
            let view = t.to_plain_array_view::<$ty>()?;
            let mut wr = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut *w).begin_nd()?;
            wr.extend(view.iter().copied())?;
            wr.finish()?;
        }};
    }
    use cleave_engine::DatumType as D;
    match t.datum_type() {
        D::F32 => put!(f32, t),
        D::F64 => put!(f64, t),
        D::I8 => put!(i8, t),
        D::I16 => put!(i16, t),
        D::I32 => put!(i32, t),
        D::I64 => put!(i64, t),
        D::U8 => put!(u8, t),
        D::U16 => put!(u16, t),
        D::U32 => put!(u32, t),
        D::U64 => put!(u64, t),
        D::Bool => put!(bool, t),
        D::F16 => put!(f32, &t.cast_to::<f32>()?.into_owned()),
        other => bail!("cannot write {other:?} tensors as .npy"),
    }
    Ok(())
}
