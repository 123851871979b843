//! Sizes on the command line and in reports: `64K`, `256MiB`, `1.5G`, `25%` in, `1.0 GiB` out.

/// A size argument: bytes, or a fraction of something the command knows (a file's length).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Bytes(u64),
    Percent(f64),
}

impl Size {
    /// The size in bytes, with percentages taken of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        match self {
            Size::Bytes(bytes) => bytes,
            Size::Percent(percent) => (whole as f64 * percent / 100.0) as u64,
        }
    }
}

/// Parses `4096`, `64K`, `64KiB`, `256M`, `1.5G`, `2T` (powers of 1024) or `25%`.
pub fn parse_size(text: &str) -> Result<Size, String> {
    parse_amount(text, true)
}

/// A size, with a percentage allowed or not (the error then lists only byte units).
fn parse_amount(text: &str, percent_allowed: bool) -> Result<Size, String> {
    let text = text.trim();
    let units = if percent_allowed {
        "K, M, G, T or %"
    } else {
        "K, M, G or T"
    };
    if let Some(percent) = text.strip_suffix('%') {
        if !percent_allowed {
            return Err(format!(
                "{text:?}: a size in bytes (with {units}), not a percentage"
            ));
        }
        return match percent.trim().parse::<f64>() {
            Ok(value) if value > 0.0 && value <= 100.0 => Ok(Size::Percent(value)),
            _ => Err(format!(
                "{text:?}: a percentage must be above 0 and at most 100"
            )),
        };
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!("{text:?}: unknown unit {suffix:?} (use {units})"));
        }
    };
    let value: f64 = number.parse().map_err(|_| match percent_allowed {
        true => format!("{text:?}: not a size (examples: 4096, 64K, 1.5G, 25%)"),
        false => format!("{text:?}: not a size (examples: 4096, 64K, 1.5G)"),
    })?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Size::Bytes(bytes as u64))
}

/// `1536` → `1.5 KiB`; exact bytes below 1 KiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// For a path that is not valid UTF-8: its bytes with the invalid ones escaped (`caf\xe9`),
/// since JSON strings cannot carry them; `None` for valid paths.
pub fn escaped(path: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| bytes.escape_ascii().to_string())
}

/// `text` for a row of a text table: control characters escaped (`\n`, `\t`, `\u{1b}`),
/// since a newline in a file name would split the row and escapes would reach the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

/// A file name as a table shows it, so that it can be typed back: printable characters as
/// they are, a backslash doubled, control characters as `\n`, `\t`, `\r` or `\u{1b}`, and
/// bytes that are not UTF-8 as `\xe9`. [`unescape_name`] reverses it.
pub fn shown_name(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut shown = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                c if c.is_control() => shown.extend(c.escape_default()),
                c => shown.push(c),
            }
        }
        for byte in chunk.invalid() {
            shown.push_str(&format!("\\x{byte:02x}"));
        }
    }
    shown
}

/// The name [`shown_name`] showed as `text`, or None when `text` holds no escape or a
/// malformed one.
pub fn unescape_name(text: &std::ffi::OsStr) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let text = text.to_str()?;
    if !text.contains('\\') {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    let push = |bytes: &mut Vec<u8>, c: char| {
        let mut buffer = [0u8; 4];
        bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            push(&mut bytes, c);
            continue;
        }
        match chars.next()? {
            '\\' => bytes.push(b'\\'),
            'n' => bytes.push(b'\n'),
            't' => bytes.push(b'\t'),
            'r' => bytes.push(b'\r'),
            '0' => bytes.push(0),
            '\'' => bytes.push(b'\''),
            '"' => bytes.push(b'"'),
            'x' => {
                let digits: String = chars.by_ref().take(2).collect();
                if digits.len() != 2 {
                    return None;
                }
                bytes.push(u8::from_str_radix(&digits, 16).ok()?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let digits: String = chars.by_ref().take_while(|&c| c != '}').collect();
                push(
                    &mut bytes,
                    char::from_u32(u32::from_str_radix(&digits, 16).ok()?)?,
                );
            }
            _ => return None,
        }
    }
    Some(std::ffi::OsString::from_vec(bytes))
}

/// A size in bytes with an optional unit, where a percentage (of what?) means nothing.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    match parse_amount(text, false)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Percent(_) => Err(format!("{text:?}: a size in bytes, not a percentage")),
    }
}

/// The memory the kernel estimates is available for new work (MemAvailable), if it says.
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_percentages() {
        assert_eq!(parse_size("4096"), Ok(Size::Bytes(4096)));
        assert_eq!(parse_size("64K"), Ok(Size::Bytes(65536)));
        assert_eq!(parse_size("64KiB"), Ok(Size::Bytes(65536)));
        assert_eq!(parse_size("1.5G"), Ok(Size::Bytes(3 << 29)));
        assert_eq!(parse_size(" 256 mb "), Ok(Size::Bytes(256 << 20)));
        assert_eq!(parse_size("25%"), Ok(Size::Percent(25.0)));
        assert_eq!(parse_size("25%").unwrap().of(1000), 250);
        for bad in ["", "K", "12Q", "0%", "150%", "1e400G", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn only_invalid_paths_are_escaped() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/caf\xe9"));
        assert_eq!(escaped(path).as_deref(), Some("/tmp/caf\\xe9"));
        assert_eq!(escaped(std::path::Path::new("/tmp/café")), None);
    }

    #[test]
    fn human_sizes_pick_a_unit() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1 << 30), "1.0 GiB");
    }

    #[test]
    fn shown_names_can_be_typed_back() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let names: [&[u8]; 7] = [
            b"plain",
            b"tab\there",
            b"new\nline",
            b"esc\x1b[31m",
            b"back\\slash",
            b"caf\xe9",
            "caf\u{e9}".as_bytes(),
        ];
        for name in names {
            let name = OsStr::from_bytes(name);
            let shown = shown_name(name);
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            match unescape_name(OsStr::new(&shown)) {
                Some(back) => assert_eq!(back, name, "{shown:?}"),
                None => assert_eq!(OsStr::new(&shown), name, "no escape: shown as it is"),
            }
        }
        assert_eq!(unescape_name(OsStr::new("bad\\q")), None);
        assert_eq!(unescape_name(OsStr::new("bad\\x4")), None);
    }

    #[test]
    fn control_characters_are_escaped_for_tables() {
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(
            printable("two\nlines\tand\u{1b}[31m"),
            "two\\nlines\\tand\\u{1b}[31m"
        );
    }
}
