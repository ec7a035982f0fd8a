//! Measures the JPEG codec's sizes on photos: the data behind `cleave_codec::jpeg`'s size prior.
//!
//! `cargo run --release -p cleave-codec --example jpeg_prior -- PHOTO.jpg…`
//!
//! Each photo is centre-cropped to a square, box-filtered to 224 × 224, and encoded through
//! `cleave_codec::encode` (as ImageNet-normalised f32, 1×3×224×224, and its luma as
//! 1×1×224×224) at several qualities. Prints, per quality, the payload bytes of each photo and
//! the bits per pixel of the entropy-coded data (payload minus the JPEG header), with the
//! median over the photos: the table `BPP` in `jpeg.rs`.

use std::io::Cursor;

use cleave_codec::{Codec, EncodeOptions, encode};
use image::ImageDecoder;
use image::codecs::jpeg::JpegDecoder;

const SIDE: usize = 224;
const QUALITIES: [u8; 9] = [1, 10, 25, 50, 75, 85, 90, 95, 100];

/// RGB pixels of a photo, centre-cropped and box-filtered to SIDE × SIDE.
fn load(path: &str) -> Result<Vec<[f32; 3]>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let d = JpegDecoder::new(Cursor::new(bytes)).map_err(|e| format!("{path}: {e}"))?;
    let (w, h) = d.dimensions();
    let (w, h) = (w as usize, h as usize);
    let ch = d.color_type().channel_count() as usize;
    let mut px = vec![0u8; d.total_bytes() as usize];
    d.read_image(&mut px).map_err(|e| format!("{path}: {e}"))?;
    let side = w.min(h);
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let mut out = vec![[0f32; 3]; SIDE * SIDE];
    for (i, o) in out.iter_mut().enumerate() {
        let (oy, ox) = (i / SIDE, i % SIDE);
        let (ya, yb) = (y0 + oy * side / SIDE, y0 + ((oy + 1) * side / SIDE).max(oy * side / SIDE + 1));
        let (xa, xb) = (x0 + ox * side / SIDE, x0 + ((ox + 1) * side / SIDE).max(ox * side / SIDE + 1));
        let mut n = 0.0;
        for y in ya..yb.min(y0 + side) {
            for x in xa..xb.min(x0 + side) {
                let p = &px[(y * w + x) * ch..][..ch];
                for k in 0..3 {
                    o[k] += p[if ch >= 3 { k } else { 0 }] as f32;
                }
                n += 1.0;
            }
        }
        o.iter_mut().for_each(|v| *v = (*v / n).round());
    }
    Ok(out)
}

/// Bytes of a bare JPEG file before its entropy-coded data, plus the EOI marker.
fn header_len(jpeg: &[u8]) -> usize {
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if jpeg[i + 1] == 0xDA {
            return i + 2 + len + 2;
        }
        i += 2 + len;
    }
    jpeg.len()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

fn main() -> Result<(), String> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("give JPEG photos as arguments".into());
    }
    let photos: Vec<(String, Vec<[f32; 3]>)> = paths
        .iter()
        .map(|p| load(p).map(|px| (p.rsplit('/').next().unwrap_or(p).to_owned(), px)))
        .collect::<Result<_, _>>()?;
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let pixels = (SIDE * SIDE) as f64;
    for (label, channels) in [("rgb", 3usize), ("gray", 1)] {
        println!("{label}: 1×{channels}×{SIDE}×{SIDE}; bytes per photo, then entropy-coded bits per pixel (median)");
        let mut header = None;
        for q in QUALITIES {
            let codec = Codec::jpeg(q).expect("quality in range");
            let mut sizes = vec![];
            let mut bpp = vec![];
            for (_, px) in &photos {
                let data: Vec<f32> = if channels == 3 {
                    (0..3).flat_map(|k| px.iter().map(move |p| (p[k] / 255.0 - mean[k]) / std[k])).collect()
                } else {
                    px.iter().map(|p| (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) / 255.0).collect()
                };
                let enc =
                    encode(&data, &[1, channels, SIDE, SIDE], EncodeOptions::new(codec)).map_err(|e| e.to_string())?;
                let h = header_len(&enc.payload);
                header = Some(h);
                sizes.push(enc.payload.len());
                bpp.push((enc.payload.len() - h) as f64 * 8.0 / pixels);
            }
            let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
            println!("  q{q:<3} {:>6.3} bpp  [{}]", median(&mut bpp), sizes.join(" "));
        }
        println!("  header: {} bytes", header.unwrap_or(0));
    }
    println!("photos: {}", photos.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", "));
    Ok(())
}
