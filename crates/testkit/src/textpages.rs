//! Pages of text for the PP-OCR text detector (`ch_PP-OCRv4_det_infer.onnx`, DBNet).
//!
//! A page is a 640×480 RGB frame (a VGA camera frame) holding 3–8 lines of document-like text
//! ([`textlines::random_text`]) in varied sizes (16–44 px), faces and positions, dark text on a
//! light background or light on dark, the background plain or a linear gradient, with a little
//! sensor noise and sometimes a slight blur. The fonts are the same as [`textlines`]' (DejaVu from
//! Debian's `fonts-dejavu-core`, or `$CLEAVE_FONT`). Every line's ink bounding box is recorded,
//! so a test can check where the detector sees text.
//!
//! **Frame size.** The detector's input is `x: [N, 3, H, W]` with dynamic N, H and W; DBNet
//! needs H and W to be multiples of 32. PaddleOCR's `predict_det.py` resizes with
//! `DetResizeForTest(limit_side_len=960, limit_type="max")`, which leaves an image whose sides
//! are ≤ 960 and multiples of 32 as it is: a 640×480 frame (20×32 by 15×32) goes in unresized,
//! so these pages are exactly what PaddleOCR would feed the model for a VGA camera frame.
//!
//! **Preprocessing** ([`det_input`]), as `TextDetector` in PaddleOCR's `tools/infer/predict_det.py`
//! with `NormalizeImage` from `ppocr/data/imaug/operators.py`: the image is read by OpenCV, so
//! its channels are **B, G, R**; each value `v` becomes `(v · 1/255 − mean[c]) / std[c]` with
//! mean `[0.485, 0.456, 0.406]` and std `[0.229, 0.224, 0.225]` indexed by that BGR channel
//! (the ImageNet constants, applied in BGR order); then HWC → CHW. Pages are stored as RGB
//! (like every other image here, and what a JPEG encoder takes), so the channels are reversed on
//! the way in: `cleave_data::image_frames_as(x, Normalize::imagenet(), ChannelOrder::Bgr)` is
//! exactly [`det_input`] for every stored page.
//!
//! Everything is deterministic in `(seed, index, fonts)`, and page `i` does not depend on how many
//! pages are rendered.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use cleave_engine::Tensor;
use cleave_graph::build::SeededNormal;

use crate::textlines::{Renderer, blur_121, mix, pick, random_text, uniform};

/// Page height (pixels): 15 × 32.
pub const HEIGHT: usize = 480;
/// Page width (pixels): 20 × 32.
pub const WIDTH: usize = 640;
/// Channels (RGB as stored, BGR as the detector takes them).
pub const CHANNELS: usize = 3;
/// PaddleOCR's detection normalisation, per channel of the model input (B, G, R).
pub const DET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`DET_MEAN`].
pub const DET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where one line's ink is: pixel columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    /// The text drawn there.
    pub text: String,
}

impl TextBox {
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
}

/// One rendered page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// HWC, RGB, `HEIGHT × WIDTH × 3`.
    pub rgb: Vec<u8>,
    /// The lines, top to bottom.
    pub boxes: Vec<TextBox>,
    /// Light text on a dark background.
    pub inverted: bool,
}

impl Page {
    /// CHW, RGB, as stored in the `.npz`.
    pub fn chw(&self) -> Vec<u8> {
        let plane = HEIGHT * WIDTH;
        let mut out = vec![0u8; CHANNELS * plane];
        for (i, px) in self.rgb.chunks_exact(CHANNELS).enumerate() {
            for c in 0..CHANNELS {
                out[c * plane + i] = px[c];
            }
        }
        out
    }
}

