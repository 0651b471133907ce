//! `rtune`: hyperparameter tuning as one program.
//!
//! This is the edge of the system: it parses the command line, turns library errors into
//! messages and exit codes, and leaves everything else to the runner.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod dashboard;

#[derive(Parser)]
#[command(
    name = "rtune",
    version,
    about = "Hyperparameter tuning for your own machines and SLURM clusters",
    long_about = "Hyperparameter tuning for your own machines and SLURM clusters.\n\n\
        An experiment file (TOML) names the training command, the search space, the metric and \
        the scheduler; `rtune run` runs the trials as processes and writes every result to disk.",
    after_help = "Examples:\n  rtune run examples/asha.toml\n  rtune run examples/asha.toml --set num_samples=20 --set 'space.lr.loguniform=[1e-5,2e-4]'\n  rtune resume ~/rtune_results/asha-example\n  rtune status ~/rtune_results/asha-example\n  rtune best ~/rtune_results/asha-example --json\n  rtune plan examples/asha.toml --nodes 2 --cpus-per-node 8 --gpus-per-node 4\n  rtune submit examples/asha.toml --nodes 2 --cpus-per-node 8 --gpus-per-node 4 --time 01:00:00\n\n\
Exit codes (run, resume, replay):\n  0    every trial finished without error\n  1    internal error (a bug, or the system failed us)\n  2    invalid input: the experiment file, an option, a changed file on resume\n  3    some trials ended in ERROR (the summary lists them with their error files), or fail_fast stopped the experiment\n  4    rtune could not write its files (e.g. the disk is full); `rtune resume` continues once fixed\n  5    another head runs this experiment (its claim, head_claim.json, is live); the message names it\n  6    this head lost its claim to another head (it was stopped or cut off longer than the lease) and stopped without writing anything more\n  75   a head job written by `rtune submit` stopped for its time limit and submitted the next head job, which continues the experiment\n  130  interrupted (Ctrl-C, SIGTERM, SIGHUP); `rtune resume` continues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment.
    Run(RunArgs),
    /// Continue an experiment after its head died, was interrupted or ran out of disk: finished
    /// trials are kept, cut-off ones restart from their latest checkpoint.
    Resume(ResumeArgs),
    /// Show an experiment's trials table (also while it runs).
    Status(StatusArgs),
    /// List the experiments under the storage directory: status, trials, best value.
    List(ListArgs),
    /// Show an experiment's best trial.
    Best(BestArgs),
    /// Run one trial of an experiment again from scratch, following its recorded policy
    /// (policy.json: the config schedule PBT gave it).
    Replay(ReplayArgs),
    /// Submit the experiment as a SLURM job: rtune runs in it and starts the trials as job steps.
    Submit(Box<SubmitArgs>),
    /// How many trials an allocation of this shape runs at once, with the arithmetic.
    Plan(PlanArgs),
    /// Serve a live web page of experiments: trials, learning curves, importance, lineage, ...
    Dashboard(dashboard::DashboardArgs),
    /// Write the dashboard's views as one self-contained HTML file (or the main plots as SVG or PNG).
    Report(dashboard::ReportArgs),
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
    /// Nodes of the head job. With the job-per-trial layout the head job only runs rtune:
    /// default 1.
    #[arg(long)]
    nodes: Option<u32>,
    /// CPUs on each node of the head job; with the job-per-trial layout default 1.
    #[arg(long)]
    cpus_per_node: Option<u32>,
    /// GPUs on each node of the head job.
    #[arg(long, default_value_t = 0)]
    gpus_per_node: u32,
    /// Where trials run: `slurm` (job steps of the head job) or `slurm-jobs` (a small head job
    /// submits one job per trial); default: `[executor] type` in the file, else `slurm`.
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
    /// Time limit of the head job (sbatch --time, e.g. 04:00:00); needed unless --dry-run.
    #[arg(long)]
    time: Option<String>,
    /// sbatch --partition.
    #[arg(long)]
    partition: Option<String>,
    /// sbatch --account.
    #[arg(long)]
    account: Option<String>,
    /// sbatch --qos.
    #[arg(long)]
    qos: Option<String>,
    /// sbatch --mem (memory per node, e.g. 64G).
    #[arg(long)]
    mem: Option<String>,
    /// sbatch --constraint (node features, e.g. a100).
    #[arg(long)]
    constraint: Option<String>,
    /// sbatch --exclusive (whole nodes).
    #[arg(long)]
    exclusive: bool,
    /// sbatch --mail-type (e.g. END,FAIL).
    #[arg(long)]
    mail_type: Option<String>,
    /// sbatch --mail-user.
    #[arg(long)]
    mail_user: Option<String>,
    /// Any other sbatch option, passed as it is (repeatable): --sbatch-arg=--reservation=big.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// Override a value of the experiment file (as for `rtune run`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The experiment's name; default: `name` in the file.
    #[arg(long)]
    name: Option<String>,
    /// Where experiment directories are created (as for `rtune run`).
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Where the job script and the job log go; default: the experiment's directory, which
    /// `rtune submit` creates (and the run then uses).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Print the capacity plan and the job script; submit nothing and create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait until the job has ended (sbatch --wait); the exit status is the job's. With --time,
    /// follow the chain of head jobs to the one that ends the experiment.
    #[arg(long)]
    wait: bool,
    /// How long before the head job's time limit SLURM warns rtune (--signal=B:USR1@SECONDS):
    /// rtune then pauses the trials, writes the state and submits the next head job, which
    /// resumes the experiment. Default 300, at most a fifth of --time. SLURM may send the
    /// warning up to a minute early.
    #[arg(long, value_name = "SECONDS")]
    signal_grace: Option<u32>,
    /// How many more head jobs may continue the experiment after the first reaches its time
    /// limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        conflicts_with = "until_done"
    )]
    max_resubmits: u32,
    /// Submit new head jobs until the experiment is done (no --max-resubmits limit).
    #[arg(long)]
    until_done: bool,
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
    /// Where experiment directories are created; default: `[output] storage`, else
    /// $RTUNE_STORAGE, else ~/rtune_results.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Where trials run; default: `[executor] type` in the file, else `local`.
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
    #[command(flatten)]
    chain: ChainArgs,
}

