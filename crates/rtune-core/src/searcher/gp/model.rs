//! The GP itself: a Matérn-5/2 ARD kernel, its hyperparameters fitted by maximising the
//! marginal likelihood (with weak log-normal priors), and the posterior at new inputs.
//!
//! Inputs live in the unit cube (the searcher encodes configs and the resource there) and the
//! targets are standardised, so the hyperparameters' bounds and priors are fixed. The Cholesky
//! factor is stored packed (row `i` holds its `i + 1` entries), so fantasized points are added
//! as new rows in O(n^2) each instead of a new factorisation.

use std::f64::consts::PI;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::CoreRng;

/// Adam steps per start when fitting the hyperparameters.
const FIT_STEPS: usize = 30;

/// Bounds of the log hyperparameters: length scales, signal variance, noise variance (the
/// outputs are standardised and the inputs in the unit cube).
const LN_LENGTHSCALE: (f64, f64) = (-4.0, 4.0);
const LN_VARIANCE: (f64, f64) = (-4.0, 4.0);
const LN_NOISE: (f64, f64) = (-13.8, 0.7);

/// The GP's hyperparameters in log space: `p` log length scales, log signal variance, log noise
/// variance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Theta(pub Vec<f64>);

impl Theta {
    /// Length scales, signal variance, noise variance.
    pub fn natural(&self) -> (Vec<f64>, f64, f64) {
        let p = self.0.len() - 2;
        (
            self.0[..p].iter().map(|v| v.exp()).collect(),
            self.0[p].exp(),
            self.0[p + 1].exp(),
        )
    }

    /// The default start: unit length scales and variance, noise 1e-3 of it.
    pub fn default_for(p: usize) -> Theta {
        let mut t = vec![0.0; p + 2];
        t[p + 1] = -7.0;
        Theta(t)
    }

    fn clamp(&mut self) {
        let p = self.0.len() - 2;
        for (i, v) in self.0.iter_mut().enumerate() {
            let (lo, hi) = if i < p {
                LN_LENGTHSCALE
            } else if i == p {
                LN_VARIANCE
            } else {
                LN_NOISE
            };
            *v = v.clamp(lo, hi);
        }
    }

    /// Weak log-normal priors (log density up to a constant, added to the gradient): length
    /// scales and the signal variance around 1, the noise around 1e-3.
    fn add_prior(&self, value: &mut f64, grad: &mut [f64]) {
        let p = self.0.len() - 2;
        for (i, v) in self.0.iter().enumerate() {
            let (mu, sigma) = if i <= p { (0.0, 1.5) } else { (-7.0, 3.0) };
            *value -= 0.5 * ((v - mu) / sigma).powi(2);
            grad[i] -= (v - mu) / (sigma * sigma);
        }
    }
}

