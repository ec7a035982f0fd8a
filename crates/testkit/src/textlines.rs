//! Labelled text-line images for the PP-OCR text-direction classifier
//! (`ch_ppocr_mobile_v2.0_cls_infer.onnx`: label 0 = "0", upright; label 1 = "180", rotated).
//!
//! Lines of document-like text (words, numbers, dates, prices, codes; 3–30 characters) are
//! rendered with a real font ([`find_fonts`]: DejaVu from Debian's `fonts-dejavu-core`, or
//! `$CLEAVE_FONT`) by `ab_glyph`, with seeded variation of face, size, grey levels, padding,
//! noise and blur. Half of them are then rotated by 180°, and every line is preprocessed exactly
//! as PaddleOCR's `TextClassifier.resize_norm_img` does ([`preprocess`]).
//!
//! Everything is deterministic in `(seed, index, fonts)`: sample `i` does not depend on how many
//! samples are rendered, so `render(200, s, f)` is a prefix of `render(1000, s, f)`.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use cleave_engine::Tensor;
use cleave_graph::build::SeededNormal;

/// Channels of the classifier's input.
pub const CHANNELS: usize = 3;
/// Height of the classifier's input.
pub const HEIGHT: usize = 48;
/// Width of the classifier's input (lines are resized to height 48, then padded or squeezed).
pub const WIDTH: usize = 192;
/// Floats in one preprocessed sample (`CHANNELS × HEIGHT × WIDTH`).
pub const SAMPLE_LEN: usize = CHANNELS * HEIGHT * WIDTH;
/// The classifier's class names, by label.
pub const LABELS: [&str; 2] = ["0", "180"];

/// Where Debian's `fonts-dejavu-core` installs its fonts.
pub const DEJAVU_DIR: &str = "/usr/share/fonts/truetype/dejavu";
/// The faces used, all in `fonts-dejavu-core`; `DejaVuSans.ttf` first.
pub const DEJAVU_FACES: &[&str] =
    &["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf"];
/// What to tell a user without fonts.
pub const NO_FONT_HINT: &str = "no font found: apt-get install fonts-dejavu-core, or set CLEAVE_FONT to a .ttf file";

/// One preprocessed, labelled line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// CHW `[3, 48, 192]`, normalised to [-1, 1], zero-padded on the right.
    pub image: Vec<f32>,
    /// 0: upright, 1: rotated by 180°.
    pub label: u8,
    /// The text rendered.
    pub text: String,
}

/// An 8-bit grey image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// The image rotated by 180° (both axes flipped).
    pub fn rotated_180(&self) -> GrayImage {
        let mut pixels = self.pixels.clone();
        pixels.reverse();
        GrayImage { width: self.width, height: self.height, pixels }
    }
}

/// The first font available: `$CLEAVE_FONT` (first entry) if it names a file, else DejaVu Sans.
pub fn find_font() -> Option<PathBuf> {
    find_fonts().into_iter().next()
}

/// The fonts to render with: the files listed in `$CLEAVE_FONT` (a path list, `:`-separated)
/// if it is set, else those of [`DEJAVU_FACES`] present in [`DEJAVU_DIR`]. Never downloads.
pub fn find_fonts() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("CLEAVE_FONT") {
        return std::env::split_paths(&list).filter(|p| p.is_file()).collect();
    }
    DEJAVU_FACES.iter().map(|f| Path::new(DEJAVU_DIR).join(f)).filter(|p| p.is_file()).collect()
}

/// Renders lines from a set of fonts.
pub struct Renderer {
    fonts: Vec<(PathBuf, FontVec)>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("fonts", &self.fonts.iter().map(|(p, _)| p).collect::<Vec<_>>()).finish()
    }
}

