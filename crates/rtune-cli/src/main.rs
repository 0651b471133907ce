//! `rtune`: hyperparameter tuning as one program.
//!
//! This is the edge of the system: it parses the command line, turns library errors into
//! messages and exit codes, and leaves everything else to the runner.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "rtune",
    version,
    about = "Hyperparameter tuning for your own machines and SLURM clusters",
    long_about = "Hyperparameter tuning for your own machines and SLURM clusters.\n\n\
        An experiment file (TOML) names the training command, the search space, the metric and \
        the scheduler; `rtune run` runs the trials as processes and writes every result to disk.",
    after_help = "Examples:\n  rtune run examples/asha.toml\n  rtune run examples/asha.toml --set num_samples=20 --set 'space.lr.loguniform=[1e-5,2e-4]'\n  rtune status ~/rtune_results/asha-example\n  rtune best ~/rtune_results/asha-example --json\n  rtune plan examples/asha.toml --nodes 2 --cpus-per-node 8 --gpus-per-node 4\n  rtune submit examples/asha.toml --nodes 2 --cpus-per-node 8 --gpus-per-node 4 --time 01:00:00"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment.
    Run(RunArgs),
    /// Show an experiment's trials table (also while it runs).
    Status(StatusArgs),
    /// Show an experiment's best trial.
    Best(BestArgs),
    /// Run one trial of an experiment again from scratch, following its recorded policy
    /// (policy.json: the config schedule PBT gave it).
    Replay(ReplayArgs),
    /// Submit the experiment as a SLURM job: rtune runs in it and starts the trials as job steps.
    Submit(SubmitArgs),
    /// How many trials an allocation of this shape runs at once, with the arithmetic.
    Plan(PlanArgs),
}

/// The allocation's shape, shared by `submit` and `plan`.
#[derive(clap::Args)]
struct ShapeArgs {
    /// Nodes of the allocation.
    #[arg(long)]
    nodes: u32,
    /// CPUs on each node.
    #[arg(long)]
    cpus_per_node: u32,
    /// GPUs on each node.
    #[arg(long, default_value_t = 0)]
    gpus_per_node: u32,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// The experiment file (TOML).
    experiment: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Override a value of the experiment file (as for `rtune run`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// The experiment file (TOML).
    experiment: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Time limit of the job (`--time` of sbatch, e.g. 04:00:00).
    #[arg(long)]
    time: String,
    /// Partition of the job.
    #[arg(long)]
    partition: Option<String>,
    /// Account of the job.
    #[arg(long)]
    account: Option<String>,
    /// Override a value of the experiment file (as for `rtune run`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The experiment's name; default: `name` in the file.
    #[arg(long)]
    name: Option<String>,
    /// Where experiment directories are created (as for `rtune run`).
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Where the job script and the job log go; default: the current directory.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Print the capacity plan and the job script; submit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait until the job has ended (sbatch --wait); the exit status is the job's.
    #[arg(long)]
    wait: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The experiment file (TOML).
    experiment: PathBuf,
    /// Override a value of the experiment file, e.g. `--set num_samples=20` or
    /// `--set 'space.lr.loguniform=[1e-5,2e-4]'`. The value is read as TOML, else as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The experiment's name (its directory under the storage dir); default: `name` in the file.
    #[arg(long)]
    name: Option<String>,
    /// Where experiment directories are created; default: `[output] storage`, else ~/rtune_results.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Where trials run; default: `[executor] type` in the file, else `local`.
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
    SlurmJobs,
}

impl ExecutorArg {
    fn as_str(self) -> &'static str {
        match self {
            ExecutorArg::Local => "local",
            ExecutorArg::Slurm => "slurm",
            ExecutorArg::SlurmJobs => "slurm-jobs",
        }
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The experiment's directory.
    dir: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Show PBT's lineage instead of the trials table: every exploit (target, donor, iterations,
    /// config change); with a TRIAL, its exploits and its policy (config by iteration).
    #[arg(long, value_name = "TRIAL", num_args = 0..=1, default_missing_value = "")]
    lineage: Option<String>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The experiment's directory.
    dir: PathBuf,
    /// The trial to replay: trial_00002, or 2.
    trial: String,
    /// The replay's name; default `<experiment>-replay-<trial>`.
    #[arg(long)]
    name: Option<String>,
    /// Where the replay's directory is created; default: next to the experiment's directory.
    #[arg(long)]
    storage: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Table,
    Csv,
    Markdown,
    Json,
}

#[derive(clap::Args)]
struct BestArgs {
    /// The experiment's directory.
    dir: PathBuf,
    /// Print the best trial as JSON (name, metric, iteration, config).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // `rtune __supervise ...`: the shim rtune runs each trial process under (not for users).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if rtune_runner::executor::shim::is_shim_invocation(args.get(1).map(|a| a.as_os_str())) {
        let code = rtune_runner::executor::shim::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    init_logging();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: library errors already include their source's message
/// (`cannot read x.toml: No such file or directory`), so a cause whose text is already there is
/// not repeated.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RTUNE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Status(args) => status(args),
        Command::Best(args) => best(args),
        Command::Replay(args) => replay(args),
        Command::Submit(args) => submit(args),
        Command::Plan(args) => plan(args),
    }
}

