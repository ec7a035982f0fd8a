//! Tensors in NumPy files, and labelled datasets.
//!
//! - [`npy`]: one C-ordered `.npy` array ↔ a tract [`Tensor`] (numeric and boolean types).
//! - [`npz`]: an `.npz` archive (what `numpy.savez` and `numpy.savez_compressed` write: a zip
//!   of `.npy` members) ↔ named tensors.
//! - [`Labelled`]: a classification dataset, an `.npz` with `x` (samples along axis 0) and `y`
//!   (integer labels), as `cleave calibrate --data` reads it.
//! - [`image`]: image sets (`[N, C, H, W]`, uint8 or float32) → normalised `1×C×H×W` model
//!   inputs ([`image_frames`], [`Normalize`], [`ChannelOrder`]).
//!
//! Everything works on bytes and `std::io` readers and writers; opening files is the caller's
//! business. Malformed input is an error naming the problem, never a panic.

pub mod image;
pub mod labelled;
pub mod npy;
pub mod npz;

pub use cleave_engine::{DatumType, Tensor};
pub use image::{ChannelOrder, Frame, ImageError, Normalize, image_frames, image_frames_as};
pub use labelled::Labelled;

/// What can go wrong reading or writing NumPy data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Not a usable `.npy` array.
    #[error("{0}")]
    Npy(String),
    /// Not a readable `.npz` (zip) archive.
    #[error("not a usable .npz archive: {0}")]
    Zip(String),
    /// An archive member is missing or has the wrong form.
    #[error("{0}")]
    Content(String),
    /// An array is not a usable image set.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