impl Renderer {
    /// Loads every font (TrueType/OpenType files). At least one is needed.
    pub fn load(font_paths: &[PathBuf]) -> io::Result<Renderer> {
        if font_paths.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, NO_FONT_HINT));
        }
        let fonts = font_paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                let font = FontVec::try_from_vec(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display())))?;
                Ok((p.clone(), font))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Renderer { fonts })
    }

    /// The font files loaded.
    pub fn font_paths(&self) -> Vec<&Path> {
        self.fonts.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// The loaded faces (at least one), for other renderers in this crate.
    pub(crate) fn faces(&self) -> impl ExactSizeIterator<Item = &FontVec> {
        self.fonts.iter().map(|(_, f)| f)
    }

    /// Line `index` of the dataset `seed`, upright, and its text.
    pub fn line(&self, seed: u64, index: u64) -> (GrayImage, String) {
        let mut rng = SeededNormal::new(mix(seed ^ mix(index.wrapping_add(0x5EED))));
        let text = random_text(&mut rng);
        let image = self.draw(&mut rng, &text);
        (image, text)
    }

    /// Sample `index` of the dataset `seed`: the line, rotated if its label is 1, preprocessed.
    pub fn sample(&self, seed: u64, index: u64) -> Sample {
        let (upright, text) = self.line(seed, index);
        let label = label_of(seed, index);
        let image = if label == 1 { upright.rotated_180() } else { upright };
        Sample { image: preprocess(&image), label, text }
    }

    /// Draws `text` with seeded variation: face, size, grey levels, padding, noise, blur.
    fn draw(&self, rng: &mut SeededNormal, text: &str) -> GrayImage {
        let font = &self.fonts[pick(rng, self.fonts.len())].1;
        let size = uniform(rng, 22.0, 44.0) as f32;
        let scaled = font.as_scaled(PxScale::from(size));
        let (ascent, descent) = (scaled.ascent(), scaled.descent());
        let pad_left = uniform(rng, 1.0, 0.5 * size as f64) as f32;
        let pad_right = uniform(rng, 1.0, 0.5 * size as f64) as f32;
        let pad_top = uniform(rng, 0.0, 0.15 * size as f64) as f32;
        let pad_bottom = uniform(rng, 0.0, 0.15 * size as f64) as f32;

        // Lay out on one baseline, with kerning.
        let mut glyphs = Vec::with_capacity(text.len());
        let mut caret = pad_left;
        let mut previous = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = previous {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(size, point(caret, pad_top + ascent)));
            caret += scaled.h_advance(id);
            previous = Some(id);
        }
        let width = (caret + pad_right).ceil().max(1.0) as usize;
        let height = (pad_top + ascent - descent + pad_bottom).ceil().max(1.0) as usize;

        // Ink coverage, then composite grey levels.
        let mut coverage = vec![0f32; width * height];
        for g in glyphs {
            let Some(outlined) = font.outline_glyph(g) else { continue };
            let bounds = outlined.px_bounds();
            outlined.draw(|x, y, c| {
                let px = bounds.min.x as i64 + x as i64;
                let py = bounds.min.y as i64 + y as i64;
                if (0..width as i64).contains(&px) && (0..height as i64).contains(&py) {
                    let cell = &mut coverage[py as usize * width + px as usize];
                    *cell = (*cell + c).min(1.0);
                }
            });
        }
        let background = uniform(rng, 175.0, 255.0);
        let ink = uniform(rng, 0.0, 80.0);
        let noise = uniform(rng, 0.0, 6.0);
        let mut grey: Vec<f32> =
            coverage.iter().map(|&c| (background + (ink - background) * c as f64) as f32).collect();
        if rng.uniform() < 0.3 {
            blur_121(&mut grey, width, height);
        }
        let pixels = grey.iter().map(|&v| (v as f64 + noise * rng.normal()).round().clamp(0.0, 255.0) as u8).collect();
        GrayImage { width, height, pixels }
    }
}

