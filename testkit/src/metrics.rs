//! Reading the Prometheus text exposition tokengate serves on `/metrics`, for assertions, and
//! percentiles of what tests and load tools measure.

use std::collections::BTreeSet;

/// One sample line: metric name, label pairs, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeSet<(String, String)>,
    pub value: f64,
}

/// Every sample of `exposition` (comments skipped; a value that does not parse is NaN).
pub fn samples(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_owned(),
                labels: labels
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                    .collect(),
                value: value.parse().unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// The sum of the samples of `name` that carry every pair of `labels`; 0 when there are none.
pub fn value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(exposition)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.contains(&((*k).to_owned(), (*v).to_owned())))
        })
        .map(|s| s.value)
        .filter(|v| !v.is_nan())
        .sum()
}

/// The nearest-rank `q`-quantile (0 < `q` <= 1) of values sorted in ascending order; `None`
/// when there are none.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod percentile_tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_takes_the_value_at_the_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 0.5), Some(50));
        assert_eq!(nearest_rank(&values, 0.99), Some(99));
        assert_eq!(nearest_rank(&values, 0.999), Some(100));
        assert_eq!(nearest_rank(&values, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7u32], 0.5), Some(7));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }
}
