//! Percentiles of measured samples.

/// Summary of a set of samples (in whatever unit they were given).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Summary {
    /// Number of samples.
    pub(crate) n: usize,
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// Largest.
    pub(crate) max: f64,
    /// Arithmetic mean.
    pub(crate) mean: f64,
}

/// The `q` quantile (0..=1) of `sorted` by the nearest-rank method: the smallest sample such
/// that at least `q` of all samples are at most it.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `samples`.
pub(crate) fn summarize(samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Summary {
        n: sorted.len(),
        p50: quantile(&sorted, 0.5),
        p99: quantile(&sorted, 0.99),
        max: sorted.last().copied().unwrap_or(0.0),
        mean: if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<f64>() / sorted.len() as f64
        },
    }
}

/// Rounds to 3 decimals (for JSON output: sub-microsecond noise is not information).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&xs);
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(summarize(&[]).p99, 0.0);
        assert_eq!(round3(1.23456), 1.235);
    }
}
