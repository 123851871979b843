//! The per-file table of `mmapkit residency` and `mmapkit fincore`, laid out as util-linux
//! fincore lays it out (through libsmartcols), so that what operators and their scripts read
//! is the same: the columns of fincore 2.41 and later (`-o`, `+LIST` to add to the default),
//! sizes in fincore's short form or bytes (`-b`), the headings (`-n` to leave them out), the
//! raw form (`-r`), a TOTAL row (`-c`) and fincore's JSON (`-J`).
//!
//! Widths follow libsmartcols 2.38 (the version beside which `tests/fincore.rs` runs): a
//! column is as wide as its widest cell or its heading, and a column whose cells are wider
//! than its heading is widened to its width hint (5 for sizes). Names are encoded as it
//! encodes them: control characters and bytes that are not UTF-8 as `\xNN` (and a backslash
//! before `x`), in raw output blanks, backslashes and every byte outside printable ASCII too.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mmapkit::inspect::FileResidency;

/// A column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pages,
    Size,
    File,
    Res,
    DirtyPages,
    Dirty,
    WritebackPages,
    Writeback,
    EvictedPages,
    Evicted,
    RecentlyEvictedPages,
    RecentlyEvicted,
}

impl Column {
    /// Every column, in fincore's order (`--output-all`).
    pub const ALL: [Column; 12] = [
        Column::Pages,
        Column::Size,
        Column::File,
        Column::Res,
        Column::DirtyPages,
        Column::Dirty,
        Column::WritebackPages,
        Column::Writeback,
        Column::EvictedPages,
        Column::Evicted,
        Column::RecentlyEvictedPages,
        Column::RecentlyEvicted,
    ];

    /// fincore's default columns.
    pub const DEFAULT: [Column; 4] = [Column::Res, Column::Pages, Column::Size, Column::File];

    pub fn name(self) -> &'static str {
        match self {
            Column::Pages => "PAGES",
            Column::Size => "SIZE",
            Column::File => "FILE",
            Column::Res => "RES",
            Column::DirtyPages => "DIRTY_PAGES",
            Column::Dirty => "DIRTY",
            Column::WritebackPages => "WRITEBACK_PAGES",
            Column::Writeback => "WRITEBACK",
            Column::EvictedPages => "EVICTED_PAGES",
            Column::Evicted => "EVICTED",
            Column::RecentlyEvictedPages => "RECENTLY_EVICTED_PAGES",
            Column::RecentlyEvicted => "RECENTLY_EVICTED",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Column::Pages => "file data resident in memory in pages",
            Column::Size => "size of the file",
            Column::File => "file name",
            Column::Res => "file data resident in memory in bytes",
            Column::DirtyPages => "number of dirty pages",
            Column::Dirty => "number of dirty bytes",
            Column::WritebackPages => "number of pages marked for writeback",
            Column::Writeback => "number of bytes marked for writeback",
            Column::EvictedPages => "number of evicted pages",
            Column::Evicted => "number of evicted bytes",
            Column::RecentlyEvictedPages => "number of recently evicted pages",
            Column::RecentlyEvicted => "number of recently evicted bytes",
        }
    }

    /// libsmartcols' width hint: counts 1, sizes 5, the name 4.
    fn width_hint(self) -> usize {
        match self {
            Column::File => 4,
            Column::Size | Column::Res => 5,
            _ if self.counts_pages() => 1,
            _ => 5,
        }
    }

    fn counts_pages(self) -> bool {
        matches!(
            self,
            Column::Pages
                | Column::DirtyPages
                | Column::WritebackPages
                | Column::EvictedPages
                | Column::RecentlyEvictedPages
        )
    }

    /// The page count behind a column (cached, dirty…), if it has one and it was measured.
    fn pages_of(self, row: &Row) -> Option<u64> {
        match self {
            Column::Pages | Column::Res => Some(row.cached),
            Column::DirtyPages | Column::Dirty => row.dirty,
            Column::WritebackPages | Column::Writeback => row.writeback,
            Column::EvictedPages | Column::Evicted => row.evicted,
            Column::RecentlyEvictedPages | Column::RecentlyEvicted => row.recently_evicted,
            Column::Size | Column::File => None,
        }
    }
}

/// The list of columns for `--help`.
pub fn columns_help() -> String {
    let mut help = String::from("Columns (for --output):\n");
    for column in Column::ALL {
        help += &format!("  {:>22}  {}\n", column.name(), column.help());
    }
    help
}

/// The columns of `-o` (one value to clap, which would take a `Vec` for many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns(pub Vec<Column>);