/// Matérn-5/2 of a squared scaled distance: `variance (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r)`.
fn matern52(r2: f64, variance: f64) -> f64 {
    let r = r2.sqrt();
    let s5r = 5f64.sqrt() * r;
    variance * (1.0 + s5r + 5.0 / 3.0 * r2) * (-s5r).exp()
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The dot product, with four running sums: a float sum in one chain cannot be vectorised (its
/// order is fixed), and the triangular solves of every prediction are these dot products.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0.0f64; 4];
    let chunks = n / 4;
    for (x, y) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for k in 0..4 {
            sums[k] += x[k] * y[k];
        }
    }
    let tail: f64 = a[chunks * 4..]
        .iter()
        .zip(&b[chunks * 4..])
        .map(|(x, y)| x * y)
        .sum();
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

/// Inputs divided by their length scales, row-major.
fn scaled(x: &[Vec<f64>], inverse_lengthscales: &[f64]) -> Vec<f64> {
    x.iter()
        .flat_map(|row| row.iter().zip(inverse_lengthscales).map(|(v, il)| v * il))
        .collect()
}

/// Packed lower-triangular Cholesky factor of `K + noise I`, grown a row at a time.
#[derive(Clone, Debug, Default)]
struct Packed {
    /// Row `i` starts at `i (i + 1) / 2`.
    l: Vec<f64>,
    n: usize,
}

impl Packed {
    fn row(&self, i: usize) -> &[f64] {
        let start = i * (i + 1) / 2;
        &self.l[start..start + i + 1]
    }

    /// Appends the row of a new point, given its covariances with the earlier points
    /// (`column`) and its own variance plus noise (`diagonal`); `false` if that leaves the
    /// matrix not positive definite.
    fn push(&mut self, column: &[f64], diagonal: f64) -> bool {
        let z = self.forward(column);
        let d = diagonal - dot(&z, &z);
        if !(d > 0.0 && d.is_finite()) {
            return false;
        }
        self.l.extend_from_slice(&z);
        self.l.push(d.sqrt());
        self.n += 1;
        true
    }

    /// Solves `L z = b`.
    fn forward(&self, b: &[f64]) -> Vec<f64> {
        let mut z = Vec::with_capacity(self.n);
        for (i, bi) in b.iter().enumerate().take(self.n) {
            let row = self.row(i);
            let s = dot(&row[..i], &z);
            z.push((bi - s) / row[i]);
        }
        z
    }

    /// Solves `L^T x = z`.
    fn backward(&self, z: &[f64]) -> Vec<f64> {
        let mut x = z.to_vec();
        for i in (0..self.n).rev() {
            let row = self.row(i);
            x[i] /= row[i];
            let xi = x[i];
            for (xk, lik) in x[..i].iter_mut().zip(&row[..i]) {
                *xk -= lik * xi;
            }
        }
        x
    }

    /// The factor of a full symmetric matrix (`k`, row-major `n x n`) plus `shift` on the
    /// diagonal; `None` if it is not numerically positive definite.
    fn factor(k: &[f64], n: usize, shift: f64) -> Option<Packed> {
        let mut out = Packed {
            l: Vec::with_capacity(n * (n + 1) / 2),
            n: 0,
        };
        for i in 0..n {
            if !out.push(&k[i * n..i * n + i], k[i * n + i] + shift) {
                return None;
            }
        }
        Some(out)
    }

    fn log_det(&self) -> f64 {
        (0..self.n).map(|i| self.row(i)[i].ln()).sum()
    }
}

/// The Cholesky factor of `K + noise I` with jitter (1e-8, 1e-6, 1e-4 of the variance) if
/// needed.
fn factor_with_jitter(k: &[f64], n: usize, noise: f64, variance: f64) -> Option<(Packed, f64)> {
    [0.0, 1e-8, 1e-6, 1e-4].into_iter().find_map(|jitter| {
        let shift = noise + jitter * variance;
        Packed::factor(k, n, shift).map(|l| (l, shift))
    })
}

/// A GP posterior given data.
#[derive(Clone, Debug)]
pub struct Posterior {
    p: usize,
    inverse_lengthscales: Vec<f64>,
    variance: f64,
    /// Noise plus jitter, added to the diagonal.
    shift: f64,
    /// Scaled inputs, row-major `n x p`.
    x: Vec<f64>,
    y: Vec<f64>,
    chol: Packed,
    alpha: Vec<f64>,
}

impl Posterior {
    /// `None` when the kernel matrix is not positive definite even with jitter.
    pub fn fit(x: &[Vec<f64>], y: &[f64], theta: &Theta) -> Option<Posterior> {
        let (lengthscales, variance, noise) = theta.natural();
        let inverse_lengthscales: Vec<f64> = lengthscales.iter().map(|l| 1.0 / l).collect();
        let p = inverse_lengthscales.len();
        let n = x.len();
        let xs = scaled(x, &inverse_lengthscales);
        let k = kernel_matrix(&xs, n, p, variance);
        let (chol, shift) = factor_with_jitter(&k, n, noise, variance)?;
        let alpha = chol.backward(&chol.forward(y));
        Some(Posterior {
            p,
            inverse_lengthscales,
            variance,
            shift,
            x: xs,
            y: y.to_vec(),
            chol,
            alpha,
        })
    }

    fn covariances(&self, scaled_point: &[f64]) -> Vec<f64> {
        self.x
            .chunks_exact(self.p)
            .map(|row| matern52(squared_distance(row, scaled_point), self.variance))
            .collect()
    }

    fn scale(&self, point: &[f64]) -> Vec<f64> {
        point
            .iter()
            .zip(&self.inverse_lengthscales)
            .map(|(v, il)| v * il)
            .collect()
    }

    /// Posterior mean and variance of the latent function at `point`.
    pub fn predict(&self, point: &[f64]) -> (f64, f64) {
        self.predict_many(std::slice::from_ref(&point.to_vec()))[0]
    }

    /// The scaled `points`, their posterior means, and `L^-1 K(X, point)` for each.
    fn solve_many(&self, points: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
        let scaled: Vec<Vec<f64>> = points.iter().map(|p| self.scale(p)).collect();
        let mut means = Vec::with_capacity(points.len());
        let mut solved = Vec::with_capacity(points.len());
        for point in &scaled {
            let k = self.covariances(point);
            means.push(dot(&k, &self.alpha));
            solved.push(self.chol.forward(&k));
        }
        (scaled, means, solved)
    }

    /// Posterior means and variances at many points.
    pub fn predict_many(&self, points: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let (_, means, solved) = self.solve_many(points);
        means
            .into_iter()
            .zip(solved)
            .map(|(mean, v)| (mean, (self.variance - dot(&v, &v)).max(1e-12)))
            .collect()
    }

    /// Posterior means and covariance (row-major `m x m`) of the latent function at `points`.
    pub fn joint(&self, points: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let m = points.len();
        let (scaled, means, solved) = self.solve_many(points);
        let mut cov = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..=i {
                let mut c = matern52(squared_distance(&scaled[i], &scaled[j]), self.variance)
                    - dot(&solved[i], &solved[j]);
                if i == j {
                    c = c.max(1e-12);
                }
                cov[i * m + j] = c;
                cov[j * m + i] = c;
            }
        }
        (means, cov)
    }

    /// Adds observations at `points` with the posterior mean as their value (kriging
    /// believer): the mean stays, the variance near them shrinks. A point that would make the
    /// matrix singular (a duplicate) is left out; returns how many were added.
    pub fn fantasize(&mut self, points: &[Vec<f64>]) -> usize {
        let mut added = 0;
        for point in points {
            let (mean, _) = self.predict(point);
            let scaled_point = self.scale(point);
            let k = self.covariances(&scaled_point);
            if self.chol.push(&k, self.variance + self.shift) {
                self.x.extend_from_slice(&scaled_point);
                self.y.push(mean);
                added += 1;
            }
        }
        if added > 0 {
            self.alpha = self.chol.backward(&self.chol.forward(&self.y));
        }
        added
    }
}