/// The detector's input for a page: CHW `[3, 480, 640]`, channels B, G, R, normalised as
/// PaddleOCR's `NormalizeImage` does (see the module documentation).
pub fn det_input(page: &Page) -> Vec<f32> {
    let plane = HEIGHT * WIDTH;
    let mut out = vec![0f32; CHANNELS * plane];
    for (i, px) in page.rgb.chunks_exact(CHANNELS).enumerate() {
        for c in 0..CHANNELS {
            let v = px[CHANNELS - 1 - c] as f32; // model channel 0 is blue
            out[c * plane + i] = (v * (1.0 / 255.0) - DET_MEAN[c]) / DET_STD[c];
        }
    }
    out
}

/// Renders pages from a set of fonts.
#[derive(Debug)]
pub struct PageRenderer {
    inner: Renderer,
}

impl PageRenderer {
    /// Loads every font (see [`crate::textlines::find_fonts`]); at least one is needed.
    pub fn load(font_paths: &[PathBuf]) -> io::Result<PageRenderer> {
        Ok(PageRenderer { inner: Renderer::load(font_paths)? })
    }

    /// Page `index` of the set `seed`.
    pub fn page(&self, seed: u64, index: u64) -> Page {
        let mut rng = SeededNormal::new(mix(seed.rotate_left(29) ^ mix(index.wrapping_add(0x9A6E))));
        let faces: Vec<&FontVec> = self.inner.faces().collect();
        let inverted = rng.uniform() < 0.3;

        // Background: one colour, or a linear gradient between two, light (or dark if inverted),
        // slightly tinted. Ink: dark (or light), far from the background.
        let (lo, hi) = if inverted { (0.0, 90.0) } else { (165.0, 255.0) };
        let background_colour = |rng: &mut SeededNormal| {
            let base = uniform(rng, lo, hi);
            [0; 3].map(|_| (base + uniform(rng, -12.0, 12.0)).clamp(0.0, 255.0))
        };
        let c0 = background_colour(&mut rng);
        let c1 = if rng.uniform() < 0.5 { background_colour(&mut rng) } else { c0 };
        let angle = uniform(&mut rng, 0.0, std::f64::consts::TAU);
        let ink_base = if inverted { uniform(&mut rng, 200.0, 255.0) } else { uniform(&mut rng, 0.0, 70.0) };
        let ink = [0; 3].map(|_| (ink_base + uniform(&mut rng, -15.0, 15.0)).clamp(0.0, 255.0));

        // Lines, top to bottom, never overlapping, always inside the page.
        let mut coverage = vec![0f32; HEIGHT * WIDTH];
        let mut boxes = vec![];
        let target = 3 + pick(&mut rng, 6);
        let mut y = uniform(&mut rng, 8.0, 40.0) as f32;
        for _ in 0..target * 3 {
            if boxes.len() == target {
                break;
            }
            let font = faces[pick(&mut rng, faces.len())];
            let size = uniform(&mut rng, 16.0, 44.0) as f32;
            let scaled = font.as_scaled(PxScale::from(size));
            let line_height = scaled.ascent() - scaled.descent();
            if y + line_height > HEIGHT as f32 - 8.0 {
                break;
            }
            let x = uniform(&mut rng, 8.0, 0.45 * WIDTH as f64) as f32;
            let mut text = random_text(&mut rng);
            // Drop words from the end until the line fits (keep at least one).
            while advance(font, size, &text) > WIDTH as f32 - 8.0 - x {
                match text.rfind(' ') {
                    Some(cut) => text.truncate(cut),
                    None => break,
                }
            }
            if advance(font, size, &text) > WIDTH as f32 - 8.0 - x {
                continue;
            }
            if let Some(b) = draw_line(&mut coverage, font, size, x, y + scaled.ascent(), &text) {
                boxes.push(b);
            }
            y += line_height + uniform(&mut rng, 0.25, 1.6) as f32 * size;
        }

        let (dx, dy) = (angle.cos(), angle.sin());
        let corners = [(0.0, 0.0), (WIDTH as f64, 0.0), (0.0, HEIGHT as f64), (WIDTH as f64, HEIGHT as f64)];
        let proj: Vec<f64> = corners.iter().map(|(x, y)| x * dx + y * dy).collect();
        let (pmin, pmax) = proj.iter().fold((f64::MAX, f64::MIN), |(a, b), &p| (a.min(p), b.max(p)));
        let noise = uniform(&mut rng, 0.5, 4.0);
        let blur = rng.uniform() < 0.25;
        let mut planes: Vec<Vec<f32>> = (0..CHANNELS)
            .map(|c| {
                let mut plane = vec![0f32; HEIGHT * WIDTH];
                for row in 0..HEIGHT {
                    for col in 0..WIDTH {
                        let t = ((col as f64 * dx + row as f64 * dy) - pmin) / (pmax - pmin);
                        let bg = c0[c] + (c1[c] - c0[c]) * t;
                        let cov = coverage[row * WIDTH + col] as f64;
                        plane[row * WIDTH + col] = (bg + (ink[c] - bg) * cov) as f32;
                    }
                }
                if blur {
                    blur_121(&mut plane, WIDTH, HEIGHT);
                }
                plane
            })
            .collect();
        let mut rgb = vec![0u8; HEIGHT * WIDTH * CHANNELS];
        for i in 0..HEIGHT * WIDTH {
            // Luminance noise, the same in every channel (as a sensor's after demosaicing, roughly).
            let n = noise * rng.normal();
            for (c, plane) in planes.iter_mut().enumerate() {
                rgb[i * CHANNELS + c] = (plane[i] as f64 + n).round().clamp(0.0, 255.0) as u8;
            }
        }
        Page { rgb, boxes, inverted }
    }
}

