//! Wan's caption cleaning: `ftfy.fix_text` with its defaults, `html.unescape` twice, strip, and
//! whitespace collapse (`wan/modules/tokenizers.py`, `clean='whitespace'`).
//!
//! The ftfy part follows ftfy 6's default pipeline, in its order, repeated until the text stops
//! changing: HTML entities (only when the text has no literal `<`), mojibake repair, C1 controls
//! read as Windows-1252, Latin ligatures split, full-width and half-width forms folded (NFKC of
//! those characters only), curly quotes straightened, line breaks unified, terminal escapes and
//! stray control characters removed, then NFC. Mojibake repair is a re-decode heuristic in the
//! spirit of ftfy's core rather than a port of its badness model: a line that encodes to
//! Windows-1252 (or Latin-1) bytes forming valid UTF-8 with multi-byte sequences is replaced by
//! the decoded text; otherwise, isolated runs that look like UTF-8 read as Windows-1252 (`Ã©`,
//! `â€™`) are re-decoded in place. ftfy's rarer repairs (other single-byte code pages, a space
//! standing for byte 0xA0, lossy `�` sequences) are not attempted.

use unicode_normalization::UnicodeNormalization;

/// Cleans a caption the way Wan does before tokenising it.
pub fn clean_text(text: &str) -> String {
    let fixed = fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    collapse_whitespace(&twice)
}

/// ftfy's `fix_text` with default options (see the module docs for what is covered).
pub fn fix_text(text: &str) -> String {
    // ftfy fixes each line on its own (the segments keep their line ends).
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&fix_segment(line));
    }
    out
}

fn fix_segment(segment: &str) -> String {
    let mut text = segment.to_string();
    // ftfy loops until a full pass changes nothing; a few passes always suffice.
    for _ in 0..8 {
        let orig = text.clone();
        if !text.contains('<') {
            text = ftfy_unescape_html(&text);
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text);
        text = text.chars().map(ligature).fold(String::new(), |mut s, l| {
            match l {
                Ok(c) => s.push(c),
                Err(r) => s.push_str(r),
            }
            s
        });
        text = fix_character_width(&text);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_control_to_remove(c));
        text = text.nfc().collect();
        if text == orig {
            break;
        }
    }
    text
}