/// The kernel matrix of scaled inputs (row-major `n x n`).
fn kernel_matrix(xs: &[f64], n: usize, p: usize, variance: f64) -> Vec<f64> {
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        let a = &xs[i * p..(i + 1) * p];
        for j in 0..=i {
            let v = matern52(squared_distance(a, &xs[j * p..(j + 1) * p]), variance);
            k[i * n + j] = v;
            k[j * n + i] = v;
        }
    }
    k
}

/// Log marginal likelihood plus log prior, and its gradient in the log hyperparameters; `None`
/// where the kernel matrix cannot be factorised.
pub fn objective(x: &[Vec<f64>], y: &[f64], theta: &Theta) -> Option<(f64, Vec<f64>)> {
    let n = x.len();
    let (lengthscales, variance, noise) = theta.natural();
    let p = lengthscales.len();
    let inverse_lengthscales: Vec<f64> = lengthscales.iter().map(|l| 1.0 / l).collect();
    let xs = scaled(x, &inverse_lengthscales);
    let k = kernel_matrix(&xs, n, p, variance);
    let (chol, _) = factor_with_jitter(&k, n, noise, variance)?;
    let alpha = chol.backward(&chol.forward(y));
    let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
    let mut value = -0.5 * fit - chol.log_det() - 0.5 * n as f64 * (2.0 * PI).ln();
    // K^-1 = L^-T L^-1 (its lower triangle), from the columns of L^-1 (`t[c]` holds column c,
    // which is zero above row c): O(n^3 / 3) in all.
    let mut t = vec![0.0; n * n];
    for c in 0..n {
        let column = &mut t[c * n..(c + 1) * n];
        for i in c..n {
            let row = chol.row(i);
            let s = dot(&row[c..i], &column[c..i]);
            column[i] = (if i == c { 1.0 } else { 0.0 } - s) / row[i];
        }
    }
    let mut k_inv = vec![0.0; n * n];
    for a in 0..n {
        let ta = &t[a * n + a..(a + 1) * n];
        for b in 0..=a {
            let tb = &t[b * n + a..(b + 1) * n];
            k_inv[a * n + b] = dot(ta, tb);
        }
    }
    // W = alpha alpha^T - K^-1; d lml / d theta_j = 1/2 sum W .* dK/dtheta_j.
    let mut grad = vec![0.0; p + 2];
    let s5 = 5f64.sqrt();
    let mut terms = vec![0.0; p];
    for a in 0..n {
        let xa = &xs[a * p..(a + 1) * p];
        for b in 0..=a {
            let w = alpha[a] * alpha[b] - k_inv[a * n + b];
            if a == b {
                grad[p + 1] += 0.5 * w * noise;
                grad[p] += 0.5 * w * variance;
                continue;
            }
            // Off-diagonal pairs count twice (W and dK are symmetric), halved by the 1/2.
            grad[p] += w * k[a * n + b];
            let xb = &xs[b * p..(b + 1) * p];
            let mut r2 = 0.0;
            for ((t, u), v) in terms.iter_mut().zip(xa).zip(xb) {
                *t = (u - v) * (u - v);
                r2 += *t;
            }
            let r = r2.sqrt();
            // d k / d ln l_i = variance 5/3 (1 + sqrt5 r) exp(-sqrt5 r) (x_i - x'_i)^2 / l_i^2.
            let common = w * variance * 5.0 / 3.0 * (1.0 + s5 * r) * (-s5 * r).exp();
            for (g, t) in grad.iter_mut().zip(&terms) {
                *g += common * t;
            }
        }
    }
    theta.add_prior(&mut value, &mut grad);
    Some((value, grad))
}