/// Horizontal advance of `text` at `size` px, with kerning.
fn advance(font: &FontVec, size: f32, text: &str) -> f32 {
    let scaled = font.as_scaled(PxScale::from(size));
    let mut caret = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            caret += scaled.kern(p, id);
        }
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    caret
}

/// Adds `text`'s ink coverage to the page, starting at `x` on `baseline`; its ink bounding box
/// (pixels with at least half coverage), or `None` if nothing was drawn.
fn draw_line(coverage: &mut [f32], font: &FontVec, size: f32, x: f32, baseline: f32, text: &str) -> Option<TextBox> {
    let scaled = font.as_scaled(PxScale::from(size));
    let mut caret = x;
    let mut previous = None;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(size, point(caret, baseline));
        caret += scaled.h_advance(id);
        previous = Some(id);
        let Some(outlined) = font.outline_glyph(glyph) else { continue };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, c| {
            let px = bounds.min.x as i64 + gx as i64;
            let py = bounds.min.y as i64 + gy as i64;
            if (0..WIDTH as i64).contains(&px) && (0..HEIGHT as i64).contains(&py) {
                let (px, py) = (px as usize, py as usize);
                let cell = &mut coverage[py * WIDTH + px];
                *cell = (*cell + c).min(1.0);
                if *cell >= 0.5 {
                    (x0, y0, x1, y1) = (x0.min(px), y0.min(py), x1.max(px + 1), y1.max(py + 1));
                }
            }
        });
    }
    (x0 < x1 && y0 < y1).then(|| TextBox { x0, y0, x1, y1, text: text.to_owned() })
}

/// Renders pages `0..n` of the set `seed` with `font_paths`.
pub fn render(n: usize, seed: u64, font_paths: &[PathBuf]) -> io::Result<Vec<Page>> {
    let renderer = PageRenderer::load(font_paths)?;
    Ok((0..n as u64).map(|i| renderer.page(seed, i)).collect())
}

/// Writes pages as a NumPy `.npz` (deflated): `x` uint8 `[N, 3, 480, 640]` (NCHW, **RGB**, raw
/// 0..255; see the module documentation for the detector's normalisation and channel order) and
/// `boxes` int32 `[K, 5]`, one row per text line: page index, x0, y0, x1, y1 (ink bounding box,
/// end-exclusive pixels).
pub fn write_npz(path: &Path, pages: &[Page]) -> io::Result<()> {
    let mut file = BufWriter::new(File::create(path)?);
    write_npz_to(&mut file, pages)?;
    file.flush()
}

