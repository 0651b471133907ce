//! `rtune report --format svg|png`'s pictures of an experiment directory written here: a legend
//! for every mark the learning curves carry, whole-number iteration ticks, a range that one
//! diverged value does not squash, the results that count (not those a restart replaced), and
//! parallel coordinates scaled by the search space.

use std::path::Path;

use resvg::tiny_skia::Pixmap;
use rtune_dashboard::{PlotFormat, write_plots};
use serde_json::json;

fn lines(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

/// Three trials of lr (loguniform), bs (choice of 1 and 2) and dropout (uniform over a range a
/// guess would have taken for a log one). Trial 1's file holds a run restarted at iteration 2
/// (older files kept the replaced lines), trial 0 has a superseded.json line, trial 2 diverges.
fn write_experiment(dir: &Path) {
    let trial = |id: u32, lr: f64, bs: u32, dropout: f64, best: f64, status: &str| {
        json!({"id": id, "config": {"lr": lr, "bs": bs, "dropout": dropout, "epochs": 4},
               "status": status, "tag": "", "iteration": 4, "time_total_s": 4.0,
               "best": {"value": best, "iteration": 3}, "runs": 1, "failures": 0, "error": null})
    };
    let state = json!({
        "format": 3, "name": "plots", "status": "finished", "metric": "loss", "mode": "min",
        "scheduler": "asha", "searcher": "random", "parameters": ["lr", "bs", "dropout"],
        "total_trials": 3, "started_at": 1000.0, "finished_at": 1010.0,
        "trials": [
            trial(0, 1e-4, 1, 0.0005, 0.2, "TERMINATED"),
            trial(1, 1e-3, 2, 0.4, 0.3, "TERMINATED"),
            trial(2, 1e-2, 2, 0.1, 0.9, "TERMINATED"),
        ]
    });
    std::fs::write(dir.join("experiment_state.json"), state.to_string()).expect("state");
    std::fs::write(
        dir.join("experiment.toml"),
        "name = \"plots\"\n[space]\nlr = { loguniform = [1e-5, 1e-1] }\nbs = { choice = [1, 2] }\ndropout = { uniform = [0.0001, 0.5] }\nepochs = 4\n",
    )
    .expect("experiment.toml");
    let point = |it: u32, loss: f64| json!({"loss": loss, "training_iteration": it, "timestamp": 1000 + it});
    for (id, points) in [
        (
            0,
            vec![point(1, 0.9), point(2, 0.5), point(3, 0.2), point(4, 0.25)],
        ),
        (
            1,
            vec![
                point(1, 0.8),
                point(2, 0.6),
                point(3, 0.7),
                point(2, 0.5),
                point(3, 0.3),
                point(4, 0.35),
            ],
        ),
        (
            2,
            vec![point(1, 1.0), point(2, 0.95), point(3, 0.9), point(4, 1e6)],
        ),
    ] {
        let trial_dir = dir.join(format!("trial_{id:05}"));
        std::fs::create_dir_all(&trial_dir).expect("trial dir");
        std::fs::write(trial_dir.join("result.json"), lines(&points)).expect("results");
    }
    std::fs::write(
        dir.join("trial_00000/superseded.json"),
        lines(&[json!({"loss": 0.6, "training_iteration": 2, "run": 0,
                       "superseded": {"reason": "rolled back after a failure", "time": 1003.0}})]),
    )
    .expect("superseded");
    std::fs::write(
        dir.join("decisions.jsonl"),
        lines(&[
            json!({"trial": 2, "action": "stop", "reason": "worse than the rung", "time": 1004.0,
                   "training_iteration": 2, "details": {"rung": 2.0, "bracket": 0, "cutoff": -0.7}}),
            json!({"trial": 0, "action": "pause", "reason": "paused", "time": 1005.0, "training_iteration": 3}),
            json!({"trial": 1, "action": "exploit", "reason": "copied trial 0", "time": 1006.0,
                   "training_iteration": 2, "donor": {"trial": 0, "iteration": 2}}),
        ]),
    )
    .expect("decisions");
}

/// The experiment's plots drawn as `format` into a temporary directory (removed when dropped).
fn plots(format: PlotFormat) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_experiment(dir.path());
    let out = dir.path().join("plots");
    write_plots(dir.path(), &out, format).expect("plots");
    (dir, out)
}

