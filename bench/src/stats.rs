//! Order statistics of a handful of samples, and how they are printed.

/// The median and spread of a set of samples (any unit).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p10: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Summary {
                count: 0,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p10: f64::NAN,
                p90: f64::NAN,
                p99: f64::NAN,
                mean: f64::NAN,
            };
        }
        Summary {
            count: sorted.len(),
            median: percentile(&sorted, 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            p10: percentile(&sorted, 10.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }

    /// "12.3 (11.9–13.0)": the median and the range, with `digits` decimals.
    pub fn median_range(&self, digits: usize) -> String {
        format!("{:.digits$} ({:.digits$}–{:.digits$})", self.median, self.min, self.max)
    }

    /// "12.3 (p10–p90 11.9–13.0)", for larger sets where the extremes say little.
    pub fn median_p10_p90(&self, digits: usize) -> String {
        format!("{:.digits$} (p10–p90 {:.digits$}–{:.digits$})", self.median, self.p10, self.p90)
    }
}

/// Linear interpolation between closest ranks; `sorted` is ascending and not empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// "1.42×" and the like: how many times `measured` is `baseline`.
pub fn ratio(measured: f64, baseline: f64) -> String {
    if baseline > 0.0 && measured.is_finite() { format!("{:.2}×", measured / baseline) } else { "–".into() }
}