/// Python's `html.unescape`: numeric references (with Python's replacements for invalid code
/// points), HTML5 named references, and the legacy names that need no `;` (`&amp`, `&copy`).
fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        match unescape_reference(tail) {
            Some((decoded, used)) => {
                out.push_str(&decoded);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Names of the HTML5 references that are also recognised without a trailing `;`.
const LEGACY_ENTITIES: &[&str] = &[
    "Aacute", "aacute", "Acirc", "acirc", "acute", "AElig", "aelig", "Agrave", "agrave", "AMP", "amp", "Aring",
    "aring", "Atilde", "atilde", "Auml", "auml", "brvbar", "Ccedil", "ccedil", "cedil", "cent", "COPY", "copy",
    "curren", "deg", "divide", "Eacute", "eacute", "Ecirc", "ecirc", "Egrave", "egrave", "ETH", "eth", "Euml", "euml",
    "frac12", "frac14", "frac34", "GT", "gt", "Iacute", "iacute", "Icirc", "icirc", "iexcl", "Igrave", "igrave",
    "iquest", "Iuml", "iuml", "laquo", "LT", "lt", "macr", "micro", "middot", "nbsp", "not", "Ntilde", "ntilde",
    "Oacute", "oacute", "Ocirc", "ocirc", "Ograve", "ograve", "ordf", "ordm", "Oslash", "oslash", "Otilde", "otilde",
    "Ouml", "ouml", "para", "plusmn", "pound", "QUOT", "quot", "raquo", "REG", "reg", "sect", "shy", "sup1", "sup2",
    "sup3", "szlig", "THORN", "thorn", "times", "Uacute", "uacute", "Ucirc", "ucirc", "Ugrave", "ugrave", "uml",
    "Uuml", "uuml", "Yacute", "yacute", "yen", "yuml",
];

/// Decodes the reference whose text (after `&`) starts `tail`: the replacement and the bytes of
/// `tail` it used, or `None` to keep the `&` literally.
fn unescape_reference(tail: &str) -> Option<(String, usize)> {
    let bytes = tail.as_bytes();
    if bytes.first() == Some(&b'#') {
        let hex = matches!(bytes.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let digits =
            bytes[start..].iter().take_while(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() }).count();
        if digits == 0 {
            return None;
        }
        let end = start + digits;
        let used = if bytes.get(end) == Some(&b';') { end + 1 } else { end };
        let num = u32::from_str_radix(&tail[start..end], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        return Some((numeric_reference(num), used));
    }
    // `[^\t\n\f <&#;]{1,32};?`
    let name_len: usize = tail
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &tail[..name_len];
    if tail[name_len..].starts_with(';') {
        let entity = format!("&{name};");
        let decoded = html_escape::decode_html_entities(&entity);
        if decoded != entity {
            return Some((decoded.into_owned(), name_len + 1));
        }
    } else if LEGACY_ENTITIES.contains(&name) {
        return Some((legacy_entity(name), name_len));
    }
    // The longest legacy name that prefixes the reference (at least two characters).
    (2..name_len)
        .rev()
        .filter(|&x| name.is_char_boundary(x))
        .find(|&x| LEGACY_ENTITIES.contains(&&name[..x]))
        .map(|x| (legacy_entity(&name[..x]), x))
}

fn legacy_entity(name: &str) -> String {
    html_escape::decode_html_entities(&format!("&{name};")).into_owned()
}

/// Python's treatment of `&#num;`.
fn numeric_reference(num: u32) -> String {
    match num {
        0x00 => return "\u{FFFD}".into(),
        0x0D => return "\r".into(),
        0x80..=0x9F => return cp1252_char(num as u8).to_string(),
        0xD800..=0xDFFF | 0x110000.. => return "\u{FFFD}".into(),
        _ => {}
    }
    let invalid =
        matches!(num, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF) || (num & 0xFFFE) == 0xFFFE;
    if invalid {
        return String::new();
    }
    char::from_u32(num).map(String::from).unwrap_or_default()
}

/// ftfy's own `unescape_html`: only entities of the form `&name;` / `&#123;` / `&#x1f;`, with an
/// upper-case fallback (`&EACUTE;` → `É`).
fn ftfy_unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        // `&#?[0-9A-Za-z]{1,24};`
        let body_start = if tail[1..].starts_with('#') { 2 } else { 1 };
        let body_len = tail[body_start..].bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
        let end = body_start + body_len;
        if (1..=24).contains(&body_len) && tail[end..].starts_with(';') {
            let entity = &tail[..=end];
            let decoded = if body_start == 2 {
                // Numeric: Python's decoding, but only when the `;` is consumed.
                match unescape_reference(&tail[1..]) {
                    Some((d, used)) if used == end => d,
                    _ => entity.to_string(),
                }
            } else {
                let d = html_escape::decode_html_entities(entity);
                if d != entity {
                    d.into_owned()
                } else if entity == entity.to_uppercase() {
                    // An all-caps spelling of a lower-case name (`&EACUTE;` → `É`).
                    let lower = entity.to_lowercase();
                    let d = html_escape::decode_html_entities(&lower);
                    if d != lower {
                        d.to_uppercase()
                    } else {
                        entity.to_string()
                    }
                } else {
                    entity.to_string()
                }
            };
            out.push_str(&decoded);
            rest = &tail[end + 1..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Windows-1252 bytes 0x80..=0x9F; the five undefined bytes map to the C1 control of the same
/// value ("sloppy" Windows-1252, as ftfy uses it).
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘', '’',
    '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

/// The byte `c` has in sloppy Windows-1252, if any.
fn cp1252_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..=0xFF).contains(&u) {
        return Some(u as u8);
    }
    CP1252_HIGH.iter().position(|&h| h == c).map(|i| 0x80 + i as u8)
}

fn cp1252_char(b: u8) -> char {
    if (0x80..0xA0).contains(&b) {
        CP1252_HIGH[(b - 0x80) as usize]
    } else {
        b as char
    }
}

/// Re-decodes text that is UTF-8 read as Windows-1252 or Latin-1.
fn fix_encoding(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    // Whole segment: every character has a single-byte form and the bytes are valid UTF-8.
    let bytes: Option<Vec<u8>> = text.chars().map(cp1252_byte).collect();
    if let Some(bytes) = bytes {
        if let Ok(decoded) = std::str::from_utf8(&bytes) {
            if decoded.chars().count() < text.chars().count() {
                return decoded.to_string();
            }
        }
    }
    // Runs embedded in otherwise sound text.
    fix_embedded_mojibake(text)
}

/// Number of continuation bytes a UTF-8 lead byte takes, for the leads ftfy looks for.
fn utf8_tail_len(lead: u8) -> Option<usize> {
    match lead {
        0xC2..=0xDF => Some(1),
        0xE0..=0xEF => Some(2),
        0xF0..=0xF4 => Some(3),
        _ => None,
    }
}

fn fix_embedded_mojibake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if let Some((decoded, used)) = mojibake_run_at(&chars[i..]) {
            out.push_str(&decoded);
            i += used;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// A run of one or more UTF-8 sequences spelled in Windows-1252 characters, starting at
/// `chars[0]`: its decoded text and how many characters it used.
fn mojibake_run_at(chars: &[char]) -> Option<(String, usize)> {
    let mut bytes = Vec::new();
    let mut used = 0;
    while used < chars.len() {
        let Some(lead) = cp1252_byte(chars[used]) else { break };
        let Some(n) = utf8_tail_len(lead) else { break };
        if used + n >= chars.len() {
            break;
        }
        let mut seq = vec![lead];
        for &c in &chars[used + 1..=used + n] {
            match cp1252_byte(c) {
                Some(b @ 0x80..=0xBF) => seq.push(b),
                _ => break,
            }
        }
        if seq.len() != n + 1 || std::str::from_utf8(&seq).is_err() {
            break;
        }
        bytes.extend_from_slice(&seq);
        used += n + 1;
    }
    if used == 0 {
        return None;
    }
    Some((String::from_utf8(bytes).ok()?, used))
}

/// C1 control characters left over are read as their Windows-1252 counterparts.
fn fix_c1_controls(text: &str) -> String {
    text.chars().map(|c| if ('\u{80}'..='\u{9f}').contains(&c) { cp1252_char(c as u8) } else { c }).collect()
}

fn ligature(c: char) -> Result<char, &'static str> {
    Err(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        other => return Ok(other),
    })
}

/// Full-width and half-width forms (U+FF01..U+FFEF) to their NFKC forms; U+3000 to a space.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{3000}' {
            out.push(' ');
        } else if ('\u{FF01}'..'\u{FFF0}').contains(&c) {
            out.extend(std::iter::once(c).nfkc());
        } else {
            out.push(c);
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            other => other,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => '\n',
            other => other,
        })
        .collect()
}