/// Maximises the marginal likelihood with Adam from `starts` (clamped into the bounds); the
/// best value seen wins. Falls back to a large-noise model when nothing can be factorised.
pub fn fit_hyperparameters(x: &[Vec<f64>], y: &[f64], starts: Vec<Theta>) -> Theta {
    let p = x.first().map_or(0, Vec::len);
    let mut best: Option<(f64, Theta)> = None;
    for start in starts {
        let mut theta = start;
        theta.clamp();
        let mut m = vec![0.0; p + 2];
        let mut v = vec![0.0; p + 2];
        let (rate, beta1, beta2) = (0.1, 0.9, 0.999);
        for step in 1..=FIT_STEPS {
            let Some((value, grad)) = objective(x, y, &theta) else {
                break;
            };
            if value.is_finite() && best.as_ref().is_none_or(|(b, _)| value > *b) {
                best = Some((value, theta.clone()));
            }
            for i in 0..p + 2 {
                let g = grad[i];
                if !g.is_finite() {
                    continue;
                }
                m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                let m_hat = m[i] / (1.0 - beta1.powi(step as i32));
                let v_hat = v[i] / (1.0 - beta2.powi(step as i32));
                theta.0[i] += rate * m_hat / (v_hat.sqrt() + 1e-8);
            }
            theta.clamp();
        }
        if let Some((value, _)) = objective(x, y, &theta)
            && value.is_finite()
            && best.as_ref().is_none_or(|(b, _)| value > *b)
        {
            best = Some((value, theta));
        }
    }
    best.map_or_else(
        || {
            let mut t = Theta::default_for(p);
            t.0[p + 1] = LN_NOISE.1;
            t
        },
        |(_, t)| t,
    )
}

