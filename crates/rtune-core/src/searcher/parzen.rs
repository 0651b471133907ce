//! Parzen estimators over an encoded search space: the model behind TPE and BOHB.
//!
//! Every searched parameter becomes one coordinate:
//!
//! * float domains: the value itself, or its logarithm for `loguniform`/`qloguniform`, with
//!   truncated-normal kernels on the domain's bounds (quantized floats are rounded to a multiple
//!   of `q` after sampling);
//! * integer domains (`randint`, `qrandint`, `lograndint`): the same, on bounds widened by half
//!   a step so that each integer owns a bin, and densities are the kernel's probability mass on
//!   that bin (in log space for `lograndint`), so a small integer range is modelled as the
//!   discrete thing it is;
//! * `choice`: the index of the value, with categorical kernels.
//!
//! An estimator is a mixture of one kernel per observation plus a prior kernel (centred, as wide
//! as the domain; uniform over choices), as in Optuna's TPE. *Multivariate*: each kernel is a
//! product over the coordinates, so correlations between parameters are kept; otherwise every
//! coordinate is its own one-dimensional mixture.

use std::f64::consts::{PI, SQRT_2};

use rand::Rng;
use serde_json::Value;

use crate::CoreRng;
use crate::space::{Domain, SearchSpace};

/// How one searched parameter is encoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Dim {
    /// A number in internal coordinates `[low, high]` (log coordinates when `log`). `bin`: for
    /// integer domains, half the step between neighbouring values (`None` for floats).
    Numeric {
        low: f64,
        high: f64,
        log: bool,
        half_step: Option<f64>,
        domain: Domain,
    },
    /// One of `values`, encoded as its index.
    Categorical { values: Vec<Value> },
}

/// The encoded space. `Err(name, kind)`: a parameter a model cannot handle (a grid).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Encoding {
    pub dims: Vec<Dim>,
}

impl Encoding {
    /// `Err((parameter, kind))` for a domain that cannot be modelled (`grid`).
    pub fn new(space: &SearchSpace) -> Result<Encoding, (String, &'static str)> {
        let mut dims = Vec::new();
        for parameter in space.parameters() {
            let domain = parameter.domain.clone();
            let dim = match &parameter.domain {
                Domain::Uniform { low, high } | Domain::QUniform { low, high, .. } => {
                    Dim::Numeric {
                        low: *low,
                        high: *high,
                        log: false,
                        half_step: None,
                        domain,
                    }
                }
                Domain::LogUniform { low, high } | Domain::QLogUniform { low, high, .. } => {
                    Dim::Numeric {
                        low: low.ln(),
                        high: high.ln(),
                        log: true,
                        half_step: None,
                        domain,
                    }
                }
                Domain::RandInt { low, high } => Dim::Numeric {
                    low: *low as f64 - 0.5,
                    high: (*high - 1) as f64 + 0.5,
                    log: false,
                    half_step: Some(0.5),
                    domain,
                },
                Domain::QRandInt { low, high, q } => {
                    let q = *q as f64;
                    let first = (*low as f64 / q).ceil() * q;
                    let last = (*high as f64 / q).floor() * q;
                    Dim::Numeric {
                        low: first - q / 2.0,
                        high: last + q / 2.0,
                        log: false,
                        half_step: Some(q / 2.0),
                        domain,
                    }
                }
                Domain::LogRandInt { low, high } => Dim::Numeric {
                    low: (*low as f64 - 0.5).ln(),
                    high: ((*high - 1) as f64 + 0.5).ln(),
                    log: true,
                    half_step: Some(0.5),
                    domain,
                },
                Domain::Choice(values) => Dim::Categorical {
                    values: values.clone(),
                },
                Domain::Grid(_) => return Err((parameter.name(), "grid")),
            };
            dims.push(dim);
        }
        Ok(Encoding { dims })
    }

    /// The number of coordinates (searched parameters).
    pub fn len(&self) -> usize {
        self.dims.len()
    }