/// What a head job written by `rtune submit` passes to rtune for time-limit chaining (not for
/// users: the generated job scripts set them).
#[derive(clap::Args)]
struct ChainArgs {
    /// On SIGUSR1 (the time limit is near), submit this job script to continue the experiment.
    #[arg(long, hide = true, value_name = "SCRIPT")]
    resubmit: Option<PathBuf>,
    /// How many more head jobs may be submitted: a number or `unlimited`.
    #[arg(long, hide = true, value_name = "N", requires = "resubmit")]
    resubmits_left: Option<String>,
}

#[derive(clap::Args)]
struct ResumeArgs {
    /// The experiment's directory (it may have been moved since it ran), or its name under the
    /// storage directory.
    dir: PathBuf,
    /// Change a value of the experiment file: only resources, concurrency, the executor, limits
    /// and output; the search space, metric and scheduler must stay as they were.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Where trials run; default: as the experiment file says.
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
    /// Run trials that ended in ERROR again, from scratch.
    #[arg(long, conflicts_with = "resume_errored")]
    restart_errored: bool,
    /// Run trials that ended in ERROR again, from their latest checkpoint.
    #[arg(long)]
    resume_errored: bool,
    #[command(flatten)]
    chain: ChainArgs,
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
struct ListArgs {
    /// The directory holding experiment directories; default: $RTUNE_STORAGE, else
    /// ~/rtune_results.
    root: Option<PathBuf>,
    /// One JSON object per experiment, in an array.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The experiment's directory, or its name under the storage directory.
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
    /// The experiment's directory, or its name under the storage directory.
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
            exit_code_of(&err)
        }
    }
}

