//! Contact sheets: one row of evenly spaced thumbnails per shot with the shot's caption
//! printed underneath, and an optional story title on top.

use std::path::Path;

use image::RgbImage;

use crate::error::{MediaError, Result};
use crate::font::{draw_text, wrap, GLYPH};
use crate::frame::RgbFrame;
use crate::png::save_png;

/// Caption lines kept per row before the text is cut with "...".
const MAX_CAPTION_LINES: usize = 8;

/// `n` frame indices spread evenly over `len` frames: round-half-even of a torch-style f32
/// `linspace(0, len - 1, n)`, the same picks as the engine's context sampling.
pub fn even_indices(len: usize, n: usize) -> Vec<usize> {
    if len == 0 || n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![0];
    }
    let end = (len - 1) as f32;
    let step = end / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            // torch evaluates the two halves from opposite ends, so both endpoints are exact.
            let v = if i < half { step * i as f32 } else { end - step * (n - i - 1) as f32 };
            round_half_even(v).min(len - 1)
        })
        .collect()
}

/// Rounds half to even, like `torch.round`.
fn round_half_even(x: f32) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { r - x.signum() } else { r };
    r.max(0.0) as usize
}

/// Layout and look of a contact sheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactSheetOptions {
    /// Thumbnails per row (per shot); default 6.
    pub frames_per_row: usize,
    /// Frames wider than this are scaled down to it (aspect kept); `None` keeps full size.
    pub thumb_width: Option<u32>,
    /// Optional header line(s), e.g. the story title.
    pub title: Option<String>,
    /// Font scale (the font is 8x8 pixels); default 2.
    pub text_scale: u32,
    /// Background colour.
    pub background: [u8; 3],
    /// Text colour.
    pub text_color: [u8; 3],
}

impl Default for ContactSheetOptions {
    fn default() -> Self {
        Self {
            frames_per_row: 6,
            thumb_width: Some(256),
            title: None,
            text_scale: 2,
            background: [24, 24, 28],
            text_color: [235, 235, 235],
        }
    }
}

impl ContactSheetOptions {
    /// Rejects settings that cannot produce a sheet.
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.frames_per_row) {
            return Err(MediaError::out_of_range("frames_per_row", self.frames_per_row, "1..=64"));
        }
        if let Some(w) = self.thumb_width {
            if !(8..=4096).contains(&w) {
                return Err(MediaError::out_of_range("thumb_width", w, "8..=4096"));
            }
        }
        if !(1..=8).contains(&self.text_scale) {
            return Err(MediaError::out_of_range("text_scale", self.text_scale, "1..=8"));
        }
        Ok(())
    }
}

/// One shot's row: its caption and the thumbnails already picked and scaled.
#[derive(Debug, Clone)]
struct Row {
    caption: String,
    thumbs: Vec<RgbFrame>,
}

/// Collects rows and renders them into one image.
#[derive(Debug, Clone)]
pub struct ContactSheet {
    options: ContactSheetOptions,
    rows: Vec<Row>,
}