/// `-o LIST`: names separated by commas, any case; `+LIST` adds them to the default columns.
pub fn parse_columns(text: &str) -> Result<Columns, String> {
    let (mut columns, list) = match text.strip_prefix('+') {
        Some(list) => (Column::DEFAULT.to_vec(), list),
        None => (Vec::new(), text),
    };
    for name in list.split(',') {
        let column = Column::ALL
            .into_iter()
            .find(|column| column.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let known: Vec<&str> = Column::ALL.iter().map(|column| column.name()).collect();
                format!(
                    "unknown column {name:?} (the columns: {})",
                    known.join(", ")
                )
            })?;
        columns.push(column);
    }
    Ok(Columns(columns))
}

/// How the table is printed.
#[derive(Debug, Clone)]
pub struct Layout {
    pub columns: Vec<Column>,
    /// Sizes in bytes, not in fincore's short form.
    pub bytes: bool,
    pub headings: bool,
    pub raw: bool,
}

/// One row: a file, or the TOTAL.
pub struct Row {
    name: Vec<u8>,
    size: u64,
    page_size: u64,
    cached: u64,
    dirty: Option<u64>,
    writeback: Option<u64>,
    evicted: Option<u64>,
    recently_evicted: Option<u64>,
}

impl Row {
    pub fn new(path: &Path, residency: &FileResidency) -> Row {
        Row {
            name: path.as_os_str().as_bytes().to_vec(),
            size: residency.size,
            page_size: residency.page_size,
            cached: residency.cached,
            dirty: residency.dirty,
            writeback: residency.writeback,
            evicted: residency.evicted,
            recently_evicted: residency.recently_evicted,
        }
    }

    /// The TOTAL row of `rows` (`-c`): the cachestat counts only if every file has them.
    pub fn total(rows: &[Row]) -> Row {
        let sum = |count: fn(&Row) -> Option<u64>| {
            rows.iter()
                .try_fold(0u64, |sum, row| Some(sum.saturating_add(count(row)?)))
        };
        Row {
            name: b"TOTAL".to_vec(),
            size: rows.iter().map(|row| row.size).sum(),
            page_size: rows.first().map_or(4096, |row| row.page_size),
            cached: rows.iter().map(|row| row.cached).sum(),
            dirty: sum(|row| row.dirty),
            writeback: sum(|row| row.writeback),
            evicted: sum(|row| row.evicted),
            recently_evicted: sum(|row| row.recently_evicted),
        }
    }

    /// What a column shows for this row (empty when the figure was not measured).
    fn cell(&self, column: Column, layout: &Layout) -> String {
        let size = |bytes: u64| {
            if layout.bytes {
                bytes.to_string()
            } else {
                short_size(bytes)
            }
        };
        match column {
            Column::File => encode(&self.name, layout.raw),
            Column::Size => size(self.size),
            _ => match column.pages_of(self) {
                Some(pages) if column.counts_pages() => pages.to_string(),
                Some(pages) => size(pages.saturating_mul(self.page_size)),
                None => String::new(),
            },
        }
    }
}

