//! Synthetic multi-fidelity test functions with known optima, for testing and comparing
//! searchers in milliseconds (no training involved).
//!
//! Both follow the multi-fidelity forms of Kandasamy et al., "Multi-fidelity Bayesian
//! optimisation with continuous approximations" (ICML 2017), which the BOHB and DEHB
//! literature uses: a fidelity `z` in `[0, 1]` perturbs the function's coefficients, and `z = 1`
//! is the original function. Both are minimised.
//!
//! * Branin (2 parameters, `x0` in `[-5, 10]`, `x1` in `[0, 15]`):
//!   `b = 5.1/(4 pi^2) - 0.01 (1-z)`, `c = 5/pi - 0.1 (1-z)`, `t = 1/(8 pi) + 0.05 (1-z)`,
//!   `f = (x1 - b x0^2 + c x0 - 6)^2 + 10 (1-t) cos(x0) + 10`; minimum 0.397887 at
//!   `(-pi, 12.275)`, `(pi, 2.275)` and `(9.42478, 2.475)`.
//! * Hartmann-6 (6 parameters in `[0, 1]`): `f = -sum_i a_i(z) exp(-sum_j A_ij (x_j - P_ij)^2)`
//!   with `a(z) = a - 0.1 (1-z)`, `a = (1, 1.2, 3, 3.2)`; minimum -3.32237 at
//!   `(0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)`.
//!
//! A trial at iteration `r` of `max_t` is evaluated at fidelity `z = r / max_t`.

use std::f64::consts::PI;

use serde_json::{Value, json};

use crate::Config;

/// One of the synthetic functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticFunction {
    Branin,
    Hartmann6,
}

const HARTMANN_ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
const HARTMANN_A: [[f64; 6]; 4] = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
];
const HARTMANN_P: [[f64; 6]; 4] = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
];

impl SyntheticFunction {
    pub fn name(self) -> &'static str {
        match self {
            SyntheticFunction::Branin => "branin",
            SyntheticFunction::Hartmann6 => "hartmann6",
        }
    }

    /// Each parameter's `(low, high)`; the parameters are named `x0`, `x1`, ...
    pub fn bounds(self) -> Vec<(f64, f64)> {
        match self {
            SyntheticFunction::Branin => vec![(-5.0, 10.0), (0.0, 15.0)],
            SyntheticFunction::Hartmann6 => vec![(0.0, 1.0); 6],
        }
    }

    /// The search space as an experiment file's `[space]` table (in JSON): `x0`, `x1`, ...
    /// uniform over [`Self::bounds`].
    pub fn space(self) -> Config {
        self.bounds()
            .into_iter()
            .enumerate()
            .map(|(i, (low, high))| (format!("x{i}"), json!({"uniform": [low, high]})))
            .collect()
    }

    /// The minimum at full fidelity.
    pub fn optimum(self) -> f64 {
        match self {
            SyntheticFunction::Branin => 0.397_887_357_729_738,
            SyntheticFunction::Hartmann6 => -3.322_368_011_415_515,
        }
    }

    /// A point where the minimum is reached.
    pub fn argmin(self) -> Vec<f64> {
        match self {
            SyntheticFunction::Branin => vec![PI, 2.275],
            SyntheticFunction::Hartmann6 => {
                vec![0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]
            }
        }
    }

    /// The value at `x` and fidelity `z` in `[0, 1]` (clamped; 1 is the original function).
    pub fn evaluate(self, x: &[f64], z: f64) -> f64 {
        let s = 1.0 - z.clamp(0.0, 1.0);
        match self {
            SyntheticFunction::Branin => {
                let (x0, x1) = (x[0], x[1]);
                let b = 5.1 / (4.0 * PI * PI) - 0.01 * s;
                let c = 5.0 / PI - 0.1 * s;
                let t = 1.0 / (8.0 * PI) + 0.05 * s;
                (x1 - b * x0 * x0 + c * x0 - 6.0).powi(2) + 10.0 * (1.0 - t) * x0.cos() + 10.0
            }
            SyntheticFunction::Hartmann6 => -(0..4)
                .map(|i| {
                    let inner: f64 = (0..6)
                        .map(|j| HARTMANN_A[i][j] * (x[j] - HARTMANN_P[i][j]).powi(2))
                        .sum();
                    (HARTMANN_ALPHA[i] - 0.1 * s) * (-inner).exp()
                })
                .sum::<f64>(),
        }
    }

    /// The value for a trial's config (`x0`, `x1`, ... as numbers); `None` if one is missing.
    pub fn evaluate_config(self, config: &Config, z: f64) -> Option<f64> {
        let x: Option<Vec<f64>> = (0..self.bounds().len())
            .map(|i| config.get(&format!("x{i}")).and_then(Value::as_f64))
            .collect();
        Some(self.evaluate(&x?, z))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_optima_are_where_the_literature_puts_them() {
        for f in [SyntheticFunction::Branin, SyntheticFunction::Hartmann6] {
            let at = f.evaluate(&f.argmin(), 1.0);
            assert!((at - f.optimum()).abs() < 1e-5, "{}: {at}", f.name());
        }
        let branin = SyntheticFunction::Branin;
        for x in [[-PI, 12.275], [9.42478, 2.475]] {
            assert!((branin.evaluate(&x, 1.0) - branin.optimum()).abs() < 1e-5);
        }
    }

    #[test]
    fn no_point_of_a_fine_grid_beats_the_optimum() {
        for f in [SyntheticFunction::Branin, SyntheticFunction::Hartmann6] {
            let bounds = f.bounds();
            let d = bounds.len();
            let steps: usize = if d == 2 { 200 } else { 6 };
            let mut best = f64::INFINITY;
            for index in 0..steps.pow(d as u32) {
                let mut rest = index;
                let x: Vec<f64> = bounds
                    .iter()
                    .map(|(low, high)| {
                        let k = rest % steps;
                        rest /= steps;
                        low + (high - low) * k as f64 / (steps - 1) as f64
                    })
                    .collect();
                best = best.min(f.evaluate(&x, 1.0));
            }
            assert!(best >= f.optimum() - 1e-9, "{}: {best}", f.name());
        }
    }

    #[test]
    fn low_fidelity_differs_from_full_fidelity_but_is_correlated() {
        let f = SyntheticFunction::Branin;
        let a = f.evaluate(&[1.0, 5.0], 0.0);
        let b = f.evaluate(&[1.0, 5.0], 1.0);
        assert!((a - b).abs() > 0.1, "{a} {b}");
        let h = SyntheticFunction::Hartmann6;
        let good = h.argmin();
        let poor = vec![0.9; 6];
        assert!(h.evaluate(&good, 0.1) < h.evaluate(&poor, 0.1));
        assert!(h.evaluate(&good, 0.1) > h.evaluate(&good, 1.0));
    }

    #[test]
    fn configs_are_read_by_parameter_name() {
        let f = SyntheticFunction::Branin;
        let config: Config = [
            ("x0".to_string(), json!(PI)),
            ("x1".to_string(), json!(2.275)),
        ]
        .into_iter()
        .collect();
        let v = f.evaluate_config(&config, 1.0).expect("both parameters");
        assert!((v - f.optimum()).abs() < 1e-5);
        assert_eq!(f.evaluate_config(&Config::new(), 1.0), None);
        assert_eq!(f.space().len(), 2);
    }
}
