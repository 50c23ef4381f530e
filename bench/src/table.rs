//! Plain-text tables and shares, and the header lines every benchmark's
//! report starts with, so that all of them read alike.

use std::fmt::{Display, Write as _};

use serde::Serialize;

use crate::{machine::Machine, workdir::Filesystem};

/// The heading of the column that compares corten with containerd.
pub const VERSUS: &str = "corten / containerd";

/// A share of the CPUs as a whole percentage, or `unknown`.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "unknown".to_string(), |s| format!("{:.0}%", s * 100.0))
}

/// `N CPUs (CPU used by other work: X before, Y during)`, with `during_detail`
/// right after `during` (a report that knows more about that share).
pub fn cpus(machine: &Machine, during_detail: &str) -> String {
    format!(
        "{} CPUs (CPU used by other work: {} before, {} during{during_detail})",
        machine.cpus,
        percent(machine.busy_before),
        percent(machine.busy_during),
    )
}

/// A line of a report's header: `label` (with its colon; empty to continue
/// the line above) in a column wide enough for every label, then `value`.
pub fn field(out: &mut String, label: &str, value: impl Display) {
    let _ = writeln!(out, "  {label:<11} {value}");
}

/// The header's `disk:` line: where the benchmark wrote, and on what.
pub fn disk_line(out: &mut String, fs: &Filesystem) {
    let source = fs.source.as_ref().map_or_else(String::new, |s| format!(" on {s}"));
    let mount = fs
        .mount_point
        .as_ref()
        .map_or_else(String::new, |m| format!(" (mounted at {m})"));
    field(out, "disk:", format_args!("{}{source}{mount}, in {}", fs.kind, fs.dir));
}

/// A daemon's executable and the version it reported.
#[derive(Serialize)]
pub struct Daemon {
    pub binary: String,
    pub version: String,
}

/// The header's line for a daemon: `label` then `BINARY (version VERSION)`.
pub fn daemon_line(out: &mut String, label: &str, daemon: &Daemon) {
    field(
        out,
        label,
        format_args!("{} (version {})", daemon.binary, daemon.version),
    );
}

/// The header's lines for corten and, where it ran too, containerd.
pub fn daemon_lines(out: &mut String, corten: &Daemon, containerd: Option<&Daemon>) {
    daemon_line(out, "corten:", corten);
    if let Some(containerd) = containerd {
        daemon_line(out, "containerd:", containerd);
    }
}

/// `met` or `MISSED`, in capitals so that a miss stands out.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// A ratio's cell: two decimals, empty where there is none.
pub fn ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(String::new, |r| format!("{r:.2}"))
}

/// The `note:` lines that end every report.
pub fn notes(out: &mut String, notes: &[String]) {
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
}

/// A table whose last column, [`VERSUS`], is there only when the reference
/// daemon was measured too.
pub struct Versus {
    rows: Vec<Vec<String>>,
    reference: bool,
}

impl Versus {
    pub fn new(columns: &[&str], reference: bool) -> Versus {
        let mut header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        if reference {
            header.push(VERSUS.to_string());
        }
        Versus {
            rows: vec![header],
            reference,
        }
    }

    /// `cells`, then `versus` in the [`VERSUS`] column if there is one.
    pub fn row(&mut self, mut cells: Vec<String>, versus: Option<f64>) {
        if self.reference {
            cells.push(ratio(versus));
        }
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        align(&self.rows)
    }
}

/// Left-aligned columns two spaces apart; trailing blanks trimmed.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{align, field, Versus};

    #[test]
    fn pads_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string()],
            vec!["ccc".to_string(), "d".to_string()],
        ];
        assert_eq!(align(&rows), "a    bb\nccc  d\n");
    }

    #[test]
    fn header_values_line_up_and_continue() {
        let mut out = String::new();
        field(&mut out, "ctr:", "ctr 1.6");
        field(&mut out, "containerd:", "/usr/bin/containerd");
        field(&mut out, "", "more");
        assert_eq!(
            out,
            "  ctr:        ctr 1.6\n  containerd: /usr/bin/containerd\n              more\n"
        );
    }

    #[test]
    fn the_versus_column_only_with_the_reference() {
        let mut with = Versus::new(&["a", "b"], true);
        with.row(vec!["x".to_string(), "1".to_string()], Some(0.5));
        with.row(vec!["y".to_string(), "2".to_string()], None);
        assert_eq!(with.render(), "a  b  corten / containerd\nx  1  0.50\ny  2\n");
        let mut without = Versus::new(&["a", "b"], false);
        without.row(vec!["x".to_string(), "1".to_string()], None);
        assert_eq!(without.render(), "a  b\nx  1\n");
    }
}