impl ContactSheet {
    /// An empty sheet.
    pub fn new(options: ContactSheetOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options, rows: Vec::new() })
    }

    /// The options this sheet was made with.
    pub fn options(&self) -> &ContactSheetOptions {
        &self.options
    }

    /// Adds a shot: picks `frames_per_row` evenly spaced frames and thumbnails them.
    pub fn add_shot(&mut self, caption: &str, frames: &[RgbFrame]) -> Result<()> {
        let picks = even_indices(frames.len(), self.options.frames_per_row);
        let thumbs = picks.iter().map(|&i| self.thumbnail(&frames[i])).collect::<Result<Vec<_>>>()?;
        self.rows.push(Row { caption: caption.to_string(), thumbs });
        Ok(())
    }

    /// Adds a row of frames chosen by the caller (scaled like `add_shot`'s).
    pub fn add_row(&mut self, caption: &str, frames: &[RgbFrame]) -> Result<()> {
        let thumbs = frames.iter().map(|f| self.thumbnail(f)).collect::<Result<Vec<_>>>()?;
        self.rows.push(Row { caption: caption.to_string(), thumbs });
        Ok(())
    }

    /// Number of rows so far.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// A frame scaled to the sheet's thumbnail width (only ever down).
    pub fn thumbnail(&self, frame: &RgbFrame) -> Result<RgbFrame> {
        match self.options.thumb_width {
            Some(w) => frame.fit_width(w),
            None => {
                frame.validate()?;
                Ok(frame.clone())
            }
        }
    }

    /// Draws the sheet. Rows are `frames_per_row` cells wide; each row's height follows
    /// its tallest thumbnail; captions are wrapped to the sheet width.
    pub fn render(&self) -> Result<RgbFrame> {
        let o = &self.options;
        let pad = 4 * o.text_scale;
        let line_h = (GLYPH + 2) * o.text_scale;
        let char_w = GLYPH * o.text_scale;
        let cell_w = self.rows.iter().flat_map(|r| r.thumbs.iter().map(|t| t.width)).max().unwrap_or(0);
        // Never narrower than 40 characters, so captions stay readable next to tiny frames.
        let width = (pad + o.frames_per_row as u32 * (cell_w + pad)).max(40 * char_w + 2 * pad);
        let max_chars = ((width - 2 * pad) / char_w) as usize;

        let title_lines = o.title.as_deref().map(|t| wrap(t, max_chars, 4)).unwrap_or_default();
        let captions: Vec<Vec<String>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| wrap(&format!("Shot {}: {}", i + 1, r.caption), max_chars, MAX_CAPTION_LINES))
            .collect();

        let mut height = pad;
        if !title_lines.is_empty() {
            height += title_lines.len() as u32 * line_h + pad;
        }
        for (row, lines) in self.rows.iter().zip(&captions) {
            let thumb_h = row.thumbs.iter().map(|t| t.height).max().unwrap_or(0);
            height += thumb_h + pad / 2 + lines.len() as u32 * line_h + pad;
        }
        if width.checked_mul(height).and_then(|p| p.checked_mul(3)).is_none() {
            return Err(MediaError::out_of_range("contact sheet size", format!("{width}x{height}"), "< 4 GiB"));
        }

        let mut canvas = RgbImage::from_pixel(width, height, image::Rgb(o.background));
        let mut y = pad;
        for line in &title_lines {
            draw_text(&mut canvas, pad, y, line, o.text_scale, o.text_color);
            y += line_h;
        }
        if !title_lines.is_empty() {
            y += pad;
        }
        for (row, lines) in self.rows.iter().zip(&captions) {
            let mut x = pad;
            let mut thumb_h = 0;
            for t in &row.thumbs {
                let img = t.as_image()?;
                image::imageops::replace(&mut canvas, &img, i64::from(x), i64::from(y));
                x += cell_w + pad;
                thumb_h = thumb_h.max(t.height);
            }
            y += thumb_h + pad / 2;
            for line in lines {
                draw_text(&mut canvas, pad, y, line, o.text_scale, o.text_color);
                y += line_h;
            }
            y += pad;
        }
        RgbFrame::new(width, height, canvas.into_raw())
    }

    /// Renders and saves the sheet as PNG.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<RgbFrame> {
        let sheet = self.render()?;
        save_png(path, &sheet)?;
        Ok(sheet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_the_engine() {
        assert_eq!(even_indices(81, 6), vec![0, 16, 32, 48, 64, 80]);
        assert_eq!(even_indices(81, 4), vec![0, 27, 53, 80]);
        assert_eq!(even_indices(81, 3), vec![0, 40, 80]);
        assert_eq!(even_indices(3, 6), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(even_indices(1, 6), vec![0; 6]);
        assert_eq!(even_indices(0, 6), Vec::<usize>::new());
        assert_eq!(even_indices(10, 1), vec![0]);
    }
}