/// The texts of `<text ...>` elements whose attributes contain `attrs`.
fn texts<'a>(svg: &'a str, attrs: &str) -> Vec<&'a str> {
    svg.split("<text ")
        .skip(1)
        .filter(|t| t.split('>').next().is_some_and(|head| head.contains(attrs)))
        .filter_map(|t| {
            t.split_once('>')
                .map(|(_, rest)| rest.split('<').next().unwrap_or(""))
        })
        .collect()
}

#[test]
fn learning_curves_have_a_legend_integer_ticks_and_a_robust_range() {
    let (_dir, out) = plots(PlotFormat::Svg);
    let svg = std::fs::read_to_string(out.join("learning-curves.svg")).expect("svg");
    for label in [
        "stopped by the scheduler",
        "paused",
        "PBT exploit",
        "ASHA rung cutoff",
        "superseded result (not counted)",
        "beyond the range shown",
    ] {
        assert!(
            svg.contains(&format!(">{label}</text>")),
            "no legend entry {label:?}"
        );
    }
    // training_iteration's ticks (below the plot, y = 500 - 50 + 16) are whole numbers.
    let x_ticks = texts(&svg, r#"y="466" font-size="11" text-anchor="middle""#);
    assert!(!x_ticks.is_empty());
    for t in &x_ticks {
        assert!(
            t.parse::<u64>().is_ok(),
            "iteration tick {t:?} in {x_ticks:?}"
        );
    }
    // The diverged 1e6 does not set the range: every value tick is a loss-sized number.
    let y_ticks = texts(&svg, r#"font-size="11" text-anchor="end""#);
    assert!(!y_ticks.is_empty());
    for t in &y_ticks {
        let v: f64 = t.parse().unwrap_or_else(|_| panic!("value tick {t:?}"));
        assert!(v < 10.0, "the range reaches {v}: {y_ticks:?}");
    }
    // Trial 1's line has its 4 counting points (iterations 1, 2, 3, 4 of the restarted run);
    // the replaced 2 and 3 are marked, not drawn as part of it.
    let path = svg
        .split("<path ")
        .find(|p| p.contains("<title>trial_00001</title>"))
        .expect("trial 1's line");
    let d = path
        .split("d=\"")
        .nth(1)
        .and_then(|d| d.split('"').next())
        .unwrap_or("");
    assert_eq!(d.matches('L').count(), 3, "{d}");
    assert!(
        svg.contains("(replaced by a later run)"),
        "the replaced lines are marked"
    );
    assert!(
        svg.contains("(rolled back after a failure)"),
        "superseded.json is marked"
    );
}

#[test]
fn parallel_coordinates_follow_the_search_space() {
    let (_dir, out) = plots(PlotFormat::Svg);
    let svg = std::fs::read_to_string(out.join("parallel-coordinates.svg")).expect("svg");
    let names = texts(
        &svg,
        r#"font-size="12" text-anchor="middle" font-weight="bold""#,
    );
    assert_eq!(names, ["lr", "bs", "dropout", "loss"], "{names:?}");
    // One log axis: lr's; the uniform dropout is linear however wide its range.
    let scales = texts(&svg, r#"font-style="italic""#);
    assert_eq!(scales, ["log scale"]);
    assert!(svg.contains("<title>lr (log)</title>"));
    let ticks = texts(&svg, r#"font-size="10""#);
    assert!(ticks.contains(&"1") && ticks.contains(&"2"), "{ticks:?}");
    assert!(
        !ticks.contains(&"1.5"),
        "no tick between the choices: {ticks:?}"
    );
    assert!(
        svg.contains("colour: loss (darker is better)"),
        "the colour bar's caption"
    );
}

#[test]
fn png_learning_curves_draw_their_legend() {
    let (_dir, out) = plots(PlotFormat::Png);
    let png = std::fs::read(out.join("learning-curves.png")).expect("png");
    let picture = Pixmap::decode_png(&png).expect("a PNG");
    // The legend's row: above the plot (its top at 56 units, 2 pixels a unit), right half.
    let (w, rows) = (picture.width() as usize, 70..104);
    let dark = rows
        .flat_map(|y| {
            let row = &picture.data()[y * w * 4..(y + 1) * w * 4];
            row[w * 2..]
                .chunks_exact(4)
                .map(|p| p[0] < 90 && p[1] < 90 && p[2] < 90)
                .collect::<Vec<_>>()
        })
        .filter(|d| *d)
        .count();
    assert!(dark > 400, "the legend row has {dark} dark pixels");
}