    /// A config's searched values in coordinates; `None` if a value is missing or outside its
    /// domain (such an observation is not used).
    pub fn encode(&self, values: &[Option<&Value>]) -> Option<Vec<f64>> {
        self.dims
            .iter()
            .zip(values)
            .map(|(dim, value)| {
                let value = (*value)?;
                match dim {
                    Dim::Numeric { log, .. } => {
                        let x = value.as_f64().filter(|x| x.is_finite())?;
                        if *log {
                            (x > 0.0).then(|| x.ln())
                        } else {
                            Some(x)
                        }
                    }
                    Dim::Categorical { values } => {
                        values.iter().position(|v| v == value).map(|i| i as f64)
                    }
                }
            })
            .collect()
    }

    /// Coordinates back to values of the domains (rounded, quantized, clamped).
    pub fn decode(&self, point: &[f64]) -> Vec<Value> {
        self.dims
            .iter()
            .zip(point)
            .map(|(dim, &u)| match dim {
                Dim::Numeric { log, domain, .. } => {
                    let x = if *log { u.exp() } else { u };
                    domain.clamp(x).unwrap_or(Value::Null)
                }
                Dim::Categorical { values } => values
                    .get(u.max(0.0) as usize)
                    .cloned()
                    .unwrap_or(Value::Null),
            })
            .collect()
    }
}

/// One coordinate of one kernel.
#[derive(Clone, Debug)]
enum Part {
    /// `ln_z`: the log of the kernel's mass inside the domain (its truncation), computed once.
    Normal {
        mu: f64,
        sigma: f64,
        ln_z: f64,
    },
    Categorical {
        ln_p: Vec<f64>,
    },
}

/// A Parzen estimator: a weighted mixture of product kernels.
#[derive(Clone, Debug)]
pub(crate) struct Parzen {
    /// `kernels[k][d]`.
    kernels: Vec<Vec<Part>>,
    ln_weights: Vec<f64>,
    multivariate: bool,
}

/// Optuna's bandwidth constant: sigma = 0.2 (high - low) n^(-1/(d+4)).
const SIGMA0: f64 = 0.2;

impl Parzen {
    /// Fit on `points` (coordinates from [`Encoding::encode`]) with a prior kernel of weight
    /// `prior_weight` (every observation weighs 1).
    pub fn fit(
        encoding: &Encoding,
        points: &[&[f64]],
        prior_weight: f64,
        multivariate: bool,
    ) -> Parzen {
        let n = points.len();
        let n_kernels = n + 1;
        let d = if multivariate { encoding.len() } else { 1 };
        let shrink = (n.max(1) as f64).powf(-1.0 / (d as f64 + 4.0));
        let mut kernels: Vec<Vec<Part>> = vec![Vec::with_capacity(encoding.len()); n_kernels];
        for (j, dim) in encoding.dims.iter().enumerate() {
            match dim {
                Dim::Numeric { low, high, .. } => {
                    let range = high - low;
                    // Scott-like bandwidth, never narrower than Optuna's "magic clip".
                    let min_sigma = range / (n as f64 + 1.0).min(100.0);
                    let sigma = (SIGMA0 * range * shrink).max(min_sigma);
                    for (k, point) in points.iter().enumerate() {
                        let mu = point[j].clamp(*low, *high);
                        kernels[k].push(Part::Normal {
                            mu,
                            sigma,
                            ln_z: ln_mass(mu, sigma, *low, *high),
                        });
                    }
                    let mu = (low + high) / 2.0;
                    kernels[n].push(Part::Normal {
                        mu,
                        sigma: range,
                        ln_z: ln_mass(mu, range, *low, *high),
                    });
                }
                Dim::Categorical { values } => {
                    let choices = values.len().max(1);
                    let smoothing = prior_weight / n_kernels as f64;
                    for (k, point) in points.iter().enumerate() {
                        let observed = point[j] as usize;
                        let total = 1.0 + smoothing * choices as f64;
                        let ln_p = (0..choices)
                            .map(|c| {
                                let mass = smoothing + if c == observed { 1.0 } else { 0.0 };
                                (mass / total).ln()
                            })
                            .collect();
                        kernels[k].push(Part::Categorical { ln_p });
                    }
                    kernels[n].push(Part::Categorical {
                        ln_p: vec![-(choices as f64).ln(); choices],
                    });
                }
            }
        }
        let total = n as f64 + prior_weight;
        let mut ln_weights = vec![(1.0 / total).ln(); n];
        ln_weights.push((prior_weight / total).ln());
        Parzen {
            kernels,
            ln_weights,
            multivariate,
        }
    }

