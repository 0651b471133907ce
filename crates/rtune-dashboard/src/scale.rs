//! Axes for the server-drawn plots (svg.rs): the default range of a plot that one outlier must
//! not squash, tick values for linear, integer and log axes, and the colour scale by objective.
//! The page (assets/app.js) follows the same rules in JavaScript, so that a plot reads the same
//! in the browser and in `rtune report --format svg|png`.

/// The default value range of a plot: the 10th to the 90th percentile, widened by their distance
/// on each side, and never beyond the data. A few outliers (a diverged trial) then fall outside
/// and are marked at the edge, while the curves' own range (a loss falling from 2 to 0.3) stays
/// whole. `None` without finite values.
pub fn robust_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).floor() as usize];
    let (p10, p90) = (q(0.1), q(0.9));
    let spread = if p90 > p10 {
        p90 - p10
    } else {
        (p90.abs() * 0.1).max(1e-12)
    };
    let (min, max) = (v[0], v[v.len() - 1]);
    Some(((p10 - spread).max(min), (p90 + spread).min(max)))
}

/// Round tick values covering [lo, hi], about `count` of them; whole numbers only when
/// `integer` (an iteration axis never reads 1.5).
pub fn linear_ticks(lo: f64, hi: f64, count: usize, integer: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return if lo.is_finite() { vec![lo] } else { Vec::new() };
    }
    let raw = (hi - lo) / count.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    if integer {
        step = step.max(1.0).round();
    }
    let mut out = Vec::new();
    let mut k = (lo / step).ceil();
    while k * step <= hi + step * 1e-9 {
        let t = k * step;
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        k += 1.0;
    }
    out
}

/// Ticks of a log axis over [lo, hi] (0 < lo): the powers of ten, with 2 and 5 between them
/// when the range spans less than two decades; the ends when nothing else falls inside.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Vec::new();
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mantissas: &[f64] = if (hi / lo).log10() < 2.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut out = Vec::new();
    for e in a..=b {
        for m in mantissas {
            let t = m * 10f64.powi(e);
            if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                out.push(t);
            }
        }
    }
    if out.len() < 2 {
        out = if hi > lo { vec![lo, hi] } else { vec![lo] };
    }
    out
}

/// A colour from the viridis scale (`u` in 0..1: dark purple to yellow) as `#rrggbb`. Readable
/// on white at both ends and ordered in lightness, so "better" reads at a glance.
pub fn viridis(u: f64) -> String {
    // Samples of matplotlib's viridis at 0, 0.125, ..., 1.
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = u * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// A number as a tick label: short, exponent form for very small or large magnitudes.
pub fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{x:.2e}");
        // 1.00e-5 -> 1e-5
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        }
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outlier_does_not_set_the_range_but_a_falling_curve_keeps_its_start() {
        // Twelve curves falling from about 2 to 0.4, and one diverged point.
        let mut values: Vec<f64> = (0..12)
            .flat_map(|t| (1..=5).map(move |i| 0.4 + 1.6 / i as f64 + t as f64 * 0.01))
            .collect();
        let (lo, hi) = robust_range(values.iter().copied()).expect("a range");
        assert!(
            lo <= 0.72 && hi >= 2.1,
            "{lo}..{hi}: the curves' starts are kept"
        );
        values.push(1e6);
        let (_, hi) = robust_range(values.iter().copied()).expect("a range");
        assert!(hi < 5.0, "the outlier is left out: {hi}");
        assert_eq!(robust_range([f64::NAN].into_iter()), None);
        assert_eq!(robust_range([3.0, 3.0].into_iter()), Some((3.0, 3.0)));
    }

    #[test]
    fn integer_axes_have_whole_ticks_and_log_axes_decades() {
        let t = linear_ticks(1.0, 3.0, 8, true);
        assert_eq!(t, vec![1.0, 2.0, 3.0]);
        assert!(linear_ticks(1.0, 3.0, 8, false).contains(&1.5));
        assert_eq!(log_ticks(1e-6, 1e-2).len(), 5);
        let shown: Vec<String> = log_ticks(5e-6, 2e-4).into_iter().map(fmt_num).collect();
        assert_eq!(shown, ["5e-6", "1e-5", "2e-5", "5e-5", "1e-4", "2e-4"]);
        assert_eq!(fmt_num(1e-5), "1e-5");
        assert_eq!(fmt_num(0.25), "0.25");
    }

    #[test]
    fn viridis_runs_from_dark_to_light() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
        assert_eq!(viridis(f64::NAN), "#440154");
    }
}