/// A random start for the fit: length scales in [e^-2, e], variance in [e^-1, e], noise in
/// [e^-9, e^-3].
pub fn random_start(p: usize, rng: &mut CoreRng) -> Theta {
    let mut t = vec![0.0; p + 2];
    for v in t.iter_mut().take(p) {
        *v = rng.random_range(-2.0..1.0);
    }
    t[p] = rng.random_range(-1.0..1.0);
    t[p + 1] = rng.random_range(-9.0..-3.0);
    Theta(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The analytic gradient matches finite differences.
    #[test]
    fn marginal_likelihood_gradient_matches_finite_differences() {
        let mut rng = CoreRng::seed_from_u64(3);
        let p = 3;
        let x: Vec<Vec<f64>> = (0..12)
            .map(|_| (0..p).map(|_| rng.random::<f64>()).collect())
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| (3.0 * v[0]).sin() + v[1] * v[1] - 0.5 * v[2])
            .collect();
        let theta = Theta(vec![-0.3, 0.2, 0.5, 0.1, -3.0]);
        let (value, grad) = objective(&x, &y, &theta).unwrap();
        for (i, analytic) in grad.iter().enumerate() {
            let h = 1e-5;
            let mut plus = theta.clone();
            plus.0[i] += h;
            let mut minus = theta.clone();
            minus.0[i] -= h;
            let numeric = (objective(&x, &y, &plus).unwrap().0
                - objective(&x, &y, &minus).unwrap().0)
                / (2.0 * h);
            assert!(
                (numeric - analytic).abs() < 1e-4 * (1.0 + numeric.abs()),
                "parameter {i}: analytic {analytic} numeric {numeric} (value {value})"
            );
        }
    }

    #[test]
    fn the_factor_solves_and_the_posterior_interpolates() {
        let a = vec![4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let l = Packed::factor(&a, 3, 0.0).unwrap();
        let b = [1.0, 2.0, 3.0];
        let x = l.backward(&l.forward(&b));
        for i in 0..3 {
            let back: f64 = (0..3).map(|j| a[i * 3 + j] * x[j]).sum();
            assert!((back - b[i]).abs() < 1e-12);
        }
        assert!(Packed::factor(&[1.0, 2.0, 2.0, 1.0], 2, 0.0).is_none());
        let xs = vec![vec![0.1], vec![0.5], vec![0.9]];
        let ys = [1.0, -1.0, 0.5];
        let gp = Posterior::fit(&xs, &ys, &Theta(vec![-1.0, 0.0, -12.0])).unwrap();
        let (mean, var) = gp.predict(&[0.5]);
        assert!((mean + 1.0).abs() < 1e-3 && var < 1e-3, "{mean} {var}");
        let (_, far) = gp.predict(&[3.0]);
        assert!(far > 0.9, "{far}");
    }

    /// Kriging believer: a fantasized point keeps the mean and shrinks the variance there, the
    /// same as refitting with the point added at its mean.
    #[test]
    fn fantasies_keep_the_mean_and_shrink_the_variance_like_a_refit() {
        let xs = vec![vec![0.1, 0.2], vec![0.5, 0.9], vec![0.9, 0.4]];
        let ys = [1.0, -1.0, 0.5];
        let theta = Theta(vec![-1.0, -0.5, 0.0, -6.0]);
        let mut gp = Posterior::fit(&xs, &ys, &theta).unwrap();
        let pending = vec![0.3, 0.3];
        let (mean_before, var_before) = gp.predict(&pending);
        assert_eq!(gp.fantasize(std::slice::from_ref(&pending)), 1);
        let (mean_after, var_after) = gp.predict(&pending);
        assert!((mean_after - mean_before).abs() < 1e-9);
        assert!(var_after < 0.1 * var_before, "{var_after} {var_before}");
        let mut x2 = xs.clone();
        x2.push(pending.clone());
        let refit = Posterior::fit(&x2, &[1.0, -1.0, 0.5, mean_before], &theta).unwrap();
        for probe in [[0.2, 0.2], [0.7, 0.7], [0.3, 0.35]] {
            let (m1, v1) = gp.predict(&probe);
            let (m2, v2) = refit.predict(&probe);
            assert!(
                (m1 - m2).abs() < 1e-9 && (v1 - v2).abs() < 1e-9,
                "{probe:?}"
            );
        }
    }
}