    /// A point drawn from the mixture (one kernel for all coordinates when multivariate, one
    /// per coordinate otherwise).
    pub fn sample(&self, encoding: &Encoding, rng: &mut CoreRng) -> Vec<f64> {
        let mut kernel = self.pick_kernel(rng);
        encoding
            .dims
            .iter()
            .enumerate()
            .map(|(j, dim)| {
                if !self.multivariate && j > 0 {
                    kernel = self.pick_kernel(rng);
                }
                match (&self.kernels[kernel][j], dim) {
                    (Part::Normal { mu, sigma, .. }, Dim::Numeric { low, high, .. }) => {
                        truncated_normal(*mu, *sigma, *low, *high, rng)
                    }
                    (Part::Categorical { ln_p }, _) => {
                        let mut u: f64 = rng.random();
                        for (c, lp) in ln_p.iter().enumerate() {
                            u -= lp.exp();
                            if u <= 0.0 {
                                return c as f64;
                            }
                        }
                        (ln_p.len() - 1) as f64
                    }
                    // Kernels are built from the encoding, so the parts always match.
                    (Part::Normal { mu, .. }, Dim::Categorical { .. }) => *mu,
                }
            })
            .collect()
    }

    fn pick_kernel(&self, rng: &mut CoreRng) -> usize {
        let mut u: f64 = rng.random();
        for (k, lw) in self.ln_weights.iter().enumerate() {
            u -= lw.exp();
            if u <= 0.0 {
                return k;
            }
        }
        self.ln_weights.len() - 1
    }

    /// The log density (log probability mass for integer and categorical coordinates) at a
    /// decoded point's coordinates.
    pub fn ln_density(&self, encoding: &Encoding, point: &[f64]) -> f64 {
        let part_ln = |part: &Part, dim: &Dim, u: f64| -> f64 {
            match (part, dim) {
                (
                    Part::Normal { mu, sigma, ln_z },
                    Dim::Numeric {
                        low,
                        high,
                        log,
                        half_step,
                        ..
                    },
                ) => match half_step {
                    None => ln_normal_pdf(u, *mu, *sigma) - ln_z,
                    Some(h) => {
                        let (lo, hi) = if *log {
                            let x = u.exp().round();
                            ((x - h).max(f64::MIN_POSITIVE).ln(), (x + h).ln())
                        } else {
                            (u - h, u + h)
                        };
                        ln_mass(*mu, *sigma, lo.max(*low), hi.min(*high)) - ln_z
                    }
                },
                (Part::Categorical { ln_p }, _) => ln_p
                    .get(u.max(0.0) as usize)
                    .copied()
                    .unwrap_or(f64::NEG_INFINITY),
                (Part::Normal { .. }, Dim::Categorical { .. }) => 0.0,
            }
        };
        if self.multivariate {
            let terms = self
                .kernels
                .iter()
                .zip(&self.ln_weights)
                .map(|(kernel, lw)| {
                    lw + kernel
                        .iter()
                        .zip(&encoding.dims)
                        .zip(point)
                        .map(|((part, dim), &u)| part_ln(part, dim, u))
                        .sum::<f64>()
                });
            log_sum_exp(terms)
        } else {
            (0..encoding.len())
                .map(|j| {
                    log_sum_exp(
                        self.kernels
                            .iter()
                            .zip(&self.ln_weights)
                            .map(|(kernel, lw)| {
                                lw + part_ln(&kernel[j], &encoding.dims[j], point[j])
                            }),
                    )
                })
                .sum()
        }
    }
}

