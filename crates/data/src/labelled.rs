//! Labelled classification data: `x` with one sample per row, `y` one integer label per row.

use std::io::{Read, Seek};

use crate::{DataError, DatumType, Result, Tensor, npz};

/// A labelled dataset, as `cleave calibrate --data` reads it.
///
/// Samples are stored in the units the model takes: `sample(i)` casts row `i` to the model
/// input's element type without scaling (so a uint8 image set feeds a float model that expects
/// 0..255 pixel values, and a float set feeds normalised values as they are).
#[derive(Debug, Clone)]
pub struct Labelled {
    x: Tensor,
    y: Vec<i64>,
}

impl Labelled {
    /// Largest archive member read (4 GiB): bigger sets should be split.
    pub const MAX_MEMBER_BYTES: u64 = 4 << 30;

    /// Reads an `.npz` holding `x` (rank ≥ 1, samples along axis 0) and `y` (rank 1, integer
    /// labels, as many as samples). Other members are ignored.
    pub fn from_npz<R: Read + Seek>(reader: R) -> Result<Labelled> {
        let arrays = npz::read(reader, Self::MAX_MEMBER_BYTES)?;
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        let find = |name: &str| {
            arrays.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).ok_or_else(|| {
                DataError::Content(format!(
                    "the archive has no `{name}` array (it has: {}); save it with np.savez(path, x=samples, y=labels)",
                    names.join(", ")
                ))
            })
        };
        let (x, y) = (find("x")?, find("y")?);
        Labelled::new(x, y)
    }

    /// A dataset from its two arrays, checked as [`Labelled::from_npz`] describes.
    pub fn new(x: Tensor, y: Tensor) -> Result<Labelled> {
        if x.rank() == 0 {
            return Err(DataError::Content("`x` is a scalar; it needs one sample per row".into()));
        }
        if y.rank() != 1 {
            return Err(DataError::Content(format!("`y` has shape {:?}; it must be one label per sample", y.shape())));
        }
        let dt = y.datum_type();
        if !(dt.is_integer() || dt == DatumType::Bool) {
            return Err(DataError::Content(format!("`y` holds {dt:?}; labels must be integers")));
        }
        if x.shape()[0] != y.len() {
            return Err(DataError::Content(format!("`x` has {} samples but `y` has {} labels", x.shape()[0], y.len())));
        }
        let y = y.cast_to::<i64>().map_err(|e| DataError::Content(format!("`y`: {e}")))?.into_owned();
        let y: Vec<i64> =
            y.to_plain_array_view::<i64>().map_err(|e| DataError::Content(e.to_string()))?.iter().copied().collect();
        Ok(Labelled { x, y })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The labels.
    pub fn labels(&self) -> &[i64] {
        &self.y
    }

    /// Shape of one sample (without the leading samples axis).
    pub fn sample_shape(&self) -> &[usize] {
        &self.x.shape()[1..]
    }

    /// Element type of the stored samples.
    pub fn sample_type(&self) -> DatumType {
        self.x.datum_type()
    }

    /// Sample `i` shaped `shape` (which must hold as many elements as a stored sample, e.g. the
    /// model input `[1, C, H, W]` for a stored `[C, H, W]`) and cast to `dtype`.
    pub fn sample(&self, i: usize, shape: &[usize], dtype: DatumType) -> Result<Tensor> {
        if i >= self.len() {
            return Err(DataError::Content(format!("sample {i} is out of range (0..{})", self.len())));
        }
        let per: usize = self.sample_shape().iter().product();
        if shape.iter().product::<usize>() != per {
            return Err(DataError::Content(format!(
                "a stored sample has shape {:?} ({per} values) but the model takes {shape:?}",
                self.sample_shape()
            )));
        }
        let row = self.x.slice(0, i, i + 1).map_err(|e| DataError::Content(e.to_string()))?;
        let mut row = row.cast_to_dt(dtype).map_err(|e| DataError::Content(format!("sample {i}: {e}")))?.into_owned();
        unsafe { row.set_shape_unchecked(shape) };
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Labelled {
        let x = Tensor::from_shape(&[3, 2, 2], &[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]).unwrap();
        let y = Tensor::from_shape(&[3], &[1u8, 0, 2]).unwrap();
        Labelled::new(x, y).unwrap()
    }

    #[test]
    fn samples_are_cast_and_reshaped_without_scaling() {
        let d = set();
        assert_eq!(d.len(), 3);
        assert_eq!(d.labels(), [1, 0, 2]);
        let s = d.sample(2, &[1, 1, 2, 2], DatumType::F32).unwrap();
        assert_eq!(s.shape(), [1, 1, 2, 2]);
        assert_eq!(
            s.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>(),
            [8.0, 9.0, 10.0, 255.0]
        );
        assert!(d.sample(3, &[1, 4], DatumType::F32).is_err());
        let e = d.sample(0, &[1, 5], DatumType::F32).unwrap_err().to_string();
        assert!(e.contains("[2, 2]"), "{e}");
    }

    #[test]
    fn inconsistent_arrays_are_named() {
        let x = Tensor::from_shape(&[3, 2], &[0f32; 6]).unwrap();
        let y = Tensor::from_shape(&[2], &[1i64, 0]).unwrap();
        assert!(Labelled::new(x.clone(), y).unwrap_err().to_string().contains("3 samples but `y` has 2"));
        let y = Tensor::from_shape(&[3], &[1f32, 0.0, 1.0]).unwrap();
        assert!(Labelled::new(x, y).unwrap_err().to_string().contains("integers"));
    }

    #[test]
    fn a_missing_member_says_how_to_save_it() {
        let x = Tensor::from_shape(&[1], &[0f32]).unwrap();
        let mut buf = std::io::Cursor::new(vec![]);
        npz::write(&mut buf, &[("images", &x)], false).unwrap();
        buf.set_position(0);
        let e = Labelled::from_npz(buf).unwrap_err().to_string();
        assert!(e.contains("no `x` array") && e.contains("images") && e.contains("np.savez"), "{e}");
    }
}