/// Removes ANSI terminal escapes `ESC [ (digits|;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn is_control_to_remove(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// `re.sub(r'\s+', ' ', text).strip()`.
fn collapse_whitespace(text: &str) -> String {
    text.split(is_py_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Python's `str.isspace` / `\s` for str patterns: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_only_trimmed_and_collapsed() {
        assert_eq!(clean_text("  A cat  sits\t\non a\r\nmat.  "), "A cat sits on a mat.");
        assert_eq!(clean_text(""), "");
        assert_eq!(clean_text(" \n\t "), "");
    }

    #[test]
    fn mojibake_is_repaired() {
        assert_eq!(clean_text("cafÃ©"), "café");
        assert_eq!(clean_text("The manâ€™s hat"), "The man's hat");
        assert_eq!(clean_text("â€œquotedâ€\u{9d}"), "\"quoted\"");
        assert_eq!(clean_text("naÃ¯ve rÃ©sumÃ©"), "naïve résumé");
        // Embedded in text that cannot be re-encoded as a whole (a CJK character).
        assert_eq!(clean_text("猫 cafÃ© donâ€™t"), "猫 café don't");
        // Double mojibake.
        assert_eq!(clean_text("cafÃƒÂ©"), "café");
        // Sound accented text is left alone.
        assert_eq!(clean_text("café déjà vu"), "café déjà vu");
        assert_eq!(clean_text("Ünïcödé ok"), "Ünïcödé ok");
    }

    #[test]
    fn quotes_width_and_ligatures() {
        assert_eq!(clean_text("\u{201C}Hi\u{201D} \u{2018}there\u{2019}"), "\"Hi\" 'there'");
        assert_eq!(clean_text("ＡＢＣ１２３！"), "ABC123!");
        assert_eq!(clean_text("a\u{3000}b"), "a b");
        assert_eq!(clean_text("ﬁne ﬂow oﬃce"), "fine flow office");
        // Only width forms are NFKC-folded, as in ftfy: these stay.
        assert_eq!(clean_text("x² … ½"), "x² … ½");
    }

    #[test]
    fn html_is_unescaped_twice() {
        assert_eq!(clean_text("Tom &amp; Jerry"), "Tom & Jerry");
        assert_eq!(clean_text("Tom &amp;amp; Jerry"), "Tom & Jerry");
        assert_eq!(clean_text("&lt;b&gt; &#39;x&#39; &#x41;"), "<b> 'x' A");
        // &ldquo; goes through ftfy first, so the quote is straightened...
        assert_eq!(clean_text("&ldquo;a&rdquo;"), "\"a\"");
        // ...but not when the text holds a literal '<' (ftfy leaves HTML alone).
        assert_eq!(clean_text("<i> &ldquo;a&rdquo;"), "<i> \u{201C}a\u{201D}");
        // A non-breaking space is whitespace for the collapse.
        assert_eq!(clean_text("a&nbsp;&nbsp;b"), "a b");
        // Python's html.unescape: legacy names without ';', longest legacy prefix, bad numbers.
        assert_eq!(clean_text("fish &amp chips &copy 2020"), "fish & chips © 2020");
        assert_eq!(clean_text("&ampx; &notit; &unknown; &; & x"), "&x; ¬it; &unknown; &; & x");
        assert_eq!(clean_text("&#0;x&#x80;y&#1;z&#128512;"), "\u{FFFD}x€yz😀");
    }

    #[test]
    fn controls_and_escapes_are_removed() {
        assert_eq!(clean_text("a\u{0}b\u{feff}c"), "abc");
        assert_eq!(clean_text("\u{1b}[31mred\u{1b}[0m"), "red");
        // A stray C1 control is read as Windows-1252.
        assert_eq!(clean_text("a\u{96}b"), "a–b");
    }

    #[test]
    fn nfc_composes() {
        assert_eq!(clean_text("e\u{301}"), "é");
    }
}
