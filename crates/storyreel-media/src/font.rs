//! Text for captions and titles: the public-domain 8x8 bitmap font (`font8x8`), scaled by
//! an integer factor. ASCII only; anything else is drawn as '?' so a caption never loses
//! characters silently.

use font8x8::legacy::BASIC_LEGACY;
use image::RgbImage;

/// Glyph cell size in font pixels.
pub(crate) const GLYPH: u32 = 8;

/// The 8 row bitmaps of `c` (bit 0 = leftmost pixel).
fn glyph(c: char) -> [u8; 8] {
    let c = match c {
        '\t' | '\n' | '\r' => ' ',
        c if c.is_ascii() && !c.is_ascii_control() => c,
        _ => '?',
    };
    BASIC_LEGACY[c as usize]
}

/// Draws `text` on one line with its top-left corner at (x, y); pixels outside the canvas are skipped.
pub(crate) fn draw_text(canvas: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
    let (w, h) = canvas.dimensions();
    for (i, c) in text.chars().enumerate() {
        let bitmap = glyph(c);
        let gx = x + i as u32 * GLYPH * scale;
        for (row, bits) in bitmap.iter().enumerate() {
            for col in 0..GLYPH {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = gx + col * scale + dx;
                        let py = y + row as u32 * scale + dy;
                        if px < w && py < h {
                            canvas.put_pixel(px, py, image::Rgb(color));
                        }
                    }
                }
            }
        }
    }
}

/// Splits `text` into lines of at most `max_chars` characters, breaking at spaces where
/// possible and inside words only when a word alone is too long. At most `max_lines` lines
/// are returned; a cut-off text ends in "...".
pub(crate) fn wrap(text: &str, max_chars: usize, max_lines: usize) -> Vec<String> {
    let max_chars = max_chars.max(4);
    let mut lines: Vec<String> = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            let line_len = line.chars().count();
            if line_len > 0 && line_len + 1 + word.len() <= max_chars {
                line.push(' ');
                line.extend(word.iter());
                continue;
            }
            if line_len > 0 {
                lines.push(std::mem::take(&mut line));
            }
            while word.len() > max_chars {
                lines.push(word.drain(..max_chars).collect());
            }
            line = word.into_iter().collect();
        }
        if !line.is_empty() || paragraph.trim().is_empty() {
            lines.push(line);
        }
    }
    while lines.len() > 1 && lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let keep = last.chars().count().min(max_chars - 3);
            *last = last.chars().take(keep).collect::<String>() + "...";
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_and_splits_long_words() {
        assert_eq!(wrap("a cat sat on the mat", 9, 10), vec!["a cat sat", "on the", "mat"]);
        assert_eq!(wrap("abcdefghij", 4, 10), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("one two three four", 8, 2), vec!["one two", "three..."]);
        assert_eq!(wrap("", 8, 2), vec![""]);
    }

    #[test]
    fn non_ascii_draws_a_question_mark() {
        assert_eq!(glyph('é'), glyph('?'));
        assert_ne!(glyph('A'), glyph('?'));
        let mut a = RgbImage::new(16, 16);
        draw_text(&mut a, 0, 0, "猫", 2, [255, 255, 255]);
        let mut b = RgbImage::new(16, 16);
        draw_text(&mut b, 0, 0, "?", 2, [255, 255, 255]);
        assert_eq!(a, b);
        assert!(a.pixels().any(|p| p.0 == [255, 255, 255]));
    }
}
