//! Plain-text tables and shares, as every benchmark prints them.

use std::fmt::Write as _;

/// A share of the CPUs as a whole percentage, or `unknown`.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "unknown".to_string(), |s| format!("{:.0}%", s * 100.0))
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
    use super::align;

    #[test]
    fn pads_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string()],
            vec!["ccc".to_string(), "d".to_string()],
        ];
        assert_eq!(align(&rows), "a    bb\nccc  d\n");
    }
}
