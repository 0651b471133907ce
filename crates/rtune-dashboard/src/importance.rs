//! Hyperparameter importance: a small random forest (regression trees on bootstrap samples,
//! seeded) predicts each trial's final metric from its parameters; a parameter's importance is
//! how much the forest's out-of-bag error grows when that parameter's values are shuffled
//! (Breiman's permutation importance), as a share of the total.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;

use crate::experiment::TrialRow;

/// The settings of the forest.
#[derive(Clone, Copy, Debug)]
pub struct ForestOptions {
    pub trees: usize,
    pub max_depth: usize,
    pub min_leaf: usize,
    /// At most this many trials are used (a seeded sample of them beyond it).
    pub max_rows: usize,
    pub seed: u64,
}

impl Default for ForestOptions {
    fn default() -> Self {
        ForestOptions {
            trees: 64,
            max_depth: 8,
            min_leaf: 2,
            max_rows: 2000,
            seed: 0,
        }
    }
}

static NULL: Value = Value::Null;

/// One parameter's importance.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Importance {
    pub parameter: String,
    /// Share of the total (0..1; the shares add up to 1 unless all are 0).
    pub importance: f64,
    /// The raw increase of the out-of-bag mean squared error when the parameter is shuffled.
    pub error_increase: f64,
}

/// The importances of `parameters` for predicting each trial's `value`, largest first; `None`
/// with fewer than 4 trials that have a value, or no parameters.
pub fn importance(
    trials: &[(&TrialRow, f64)],
    parameters: &[String],
    options: ForestOptions,
) -> Option<Vec<Importance>> {
    let rows: Vec<(&TrialRow, f64)> = trials
        .iter()
        .filter(|(_, v)| v.is_finite())
        .copied()
        .collect();
    if rows.len() < 4 || parameters.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut rows = rows;
    if rows.len() > options.max_rows {
        rows.shuffle(&mut rng);
        rows.truncate(options.max_rows);
    }
    let columns: Vec<Vec<f64>> = parameters
        .iter()
        .map(|p| encode(rows.iter().map(|(t, _)| t.params.get(p).unwrap_or(&NULL))))
        .collect();
    let y: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
    let data = Data { columns, y };
    let n = data.y.len();
    let p = parameters.len();
    let mut increase = vec![0.0; p];
    let mut counted = 0usize;
    for _ in 0..options.trees {
        let sample: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let mut in_bag = vec![false; n];
        for &i in &sample {
            in_bag[i] = true;
        }
        let oob: Vec<usize> = (0..n).filter(|&i| !in_bag[i]).collect();
        if oob.len() < 2 {
            continue;
        }
        let tree = Tree::fit(&data, sample, options, &mut rng);
        let base = mse(&oob, &data.y, |i| tree.predict(|j| data.columns[j][i]));
        for (j, inc) in increase.iter_mut().enumerate() {
            let mut shuffled: Vec<usize> = oob.clone();
            shuffled.shuffle(&mut rng);
            let swap: BTreeMap<usize, usize> = oob.iter().copied().zip(shuffled).collect();
            let err = mse(&oob, &data.y, |i| {
                tree.predict(|f| {
                    if f == j {
                        data.columns[f][swap[&i]]
                    } else {
                        data.columns[f][i]
                    }
                })
            });
            *inc += err - base;
        }
        counted += 1;
    }
    if counted == 0 {
        return None;
    }
    let increase: Vec<f64> = increase
        .into_iter()
        .map(|x| (x / counted as f64).max(0.0))
        .collect();
    let total: f64 = increase.iter().sum();
    let mut out: Vec<Importance> = parameters
        .iter()
        .zip(&increase)
        .map(|(name, &inc)| Importance {
            parameter: name.clone(),
            importance: if total > 0.0 { inc / total } else { 0.0 },
            error_increase: inc,
        })
        .collect();
    out.sort_by(|a, b| b.importance.total_cmp(&a.importance));
    Some(out)
}

/// Numbers as they are, booleans as 0/1, anything else as the rank of its text among the
/// column's distinct values (trees only compare, so an order-preserving code suffices); missing
/// values below every other.
fn encode<'a>(values: impl Iterator<Item = &'a Value> + Clone) -> Vec<f64> {
    let all_numeric = values
        .clone()
        .all(|v| v.is_number() || v.is_boolean() || v.is_null());
    if all_numeric {
        let nums: Vec<Option<f64>> = values
            .map(|v| match v {
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                other => other.as_f64(),
            })
            .collect();
        let low = nums.iter().flatten().copied().fold(f64::INFINITY, f64::min);
        let missing = if low.is_finite() { low - 1.0 } else { 0.0 };
        return nums.into_iter().map(|x| x.unwrap_or(missing)).collect();
    }
    let texts: Vec<String> = values.map(|v| v.to_string()).collect();
    let mut distinct: Vec<&String> = texts.iter().collect();
    distinct.sort();
    distinct.dedup();
    texts
        .iter()
        .map(|t| distinct.binary_search(&t).map_or(0.0, |i| i as f64))
        .collect()
}

struct Data {
    columns: Vec<Vec<f64>>,
    y: Vec<f64>,
}

fn mse(rows: &[usize], y: &[f64], predict: impl Fn(usize) -> f64) -> f64 {
    rows.iter()
        .map(|&i| (predict(i) - y[i]).powi(2))
        .sum::<f64>()
        / rows.len() as f64
}

enum Node {
    Leaf(f64),
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn fit(data: &Data, rows: Vec<usize>, options: ForestOptions, rng: &mut ChaCha8Rng) -> Tree {
        let mut tree = Tree { nodes: Vec::new() };
        tree.grow(data, rows, 0, options, rng);
        tree
    }

