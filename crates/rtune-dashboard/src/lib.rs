//! See an experiment: `rtune dashboard` serves a live web page for experiment directories, and
//! `rtune report` writes the same page as one self-contained HTML file (or the main plots as SVG
//! or PNG).
//!
//! Everything is read from the files an experiment writes (docs/file-formats.md): [`model`] is
//! the one place that knows their layout, [`tail`] reads append-only files by byte offset, and
//! [`experiment`] keeps what was read and hands out what changed. The page (assets/) is plain
//! JavaScript with one vendored chart library (uPlot), embedded into the binary.

use std::path::PathBuf;

pub mod experiment;
pub mod importance;
pub mod model;
pub mod page;
pub mod raster;
pub mod report;
pub mod scale;
pub mod server;
pub mod svg;
pub mod tail;

pub use report::{PlotFormat, write_plots, write_report};
pub use server::{ServeOptions, serve};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(
        "{path} is not an rtune experiment directory (it has no experiment_state.json)\nhint: pass the directory `rtune run` printed, e.g. ~/rtune_results/<name>"
    )]
    NotAnExperiment { path: PathBuf },
    #[error("{path} is not an rtune experiment state ({message})")]
    BadState { path: PathBuf, message: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {address}: {source}\nhint: choose another --port, or --port 0 for a free one"
    )]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot draw random bytes for the access token from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("cannot draw the {plot} plot: {source}")]
    Render {
        plot: &'static str,
        source: raster::RasterError,
    },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}