fn log_sum_exp(terms: impl Iterator<Item = f64>) -> f64 {
    let terms: Vec<f64> = terms.collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

fn ln_normal_pdf(x: f64, mu: f64, sigma: f64) -> f64 {
    let z = (x - mu) / sigma;
    -0.5 * z * z - sigma.ln() - 0.5 * (2.0 * PI).ln()
}

/// ln P(lo <= X <= hi) for X ~ N(mu, sigma), accurate in the tails (differences of erfc on
/// the side away from the mean), falling back to the density times the width when the mass
/// underflows.
fn ln_mass(mu: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        return f64::NEG_INFINITY;
    }
    let a = (lo - mu) / sigma;
    let b = (hi - mu) / sigma;
    let mass = if a > 0.0 {
        // Both in the upper tail: Q(a) - Q(b).
        0.5 * (erfc(a / SQRT_2) - erfc(b / SQRT_2))
    } else if b < 0.0 {
        0.5 * (erfc(-b / SQRT_2) - erfc(-a / SQRT_2))
    } else {
        1.0 - 0.5 * (erfc(-a / SQRT_2) + erfc(b / SQRT_2))
    };
    if mass > 1e-300 {
        mass.ln()
    } else {
        // Far in a tail: the density at the nearer end times the width.
        let near = if a > 0.0 { lo } else { hi };
        ln_normal_pdf(near, mu, sigma) + (hi - lo).ln()
    }
}

