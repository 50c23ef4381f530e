//! Summaries of repeated measurements.

use serde::Serialize;

/// Median with its spread; the samples are kept so JSON readers can apply
/// their own statistics.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    /// Panics on no samples: every caller measures at least once, and a
    /// summary of nothing would print as a plausible-looking zero.
    pub fn of(samples: Vec<f64>) -> Summary {
        assert!(!samples.is_empty(), "summary of no samples");
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Summary {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn odd_count_takes_the_middle() {
        let s = Summary::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }

    #[test]
    fn even_count_averages_the_middle_pair() {
        let s = Summary::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn samples_keep_their_order() {
        assert_eq!(Summary::of(vec![2.0, 1.0]).samples, vec![2.0, 1.0]);
    }
}
