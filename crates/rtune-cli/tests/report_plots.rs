//! `rtune report --format png|svg` on a real (short) ASHA experiment: three pictures that decode,
//! have the documented size, are not blank, show text, and draw the learning curves in the
//! trials' colours. And the placement of every run of a trial in events.jsonl, which the
//! dashboard's resource timeline draws one bar each.

mod common;

use std::path::Path;

use common::{example, json_lines, rtune, run_ok, text};

/// An RGBA picture.
struct Picture {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

impl Picture {
    fn read(path: &Path) -> Picture {
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder
            .read_info()
            .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
        let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Rgba, png::BitDepth::Eight),
            "{}",
            path.display()
        );
        buf.truncate(info.buffer_size());
        Picture {
            width: info.width,
            height: info.height,
            rgba: buf,
        }
    }

    fn pixels(&self) -> impl Iterator<Item = &[u8]> {
        self.rgba.chunks_exact(4)
    }

    /// The variance of the pixels' brightness (0 for a blank picture).
    fn variance(&self) -> f64 {
        let lum: Vec<f64> = self
            .pixels()
            .map(|p| (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) as f64 / 3.0)
            .collect();
        let mean = lum.iter().sum::<f64>() / lum.len() as f64;
        lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64
    }

    /// How many pixels are within `tolerance` of `rgb` in each channel.
    fn count_near(&self, rgb: [u8; 3], tolerance: u8) -> usize {
        self.pixels()
            .filter(|p| (0..3).all(|k| p[k].abs_diff(rgb[k]) <= tolerance))
            .count()
    }

    /// Dark (text-black) pixels in the rows `rows`.
    fn dark_in_rows(&self, rows: std::ops::Range<u32>) -> usize {
        let w = self.width as usize;
        rows.flat_map(|y| self.rgba[y as usize * w * 4..(y as usize + 1) * w * 4].chunks_exact(4))
            .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
            .count()
    }
}

/// The first trial's colour (Tableau blue #4e79a7) drawn at opacity 0.8 over white.
const FIRST_TRIAL_ON_WHITE: [u8; 3] = [113, 148, 185];
/// The best-so-far line's colour (#1f77b4).
const BEST_LINE: [u8; 3] = [0x1f, 0x77, 0xb4];

#[test]
fn report_draws_the_three_plots_as_png_and_svg() {
    let storage = tempfile::tempdir().expect("tempdir");
    // One trial at a time: trial 0 is then first at every rung and trains to the end, so its
    // curve (the one the colour check looks for) is a line whatever the machine's load.
    run_ok(
        rtune()
            .args(["run", &example("asha.toml"), "--storage"])
            .arg(storage.path())
            .args(["--set", "space.sleep_ms=0"])
            .args(["--set", "executor.max_concurrent_trials=1"]),
    );
    let dir = storage.path().join("asha-example");

    let pngs = storage.path().join("pngs");
    let output = run_ok(
        rtune()
            .arg("report")
            .arg(&dir)
            .args(["--format", "png", "-o"])
            .arg(&pngs),
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    for name in ["learning-curves", "best-so-far", "parallel-coordinates"] {
        let path = pngs.join(format!("{name}.png"));
        assert!(
            printed.contains(&path.display().to_string()),
            "{}",
            text(&output)
        );
        let picture = Picture::read(&path);
        assert_eq!((picture.width, picture.height), (1800, 1000), "{name}");
        let variance = picture.variance();
        assert!(variance > 20.0, "{name} looks blank (variance {variance})");
        // The title (top 70 pixel rows) is drawn text.
        let dark = picture.dark_in_rows(0..70);
        assert!(dark > 300, "{name}: the title left {dark} dark pixels");
        match name {
            "learning-curves" => {
                let n = picture.count_near(FIRST_TRIAL_ON_WHITE, 12);
                assert!(n > 500, "the first trial's curve has {n} pixels");
            }
            "best-so-far" => {
                let n = picture.count_near(BEST_LINE, 8);
                assert!(n > 500, "the best-so-far line has {n} pixels");
            }
            _ => {}
        }
    }

    let svgs = storage.path().join("svgs");
    run_ok(
        rtune()
            .arg("report")
            .arg(&dir)
            .args(["--format", "svg", "-o"])
            .arg(&svgs),
    );
    for name in ["learning-curves", "best-so-far", "parallel-coordinates"] {
        let svg = std::fs::read_to_string(svgs.join(format!("{name}.svg"))).expect("an SVG");
        assert!(
            svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
    }
    // Several directories make one HTML report, not one set of pictures.
    let output = rtune()
        .arg("report")
        .arg(&dir)
        .arg(&dir)
        .args(["--format", "png"])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--format png draws one experiment"),
        "{}",
        text(&output)
    );
}

#[test]
fn events_log_where_every_run_of_a_trial_was_placed() {
    // PBT with 4 trials on 2 slots: trials are paused and resumed, each resume a new run.
    let storage = tempfile::tempdir().expect("tempdir");
    run_ok(
        rtune()
            .args(["run", &example("pbt.toml"), "--storage"])
            .arg(storage.path())
            .args(["--set", "space.sleep_ms=0"]),
    );
    let events = json_lines(&storage.path().join("pbt-example/events.jsonl"));
    let mut most_runs = 0;
    for trial in ["00000", "00001", "00002", "00003"] {
        let of_trial = |kind: &str| {
            events
                .iter()
                .filter(|e| e["trial"] == trial && e["event"] == kind)
                .collect::<Vec<_>>()
        };
        let starts = of_trial("status")
            .into_iter()
            .filter(|e| e["status"] == "RUNNING")
            .count();
        let placements = of_trial("placement");
        assert_eq!(placements.len(), starts, "trial {trial}: {events:?}");
        let runs: Vec<u64> = placements
            .iter()
            .map(|e| e["run"].as_u64().expect("a run number"))
            .collect();
        assert!(
            runs.windows(2).all(|w| w[0] < w[1]),
            "trial {trial}: runs {runs:?}"
        );
        for p in &placements {
            let placement = &p["placement"];
            assert_eq!(placement["executor"], "local", "{p}");
            assert_eq!(placement["nodes"][0]["node"], "localhost", "{p}");
            assert!(placement["nodes"][0]["cpus"].as_u64() >= Some(1), "{p}");
            let label = placement["label"].as_str().expect("a label");
            assert!(label.starts_with("local cpu="), "{p}");
        }
        most_runs = most_runs.max(placements.len());
    }
    assert!(most_runs > 1, "no trial was paused and resumed: {events:?}");
}