/// The table as text.
pub fn render(rows: &[Row], layout: &Layout) -> String {
    // libsmartcols prints nothing, not even the headings, for a table without rows.
    if rows.is_empty() {
        return String::new();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            layout
                .columns
                .iter()
                .map(|&c| row.cell(c, layout))
                .collect()
        })
        .collect();
    let mut out = String::new();
    if layout.raw {
        if layout.headings {
            let names: Vec<&str> = layout.columns.iter().map(|column| column.name()).collect();
            out += &names.join(" ");
            out += "\n";
        }
        for row in &cells {
            out += &row.join(" ");
            out += "\n";
        }
        return out;
    }
    let widths: Vec<usize> = layout
        .columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let widest = cells
                .iter()
                .map(|row| row[index].chars().count())
                .max()
                .unwrap_or(0);
            // libsmartcols counts the heading even when it is not printed.
            let heading = column.name().len();
            if widest < heading {
                heading
            } else if widest < column.width_hint() && heading < column.width_hint() {
                column.width_hint()
            } else {
                widest
            }
        })
        .collect();
    let line = |texts: Vec<&str>| -> String {
        let last = texts.len() - 1;
        let mut line = String::new();
        for (index, (text, column)) in texts.into_iter().zip(&layout.columns).enumerate() {
            let width = widths[index];
            if *column == Column::File {
                line += text;
                if index != last {
                    line += &" ".repeat(width.saturating_sub(text.chars().count()));
                }
            } else {
                line += &format!("{text:>width$}");
            }
            if index != last {
                line += " ";
            }
        }
        line + "\n"
    };
    if layout.headings {
        out += &line(layout.columns.iter().map(|column| column.name()).collect());
    }
    for row in &cells {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// fincore's JSON (`-J`), written as libsmartcols writes it (three-space indents, the columns
/// in their order, `},{` between rows): `{"fincore": [{"res": …, "pages": …, "size": …,
/// "file": …}]}`, counts as numbers, sizes as strings unless in bytes, figures not measured as
/// null; names as they are, but for bytes that are not UTF-8 (replaced: JSON cannot carry
/// them, where fincore writes them raw).
pub fn json(rows: &[Row], layout: &Layout) -> String {
    let objects: Vec<String> = rows
        .iter()
        .map(|row| {
            let members: Vec<String> = layout
                .columns
                .iter()
                .map(|&column| {
                    let cell = match column {
                        Column::File => String::from_utf8_lossy(&row.name).into_owned(),
                        _ => row.cell(column, layout),
                    };
                    let number = column != Column::File && (column.counts_pages() || layout.bytes);
                    let value = if number && cell.is_empty() {
                        String::from("null")
                    } else if number {
                        cell
                    } else {
                        serde_json::Value::from(cell).to_string()
                    };
                    format!("         \"{}\": {value}", column.name().to_lowercase())
                })
                .collect();
            format!("      {{\n{}\n      }}", members.join(",\n"))
        })
        .collect();
    let rows = if objects.is_empty() {
        String::new()
    } else {
        objects.join(",").replace("},      {", "},{")
    };
    format!("{{\n   \"fincore\": [\n{rows}\n   ]\n}}\n")
}

/// A size as util-linux prints it (`size_to_human_string` with one-letter suffixes): the
/// largest binary unit it reaches, one decimal rounded half up and left out when zero:
/// `0B`, `1B`, `4K`, `9.5M`.
pub fn short_size(bytes: u64) -> String {
    const LETTERS: [char; 7] = ['B', 'K', 'M', 'G', 'T', 'P', 'E'];
    let mut exponent = 0;
    while exponent < 60 && bytes >= 1u64 << (exponent + 10) {
        exponent += 10;
    }
    let letter = LETTERS[exponent / 10];
    if exponent == 0 {
        return format!("{bytes}{letter}");
    }
    let mut whole = bytes >> exponent;
    let remainder = bytes & ((1u64 << exponent) - 1);
    // Thousandths, then tenths rounded half up.
    let thousandths = ((u128::from(remainder) * 1000) >> exponent) as u64;
    let mut tenths = (thousandths + 50) / 100;
    if tenths == 10 {
        whole += 1;
        tenths = 0;
    }
    if tenths == 0 {
        format!("{whole}{letter}")
    } else {
        format!("{whole}.{tenths}{letter}")
    }
}

/// A file name as libsmartcols prints it (see the module docs).
fn encode(name: &[u8], raw: bool) -> String {
    let mut shown = String::with_capacity(name.len());
    let hex = |shown: &mut String, bytes: &[u8]| {
        for byte in bytes {
            shown.push_str(&format!("\\x{byte:02x}"));
        }
    };
    for chunk in name.utf8_chunks() {
        let valid = chunk.valid();
        for (at, c) in valid.char_indices() {
            let escaped = if raw {
                !c.is_ascii_graphic() || c == '\\'
            } else {
                c.is_control() || (c == '\\' && valid[at + 1..].starts_with('x'))
            };
            if escaped {
                hex(&mut shown, c.encode_utf8(&mut [0; 4]).as_bytes());
            } else {
                shown.push(c);
            }
        }
        hex(&mut shown, chunk.invalid());
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_util_linux_prints_them() {
        let cases = [
            (0, "0B"),
            (1, "1B"),
            (1023, "1023B"),
            (1024, "1K"),
            (4096, "4K"),
            (1536, "1.5K"),
            (10_000_000, "9.5M"),
            (1024 * 1024 - 1, "1024K"),
            (u64::MAX, "16E"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(short_size(bytes), shown, "{bytes}");
        }
    }

    #[test]
    fn names_are_encoded_as_libsmartcols_encodes_them() {
        assert_eq!(encode(b"a\\b", false), "a\\b");
        assert_eq!(encode(b"a\\xb", false), "a\\x5cxb");
        assert_eq!(encode(b"n\nl\x1b", false), "n\\x0al\\x1b");
        assert_eq!(encode("é".as_bytes(), false), "é");
        assert_eq!(encode(b"\xff", false), "\\xff");
        assert_eq!(encode("a b\\é".as_bytes(), true), "a\\x20b\\x5c\\xc3\\xa9");
    }

    #[test]
    fn column_lists_replace_or_extend_the_default() {
        assert_eq!(
            parse_columns("res,FILE"),
            Ok(Columns(vec![Column::Res, Column::File]))
        );
        assert_eq!(parse_columns("+dirty").unwrap().0.len(), 5);
        assert!(parse_columns("RES,,FILE").is_err());
        assert!(parse_columns("").is_err());
        assert!(parse_columns("NOPE").is_err());
    }
}