    /// Grow the subtree over `rows`; returns its node's index.
    fn grow(
        &mut self,
        data: &Data,
        rows: Vec<usize>,
        depth: usize,
        options: ForestOptions,
        rng: &mut ChaCha8Rng,
    ) -> usize {
        let mean = rows.iter().map(|&i| data.y[i]).sum::<f64>() / rows.len().max(1) as f64;
        let index = self.nodes.len();
        self.nodes.push(Node::Leaf(mean));
        if depth >= options.max_depth || rows.len() < 2 * options.min_leaf {
            return index;
        }
        // Each split looks at a random subset of the features (at least 1, about 2/3 of them).
        let p = data.columns.len();
        let mut features: Vec<usize> = (0..p).collect();
        features.shuffle(rng);
        features.truncate((p * 2).div_ceil(3).max(1));
        let Some((feature, threshold)) = best_split(data, &rows, &features, options.min_leaf)
        else {
            return index;
        };
        let (left_rows, right_rows): (Vec<usize>, Vec<usize>) = rows
            .iter()
            .partition(|&&i| data.columns[feature][i] <= threshold);
        let left = self.grow(data, left_rows, depth + 1, options, rng);
        let right = self.grow(data, right_rows, depth + 1, options, rng);
        self.nodes[index] = Node::Split {
            feature,
            threshold,
            left,
            right,
        };
        index
    }

    fn predict(&self, x: impl Fn(usize) -> f64) -> f64 {
        let mut node = 0;
        loop {
            match self.nodes.get(node) {
                Some(Node::Leaf(v)) => return *v,
                Some(Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                }) => {
                    node = if x(*feature) <= *threshold {
                        *left
                    } else {
                        *right
                    }
                }
                None => return f64::NAN,
            }
        }
    }
}

/// The split with the largest reduction of the squared error, if any improves it.
fn best_split(
    data: &Data,
    rows: &[usize],
    features: &[usize],
    min_leaf: usize,
) -> Option<(usize, f64)> {
    let n = rows.len() as f64;
    let total: f64 = rows.iter().map(|&i| data.y[i]).sum();
    let total_sq: f64 = rows.iter().map(|&i| data.y[i].powi(2)).sum();
    let parent = total_sq - total * total / n;
    let mut best: Option<(usize, f64, f64)> = None;
    let mut sorted = rows.to_vec();
    for &f in features {
        let col = &data.columns[f];
        sorted.sort_by(|&a, &b| col[a].total_cmp(&col[b]));
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for k in 0..sorted.len() - 1 {
            let y = data.y[sorted[k]];
            sum += y;
            sum_sq += y * y;
            let left_n = (k + 1) as f64;
            let (x, next) = (col[sorted[k]], col[sorted[k + 1]]);
            if x == next || k + 1 < min_leaf || sorted.len() - (k + 1) < min_leaf {
                continue;
            }
            let right_n = n - left_n;
            let right_sum = total - sum;
            let right_sq = total_sq - sum_sq;
            let err = (sum_sq - sum * sum / left_n) + (right_sq - right_sum * right_sum / right_n);
            if err < parent - 1e-12 && best.is_none_or(|(_, _, e)| err < e) {
                best = Some((f, (x + next) / 2.0, err));
            }
        }
    }
    best.map(|(f, t, _)| (f, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u32, params: &[(&str, Value)]) -> TrialRow {
        TrialRow {
            id,
            name: format!("trial_{id:05}"),
            status: "TERMINATED".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            iteration: 1,
            time_total_s: 1.0,
            best: None,
            runs: 1,
            failures: 0,
            error: None,
            placement: None,
            silent: false,
            last_report_at: None,
        }
    }

    #[test]
    fn the_parameter_that_drives_the_metric_is_the_most_important() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let rows: Vec<(TrialRow, f64)> = (0..200)
            .map(|i| {
                let lr: f64 = rng.random_range(0.0..1.0);
                let noise: f64 = rng.random_range(0.0..1.0);
                let opt = if rng.random_bool(0.5) { "adam" } else { "sgd" };
                let value = 10.0 * lr * lr + if opt == "adam" { 0.5 } else { 0.0 } + 0.01 * noise;
                (
                    row(
                        i,
                        &[
                            ("lr", lr.into()),
                            ("noise", noise.into()),
                            ("opt", opt.into()),
                        ],
                    ),
                    value,
                )
            })
            .collect();
        let refs: Vec<(&TrialRow, f64)> = rows.iter().map(|(t, v)| (t, *v)).collect();
        let params = vec!["lr".to_string(), "noise".to_string(), "opt".to_string()];
        let result = importance(&refs, &params, ForestOptions::default());
        let Some(result) = result else {
            panic!("200 trials give an importance")
        };
        assert_eq!(result[0].parameter, "lr", "{result:?}");
        assert_eq!(result[1].parameter, "opt", "{result:?}");
        assert!(result[0].importance > 0.7, "{result:?}");
        let total: f64 = result.iter().map(|r| r.importance).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // Seeded: the same input gives the same numbers.
        assert_eq!(
            importance(&refs, &params, ForestOptions::default()),
            Some(result)
        );
    }

    #[test]
    fn too_few_trials_give_none() {
        let rows = [row(0, &[("lr", 1.0.into())])];
        let refs: Vec<(&TrialRow, f64)> = rows.iter().map(|t| (t, 1.0)).collect();
        assert_eq!(
            importance(&refs, &["lr".to_string()], ForestOptions::default()),
            None
        );
    }
}