/// Renders samples `0..n` of the dataset `seed` with `font_paths` (see [`find_fonts`]).
pub fn render(n: usize, seed: u64, font_paths: &[PathBuf]) -> io::Result<Vec<Sample>> {
    let renderer = Renderer::load(font_paths)?;
    Ok((0..n as u64).map(|i| renderer.sample(seed, i)).collect())
}

/// The label of sample `index`: each pair `(2k, 2k+1)` holds one upright and one rotated line,
/// in a seeded order, so any even prefix is exactly balanced.
pub fn label_of(seed: u64, index: u64) -> u8 {
    let flip = mix(seed.rotate_left(17) ^ mix(index / 2)) & 1;
    ((index & 1) ^ flip) as u8
}

/// PaddleOCR's `resize_norm_img` for the classifier (`cls_image_shape = 3,48,192`): resize to
/// height 48 keeping the aspect ratio, width `min(192, ceil(48·w/h))` (bilinear, pixel centres
/// aligned as `cv2.INTER_LINEAR`, rounded to 8 bits as `cv2.resize` does on 8-bit images),
/// scale to `(v/255 − 0.5)/0.5`, and pad the remaining width with 0. CHW, grey in all 3 channels.
pub fn preprocess(img: &GrayImage) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    let resized_w = ((HEIGHT as f64 * w as f64 / h as f64).ceil() as usize).clamp(1, WIDTH);
    let mut plane = vec![0f32; HEIGHT * WIDTH];
    let (sx, sy) = (w as f64 / resized_w as f64, h as f64 / HEIGHT as f64);
    let px = |x: usize, y: usize| img.pixels[y * w + x] as f64;
    for dy in 0..HEIGHT {
        let (y0, y1, fy) = source_coord(dy, sy, h);
        for dx in 0..resized_w {
            let (x0, x1, fx) = source_coord(dx, sx, w);
            let top = px(x0, y0) * (1.0 - fx) + px(x1, y0) * fx;
            let bottom = px(x0, y1) * (1.0 - fx) + px(x1, y1) * fx;
            let v = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0);
            plane[dy * WIDTH + dx] = ((v / 255.0 - 0.5) / 0.5) as f32;
        }
    }
    let mut out = Vec::with_capacity(SAMPLE_LEN);
    for _ in 0..CHANNELS {
        out.extend_from_slice(&plane);
    }
    out
}

/// Source pixels and weight for destination index `d` at scale `s` (half-pixel centres, edges
/// clamped).
fn source_coord(d: usize, s: f64, n: usize) -> (usize, usize, f64) {
    let x = ((d as f64 + 0.5) * s - 0.5).max(0.0);
    let x0 = (x.floor() as usize).min(n - 1);
    let x1 = (x0 + 1).min(n - 1);
    (x0, x1, if x0 == n - 1 { 0.0 } else { x - x0 as f64 })
}

