//! `.npz` archives: a zip of `.npy` members, as `numpy.savez` (stored) and
//! `numpy.savez_compressed` (deflated) write them. Member `NAME.npy` is array `NAME`.

use std::io::{Read, Seek, Write};

use zip::write::SimpleFileOptions;

use crate::{DataError, Result, Tensor, npy};

fn zip_err(e: zip::result::ZipError) -> DataError {
    DataError::Zip(e.to_string())
}

/// The arrays of an archive, in archive order. `max_bytes` bounds each member's uncompressed
/// size, checked before it is read (a small archive can claim a huge member).
pub fn read<R: Read + Seek>(reader: R, max_bytes: u64) -> Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(reader).map_err(zip_err)?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(zip_err)?;
        if member.is_dir() {
            continue;
        }
        let file = member.name().map_err(zip_err)?.to_string();
        let name = file.strip_suffix(".npy").unwrap_or(&file).to_owned();
        if member.size() > max_bytes {
            return Err(DataError::Content(format!(
                "array `{name}` is {} bytes, more than the {max_bytes}-byte limit",
                member.size()
            )));
        }
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut bytes).map_err(|e| DataError::Zip(format!("member `{file}`: {e}")))?;
        let t = npy::from_bytes(&bytes).map_err(|e| DataError::Content(format!("array `{name}`: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// Writes named arrays as an `.npz`; `compress` deflates the members (like
/// `numpy.savez_compressed`). The archive's bytes depend only on the arrays (fixed timestamps).
pub fn write<W: Write + Seek>(writer: W, arrays: &[(&str, &Tensor)], compress: bool) -> Result<()> {
    let mut zip = zip::ZipWriter::new(writer);
    let method = if compress { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default())
        .large_file(arrays.iter().any(|(_, t)| t.len() * t.datum_type().size_of() >= u32::MAX as usize / 2));
    for (name, t) in arrays {
        zip.start_file(format!("{name}.npy"), options).map_err(zip_err)?;
        npy::write(&mut zip, t)?;
    }
    zip.finish().map_err(zip_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn round_trip_stored_and_compressed() {
        let x = Tensor::from_shape(&[2, 3], &[1f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let y = Tensor::from_shape(&[2], &[7u8, 9]).unwrap();
        for compress in [false, true] {
            let mut buf = Cursor::new(vec![]);
            write(&mut buf, &[("x", &x), ("y", &y)], compress).unwrap();
            let back = read(Cursor::new(buf.into_inner()), 1 << 20).unwrap();
            assert_eq!(back.len(), 2);
            assert_eq!(back[0].0, "x");
            assert_eq!(back[0].1, x);
            assert_eq!(back[1].0, "y");
            assert_eq!(back[1].1, y);
        }
    }

    #[test]
    fn writing_is_deterministic() {
        let x = Tensor::from_shape(&[4], &[1f32, 2.0, 3.0, 4.0]).unwrap();
        let bytes = || {
            let mut buf = Cursor::new(vec![]);
            write(&mut buf, &[("x", &x)], true).unwrap();
            buf.into_inner()
        };
        assert_eq!(bytes(), bytes());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read(Cursor::new(b"not a zip at all".to_vec()), 1 << 20).is_err());
        let x = Tensor::from_shape(&[4], &[1f32, 2.0, 3.0, 4.0]).unwrap();
        let mut buf = Cursor::new(vec![]);
        write(&mut buf, &[("x", &x)], false).unwrap();
        let bytes = buf.into_inner();
        for cut in [10, bytes.len() / 2, bytes.len() - 5] {
            assert!(read(Cursor::new(bytes[..cut].to_vec()), 1 << 20).is_err(), "truncated at {cut}");
        }
        let e = read(Cursor::new(bytes), 8).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }
}