/// [`write_npz`] into any seekable writer.
pub fn write_npz_to<W: Write + Seek>(out: &mut W, pages: &[Page]) -> io::Result<()> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    if let Some(bad) = pages.iter().position(|p| p.rgb.len() != HEIGHT * WIDTH * CHANNELS) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("page {bad} is not {WIDTH}×{HEIGHT} RGB")));
    }
    let pixels: Vec<u8> = pages.iter().flat_map(|p| p.chw()).collect();
    let x = Tensor::from_shape(&[pages.len(), CHANNELS, HEIGHT, WIDTH], &pixels).map_err(|e| invalid(e.to_string()))?;
    let rows: Vec<i32> = pages
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.boxes.iter().flat_map(move |b| [i, b.x0, b.y0, b.x1, b.y1].map(|v| v as i32)))
        .collect();
    let boxes = Tensor::from_shape(&[rows.len() / 5, 5], &rows).map_err(|e| invalid(e.to_string()))?;
    cleave_data::npz::write(out, &[("x", &x), ("boxes", &boxes)], true).map_err(|e| match e {
        cleave_data::DataError::Io(e) => e,
        e => invalid(e.to_string()),
    })
}

/// Writes a PNG of `pages` at half size, `columns` across, each line's box outlined in green.
/// `maps`, when given (one `HEIGHT × WIDTH` map in 0..1 per page, e.g. the detector's
/// probabilities), are drawn below their pages in grey.
pub fn write_contact_sheet(path: &Path, pages: &[Page], maps: Option<&[Vec<f32>]>, columns: usize) -> io::Result<()> {
    let columns = columns.max(1);
    let (tw, th) = (WIDTH / 2 + 4, if maps.is_some() { HEIGHT + 6 } else { HEIGHT / 2 + 4 });
    let rows = pages.len().div_ceil(columns).max(1);
    let (width, height) = (columns * tw, rows * th);
    let mut rgb = vec![255u8; width * height * 3];
    for (i, page) in pages.iter().enumerate() {
        let (ox, oy) = ((i % columns) * tw + 2, (i / columns) * th + 2);
        let mut put = |x: usize, y: usize, c: [u8; 3]| rgb[((oy + y) * width + ox + x) * 3..][..3].copy_from_slice(&c);
        for y in 0..HEIGHT / 2 {
            for x in 0..WIDTH / 2 {
                let s = &page.rgb[((2 * y) * WIDTH + 2 * x) * 3..][..3];
                put(x, y, [s[0], s[1], s[2]]);
            }
        }
        for b in &page.boxes {
            for x in b.x0 / 2..(b.x1 / 2).min(WIDTH / 2) {
                put(x, b.y0 / 2, [0, 200, 0]);
                put(x, (b.y1 / 2).min(HEIGHT / 2 - 1), [0, 200, 0]);
            }
            for y in b.y0 / 2..(b.y1 / 2).min(HEIGHT / 2) {
                put(b.x0 / 2, y, [0, 200, 0]);
                put((b.x1 / 2).min(WIDTH / 2 - 1), y, [0, 200, 0]);
            }
        }
        if let Some(map) = maps.and_then(|m| m.get(i)) {
            for y in 0..HEIGHT / 2 {
                for x in 0..WIDTH / 2 {
                    let v = map.get((2 * y) * WIDTH + 2 * x).copied().unwrap_or(0.0);
                    put(x, HEIGHT / 2 + 2 + y, [(v.clamp(0.0, 1.0) * 255.0).round() as u8; 3]);
                }
            }
        }
    }
    let file = BufWriter::new(File::create(path)?);
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(())
}