fn shape(args: &ShapeArgs) -> rtune_runner::submit::AllocationShape {
    rtune_runner::submit::AllocationShape {
        nodes: args.nodes,
        cpus_per_node: args.cpus_per_node,
        gpus_per_node: args.gpus_per_node,
    }
}

/// The capacity plan of `experiment` in an allocation of `shape`, or the arithmetic of why
/// not even one trial fits.
fn capacity_plan(
    experiment: &rtune_runner::experiment::Experiment,
    shape: &rtune_runner::submit::AllocationShape,
) -> Result<String> {
    let file = &experiment.file;
    let plan = rtune_runner::submit::plan_for_shape(
        shape,
        file.executor.reserve_cpus,
        file.executor.max_concurrent_trials,
        file.trial.workers,
        &file.trial.resources,
    )
    .with_context(|| {
        format!(
            "{}: the trials do not fit into {} x ({} CPUs, {} GPUs)",
            experiment.path.display(),
            shape.nodes,
            shape.cpus_per_node,
            shape.gpus_per_node
        )
    })?;
    Ok(format!(
        "capacity plan for {} x ({} CPUs, {} GPUs), rtune on the first node:\n{}",
        shape.nodes, shape.cpus_per_node, shape.gpus_per_node, plan.explanation
    ))
}

fn plan(args: PlanArgs) -> Result<ExitCode> {
    let experiment = rtune_runner::experiment::load(&args.experiment, &args.overrides)?;
    println!("{}", capacity_plan(&experiment, &shape(&args.shape))?);
    Ok(ExitCode::SUCCESS)
}

