//! Percentiles of measured durations and the plain-text tables the benchmarks print.

/// Nearest-rank percentiles of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Distribution {
    /// Summarizes `samples`, or returns `None` when there are none. NaN samples are dropped.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| !s.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            count: sorted.len(),
            min: sorted[0],
            p50: nearest_rank(&sorted, 50.0),
            p90: nearest_rank(&sorted, 90.0),
            p99: nearest_rank(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Returns the smallest sample that at least `percent` of the sorted samples do not exceed.
fn nearest_rank(sorted: &[f64], percent: f64) -> f64 {
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Formats milliseconds with a precision that suits their size.
pub fn milliseconds(value: f64) -> String {
    if value.abs() < 10.0 {
        format!("{value:.2} ms")
    } else if value.abs() < 1000.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.0} ms")
    }
}

/// Lays out rows under a header, the first column left-aligned and the others right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| layout_row(row, &widths))
        .collect::<Vec<_>>()
        .join("\n")
}

fn layout_row(row: &[String], widths: &[usize]) -> String {
    row.iter()
        .zip(widths)
        .enumerate()
        .map(|(column, (cell, width))| {
            if column == 0 {
                format!("{cell:<width$}")
            } else {
                format!("{cell:>width$}")
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_of_hundred_samples() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let summary = Distribution::of(&samples).expect("samples are not empty");
        assert_eq!(summary.count, 100);
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.p50, 50.0);
        assert_eq!(summary.p90, 90.0);
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
    }

    #[test]
    fn distribution_of_one_sample() {
        let summary = Distribution::of(&[7.5]).expect("one sample");
        assert_eq!(summary.p50, 7.5);
        assert_eq!(summary.p99, 7.5);
    }

    #[test]
    fn distribution_of_nothing_is_none() {
        assert_eq!(Distribution::of(&[]), None);
        assert_eq!(Distribution::of(&[f64::NAN]), None);
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["stage", "p50"],
            &[
                vec!["a".to_owned(), "1.00 ms".to_owned()],
                vec!["longer".to_owned(), "12.5 ms".to_owned()],
            ],
        );
        assert_eq!(text, "stage       p50\na       1.00 ms\nlonger  12.5 ms");
    }

    #[test]
    fn milliseconds_precision_by_size() {
        assert_eq!(milliseconds(1.234), "1.23 ms");
        assert_eq!(milliseconds(12.34), "12.3 ms");
        assert_eq!(milliseconds(1234.4), "1234 ms");
    }
}
