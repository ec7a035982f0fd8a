//! Human-readable formatting helpers.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};

/// A plain table with right-aligned numeric columns.
pub fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| comfy_table::Cell::new(h).add_attribute(comfy_table::Attribute::Bold)));
    for &c in right_aligned {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Bytes as KiB with one decimal.
pub fn kib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0)
}

/// Bytes in the largest fitting binary unit.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// FLOPs in millions with two decimals.
pub fn mflops(flops: u64) -> String {
    format!("{:.2}", flops as f64 / 1e6)
}

/// A shape as `[1, 3, 224, 224]`.
pub fn shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Shortens a list of names to fit `width` characters.
pub fn names(list: &[String], width: usize) -> String {
    let full = list.join(", ");
    if full.chars().count() <= width {
        return full;
    }
    let first: String = list.first().map(|s| s.chars().take(width.saturating_sub(8)).collect()).unwrap_or_default();
    format!("{first}… (+{})", list.len() - 1)
}
