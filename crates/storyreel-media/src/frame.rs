//! `RgbFrame`: the one pixel format every writer in this crate accepts.

use crate::error::{MediaError, Result};

/// An 8-bit RGB image, interleaved (`R G B R G B ...`), rows top to bottom, no padding.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbFrame {
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbFrame {
    // The default Debug would print every byte of the image.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbFrame").field("width", &self.width).field("height", &self.height).finish_non_exhaustive()
    }
}

/// Byte count of a `width x height` RGB8 image, or an error if it is empty or overflows memory.
fn rgb_len(width: u32, height: u32) -> Result<usize> {
    if width == 0 || height == 0 {
        return Err(MediaError::EmptyFrame { width, height });
    }
    (width as usize).checked_mul(height as usize).and_then(|n| n.checked_mul(3)).ok_or_else(|| {
        MediaError::out_of_range("frame size", format!("{width}x{height}"), "an image that fits in memory")
    })
}

impl RgbFrame {
    /// Wraps interleaved RGB8 bytes, checking that their length matches the size.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let expected = rgb_len(width, height)?;
        if data.len() != expected {
            return Err(MediaError::FrameDataSize {
                what: "RGB8 (H*W*3 bytes)",
                width,
                height,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { width, height, data })
    }

    /// A frame filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Result<Self> {
        let len = rgb_len(width, height)?;
        let data = rgb.iter().copied().cycle().take(len).collect();
        Ok(Self { width, height, data })
    }

    /// A frame whose pixel (x, y) is `f(x, y)`; handy for synthetic test clips.
    pub fn from_fn(width: u32, height: u32, mut f: impl FnMut(u32, u32) -> [u8; 3]) -> Result<Self> {
        let mut data = Vec::with_capacity(rgb_len(width, height)?);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&f(x, y));
            }
        }
        Ok(Self { width, height, data })
    }

    /// Converts a planar `[3, H, W]` float image in [-1, 1] (the video decoder's output range)
    /// to RGB8 with `round(clamp(x * 0.5 + 0.5, 0, 1) * 255)`; NaN becomes 0.
    pub fn from_f32_chw(values: &[f32], width: u32, height: u32) -> Result<Self> {
        let len = rgb_len(width, height)?;
        if values.len() != len {
            return Err(MediaError::FrameDataSize {
                what: "planar f32 [3, H, W]",
                width,
                height,
                expected: len,
                actual: values.len(),
            });
        }
        let plane = len / 3;
        let (r, rest) = values.split_at(plane);
        let (g, b) = rest.split_at(plane);
        let mut data = Vec::with_capacity(len);
        for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
            data.extend_from_slice(&[unit_to_u8(r), unit_to_u8(g), unit_to_u8(b)]);
        }
        Ok(Self { width, height, data })
    }

    /// The RGB value at (x, y); `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// `(width, height)`.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Checks the invariant `data.len() == width * height * 3` (the fields are public, so a
    /// caller can break it); writers call this before touching the bytes.
    pub fn validate(&self) -> Result<()> {
        let expected = rgb_len(self.width, self.height)?;
        if self.data.len() != expected {
            return Err(MediaError::FrameDataSize {
                what: "RGB8 (H*W*3 bytes)",
                width: self.width,
                height: self.height,
                expected,
                actual: self.data.len(),
            });
        }
        Ok(())
    }

    /// Resizes to `width x height` with a triangle (bilinear) filter.
    pub fn resized(&self, width: u32, height: u32) -> Result<RgbFrame> {
        self.validate()?;
        rgb_len(width, height)?;
        if (width, height) == self.size() {
            return Ok(self.clone());
        }
        let img = self.as_image()?;
        let out = image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle);
        Ok(RgbFrame { width, height, data: out.into_raw() })
    }

    /// Scales down (never up) so the width is at most `max_width`, keeping the aspect ratio.
    pub fn fit_width(&self, max_width: u32) -> Result<RgbFrame> {
        self.validate()?;
        if self.width <= max_width {
            return Ok(self.clone());
        }
        let width = max_width.max(1);
        let height = scaled_height(self.width, self.height, width);
        // Area averaging: as good as a triangle filter when shrinking, and ~5x faster,
        // which matters because sinks thumbnail every frame of a shot.
        let out = image::imageops::thumbnail(&self.as_image()?, width, height);
        Ok(RgbFrame { width, height, data: out.into_raw() })
    }

    /// The pixels as an `image` buffer borrowing this frame's bytes.
    pub(crate) fn as_image(&self) -> Result<image::ImageBuffer<image::Rgb<u8>, &[u8]>> {
        self.validate()?;
        image::ImageBuffer::from_raw(self.width, self.height, self.data.as_slice()).ok_or(MediaError::FrameDataSize {
            what: "RGB8 (H*W*3 bytes)",
            width: self.width,
            height: self.height,
            expected: self.width as usize * self.height as usize * 3,
            actual: self.data.len(),
        })
    }
}

/// Height that keeps the aspect ratio when the width becomes `new_width` (at least 1).
pub(crate) fn scaled_height(width: u32, height: u32, new_width: u32) -> u32 {
    let h = (u64::from(height) * u64::from(new_width) + u64::from(width) / 2) / u64::from(width.max(1));
    (h as u32).max(1)
}

/// Maps one value from [-1, 1] to 0..=255.
fn unit_to_u8(x: f32) -> u8 {
    // `as u8` saturates and maps NaN to 0, so no further checks are needed.
    ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_conversion_matches_the_formula() {
        // 2x1 image: red plane [-1, 1], green [0, 0.5], blue [2, NaN].
        let v = [-1.0, 1.0, 0.0, 0.5, 2.0, f32::NAN];
        let f = RgbFrame::from_f32_chw(&v, 2, 1).unwrap();
        assert_eq!(f.data, vec![0, 128, 255, 255, 191, 0]);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(RgbFrame::new(2, 2, vec![0; 11]), Err(MediaError::FrameDataSize { .. })));
        assert!(matches!(RgbFrame::new(0, 2, vec![]), Err(MediaError::EmptyFrame { .. })));
        assert!(RgbFrame::from_f32_chw(&[0.0; 5], 1, 2).is_err());
        assert_eq!(RgbFrame::filled(3, 2, [1, 2, 3]).unwrap().pixel(2, 1), Some([1, 2, 3]));
    }

    #[test]
    fn fit_width_keeps_aspect() {
        let f = RgbFrame::filled(832, 480, [9, 9, 9]).unwrap();
        let t = f.fit_width(208).unwrap();
        assert_eq!(t.size(), (208, 120));
        assert_eq!(t.pixel(100, 60), Some([9, 9, 9]));
        assert_eq!(f.fit_width(1000).unwrap().size(), (832, 480));
    }
}