/// The complementary error function (Chebyshev fit from Numerical Recipes, relative error below
/// 1.2e-7 everywhere), enough for kernel masses.
pub(crate) fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// A standard normal sample (Box-Muller).
pub(crate) fn standard_normal(rng: &mut CoreRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// N(mu, sigma) truncated to [low, high], by rejection (mu lies inside and sigma is at most the
/// width, so most draws are accepted); after 100 misses, a uniform draw.
fn truncated_normal(mu: f64, sigma: f64, low: f64, high: f64, rng: &mut CoreRng) -> f64 {
    for _ in 0..100 {
        let x = mu + sigma * standard_normal(rng);
        if (low..=high).contains(&x) {
            return x;
        }
    }
    low + (high - low) * rng.random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn encoding(space: Value) -> (SearchSpace, Encoding) {
        let table = space.as_object().cloned().expect("an object");
        let space = SearchSpace::from_json(&table).expect("a space");
        let encoding = Encoding::new(&space).expect("encodable");
        (space, encoding)
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, expected) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (2.0, 0.004_677_734_981_047_266),
            (-1.0, 1.842_700_792_949_715),
            (5.0, 1.537_459_794_428_035e-12),
        ] {
            let got = erfc(x);
            assert!(
                ((got - expected) / expected).abs() < 2e-7,
                "erfc({x}) = {got}, not {expected}"
            );
        }
    }

    #[test]
    fn masses_are_probabilities_and_tails_do_not_underflow_to_minus_infinity() {
        assert!((ln_mass(0.0, 1.0, -1e9, 1e9)).abs() < 1e-6);
        let half = ln_mass(0.0, 1.0, 0.0, 10.0).exp();
        assert!((half - 0.5).abs() < 1e-6, "{half}");
        let far = ln_mass(0.0, 1.0, 50.0, 51.0);
        assert!(far.is_finite() && far < -1000.0, "{far}");
    }

    #[test]
    fn encode_and_decode_round_trip_every_domain() {
        let (space, enc) = encoding(json!({
            "u": {"uniform": [-1, 1]},
            "lu": {"loguniform": [1e-4, 1e-1]},
            "q": {"quniform": [0, 1, 0.25]},
            "i": {"randint": [2, 6]},
            "qi": {"qrandint": [0, 20, 5]},
            "li": {"lograndint": [1, 1000]},
            "c": {"choice": ["a", 3, true]},
        }));
        let mut rng = CoreRng::seed_from_u64(3);
        for _ in 0..200 {
            let config = space.sample(0, &mut rng);
            let values: Vec<Option<&Value>> =
                space.parameters().iter().map(|p| p.get(&config)).collect();
            let point = enc.encode(&values).expect("in the domain");
            let back = enc.decode(&point);
            let original: Vec<Value> = values.into_iter().flatten().cloned().collect();
            for (b, o) in back.iter().zip(&original) {
                match (b.as_f64(), o.as_f64()) {
                    // exp(ln x) may differ from x in the last bit.
                    (Some(b), Some(o)) if o.is_finite() => {
                        assert!((b - o).abs() <= 1e-12 * o.abs().max(1.0), "{b} vs {o}")
                    }
                    _ => assert_eq!(b, o),
                }
                assert_eq!(b.is_i64(), o.is_i64(), "{b} vs {o}: same JSON type");
            }
        }
        // Values outside a choice cannot be encoded.
        assert!(enc.encode(&[Some(&json!(0.0)); 7]).is_none());
    }

    #[test]
    fn a_grid_cannot_be_modelled() {
        let table = json!({"g": {"grid": [1, 2]}})
            .as_object()
            .cloned()
            .expect("object");
        let space = SearchSpace::from_json(&table).expect("space");
        assert_eq!(Encoding::new(&space), Err(("g".to_string(), "grid")));
    }

    #[test]
    fn samples_stay_in_bounds_and_concentrate_near_the_observations() {
        let (_, enc) = encoding(json!({
            "x": {"uniform": [0, 10]},
            "n": {"randint": [0, 100]},
            "c": {"choice": ["a", "b", "c", "d"]},
        }));
        let observed: Vec<Vec<f64>> = (0..30).map(|_| vec![2.0, 80.0, 1.0]).collect();
        let refs: Vec<&[f64]> = observed.iter().map(Vec::as_slice).collect();
        for multivariate in [true, false] {
            let model = Parzen::fit(&enc, &refs, 1.0, multivariate);
            let mut rng = CoreRng::seed_from_u64(9);
            let mut near = 0;
            let mut category_b = 0;
            for _ in 0..1000 {
                let p = model.sample(&enc, &mut rng);
                let values = enc.decode(&p);
                let x = values[0].as_f64().expect("float");
                let n = values[1].as_i64().expect("int");
                assert!((0.0..=10.0).contains(&x) && (0..100).contains(&n));
                near += usize::from((x - 2.0).abs() < 3.0 && (n - 80).abs() < 30);
                category_b += usize::from(values[2] == json!("b"));
            }
            assert!(near > 800, "multivariate {multivariate}: {near}");
            assert!(
                category_b > 800,
                "multivariate {multivariate}: {category_b}"
            );
            // The density is higher at the observations than far from them.
            let at = model.ln_density(&enc, &[2.0, 80.0, 1.0]);
            let away = model.ln_density(&enc, &[9.0, 5.0, 3.0]);
            assert!(at > away + 3.0, "{at} vs {away}");
        }
    }

    #[test]
    fn integer_masses_sum_to_one_over_the_domain() {
        for space in [
            json!({"n": {"randint": [3, 9]}}),
            json!({"n": {"lograndint": [1, 40]}}),
            json!({"n": {"qrandint": [0, 30, 10]}}),
        ] {
            let (_, enc) = encoding(space.clone());
            let Dim::Numeric { domain, .. } = &enc.dims[0] else {
                panic!("numeric");
            };
            let values: Vec<i64> = match domain {
                Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => {
                    (*low..*high).collect()
                }
                Domain::QRandInt { low, high, q } => {
                    (*low..=*high).filter(|v| v % q == 0).collect()
                }
                _ => panic!("integer domain"),
            };
            let observed = enc.encode(&[Some(&json!(values[1]))]).expect("encodes");
            let model = Parzen::fit(&enc, &[observed.as_slice()], 1.0, true);
            let total: f64 = values
                .iter()
                .map(|&v| {
                    let p = enc.encode(&[Some(&json!(v))]).expect("encodes");
                    model.ln_density(&enc, &p).exp()
                })
                .sum();
            assert!((total - 1.0).abs() < 1e-5, "{space}: {total}");
        }
    }
}