/// The documented exit codes (see `rtune --help`).
mod exit {
    pub const INTERNAL: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const TRIALS_FAILED: u8 = 3;
    pub const CANNOT_WRITE: u8 = 4;
    /// Another head holds the experiment's claim.
    pub const CLAIMED: u8 = 5;
    /// This head lost its claim to another head and wrote nothing more.
    pub const CLAIM_LOST: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    use rtune_runner::claim::ClaimError;
    use rtune_runner::journal::JournalError;
    use rtune_runner::run_loop::RunError;
    use rtune_runner::setup::SetupError;
    let code = match err.downcast_ref::<SetupError>() {
        Some(e) if e.is_invalid_input() => exit::INVALID_INPUT,
        Some(SetupError::Claim(
            ClaimError::Held { .. } | ClaimError::Unreadable { .. } | ClaimError::Contended { .. },
        )) => exit::CLAIMED,
        Some(SetupError::Run(RunError::Journal(JournalError::Fenced(_)))) => exit::CLAIM_LOST,
        Some(SetupError::Claim(ClaimError::Io { .. })) => exit::CANNOT_WRITE,
        Some(SetupError::Run(
            RunError::Journal(_) | RunError::Storage(_) | RunError::TrialFiles { .. },
        ))
        | Some(SetupError::Storage(_)) => exit::CANNOT_WRITE,
        // A file that is wrong, or an experiment named on the command line that is not one.
        _ if err
            .downcast_ref::<rtune_runner::experiment::ExperimentError>()
            .is_some()
            || err
                .downcast_ref::<rtune_runner::catalog::CatalogError>()
                .is_some() =>
        {
            exit::INVALID_INPUT
        }
        _ => exit::INTERNAL,
    };
    ExitCode::from(code)
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
        // A job log or a pipe gets plain text, not colour codes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Resume(args) => resume(args),
        Command::Status(args) => status(args),
        Command::List(args) => list(args),
        Command::Best(args) => best(args),
        Command::Replay(args) => replay(args),
        Command::Submit(args) => submit(*args),
        Command::Plan(args) => plan(args),
        Command::Dashboard(args) => dashboard::dashboard(args),
        Command::Report(args) => dashboard::report(args),
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
    rtune_runner::experiment::check_search(&experiment)?;
    println!("{}", capacity_plan(&experiment, &shape(&args.shape))?);
    Ok(ExitCode::SUCCESS)
}

/// What the head job of the job-per-trial layout does, in words.
fn jobs_layout_plan(
    experiment: &rtune_runner::experiment::Experiment,
    shape: &rtune_runner::submit::AllocationShape,
) -> String {
    let file = &experiment.file;
    let r = &file.trial.resources;
    let gpus = if r.gpu > 0 {
        format!(" + {} GPU(s)", r.gpu)
    } else {
        String::new()
    };
    let limit = match file.executor.max_concurrent_trials {
        Some(max) => format!("at most {max} trial jobs at once (executor.max_concurrent_trials)"),
        None => "as many trial jobs at once as SLURM starts".to_string(),
    };
    format!(
        "job-per-trial layout: the head job ({} node(s) x {} CPU(s)) runs rtune only; every trial \
         run is its own sbatch job of {} task(s) x {} CPU(s){gpus}; {limit}",
        shape.nodes,
        shape.cpus_per_node,
        file.trial.workers,
        r.cpu.ceil()
    )
}