/// A separable [1, 2, 1]/4 blur (edges replicated).
pub(crate) fn blur_121(v: &mut [f32], width: usize, height: usize) {
    let src = v.to_vec();
    for y in 0..height {
        for x in 0..width {
            let at = |x: usize| src[y * width + x];
            v[y * width + x] = (at(x.saturating_sub(1)) + 2.0 * at(x) + at((x + 1).min(width - 1))) / 4.0;
        }
    }
    let src = v.to_vec();
    for y in 0..height {
        for x in 0..width {
            let at = |y: usize| src[y * width + x];
            v[y * width + x] = (at(y.saturating_sub(1)) + 2.0 * at(y) + at((y + 1).min(height - 1))) / 4.0;
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "for",
    "with",
    "on",
    "by",
    "from",
    "at",
    "is",
    "are",
    "was",
    "this",
    "that",
    "new",
    "first",
    "last",
    "year",
    "month",
    "day",
    "time",
    "price",
    "quantity",
    "item",
    "description",
    "unit",
    "tax",
    "total",
    "amount",
    "balance",
    "due",
    "paid",
    "received",
    "invoice",
    "order",
    "account",
    "payment",
    "customer",
    "number",
    "date",
    "address",
    "street",
    "road",
    "city",
    "phone",
    "email",
    "report",
    "page",
    "section",
    "table",
    "figure",
    "shipping",
    "delivery",
    "service",
    "product",
    "company",
    "limited",
    "north",
    "south",
    "market",
    "office",
    "annual",
    "meeting",
    "summary",
    "results",
    "revenue",
    "growth",
    "net",
    "income",
    "cost",
    "value",
    "reference",
    "contact",
    "please",
    "note",
    "thank",
    "you",
    "your",
    "our",
    "will",
    "be",
    "not",
    "all",
    "more",
    "than",
    "per",
    "about",
    "under",
    "over",
    "between",
    "after",
    "before",
    "during",
    "water",
    "energy",
    "system",
    "network",
    "data",
    "model",
    "sample",
    "result",
    "method",
    "analysis",
    "quality",
    "standard",
    "general",
    "public",
    "health",
    "school",
    "program",
    "project",
    "manager",
    "director",
    "board",
    "member",
    "group",
    "national",
    "bank",
    "insurance",
    "policy",
    "claim",
    "hospital",
    "patient",
    "medical",
    "coffee",
    "bread",
    "milk",
    "cheese",
    "apple",
    "morning",
    "evening",
    "weekly",
    "station",
    "train",
    "ticket",
];
const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const UNITS: &[&str] = &["kg", "km", "ml", "pcs", "m2", "h", "%"];
const CURRENCIES: &[&str] = &["$", "€", "£"];

/// A line of document-like text, 3 to 30 characters.
pub fn random_text(rng: &mut SeededNormal) -> String {
    let target = 3 + pick(rng, 28);
    let mut line = String::new();
    let mut len = 0;
    while len < target {
        let token = random_token(rng, line.is_empty());
        let n = token.chars().count();
        if len > 0 && len + 1 + n > 30 {
            break;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        line.push_str(&token);
        len += n;
    }
    while len < 3 {
        let digits = (1 + pick(rng, 99)).to_string();
        len += 1 + digits.len();
        line.push(' ');
        line.push_str(&digits);
    }
    line
}

fn random_token(rng: &mut SeededNormal, first: bool) -> String {
    let r = rng.uniform();
    let mut token = if r < 0.6 {
        let w = WORDS[pick(rng, WORDS.len())];
        let case = rng.uniform();
        if case < 0.08 {
            w.to_uppercase()
        } else if first || case < 0.3 {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        } else {
            w.to_string()
        }
    } else if r < 0.7 {
        match pick(rng, 4) {
            0 => pick(rng, 100).to_string(),
            1 => (pick(rng, 99_999) + 1).to_string(),
            2 => format!("{},{:03}", 1 + pick(rng, 999), pick(rng, 1000)),
            _ => format!("{}{}", 1 + pick(rng, 500), UNITS[pick(rng, UNITS.len())]),
        }
    } else if r < 0.77 {
        let (y, m, d) = (1990 + pick(rng, 40), 1 + pick(rng, 12), 1 + pick(rng, 28));
        match pick(rng, 4) {
            0 => format!("{y}-{m:02}-{d:02}"),
            1 => format!("{d:02}/{m:02}/{y}"),
            2 => format!("{d} {} {y}", MONTHS[m - 1]),
            _ => format!("{} {d}, {y}", &MONTHS[m - 1][..3]),
        }
    } else if r < 0.86 {
        let (units, cents) = (pick(rng, 2000), pick(rng, 100));
        match pick(rng, 3) {
            0 => format!("{}{units}.{cents:02}", CURRENCIES[pick(rng, CURRENCIES.len())]),
            1 => format!("{units}.{cents:02}"),
            _ => format!("{units}.{cents:02} USD"),
        }
    } else {
        let letters = |rng: &mut SeededNormal, n: usize| -> String {
            (0..n).map(|_| (b'A' + pick(rng, 26) as u8) as char).collect()
        };
        match pick(rng, 4) {
            0 => {
                let len = 2 + pick(rng, 2);
                format!("{}-{:04}", letters(rng, len), pick(rng, 10_000))
            }
            1 => format!("No. {}", 1 + pick(rng, 9999)),
            2 => format!("#{}", 1 + pick(rng, 999)),
            _ => format!("REF {}{}", letters(rng, 1), pick(rng, 100_000)),
        }
    };
    if !first && rng.uniform() < 0.12 {
        token.push([',', '.', ':', ';'][pick(rng, 4)]);
    }
    token
}

/// Writes `samples` as a NumPy `.npz` (deflated, like `numpy.savez_compressed`): `x` float32
/// `[N, 3, 48, 192]` and `y` int64 `[N]`, as `cleave calibrate --data` reads it.
pub fn write_npz(path: &Path, samples: &[Sample]) -> io::Result<()> {
    let mut file = BufWriter::new(File::create(path)?);
    write_npz_to(&mut file, samples)?;
    file.flush()
}

/// [`write_npz`] into any seekable writer.
pub fn write_npz_to<W: Write + Seek>(out: &mut W, samples: &[Sample]) -> io::Result<()> {
    if let Some(bad) = samples.iter().position(|s| s.image.len() != SAMPLE_LEN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sample {bad} has {} values, expected {SAMPLE_LEN}", samples[bad].image.len()),
        ));
    }
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let pixels: Vec<f32> = samples.iter().flat_map(|s| s.image.iter().copied()).collect();
    let x =
        Tensor::from_shape(&[samples.len(), CHANNELS, HEIGHT, WIDTH], &pixels).map_err(|e| invalid(e.to_string()))?;
    let labels: Vec<i64> = samples.iter().map(|s| s.label as i64).collect();
    let y = Tensor::from_shape(&[samples.len()], &labels).map_err(|e| invalid(e.to_string()))?;
    cleave_data::npz::write(out, &[("x", &x), ("y", &y)], true).map_err(|e| match e {
        cleave_data::DataError::Io(e) => e,
        e => invalid(e.to_string()),
    })
}

/// Writes a PNG contact sheet of `samples` as the classifier sees them (192×48 each, padding
/// mid-grey), `columns` across, each framed green if upright (label 0) or red if rotated.
pub fn write_contact_sheet(path: &Path, samples: &[Sample], columns: usize) -> io::Result<()> {
    let columns = columns.max(1);
    let rows = samples.len().div_ceil(columns).max(1);
    let (tile_w, tile_h) = (WIDTH + 4, HEIGHT + 4);
    let (width, height) = (columns * tile_w, rows * tile_h);
    let mut rgb = vec![255u8; width * height * 3];
    for (i, s) in samples.iter().enumerate() {
        let (x0, y0) = ((i % columns) * tile_w, (i / columns) * tile_h);
        let frame = if s.label == 0 { [0, 170, 0] } else { [220, 0, 0] };
        for y in 0..HEIGHT + 2 {
            for x in 0..WIDTH + 2 {
                let (px, py) = (x0 + 1 + x, y0 + 1 + y);
                let colour = if x == 0 || y == 0 || x == WIDTH + 1 || y == HEIGHT + 1 {
                    frame
                } else {
                    let v = s.image.get((y - 1) * WIDTH + x - 1).copied().unwrap_or(0.0);
                    [((v * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8; 3]
                };
                rgb[(py * width + px) * 3..][..3].copy_from_slice(&colour);
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

/// splitmix64's finaliser: decorrelates seeds (so per-sample streams do not overlap).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn uniform(rng: &mut SeededNormal, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

/// Uniform in `0..n` (`n > 0`).
pub(crate) fn pick(rng: &mut SeededNormal, n: usize) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n - 1)
}
