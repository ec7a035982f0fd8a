//! `.npy` files ↔ tract tensors (the format work is `cleave_data::npy`'s).

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use cleave_engine::Tensor;

/// Reads a C-ordered `.npy` of a numeric or boolean type.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    cleave_data::npy::from_bytes(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
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

/// Writes a tensor as `.npy`.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    cleave_data::npy::write(&mut w, t).with_context(|| format!("writing {}", path.display()))?;
    w.flush()?;
    Ok(())
}
