//! Tensors between the engine (tract `Tensor`) and the wire (`WireTensor`).

use std::sync::Arc;

use bytes::Bytes;
use cleave_engine::Tensor;
use cleave_graph::DType;
use cleave_proto::wire::{WireError, WireTensor};

/// An engine tensor from a validated wire tensor.
pub fn to_tensor(t: &WireTensor) -> Result<Arc<Tensor>, WireError> {
    if t.dtype == DType::Bf16 {
        return Err(WireError::invalid(format!("input `{}`: BF16 tensors cannot be computed on", t.name)));
    }
    if t.dtype == DType::Bool && t.data.iter().any(|&b| b > 1) {
        return Err(WireError::invalid(format!("input `{}`: BOOL elements must be 0 or 1", t.name)));
    }
    // SAFETY: `from_raw_dt` checks that the byte length matches the shape before copying, and
    // every bit pattern is a valid value of every numeric type; booleans were checked above.
    let tensor = unsafe { Tensor::from_raw_dt(t.dtype.datum_type(), &t.shape, &t.data) }
        .map_err(|e| WireError::invalid(format!("input `{}`: {e}", t.name)))?;
    Ok(Arc::new(tensor))
}

/// A wire tensor from an engine tensor.
pub fn to_wire(name: &str, t: &Tensor) -> Result<WireTensor, WireError> {
    let dtype = DType::from_datum_type(t.datum_type()).ok_or_else(|| {
        WireError::invalid(format!("output `{name}` has type {:?}, which the protocol cannot carry", t.datum_type()))
    })?;
    let plain = t.to_aligned_default().map_err(|e| WireError::invalid(format!("output `{name}`: {e}")))?;
    Ok(WireTensor {
        name: name.to_owned(),
        dtype,
        shape: t.shape().to_vec(),
        data: Bytes::copy_from_slice(plain.as_bytes()),
    })
}

/// [`to_wire`] for a shared tensor: its bytes go on the wire without a copy when they can.
pub fn to_wire_shared(name: &str, t: &Arc<Tensor>) -> Result<WireTensor, WireError> {
    let dtype = DType::from_datum_type(t.datum_type()).ok_or_else(|| {
        WireError::invalid(format!("output `{name}` has type {:?}, which the protocol cannot carry", t.datum_type()))
    })?;
    Ok(WireTensor { name: name.to_owned(), dtype, shape: t.shape().to_vec(), data: shared_bytes(t) })
}

/// Little-endian bytes of an engine tensor.
pub fn bytes_of(t: &Tensor) -> Vec<u8> {
    t.to_aligned_default().map(|p| p.as_bytes().to_vec()).unwrap_or_default()
}

/// The bytes of a shared engine tensor, without copying them: the buffer keeps the tensor alive.
pub fn shared_bytes(t: &Arc<Tensor>) -> Bytes {
    struct Owner(Arc<Tensor>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0.as_plain_ram_storage().map(|s| s.as_bytes()).unwrap_or(&[])
        }
    }
    let expected = t.len() * t.datum_type().size_of();
    match t.as_plain_ram_storage() {
        Some(s) if s.as_bytes().len() == expected && t.datum_type().is_copy() => Bytes::from_owner(Owner(t.clone())),
        _ => Bytes::from(bytes_of(t)),
    }
}
