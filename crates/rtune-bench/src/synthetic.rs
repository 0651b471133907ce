//! Synthetic multi-fidelity functions with known optima, as used in the BOCA, BOHB and DEHB
//! papers (Kandasamy et al. 2017): Branin and Hartmann-6 whose coefficients move towards the
//! true function as the fidelity `z` goes to 1. Iteration `i` of `MAX_ITERATIONS` is fidelity
//! `z = i / MAX_ITERATIONS`; each iteration takes one simulated second. Both report `value`
//! (to minimise) and `epoch`.

use std::f64::consts::PI;

use serde_json::{Map, Value, json};

use crate::{BenchError, Benchmark, Step, number};

/// Iterations of a full run of a synthetic function (fidelity 1).
pub const MAX_ITERATIONS: u32 = 27;

/// Iteration `i` of a synthetic function: fidelity `i / MAX_ITERATIONS`, one second each.
fn step_at(iteration: u32, value_at: impl Fn(f64) -> f64) -> Step {
    let z = f64::from(iteration.clamp(1, MAX_ITERATIONS)) / f64::from(MAX_ITERATIONS);
    let mut metrics = Map::new();
    metrics.insert("epoch".into(), json!(iteration));
    metrics.insert("value".into(), json!(value_at(z)));
    Step {
        elapsed_s: f64::from(iteration),
        metrics,
    }
}

/// Multi-fidelity Branin on x1 in [-5, 10], x2 in [0, 15]; minimum 0.397887 at fidelity 1 (at
/// (-pi, 12.275), (pi, 2.275) and (9.42478, 2.475)).
#[derive(Clone, Debug, Default)]
pub struct MfBranin;

impl MfBranin {
    pub const OPTIMUM: f64 = 0.397_887_357_729_738;

    /// The function at fidelity `z` in (0, 1].
    pub fn value(x1: f64, x2: f64, z: f64) -> f64 {
        let b = 5.1 / (4.0 * PI * PI) - 0.01 * (1.0 - z);
        let c = 5.0 / PI - 0.1 * (1.0 - z);
        let t = 1.0 / (8.0 * PI) + 0.05 * (1.0 - z);
        (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
    }
}

impl Benchmark for MfBranin {
    fn describe(&self) -> String {
        "mf-branin".into()
    }

    fn max_iterations(&self) -> u32 {
        MAX_ITERATIONS
    }

    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError> {
        let x1 = number("mf-branin", config, "x1", "a number in [-5, 10]")?;
        let x2 = number("mf-branin", config, "x2", "a number in [0, 15]")?;
        Ok(step_at(iteration, |z| Self::value(x1, x2, z)))
    }

    fn space(&self) -> Value {
        json!({"x1": {"uniform": [-5.0, 10.0]}, "x2": {"uniform": [0.0, 15.0]}})
    }
}

const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
const A: [[f64; 6]; 4] = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
];
const P: [[f64; 6]; 4] = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
];

/// Multi-fidelity Hartmann-6 on [0, 1]^6 (`x1`..`x6`); minimum -3.32237 at fidelity 1.
#[derive(Clone, Debug, Default)]
pub struct MfHartmann6;

impl MfHartmann6 {
    pub const OPTIMUM: f64 = -3.322_368_011_415_515;
    pub const ARGMIN: [f64; 6] = [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573];

    /// The function at fidelity `z` in (0, 1]: the weights are `alpha - 0.1 (1 - z)`.
    pub fn value(x: &[f64; 6], z: f64) -> f64 {
        -(0..4)
            .map(|i| {
                let inner: f64 = (0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum();
                (ALPHA[i] - 0.1 * (1.0 - z)) * (-inner).exp()
            })
            .sum::<f64>()
    }
}

impl Benchmark for MfHartmann6 {
    fn describe(&self) -> String {
        "mf-hartmann6".into()
    }

    fn max_iterations(&self) -> u32 {
        MAX_ITERATIONS
    }

    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError> {
        let mut x = [0.0; 6];
        for (j, slot) in x.iter_mut().enumerate() {
            *slot = number(
                "mf-hartmann6",
                config,
                &format!("x{}", j + 1),
                "a number in [0, 1]",
            )?;
        }
        Ok(step_at(iteration, |z| Self::value(&x, z)))
    }

    fn space(&self) -> Value {
        let mut space = Map::new();
        for j in 1..=6 {
            space.insert(format!("x{j}"), json!({"uniform": [0.0, 1.0]}));
        }
        Value::Object(space)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optima_are_where_the_literature_puts_them() {
        for (x1, x2) in [(-PI, 12.275), (PI, 2.275), (9.42478, 2.475)] {
            assert!((MfBranin::value(x1, x2, 1.0) - MfBranin::OPTIMUM).abs() < 1e-5);
        }
        assert!(
            (MfHartmann6::value(&MfHartmann6::ARGMIN, 1.0) - MfHartmann6::OPTIMUM).abs() < 1e-5
        );
        // Lower fidelities are biased: the same point scores differently.
        assert!((MfBranin::value(PI, 2.275, 0.1) - MfBranin::OPTIMUM).abs() > 0.1);
        assert!(MfHartmann6::value(&MfHartmann6::ARGMIN, 0.1) > MfHartmann6::OPTIMUM);
    }

    #[test]
    fn curves_take_one_second_per_iteration_and_name_missing_parameters() {
        let config = match json!({"x1": 1.0, "x2": 2.0}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let curve = MfBranin.curve(&config).expect("curve");
        assert_eq!(curve.len(), 27);
        assert_eq!(curve[26].elapsed_s, 27.0);
        let err = MfHartmann6.curve(&config).expect_err("missing x3..x6");
        assert!(err.to_string().contains("no `x3`"), "{err}");
    }
}
