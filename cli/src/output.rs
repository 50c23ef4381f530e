//! Rendering results for people (aligned tables) or programs (JSON).

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;
use tabwriter::TabWriter;

/// What `--format` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Rows of cells laid out in aligned columns, like ctr's tabwriter output.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

/// Space between columns; wide enough to tell columns apart when a cell is
/// empty.
const PADDING: usize = 3;

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut table = Table::default();
        table.row(header.iter().copied());
        table
    }

    /// A table whose first row is data, e.g. `Key:  value` listings.
    pub fn headless() -> Self {
        Table::default()
    }

    pub fn row<I>(&mut self, cells: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.rows
            .push(cells.into_iter().map(|c| clean_cell(c.into())).collect());
    }

    pub fn render(&self) -> String {
        let mut writer = TabWriter::new(Vec::new()).padding(PADDING);
        for row in &self.rows {
            // Writing to a Vec cannot fail.
            let _ = writeln!(writer, "{}", row.join("\t"));
        }
        let bytes = writer.into_inner().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        // An empty last cell would otherwise leave padding at line ends.
        text.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }

    pub fn print(&self) -> io::Result<()> {
        print(&self.render())
    }
}

/// Tabs and newlines inside a value would break the column layout.
fn clean_cell(cell: String) -> String {
    if cell.contains(['\t', '\n', '\r']) {
        cell.replace(['\t', '\n', '\r'], " ")
    } else {
        cell
    }
}

/// Writes to stdout, returning (rather than panicking on) a closed pipe so
/// `corten ... | head` ends quietly.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)?;
    Ok(())
}

/// Sizes in binary units with one decimal, e.g. `1.2 MiB`; whole bytes
/// below a KiB.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let Ok(bytes) = u64::try_from(bytes) else {
        return "-".into();
    };
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Compare the rounded value, so 1023.97 KiB shows as 1.0 MiB rather
    // than 1024.0 KiB.
    while (value * 10.0).round() / 10.0 >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_widest_cell() {
        let mut table = Table::new(&["NAME", "LABELS"]);
        table.row(["default", ""]);
        table.row(["x", "a=1,b=2"]);
        assert_eq!(
            table.render(),
            "NAME      LABELS\n\
             default\n\
             x         a=1,b=2\n"
        );
    }

    #[test]
    fn header_only_table() {
        let table = Table::new(&["TYPE", "ID"]);
        assert_eq!(table.render(), "TYPE   ID\n");
    }

    #[test]
    fn control_characters_in_cells_do_not_break_layout() {
        let mut table = Table::headless();
        table.row(["a\tb", "c\nd"]);
        assert_eq!(table.render(), "a b   c d\n");
    }

    #[test]
    fn format_names() {
        assert_eq!(Format::from_str("json", false), Ok(Format::Json));
        assert_eq!(Format::from_str("table", false), Ok(Format::Table));
        assert!(Format::from_str("yaml", false).is_err());
    }
}
