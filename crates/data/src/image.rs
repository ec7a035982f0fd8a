//! Image sets → model inputs: one `1×C×H×W` float32 frame per image of an NCHW array.
//!
//! Image sets are stored as `x`: uint8 (raw 0..255 pixels) or float32, `[N, C, H, W]`, channels
//! in RGB order (`assets/photos/photos.npz`, the text pages of `cleave-testkit`). A model wants
//! float32 in its own units; [`Normalize`] says which, and [`ChannelOrder`] whether the model
//! reads the channels reversed (BGR, as OpenCV-based pipelines such as PaddleOCR do).

use crate::{DatumType, Tensor};

/// How stored values `v` (u8 or f32 alike) become model inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalize {
    /// `v` as is (0..255 for uint8 images; already-normalised float sets).
    Raw,
    /// `v / 255`.
    Unit,
    /// `(v · scale − mean[c]) / std[c]`, `c` the channel of the **model input** (after any
    /// reordering by [`ChannelOrder`]). Needs 3 channels.
    MeanStd { mean: [f32; 3], std: [f32; 3], scale: f32 },
}

impl Normalize {
    /// The ImageNet statistics torchvision and most ImageNet models use:
    /// `(v/255 − [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]`.
    pub fn imagenet() -> Normalize {
        Normalize::MeanStd { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], scale: 1.0 / 255.0 }
    }

    fn apply(&self, v: f32, channel: usize) -> f32 {
        match *self {
            Normalize::Raw => v,
            Normalize::Unit => v / 255.0,
            Normalize::MeanStd { mean, std, scale } => (v * scale - mean[channel]) / std[channel],
        }
    }
}

/// The channel order the model takes, relative to the stored (RGB) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    /// As stored.
    #[default]
    Rgb,
    /// Reversed: the model's channel 0 is the stored channel 2 (needs 3 channels).
    Bgr,
}

/// One model input: its shape `[1, C, H, W]` and values, row-major.
pub type Frame = (Vec<usize>, Vec<f32>);

/// Why an array is not a usable image set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("images must be an NCHW array of rank 4, got shape {0:?}")]
    Rank(Vec<usize>),
    #[error("images must be uint8 or float32, got {0:?}")]
    DType(DatumType),
    #[error("images of shape {0:?} are empty (a zero dimension)")]
    Empty(Vec<usize>),
    #[error("{what} needs 3 channels, the images have {channels} (shape [N, C, H, W] = {shape:?})")]
    Channels { what: &'static str, channels: usize, shape: Vec<usize> },
    #[error("the normalisation's std has a zero or non-finite value: {0:?}")]
    Std([f32; 3]),
}

/// Every image of `x` (uint8 or float32, `[N, C, H, W]`) as a `[1, C, H, W]` frame, normalised,
/// channels as stored. See [`image_frames_as`].
pub fn image_frames(x: &Tensor, normalize: Normalize) -> Result<Vec<Frame>, ImageError> {
    image_frames_as(x, normalize, ChannelOrder::Rgb)
}

