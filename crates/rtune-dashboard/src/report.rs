//! `rtune report`: the dashboard's page with the experiments' data inlined (one file that opens
//! without a network), or the three main plots as SVG or PNG files.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::DashboardError;
use crate::experiment::{Experiment, Snapshot};
use crate::importance::{ForestOptions, Importance, importance};
use crate::page::{self, PageData};
use crate::raster::Rasterizer;
use crate::svg;

/// One experiment in the report's data.
#[derive(Serialize)]
struct ReportExperiment {
    snapshot: Snapshot,
    importance: Option<Vec<Importance>>,
}

#[derive(Serialize)]
struct ReportData {
    experiments: Vec<ReportExperiment>,
}

/// The data the report inlines: per experiment its snapshot and importance. Serialized straight
/// from the snapshots (no intermediate JSON tree: with a million results that tree alone is
/// hundreds of MB).
pub fn report_json(dirs: &[PathBuf]) -> Result<(String, String), DashboardError> {
    let mut experiments = Vec::new();
    let mut names = Vec::new();
    for dir in dirs {
        let e = Experiment::open(dir)?;
        let importance = importance(
            &e.final_values(),
            &e.header().parameters,
            ForestOptions::default(),
        );
        names.push(e.header().name);
        experiments.push(ReportExperiment {
            snapshot: e.snapshot(),
            importance,
        });
    }
    let json = serde_json::to_string(&ReportData { experiments })?;
    Ok((names.join(", "), json))
}

/// Write the self-contained HTML report of `dirs` to `out`.
pub fn write_report(dirs: &[PathBuf], out: &Path) -> Result<(), DashboardError> {
    let (title, json) = report_json(dirs)?;
    let html = page::render(&title, PageData::Static { json: &json });
    write(out, html.as_bytes())
}

/// The picture formats of `rtune report --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    Svg,
    /// The SVG drawn at [`crate::raster::PNG_SCALE`] pixels per unit (1800 x 1000).
    Png,
}

/// Write learning-curves, best-so-far and parallel-coordinates pictures of the experiment in
/// `dir` into the directory `out`; returns the files written.
pub fn write_plots(
    dir: &Path,
    out: &Path,
    format: PlotFormat,
) -> Result<Vec<PathBuf>, DashboardError> {
    let e = Experiment::open(dir)?;
    let s = e.snapshot();
    std::fs::create_dir_all(out).map_err(|source| DashboardError::Io {
        action: "create",
        path: out.to_path_buf(),
        source,
    })?;
    let plots = [
        ("learning-curves", svg::learning_curves(&s)),
        ("best-so-far", svg::best_so_far(&s)),
        ("parallel-coordinates", svg::parallel_coordinates(&s)),
    ];
    let rasterizer = (format == PlotFormat::Png).then(Rasterizer::new);
    let mut written = Vec::new();
    for (name, text) in plots {
        let path = match &rasterizer {
            None => {
                let path = out.join(format!("{name}.svg"));
                write(&path, text.as_bytes())?;
                path
            }
            Some(r) => {
                let png = r
                    .png(&text)
                    .map_err(|source| DashboardError::Render { plot: name, source })?;
                let path = out.join(format!("{name}.png"));
                write(&path, &png)?;
                path
            }
        };
        written.push(path);
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DashboardError> {
    std::fs::write(path, bytes).map_err(|source| DashboardError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}
