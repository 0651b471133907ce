//! The synthetic multi-fidelity functions of [`rtune_core::synthetic`] (Branin and Hartmann-6
//! after Kandasamy et al. 2017, as in the BOHB and DEHB papers) as simulator benchmarks:
//! iteration `i` of [`MAX_ITERATIONS`] is fidelity `z = i / MAX_ITERATIONS` and takes one
//! simulated second. Each reports `value` (to minimise) and `epoch`; the parameters are `x0`,
//! `x1`, ... as in the core.

use rtune_core::synthetic::SyntheticFunction;
use serde_json::{Map, Value, json};

use crate::{BenchError, Benchmark, Step, number};

/// Iterations of a full run of a synthetic function (fidelity 1).
pub const MAX_ITERATIONS: u32 = 27;

/// A synthetic function as a benchmark (`mf-branin`, `mf-hartmann6`).
#[derive(Clone, Copy, Debug)]
pub struct Synthetic(pub SyntheticFunction);

impl Synthetic {
    fn label(self) -> &'static str {
        match self.0 {
            SyntheticFunction::Branin => "mf-branin",
            SyntheticFunction::Hartmann6 => "mf-hartmann6",
        }
    }
}

impl Benchmark for Synthetic {
    fn describe(&self) -> String {
        self.label().into()
    }

    fn max_iterations(&self) -> u32 {
        MAX_ITERATIONS
    }

    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError> {
        let x = self
            .0
            .bounds()
            .into_iter()
            .enumerate()
            .map(|(i, (low, high))| {
                number(
                    self.label(),
                    config,
                    &format!("x{i}"),
                    &format!("a number in [{low}, {high}]"),
                )
            })
            .collect::<Result<Vec<f64>, BenchError>>()?;
        let z = f64::from(iteration.clamp(1, MAX_ITERATIONS)) / f64::from(MAX_ITERATIONS);
        let mut metrics = Map::new();
        metrics.insert("epoch".into(), json!(iteration));
        metrics.insert("value".into(), json!(self.0.evaluate(&x, z)));
        Ok(Step {
            elapsed_s: f64::from(iteration),
            metrics,
        })
    }

    fn space(&self) -> Value {
        Value::Object(self.0.space())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_iteration_is_the_function_at_full_fidelity() {
        for function in [SyntheticFunction::Branin, SyntheticFunction::Hartmann6] {
            let config: Map<String, Value> = function
                .argmin()
                .into_iter()
                .enumerate()
                .map(|(i, x)| (format!("x{i}"), json!(x)))
                .collect();
            let step = Synthetic(function)
                .evaluate(&config, MAX_ITERATIONS)
                .expect("step");
            let value = step.metrics["value"].as_f64().expect("value");
            assert!(
                (value - function.optimum()).abs() < 1e-5,
                "{function:?}: {value}"
            );
            // Lower fidelities are biased: the same point scores differently.
            let low = Synthetic(function).evaluate(&config, 3).expect("step");
            assert_ne!(low.metrics["value"], step.metrics["value"]);
        }
    }

    #[test]
    fn curves_take_one_second_per_iteration_and_name_missing_parameters() {
        let config = match json!({"x0": 1.0, "x1": 2.0}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let curve = Synthetic(SyntheticFunction::Branin)
            .curve(&config)
            .expect("curve");
        assert_eq!(curve.len(), 27);
        assert_eq!(curve[26].elapsed_s, 27.0);
        let err = Synthetic(SyntheticFunction::Hartmann6)
            .curve(&config)
            .expect_err("missing x2..x5");
        assert!(err.to_string().contains("no `x2`"), "{err}");
    }
}