/// Every image of `x` (uint8 or float32, `[N, C, H, W]`) as a `[1, C, H, W]` frame: channels
/// reordered as `order` says, then each value normalised by `normalize` (whose per-channel
/// constants are indexed by the model's channel).
///
/// PaddleOCR's text detector, for example, takes BGR with the ImageNet constants in that order:
/// `image_frames_as(x, Normalize::imagenet(), ChannelOrder::Bgr)`.
pub fn image_frames_as(x: &Tensor, normalize: Normalize, order: ChannelOrder) -> Result<Vec<Frame>, ImageError> {
    let shape = x.shape().to_vec();
    let &[n, c, h, w] = shape.as_slice() else { return Err(ImageError::Rank(shape)) };
    if shape.contains(&0) {
        return Err(ImageError::Empty(shape));
    }
    if c != 3 {
        if let Normalize::MeanStd { .. } = normalize {
            return Err(ImageError::Channels { what: "mean/std normalisation", channels: c, shape });
        }
        if order == ChannelOrder::Bgr {
            return Err(ImageError::Channels { what: "BGR order", channels: c, shape });
        }
    }
    if let Normalize::MeanStd { std, .. } = normalize {
        if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(ImageError::Std(std));
        }
    }
    // Stored values as f32, read in place (tensors are contiguous, row-major).
    let u8s;
    let f32s;
    let values: &dyn Fn(usize) -> f32 = match x.datum_type() {
        DatumType::U8 => {
            u8s = x.to_plain_array_view::<u8>().map_err(|_| ImageError::DType(DatumType::U8))?;
            let s = u8s.as_slice().ok_or(ImageError::DType(DatumType::U8))?;
            &move |i| s[i] as f32
        }
        DatumType::F32 => {
            f32s = x.to_plain_array_view::<f32>().map_err(|_| ImageError::DType(DatumType::F32))?;
            let s = f32s.as_slice().ok_or(ImageError::DType(DatumType::F32))?;
            &move |i| s[i]
        }
        other => return Err(ImageError::DType(other)),
    };
    let plane = h * w;
    let per = c * plane;
    Ok((0..n)
        .map(|img| {
            let mut out = Vec::with_capacity(per);
            for ch in 0..c {
                let src = match order {
                    ChannelOrder::Rgb => ch,
                    ChannelOrder::Bgr => c - 1 - ch,
                };
                let base = img * per + src * plane;
                out.extend((base..base + plane).map(|i| normalize.apply(values(i), ch)));
            }
            (vec![1, c, h, w], out)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 3×1×2 images with distinct values per channel.
    fn set_u8() -> Tensor {
        #[rustfmt::skip]
        let v: [u8; 12] = [
            0, 255, /* R */ 51, 102, /* G */ 10, 20, /* B */
            1, 2, 3, 4, 5, 6,
        ];
        Tensor::from_shape(&[2, 3, 1, 2], &v).unwrap()
    }

    #[test]
    fn raw_and_unit() {
        let frames = image_frames(&set_u8(), Normalize::Raw).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, [1, 3, 1, 2]);
        assert_eq!(frames[0].1, [0.0, 255.0, 51.0, 102.0, 10.0, 20.0]);
        assert_eq!(frames[1].1, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let unit = image_frames(&set_u8(), Normalize::Unit).unwrap();
        assert_eq!(unit[0].1[..4], [0.0, 1.0, 0.2, 0.4]);
    }

    #[test]
    fn imagenet_per_channel() {
        let f = &image_frames(&set_u8(), Normalize::imagenet()).unwrap()[0].1;
        let expect = |v: f32, m: f32, s: f32| (v / 255.0 - m) / s;
        let want = [
            expect(0.0, 0.485, 0.229),
            expect(255.0, 0.485, 0.229),
            expect(51.0, 0.456, 0.224),
            expect(102.0, 0.456, 0.224),
            expect(10.0, 0.406, 0.225),
            expect(20.0, 0.406, 0.225),
        ];
        for (got, want) in f.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn bgr_reverses_channels_before_normalising() {
        let f = &image_frames_as(&set_u8(), Normalize::Raw, ChannelOrder::Bgr).unwrap()[0].1;
        assert_eq!(*f, [10.0, 20.0, 51.0, 102.0, 0.0, 255.0]);
        // Model channel 0 (stored blue, 10) gets mean[0] and std[0].
        let f = &image_frames_as(&set_u8(), Normalize::imagenet(), ChannelOrder::Bgr).unwrap()[0].1;
        assert!((f[0] - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((f[5] - (255.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }

    #[test]
    fn float_sets_are_read_as_stored() {
        let x = Tensor::from_shape(&[1, 1, 2, 2], &[0.5f32, -1.0, 2.0, 255.0]).unwrap();
        assert_eq!(image_frames(&x, Normalize::Raw).unwrap()[0].1, [0.5, -1.0, 2.0, 255.0]);
        assert_eq!(image_frames(&x, Normalize::Unit).unwrap()[0].1[3], 1.0);
    }

    #[test]
    fn bad_arrays_are_typed_errors() {
        let rank3 = Tensor::from_shape(&[3, 2, 2], &[0u8; 12]).unwrap();
        assert_eq!(image_frames(&rank3, Normalize::Raw).unwrap_err(), ImageError::Rank(vec![3, 2, 2]));
        let ints = Tensor::from_shape(&[1, 3, 1, 1], &[1i64, 2, 3]).unwrap();
        assert_eq!(image_frames(&ints, Normalize::Raw).unwrap_err(), ImageError::DType(DatumType::I64));
        let empty = Tensor::from_shape(&[0, 3, 2, 2], &[0u8; 0]).unwrap();
        assert!(matches!(image_frames(&empty, Normalize::Raw), Err(ImageError::Empty(_))));
        let grey = Tensor::from_shape(&[1, 1, 1, 2], &[0u8, 1]).unwrap();
        assert!(matches!(image_frames(&grey, Normalize::imagenet()), Err(ImageError::Channels { channels: 1, .. })));
        assert!(matches!(
            image_frames_as(&grey, Normalize::Raw, ChannelOrder::Bgr),
            Err(ImageError::Channels { channels: 1, .. })
        ));
        // Grey images are fine with Raw and Unit.
        assert_eq!(image_frames(&grey, Normalize::Unit).unwrap()[0].0, [1, 1, 1, 2]);
        let zero_std = Normalize::MeanStd { mean: [0.0; 3], std: [1.0, 0.0, 1.0], scale: 1.0 };
        assert!(matches!(image_frames(&set_u8(), zero_std), Err(ImageError::Std(_))));
        // Errors read well through DataError too.
        let e = crate::DataError::from(ImageError::Rank(vec![3, 2, 2])).to_string();
        assert!(e.contains("rank 4") && e.contains("[3, 2, 2]"), "{e}");
    }

    #[test]
    fn the_committed_photos_load() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/photos/photos.npz");
        let file = std::fs::File::open(path).expect("assets/photos/photos.npz is committed");
        let arrays = crate::npz::read(std::io::BufReader::new(file), 1 << 26).unwrap();
        let x = &arrays.iter().find(|(n, _)| n == "x").expect("an `x` array").1;
        assert_eq!(x.datum_type(), DatumType::U8);
        assert_eq!(x.shape(), [13, 3, 224, 224]);
        let frames = image_frames(x, Normalize::imagenet()).unwrap();
        assert_eq!(frames.len(), 13);
        for (shape, values) in &frames {
            assert_eq!(*shape, [1, 3, 224, 224]);
            assert!(values.iter().all(|v| v.is_finite() && (-2.2..=2.7).contains(v)));
        }
        // Real photographs, not noise or flat fields: each has spread and neighbouring pixels agree.
        for (i, (_, v)) in frames.iter().enumerate() {
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
            let diff = v.windows(2).map(|p| (p[1] - p[0]).powi(2)).sum::<f32>() / v.len() as f32;
            assert!(var > 0.01, "image {i}: variance {var}");
            assert!(diff < var, "image {i}: neighbour differences {diff} vs variance {var}: noise?");
        }
    }
}