fn submit(args: SubmitArgs) -> Result<ExitCode> {
    use rtune_runner::submit::{HeadJob, head_job_script, log_path};
    let mut overrides = args.overrides.clone();
    if let Some(name) = &args.name {
        overrides.push(format!("name={}", toml_string(name)));
    }
    let experiment = rtune_runner::experiment::load(&args.experiment, &overrides)?;
    let shape = shape(&args.shape);
    let plan = capacity_plan(&experiment, &shape)?;
    println!("{plan}");

    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let absolute = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            cwd.join(p)
        }
    };
    let log_dir = absolute(args.log_dir.as_ref().unwrap_or(&cwd));
    let name = &experiment.file.name;
    let mut run_args = Vec::new();
    for o in &args.overrides {
        run_args.push("--set".to_string());
        run_args.push(o.clone());
    }
    if let Some(n) = &args.name {
        run_args.push("--name".to_string());
        run_args.push(n.clone());
    }
    if let Some(storage) = &args.storage {
        run_args.push("--storage".to_string());
        run_args.push(absolute(storage).display().to_string());
    }
    let job = HeadJob {
        job_name: format!("rtune-{name}"),
        shape,
        time: args.time.clone(),
        partition: args.partition.clone(),
        account: args.account.clone(),
        log: log_dir.join(format!("rtune-{name}-%j.log")),
        workdir: cwd.clone(),
        rtune: std::env::current_exe().context("cannot find the rtune executable's path")?,
        experiment: absolute(&args.experiment),
        run_args,
    };
    let script = head_job_script(&job);
    if args.dry_run {
        println!("\njob script (not submitted: --dry-run):\n{script}");
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let script_path = log_dir.join(format!("rtune-{name}.sbatch"));
    std::fs::write(&script_path, &script)
        .with_context(|| format!("cannot write {}", script_path.display()))?;
    let mut sbatch = std::process::Command::new("sbatch");
    sbatch.arg("--parsable");
    if args.wait {
        sbatch.arg("--wait");
    }
    sbatch.arg(&script_path);
    if !args.wait {
        let output = sbatch
            .output()
            .context("cannot run sbatch: is SLURM installed and on PATH?")?;
        anyhow::ensure!(
            output.status.success(),
            "sbatch refused {}: {}",
            script_path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let id = parse_job_id(&String::from_utf8_lossy(&output.stdout))?;
        println!("submitted job {id}");
        println!("log: {}", log_path(&job.log, &id).display());
        return Ok(ExitCode::SUCCESS);
    }
    // With --wait sbatch prints the id at once and returns when the job ends.
    let mut child = sbatch
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sbatch: is SLURM installed and on PATH?")?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("cannot read sbatch's output")?;
    }
    let id = parse_job_id(&line)?;
    println!("submitted job {id}");
    println!("log: {}", log_path(&job.log, &id).display());
    let status = child.wait().context("cannot wait for sbatch")?;
    println!("job {id} ended: {status}");
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The job id from `sbatch --parsable` (`id` or `id;cluster`).
fn parse_job_id(text: &str) -> Result<String> {
    text.trim()
        .split(';')
        .next()
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .with_context(|| format!("sbatch printed no job id: {text:?}"))
}

/// A TOML string literal for an override built from a command-line flag.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let rtune_exe = std::env::current_exe().context("cannot find the rtune executable's path")?;
    let options = rtune_runner::setup::RunOptions {
        experiment_path: args.experiment,
        overrides: args.overrides,
        name: args.name,
        storage: args.storage,
        executor: args.executor.map(|e| e.as_str().to_string()),
        rtune_exe: rtune_exe.clone(),
        supervisor: Some(rtune_exe),
        terminal: std::io::stdout().is_terminal(),
    };
    finish(block_on(rtune_runner::setup::run_experiment(options))??)
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let rtune_exe = std::env::current_exe().context("cannot find the rtune executable's path")?;
    let options = rtune_runner::setup::ReplayOptions {
        experiment_dir: args.dir,
        trial: args.trial,
        name: args.name,
        storage: args.storage,
        rtune_exe: rtune_exe.clone(),
        supervisor: Some(rtune_exe),
        terminal: std::io::stdout().is_terminal(),
    };
    finish(block_on(rtune_runner::setup::run_replay(options))??)
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

fn finish(outcome: rtune_runner::run_loop::RunOutcome) -> Result<ExitCode> {
    if outcome.interrupted {
        eprintln!(
            "interrupted; everything so far is in {}",
            outcome.dir.display()
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    use rtune_runner::report::TableFormat;
    let state = rtune_runner::storage::ExperimentState::read(&args.dir)?;
    let format = match args.format {
        FormatArg::Table => TableFormat::Table,
        FormatArg::Csv => TableFormat::Csv,
        FormatArg::Markdown => TableFormat::Markdown,
        FormatArg::Json => TableFormat::Json,
    };
    if let Some(trial) = &args.lineage {
        use rtune_runner::lineage;
        let trial = match trial.as_str() {
            "" => None,
            text => Some(lineage::parse_trial(text).with_context(|| {
                format!("`{text}` is not a trial; name one as the trials table does, e.g. trial_00002 or 2")
            })?),
        };
        print!(
            "{}",
            lineage::lineage_report(&args.dir, &state, trial, format)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", rtune_runner::report::trials_table(&state, format));
    Ok(ExitCode::SUCCESS)
}

fn best(args: BestArgs) -> Result<ExitCode> {
    let state = rtune_runner::storage::ExperimentState::read(&args.dir)?;
    if args.json {
        let best = rtune_runner::report::best_trial_json(&state)
            .context("no trial has reported the metric yet")?;
        println!("{}", serde_json::to_string_pretty(&best)?);
    } else {
        let block = rtune_runner::report::best_trial_block(&state)
            .context("no trial has reported the metric yet")?;
        println!("{block}");
    }
    Ok(ExitCode::SUCCESS)
}