fn submit(args: SubmitArgs) -> Result<ExitCode> {
    use rtune_runner::submit::{
        AllocationShape, HeadJob, check_sbatch_option, head_job_script, log_path, resume_job_script,
    };
    let mut overrides = args.overrides.clone();
    if let Some(name) = &args.name {
        overrides.push(format!("name={}", toml_string(name)));
    }
    if let Some(kind) = args.executor {
        overrides.push(format!("executor.type={}", toml_string(kind.as_str())));
    }
    let experiment = rtune_runner::experiment::load(&args.experiment, &overrides)?;
    rtune_runner::experiment::check_search(&experiment)?;
    let executor = match experiment.file.executor.kind.as_deref() {
        None | Some("slurm") => "slurm",
        Some("slurm-jobs") => "slurm-jobs",
        Some(other) => anyhow::bail!(
            "{}: executor.type = {other:?} cannot run in a SLURM head job; use \"slurm\" (trials \
             are job steps) or \"slurm-jobs\" (one job per trial), or --executor",
            experiment.path.display()
        ),
    };
    let shape = if executor == "slurm-jobs" {
        AllocationShape {
            nodes: args.nodes.unwrap_or(1),
            cpus_per_node: args.cpus_per_node.unwrap_or(1),
            gpus_per_node: args.gpus_per_node,
        }
    } else {
        match (args.nodes, args.cpus_per_node) {
            (Some(nodes), Some(cpus_per_node)) => AllocationShape {
                nodes,
                cpus_per_node,
                gpus_per_node: args.gpus_per_node,
            },
            _ => anyhow::bail!(
                "--nodes and --cpus-per-node are needed: the trials run inside the head job's \
                 allocation (or use the job-per-trial layout: --executor slurm-jobs)"
            ),
        }
    };
    let plan = if executor == "slurm-jobs" {
        jobs_layout_plan(&experiment, &shape)
    } else {
        capacity_plan(&experiment, &shape)?
    };
    println!("{plan}");
    if args.time.is_none() && !args.dry_run {
        anyhow::bail!(
            "--time is needed to submit (the head job's time limit, e.g. --time 04:00:00); \
             --dry-run shows the job without it"
        );
    }

    let mut sbatch_options = Vec::new();
    for (flag, value) in [
        ("partition", &args.partition),
        ("account", &args.account),
        ("qos", &args.qos),
        ("mem", &args.mem),
        ("constraint", &args.constraint),
        ("mail-type", &args.mail_type),
        ("mail-user", &args.mail_user),
    ] {
        if let Some(value) = value {
            let option = format!("--{flag}={value}");
            check_sbatch_option(&option).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
            sbatch_options.push(option);
        }
    }
    if args.exclusive {
        sbatch_options.push("--exclusive".to_string());
    }
    for option in &args.sbatch_args {
        check_sbatch_option(option).map_err(|e| anyhow::anyhow!("--sbatch-arg: {e}"))?;
        sbatch_options.push(option.clone());
    }

    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let absolute = |p: &std::path::Path| {
        let p = rtune_runner::experiment::expand_tilde(p);
        if p.is_absolute() { p } else { cwd.join(p) }
    };
    let storage = rtune_runner::experiment::storage_dir(
        args.storage.as_deref(),
        experiment.file.output.storage.as_deref(),
    )
    .map(|dir| absolute(&dir))
    .context("cannot find the storage directory: set --storage, [output] storage or RTUNE_STORAGE (HOME is not set)")?;
    let name = experiment.file.name.clone();
    // The experiment's directory is made now (the run takes it over), so the job script and
    // log live with the results; --dry-run creates nothing.
    let (experiment_dir, log_dir) = match (&args.log_dir, args.dry_run) {
        (Some(dir), _) => (None, absolute(dir)),
        (None, true) => (None, storage.join(&name).join("slurm")),
        (None, false) => {
            let dir = rtune_runner::storage::ExperimentDir::reserve(&storage, &name)?;
            let logs = dir.join("slurm");
            (Some(dir), logs)
        }
    };
    let run_name = experiment_dir
        .as_ref()
        .and_then(|dir| dir.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.clone());
    let mut run_args = Vec::new();
    for o in &args.overrides {
        run_args.push("--set".to_string());
        run_args.push(o.clone());
    }
    run_args.push("--name".to_string());
    run_args.push(run_name.clone());
    run_args.push("--storage".to_string());
    run_args.push(storage.display().to_string());
    // The next head jobs resume the experiment's directory; their script sits next to the
    // first job's.
    let chain_dir = experiment_dir
        .clone()
        .unwrap_or_else(|| storage.join(&run_name));
    let resume_script = new_file_path(&log_dir, &format!("rtune-{run_name}-resume"), "sbatch");
    let grace = match &args.time {
        Some(time) => rtune_runner::submit::signal_grace(args.signal_grace, time)
            .map_err(anyhow::Error::msg)?,
        None => 0,
    };
    let chain = args.time.as_ref().map(|_| rtune_runner::submit::Chain {
        grace_s: grace,
        max_resubmits: (!args.until_done).then_some(args.max_resubmits),
        experiment_dir: chain_dir,
        resume_script: resume_script.clone(),
    });
    let job = HeadJob {
        job_name: format!("rtune-{run_name}"),
        shape,
        time: args.time.clone(),
        sbatch_options,
        log: log_dir.join(format!("rtune-{run_name}-%j.log")),
        workdir: cwd.clone(),
        rtune: std::env::current_exe().context("cannot find the rtune executable's path")?,
        experiment: absolute(&args.experiment),
        executor: executor.to_string(),
        run_args,
        chain,
    };
    let script = head_job_script(&job);
    let resume = resume_job_script(&job);
    if args.dry_run {
        println!("\njob script (not submitted: --dry-run):\n{script}");
        if let Some(resume) = &resume {
            println!(
                "\nscript of the head jobs that continue it after a time limit ({}):\n{resume}",
                resume_script.display()
            );
        }
        if job.time.is_none() {
            println!("(no --time: submitting needs one)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let script_path = new_file_path(&log_dir, &format!("rtune-{run_name}"), "sbatch");
    std::fs::write(&script_path, &script)
        .with_context(|| format!("cannot write {}", script_path.display()))?;
    println!("job script: {}", script_path.display());
    if let Some(resume) = &resume {
        std::fs::write(&resume_script, resume)
            .with_context(|| format!("cannot write {}", resume_script.display()))?;
        println!(
            "continues after the time limit with: {}",
            resume_script.display()
        );
    }
    if let Some(dir) = &experiment_dir {
        println!("experiment directory: {}", dir.display());
    }
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
    // sbatch --wait exits with the job's status: 75 when the experiment went on in a new head
    // job (see CONTINUED_EXIT), which names its successor in the chain's directory; follow the
    // chain to the job that ends it, whose status is the answer.
    let mut code = status.code();
    let mut current = id;
    let chain_dir = resume_script.parent().unwrap_or(std::path::Path::new("."));
    while job.chain.is_some() && code == Some(i32::from(rtune_runner::submit::CONTINUED_EXIT)) {
        let next_file = rtune_runner::submit::next_job_file(chain_dir, &current);
        let next = std::fs::read_to_string(&next_file)
            .ok()
            .and_then(|text| parse_job_id(&text).ok());
        let Some(next) = next else {
            eprintln!(
                "job {current} stopped for its time limit, but {} names no next job: see its log",
                next_file.display()
            );
            return Ok(ExitCode::FAILURE);
        };
        println!("the experiment continues in job {next}");
        println!("log: {}", log_path(&job.log, &next).display());
        code = wait_for_job(&next)?;
        println!(
            "job {next} ended: {}",
            code.map_or_else(
                || "killed by a signal".to_string(),
                |c| format!("exit status {c}")
            )
        );
        current = next;
    }
    Ok(match code {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Waits for a head job rtune did not submit itself (a successor in a chain), asking squeue
/// every few seconds; its exit status, None when a signal ended it.
fn wait_for_job(id: &str) -> Result<Option<i32>> {
    use rtune_runner::executor::slurm_jobs::{is_final_state, query_job};
    const POLL: std::time::Duration = std::time::Duration::from_secs(3);
    // squeue may not list a job in the first moments after sbatch returned, and forgets it
    // MinJobAge (300 s by default) after it ended.
    let mut unlisted = 0u32;
    let mut failed = 0u32;
    loop {
        match query_job(id) {
            Ok(Some(job)) if is_final_state(&job.state) => {
                let (code, signal) = job.exit();
                return Ok((signal == 0).then_some(code));
            }
            Ok(Some(_)) => unlisted = 0,
            Ok(None) => {
                unlisted += 1;
                anyhow::ensure!(
                    unlisted < 10,
                    "squeue does not know job {id}: it ended too long ago or was never queued; \
                     its log says how it ended"
                );
            }
            Err(why) => {
                failed += 1;
                if failed % 20 == 1 {
                    eprintln!("warning: cannot ask squeue about job {id} (trying again): {why}");
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// `dir/stem.ext`, or `dir/stem-2.ext`, `-3`, ... when taken: an earlier file is never
/// overwritten.
fn new_file_path(dir: &std::path::Path, stem: &str, ext: &str) -> PathBuf {
    let mut attempt = 1u32;
    loop {
        let candidate = if attempt == 1 {
            dir.join(format!("{stem}.{ext}"))
        } else {
            dir.join(format!("{stem}-{attempt}.{ext}"))
        };
        if !candidate.exists() {
            return candidate;
        }
        attempt += 1;
    }
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
        supervisor: Some(rtune_runner::executor::shim::supervisor_program(&rtune_exe)),
        terminal: std::io::stdout().is_terminal(),
    };
    let chain = chain_settings(&args.chain)?;
    let outcome = block_on(rtune_runner::setup::run_experiment(options))??;
    continue_chain(&outcome, chain.as_ref()).map_or_else(|| finish(outcome), Ok)
}

fn resume(args: ResumeArgs) -> Result<ExitCode> {
    use rtune_core::tuner::ErroredTrials;
    let errored = if args.restart_errored {
        ErroredTrials::Restart
    } else if args.resume_errored {
        ErroredTrials::Resume
    } else {
        ErroredTrials::Keep
    };
    let options = rtune_runner::setup::ResumeOptions {
        dir: experiment_dir(&args.dir)?,
        overrides: args.overrides,
        executor: args.executor.map(|e| e.as_str().to_string()),
        errored,
        rtune_exe: std::env::current_exe().context("cannot find the rtune executable's path")?,
        terminal: std::io::stdout().is_terminal(),
    };
    let chain = chain_settings(&args.chain)?;
    let outcome = block_on(rtune_runner::setup::resume_experiment(options))??;
    continue_chain(&outcome, chain.as_ref()).map_or_else(|| finish(outcome), Ok)
}

/// `--resubmit SCRIPT --resubmits-left N|unlimited`, checked.
struct ChainSettings {
    script: PathBuf,
    /// None: unlimited.
    left: Option<u32>,
}

fn chain_settings(args: &ChainArgs) -> Result<Option<ChainSettings>> {
    let Some(script) = &args.resubmit else {
        return Ok(None);
    };
    let left = match args.resubmits_left.as_deref() {
        None | Some("unlimited") => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            anyhow::anyhow!("--resubmits-left {n:?}: give a whole number or `unlimited`")
        })?),
    };
    Ok(Some(ChainSettings {
        script: script.clone(),
        left,
    }))
}

/// A head job stopped for its time limit (SIGUSR1) submits the next head job, which resumes
/// the experiment: exit status 75 (`CONTINUED_EXIT`). None when there is nothing to continue
/// (then `finish` says how the run ended; with no resubmits left that is "interrupted").
fn continue_chain(
    outcome: &rtune_runner::run_loop::RunOutcome,
    chain: Option<&ChainSettings>,
) -> Option<ExitCode> {
    use rtune_runner::executor::slurm_common::{clean_environment, process_environment};
    use rtune_runner::submit::{CONTINUED_EXIT, next_job_file};
    let chain = chain?;
    if !(outcome.interrupted && outcome.time_limit) {
        return None;
    }
    if chain.left == Some(0) {
        eprintln!(
            "the job's time limit is near and no more head jobs may be submitted \
             (rtune submit --max-resubmits)"
        );
        return None;
    }
    let left = chain
        .left
        .map_or_else(|| "unlimited".to_string(), |n| (n - 1).to_string());
    let this_job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let output = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&chain.script)
        .arg(&left)
        .arg(&this_job)
        // Not this job's shape (SLURM_CPUS_PER_TASK, ...): the script states its own options.
        .env_clear()
        .envs(clean_environment(process_environment()))
        .stdin(std::process::Stdio::null())
        .output();
    let id = match output {
        Ok(out) if out.status.success() => parse_job_id(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => Err(anyhow::anyhow!(
            "sbatch refused {}: {}",
            chain.script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(anyhow::anyhow!("cannot run sbatch: {e}")),
    };
    match id {
        Ok(id) => {
            if !this_job.is_empty()
                && let Some(dir) = chain.script.parent()
                && let Err(e) = std::fs::write(next_job_file(dir, &this_job), format!("{id}\n"))
            {
                eprintln!(
                    "warning: cannot note the next job in {}: {e}",
                    dir.display()
                );
            }
            eprintln!(
                "stopped for the job's time limit; everything so far is in {}\nthe experiment \
                 continues in job {id} (rtune resume; {left} more head jobs allowed after it)",
                outcome.dir.display()
            );
            Some(ExitCode::from(CONTINUED_EXIT))
        }
        Err(e) => {
            eprintln!(
                "error: cannot submit the next head job: {e}\ncontinue with: rtune resume {}",
                outcome.dir.display()
            );
            None
        }
    }
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let rtune_exe = std::env::current_exe().context("cannot find the rtune executable's path")?;
    let options = rtune_runner::setup::ReplayOptions {
        experiment_dir: args.dir,
        trial: args.trial,
        name: args.name,
        storage: args.storage,
        rtune_exe: rtune_exe.clone(),
        supervisor: Some(rtune_runner::executor::shim::supervisor_program(&rtune_exe)),
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
    let dir = rtune_runner::report::shell_word(&outcome.dir.to_string_lossy());
    if outcome.interrupted {
        eprintln!("interrupted; everything so far is in {dir}\ncontinue with: rtune resume {dir}");
        return Ok(ExitCode::from(exit::INTERRUPTED));
    }
    use rtune_core::tuner::EndReason;
    match &outcome.ended {
        Some(reason) if reason.is_user_error() => {
            eprintln!("error: the experiment was stopped: {reason}");
            return Ok(ExitCode::from(exit::INVALID_INPUT));
        }
        Some(reason @ EndReason::FailFast { .. }) => {
            eprintln!("error: {reason}\nsee {dir}/trial_00000/error.txt");
        }
        _ => {}
    }
    let errored: Vec<_> = outcome
        .state
        .trials
        .iter()
        .filter(|t| t.status == rtune_core::TrialStatus::Error)
        .collect();
    let counts = &outcome.state.counts;
    let errors = counts
        .get(&rtune_core::TrialStatus::Error)
        .copied()
        .unwrap_or(0)
        .max(errored.len());
    if errors > 0 {
        let total = counts
            .values()
            .sum::<usize>()
            .max(outcome.state.trials.len());
        eprintln!("{errors} of {total} trials ended in ERROR:");
        let unlisted = errors - errored.len();
        for trial in errored {
            let first_line = trial
                .error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("");
            eprintln!(
                "  {}: {first_line}\n    {}",
                trial.id.name(),
                outcome
                    .dir
                    .join(trial.id.name())
                    .join("error.txt")
                    .display()
            );
        }
        if unlisted > 0 {
            eprintln!("  ... and {unlisted} more: rtune status {dir}");
        }
        return Ok(ExitCode::from(exit::TRIALS_FAILED));
    }
    if matches!(outcome.ended, Some(EndReason::FailFast { .. })) {
        return Ok(ExitCode::from(exit::TRIALS_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The experiment a user named on the command line: a directory, or a name under the storage
/// directory.
fn experiment_dir(given: &std::path::Path) -> Result<PathBuf> {
    let root = rtune_runner::experiment::storage_dir(None, None);
    Ok(rtune_runner::catalog::find(given, root.as_deref())?)
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let root = match args.root {
        Some(root) => root,
        None => rtune_runner::experiment::storage_dir(None, None).context(
            "cannot find the storage directory: give it, or set RTUNE_STORAGE (HOME is not set)",
        )?,
    };
    let host = rtune_runner::setup::this_host_name().unwrap_or_default();
    let listed = rtune_runner::catalog::list(&root, &host, rtune_runner::run_loop::unix_now());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        println!("no experiments under {}", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", rtune_runner::report::experiments_table(&listed));
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    use rtune_runner::report::TableFormat;
    let dir = experiment_dir(&args.dir)?;
    let state = rtune_runner::state::ExperimentState::read(&dir)?;
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
        print!("{}", lineage::lineage_report(&dir, &state, trial, format)?);
        return Ok(ExitCode::SUCCESS);
    }
    let host = rtune_runner::setup::this_host_name().unwrap_or_default();
    let dead = state.dead_head(&host, rtune_runner::run_loop::unix_now());
    if let Some(message) = &dead {
        eprintln!("{message}");
    }
    print!(
        "{}",
        rtune_runner::report::trials_table_of(&state, format, dead.is_some())
    );
    Ok(ExitCode::SUCCESS)
}

fn best(args: BestArgs) -> Result<ExitCode> {
    let dir = experiment_dir(&args.dir)?;
    let state = rtune_runner::state::ExperimentState::read(&dir)?;
    let none = || anyhow::anyhow!("{}", rtune_runner::report::no_best_message(&state));
    if args.json {
        let best = rtune_runner::report::best_trial_json(&state).ok_or_else(none)?;
        println!("{}", serde_json::to_string_pretty(&best)?);
    } else {
        let block = rtune_runner::report::best_trial_block(&state).ok_or_else(none)?;
        println!("{block}");
    }
    Ok(ExitCode::SUCCESS)
}
