//! `rtune-bench`: tools around the benchmark functions, for `scripts/bench-search`.
//!
//! * `rtune-bench optimum --task 3945`: the reference optimum of an lcbench task at full
//!   fidelity (epoch 52): the best of N random configs, refined by a local search from the
//!   best ones. Prints one JSON object.
//! * `rtune-bench space lcbench`: the benchmark's search space in the experiment file's
//!   syntax (TOML), for generated experiment files.
//! * `rtune-bench eval --task 3945 < rows.json`: evaluates raw lcbench input rows.

use std::io::Read as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rtune_bench::lcbench::{EPOCHS, OBJECTIVES};
use rtune_bench::{LcBench, by_name};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "rtune-bench",
    about = "Benchmark functions of rtune's simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reference optimum of an lcbench task at epoch 52 (random configs plus a local search).
    Optimum {
        /// OpenML task id, e.g. 3945.
        #[arg(long)]
        task: String,
        /// The objective: one of lcbench's outputs.
        #[arg(long, default_value = "val_cross_entropy")]
        metric: String,
        /// `min` or `max`.
        #[arg(long, default_value = "min")]
        mode: String,
        /// Random configs.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        /// Local searches from the best random configs, and steps of each.
        #[arg(long, default_value_t = 20)]
        starts: usize,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The benchmark's search space as an experiment file's [space] table.
    Space {
        /// lcbench, mf-branin or mf-hartmann6.
        benchmark: String,
    },
    /// Evaluate lcbench rows (JSON on stdin: a list of [epoch, batch_size, learning_rate,
    /// momentum, weight_decay, num_layers, max_units, max_dropout]); prints the outputs.
    Eval {
        #[arg(long)]
        task: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Optimum {
            task,
            metric,
            mode,
            samples,
            starts,
            steps,
            seed,
        } => {
            let column = OBJECTIVES
                .iter()
                .position(|o| *o == metric)
                .ok_or_else(|| format!("--metric: `{metric}` is not one of {OBJECTIVES:?}"))?;
            let sign = match mode.as_str() {
                "min" => 1.0,
                "max" => -1.0,
                _ => return Err(format!("--mode: `{mode}` is neither min nor max")),
            };
            let bench = LcBench::new(&task).map_err(|e| e.to_string())?;
            let out = optimum(&bench, column, sign, samples, starts, steps, seed)?;
            println!("{out}");
            Ok(())
        }
        Command::Space { benchmark } => {
            let bench = by_name(&benchmark, Some("3945")).map_err(|e| e.to_string())?;
            let space = bench.space();
            let table: toml::Table = serde_json::from_value(space).map_err(|e| e.to_string())?;
            print!("{}", toml::to_string(&table).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Eval { task } => {
            let bench = LcBench::new(&task).map_err(|e| e.to_string())?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("stdin: {e}"))?;
            let rows: Vec<[f32; 8]> =
                serde_json::from_str(&input).map_err(|e| format!("stdin: {e}"))?;
            let out = bench.evaluate_rows(&rows).map_err(|e| e.to_string())?;
            println!("{}", json!(out));
            Ok(())
        }
    }
}

/// Bounds of lcbench's hyperparameters: (low, high, log, integer), in the model's order.
const BOUNDS: [(f64, f64, bool, bool); 7] = [
    (16.0, 512.0, true, true),
    (1e-4, 0.1, true, false),
    (0.1, 0.99, false, false),
    (1e-5, 0.1, false, false),
    (1.0, 5.0, false, true),
    (64.0, 1024.0, true, true),
    (0.0, 1.0, false, false),
];

/// From the unit cube to a config (log scale where the space is logarithmic).
fn decode(u: &[f64; 7]) -> [f32; 7] {
    let mut x = [0f32; 7];
    for (i, &(low, high, log, int)) in BOUNDS.iter().enumerate() {
        let t = u[i].clamp(0.0, 1.0);
        let mut v = if log {
            (low.ln() + t * (high.ln() - low.ln())).exp()
        } else {
            low + t * (high - low)
        };
        if int {
            v = v.round().clamp(low, high);
        }
        x[i] = v as f32;
    }
    x
}

/// Scores (sign * metric at epoch 52; lower is better) of points of the unit cube.
fn scores(
    bench: &LcBench,
    points: &[[f64; 7]],
    column: usize,
    sign: f64,
) -> Result<Vec<f64>, String> {
    let rows: Vec<[f32; 8]> = points
        .iter()
        .map(|u| {
            let x = decode(u);
            [EPOCHS as f32, x[0], x[1], x[2], x[3], x[4], x[5], x[6]]
        })
        .collect();
    let out = bench.evaluate_rows(&rows).map_err(|e| e.to_string())?;
    Ok(out.iter().map(|o| sign * f64::from(o[column])).collect())
}

fn optimum(
    bench: &LcBench,
    column: usize,
    sign: f64,
    samples: usize,
    starts: usize,
    steps: usize,
    seed: u64,
) -> Result<serde_json::Value, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<([f64; 7], f64)> = Vec::with_capacity(samples);
    for chunk in 0..samples.div_ceil(1000) {
        let n = 1000.min(samples - chunk * 1000);
        let points: Vec<[f64; 7]> = (0..n)
            .map(|_| std::array::from_fn(|_| rng.random::<f64>()))
            .collect();
        let s = scores(bench, &points, column, sign)?;
        all.extend(points.into_iter().zip(s));
    }
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    let random_best = all.first().map_or(f64::INFINITY, |b| b.1);
    let median = all.get(all.len() / 2).map_or(f64::NAN, |m| m.1);
    // Local search: from each of the best random points, 16 Gaussian neighbours per step in the
    // unit cube; move to the best if it improves, else shrink the step.
    let mut best = all.first().copied().ok_or("no samples")?;
    for start in all.iter().take(starts) {
        let (mut point, mut score) = *start;
        let mut sigma = 0.1;
        for _ in 0..steps {
            let neighbours: Vec<[f64; 7]> = (0..16)
                .map(|_| {
                    std::array::from_fn(|i| {
                        // Box-Muller normal.
                        let (a, b): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                        let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
                        (point[i] + sigma * z).clamp(0.0, 1.0)
                    })
                })
                .collect();
            let s = scores(bench, &neighbours, column, sign)?;
            let (i, &s_best) = s
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .ok_or("no neighbours")?;
            if s_best < score {
                point = neighbours[i];
                score = s_best;
            } else {
                sigma *= 0.7;
            }
        }
        if score < best.1 {
            best = (point, score);
        }
    }
    let x = decode(&best.0);
    let names = [
        "batch_size",
        "learning_rate",
        "momentum",
        "weight_decay",
        "num_layers",
        "max_units",
        "max_dropout",
    ];
    let config: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(x)
        .map(|(n, v)| ((*n).to_string(), json!(v)))
        .collect();
    Ok(json!({
        "task": bench.task(),
        "metric": OBJECTIVES[column],
        "optimum": sign * best.1,
        "best_random": sign * random_best,
        "median_random": sign * median,
        "samples": samples,
        "config": config,
    }))
}
