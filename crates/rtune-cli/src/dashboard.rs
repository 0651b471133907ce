//! `rtune dashboard` and `rtune report`: the command-line side of rtune-dashboard.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Experiment directories (e.g. ~/rtune_results/asha-example); running or finished.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The address to listen on. Beyond the loopback interface (e.g. 0.0.0.0) the page needs
    /// a token, which is part of the printed URL.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The port; 0 (the default) picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How often the experiment's files are looked at for new lines, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    interval_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML file with every view (scripts and data inlined).
    Html,
    /// Learning curves, best so far and parallel coordinates as SVG files in a directory.
    Svg,
    /// The same three plots as PNG pictures (1800 x 1000 pixels) in a directory.
    Png,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Experiment directories (one for --format svg or png).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write: the HTML file (default report.html), or for --format svg and png the
    /// directory (default plots).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    format: ReportFormat,
}

pub fn dashboard(args: DashboardArgs) -> Result<ExitCode> {
    let token = if args.bind.is_loopback() {
        None
    } else {
        Some(rtune_dashboard::server::new_token()?)
    };
    let options = rtune_dashboard::ServeOptions {
        dirs: args.dirs,
        bind: args.bind,
        port: args.port,
        interval: Duration::from_millis(args.interval_ms.max(50)),
        token,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(rtune_dashboard::serve(
        options,
        |url| {
            // Whoever started us may read only the URL and close the pipe: not an error.
            use std::io::Write as _;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "rtune dashboard: {url}  (Ctrl-C to stop)");
            let _ = out.flush();
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn report(args: ReportArgs) -> Result<ExitCode> {
    match args.format {
        ReportFormat::Html => {
            let out = args.output.unwrap_or_else(|| PathBuf::from("report.html"));
            rtune_dashboard::write_report(&args.dirs, &out)?;
            println!("wrote {}", out.display());
        }
        ReportFormat::Svg | ReportFormat::Png => {
            let (name, format) = match args.format {
                ReportFormat::Png => ("png", rtune_dashboard::PlotFormat::Png),
                _ => ("svg", rtune_dashboard::PlotFormat::Svg),
            };
            anyhow::ensure!(
                args.dirs.len() == 1,
                "--format {name} draws one experiment: pass one directory (or write an HTML report of several)"
            );
            let out = args.output.unwrap_or_else(|| PathBuf::from("plots"));
            for path in rtune_dashboard::write_plots(&args.dirs[0], &out, format)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
