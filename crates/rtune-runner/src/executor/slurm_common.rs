//! What both SLURM executors share: parsing what `scontrol` and `squeue` print, the environment a
//! step or job may inherit, the small shell wrapper that gives each task its rank, and running the
//! SLURM commands themselves.
//!
//! Everything that only transforms text is a pure function with unit tests; the functions that run
//! a command say so in their name (`run_*`).

use std::path::Path;
use std::process::{Command, Stdio};

use rtune_core::TrialId;

use super::ExecutorError;

/// The variables of rtune's own environment that a step or job must not inherit.
///
/// Inside an allocation SLURM exports the allocation's shape (`SLURM_CPUS_PER_TASK`,
/// `SLURM_NTASKS_PER_NODE`, `SLURM_GPUS_PER_NODE`, `SLURM_MEM_PER_NODE`, `SLURM_TRES_PER_TASK`,
/// ...), and `srun` reads them as defaults for every option the command line leaves out. Tried on
/// SLURM 22.05: with `SLURM_GPUS_PER_NODE=2` inherited, `srun --gpus-per-task=1` gives the step
/// both GPUs of the node, and `SLURM_NTASKS_PER_NODE=1` fights `--ntasks=2` on one node. rtune
/// states every option itself, so every `SLURM_*`, `SBATCH_*`, `SALLOC_*` and `SRUN_*` variable
/// goes, except `SLURM_CONF` (which cluster to talk to). The steps and jobs get their own
/// `SLURM_*` variables from slurmstepd.
pub fn is_inherited_slurm_variable(name: &str) -> bool {
    if name == "SLURM_CONF" {
        return false;
    }
    ["SLURM_", "SBATCH_", "SALLOC_", "SRUN_"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// `inherited` without the variables [`is_inherited_slurm_variable`] names.
pub fn clean_environment(
    inherited: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    inherited
        .into_iter()
        .filter(|(name, _)| !is_inherited_slurm_variable(name))
        .collect()
}

/// This process's environment as strings (variables that are not UTF-8 are left out: SLURM's
/// tools and the trial protocol only use UTF-8 ones).
pub fn process_environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Expands a SLURM host list: `n[1-3,7],gpu[01-02],login` -> n1 n2 n3 n7 gpu01 gpu02 login.
/// Zero padding of ranges is kept (`[08-10]` -> 08 09 10).
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One entry: up to the next comma outside brackets.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let entry = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        if entry.is_empty() {
            continue;
        }
        expand_entry(entry, &mut hosts).map_err(|e| format!("host list `{list}`: {e}"))?;
    }
    Ok(hosts)
}

/// One entry of a host list, with at most one bracket group per level, recursively.
fn expand_entry(entry: &str, hosts: &mut Vec<String>) -> Result<(), String> {
    let Some(open) = entry.find('[') else {
        hosts.push(entry.to_string());
        return Ok(());
    };
    let close = entry[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("`{entry}` has `[` without `]`"))?;
    let prefix = &entry[..open];
    let suffix = &entry[close + 1..];
    for part in entry[open + 1..close].split(',') {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{part}` in `{entry}` is not a number or a range"))
        };
        let (lo, hi) = (parse(low)?, parse(high)?);
        if hi < lo {
            return Err(format!("range `{part}` in `{entry}` runs backwards"));
        }
        let width = low.trim().len();
        for n in lo..=hi {
            expand_entry(&format!("{prefix}{n:0width$}{suffix}"), hosts)?;
        }
    }
    Ok(())
}

/// Expands an id list such as `0-3,8,10-11` (CPU ids, GPU indices) into its members.
pub fn expand_id_list(list: &str) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{part}` in `{list}` is not an id or a range"))
        };
        let (lo, hi) = (parse(low)?, parse(high)?);
        if hi < lo {
            return Err(format!("range `{part}` in `{list}` runs backwards"));
        }
        ids.extend(lo..=hi);
    }
    Ok(ids)
}

/// The `Key=Value` fields of `scontrol show ... -o` output, in order. A value ends at the next
/// space (SLURM prints no spaces inside the values rtune reads).
pub fn key_values(text: &str) -> Vec<(&str, &str)> {
    text.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .collect()
}

/// The first value of `key` in `scontrol` output.
pub fn field<'a>(fields: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Quotes a string for POSIX sh: `it's` -> `'it'\''s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The name given to a trial run's step or job, so rtune can find it again in `squeue`.
pub fn run_name(prefix: &str, trial: TrialId, run: u32) -> String {
    format!("{prefix}{}-run{run}", trial.name())
}

/// The port rank 0 of a multi-worker trial listens on (`MASTER_PORT`).
///
/// rtune cannot ask another node which ports are free, so the port is derived from what makes a
/// run unique among those that may share a node: the job, the trial and the run. Trials running
/// side by side in one allocation get different ports.
pub fn master_port(job_key: u64, trial: TrialId, run: u32) -> u16 {
    let mix = job_key
        .wrapping_mul(1009)
        .wrapping_add(u64::from(trial.0).wrapping_mul(7))
        .wrapping_add(u64::from(run));
    20000 + (mix % 40000) as u16
}

/// The shell script every task of a trial runs (as `sh -c SCRIPT rtune-worker PROGRAM ARGS...`).
///
/// It turns SLURM's task numbering into the variables distributed training reads (`RANK`,
/// `LOCAL_RANK`, `WORLD_SIZE`, and `LOCAL_WORLD_SIZE` from this node's entry in
/// `SLURM_STEP_TASKS_PER_NODE`, e.g. `2(x2),1`), sends the task's output to its own files
/// (rank 0 to `stdout`/`stderr`, rank k to `<stem>.rank<k>.log` beside them, as the local
/// executor does) and then replaces itself with the trial's program. With `hide_gpus` (a trial
/// without GPUs) it sets `CUDA_VISIBLE_DEVICES` empty: SLURM removes the variable from a step
/// without GPUs, and without it CUDA would see every GPU of the node.
pub fn worker_wrapper(workers: u32, hide_gpus: bool, stdout: &Path, stderr: &Path) -> String {
    let mut script = String::new();
    if hide_gpus {
        script.push_str("export CUDA_VISIBLE_DEVICES=\n");
    }
    script.push_str(&format!(
        "export RANK=\"$SLURM_PROCID\" LOCAL_RANK=\"$SLURM_LOCALID\" WORLD_SIZE={workers}\n"
    ));
    script.push_str(
        "node=0; LOCAL_WORLD_SIZE=1\n\
         for entry in $(echo \"$SLURM_STEP_TASKS_PER_NODE\" | tr , ' '); do\n\
         \x20 tasks=${entry%%(*}; repeat=1\n\
         \x20 case $entry in *'(x'*) repeat=${entry#*(x}; repeat=${repeat%)} ;; esac\n\
         \x20 while [ \"$repeat\" -gt 0 ]; do\n\
         \x20   [ \"$node\" = \"$SLURM_NODEID\" ] && LOCAL_WORLD_SIZE=$tasks\n\
         \x20   node=$((node + 1)); repeat=$((repeat - 1))\n\
         \x20 done\n\
         done\n\
         export LOCAL_WORLD_SIZE\n",
    );
    let rank_path = |path: &Path| {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_string());
        let dir = path.parent().unwrap_or(Path::new(""));
        format!(
            "{}\"$RANK\".log",
            shell_quote(&format!("{}/{stem}.rank", dir.display()))
        )
    };
    script.push_str(&format!(
        "if [ \"$RANK\" = 0 ]; then exec >>{} 2>>{}; else exec >>{} 2>>{}; fi\n",
        shell_quote(&stdout.display().to_string()),
        shell_quote(&stderr.display().to_string()),
        rank_path(stdout),
        rank_path(stderr),
    ));
    script.push_str("exec \"$@\"\n");
    script
}

/// A task's end as `srun` reports it on its standard error:
/// `srun: error: n1: task 2: Exited with exit code 3` -> (2, "exit code 3").
pub fn parse_srun_task_line(line: &str) -> Option<(u32, String)> {
    let at = line.find("task ")?;
    let rest = &line[at + 5..];
    let (number, what) = rest.split_once(':')?;
    let task: u32 = number.trim().parse().ok()?;
    let what = what.trim();
    let message = if let Some(code) = what.strip_prefix("Exited with exit code ") {
        format!("exit code {}", code.trim())
    } else {
        match what {
            "Terminated" => "killed by signal 15 (SIGTERM)".to_string(),
            "Killed" => "killed by signal 9 (SIGKILL)".to_string(),
            "Interrupt" => "killed by signal 2 (SIGINT)".to_string(),
            "Aborted" => "killed by signal 6 (SIGABRT)".to_string(),
            "Segmentation fault" => "killed by signal 11 (SIGSEGV)".to_string(),
            other => other.to_string(),
        }
    };
    Some((task, message))
}

/// Whether the trial's program can be found: a path that exists, or a name on the `PATH` of the
/// environment the step gets. The nodes see the same file systems as the head, so a program
/// missing here would fail on every node; this turns that into an error at start.
pub fn check_program(
    program: &str,
    cwd: &Path,
    env: &[(String, String)],
) -> Result<(), ExecutorError> {
    let not_found = || ExecutorError::Spawn {
        program: program.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    if program.contains('/') {
        let path = cwd.join(program);
        return if path.exists() {
            Ok(())
        } else {
            Err(not_found())
        };
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    which::which_in(program, Some(path), cwd)
        .map(|_| ())
        .map_err(|_| not_found())
}

/// Runs a SLURM command (`scontrol`, `squeue`, `scancel`, `sbatch`) and returns its standard
/// output; an error names the command and carries its standard error.
pub fn run_slurm_command(program: &str, args: &[&str]) -> Result<String, ExecutorError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    slurm_command_result(program, args, output)
}

/// A finished SLURM command's standard output, or the error naming the command (shared by the
/// blocking and the async runner).
pub(crate) fn slurm_command_result(
    program: &str,
    args: &[&str],
    output: std::io::Result<std::process::Output>,
) -> Result<String, ExecutorError> {
    let output = output.map_err(|source| ExecutorError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(ExecutorError::Slurm(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The job's steps as `(step id, step name)`, e.g. `("12.3", "rtune-trial_00001-run1")`.
pub fn run_list_steps(job_id: &str) -> Result<Vec<(String, String)>, ExecutorError> {
    let out = run_slurm_command("squeue", &["-h", "-s", "-j", job_id, "-o", "%i|%j"])?;
    Ok(parse_step_list(&out))
}

/// Parses `squeue -s -o '%i|%j'` lines.
pub fn parse_step_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(id, name)| (id.trim().to_string(), name.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_host_lists() {
        assert_eq!(
            expand_hostlist("n[1-3,7],gpu[08-10],login").expect("valid"),
            vec!["n1", "n2", "n3", "n7", "gpu08", "gpu09", "gpu10", "login"]
        );
        assert_eq!(expand_hostlist("n1").expect("valid"), vec!["n1"]);
        assert_eq!(
            expand_hostlist("r[1-2]n[1-2]").expect("valid"),
            vec!["r1n1", "r1n2", "r2n1", "r2n2"]
        );
        assert!(expand_hostlist("").expect("valid").is_empty());
        assert!(expand_hostlist("n[3-1]").is_err());
        assert!(expand_hostlist("n[1-2").is_err());
        assert!(expand_hostlist("n[a]").is_err());
    }

    #[test]
    fn expands_id_lists() {
        assert_eq!(expand_id_list("0-3").expect("valid"), vec![0, 1, 2, 3]);
        assert_eq!(expand_id_list("0,2-3,8").expect("valid"), vec![0, 2, 3, 8]);
        assert!(expand_id_list("").expect("valid").is_empty());
        assert!(expand_id_list("x").is_err());
    }

    #[test]
    fn strips_inherited_slurm_variables() {
        let env = [
            ("SLURM_CONF", "/etc/slurm.conf"),
            ("SLURM_GPUS_PER_NODE", "2"),
            ("SLURM_CPUS_PER_TASK", "4"),
            ("SLURM_NTASKS_PER_NODE", "1"),
            ("SLURM_MEM_PER_NODE", "1000"),
            ("SLURM_TRES_PER_TASK", "cpu:4"),
            ("SLURM_JOB_ID", "7"),
            ("SBATCH_PARTITION", "gpu"),
            ("SRUN_CPUS_PER_TASK", "4"),
            ("PATH", "/bin"),
            ("MY_SLURM_NOTE", "kept"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let kept: Vec<String> = clean_environment(env).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, vec!["SLURM_CONF", "PATH", "MY_SLURM_NOTE"]);
    }

    #[test]
    fn parses_scontrol_fields() {
        let fields = key_values("JobId=3 JobState=RUNNING Reason=None NodeList=n2");
        assert_eq!(field(&fields, "JobState"), Some("RUNNING"));
        assert_eq!(field(&fields, "Nodes"), None);
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn parses_srun_task_lines() {
        assert_eq!(
            parse_srun_task_line("srun: error: n1: task 2: Exited with exit code 3"),
            Some((2, "exit code 3".to_string()))
        );
        assert_eq!(
            parse_srun_task_line("srun: error: n1: task 0: Terminated"),
            Some((0, "killed by signal 15 (SIGTERM)".to_string()))
        );
        assert_eq!(
            parse_srun_task_line("srun: error: n2: task 1: Killed"),
            Some((1, "killed by signal 9 (SIGKILL)".to_string()))
        );
        assert_eq!(
            parse_srun_task_line("srun: Job step aborted: Waiting up to 7 seconds"),
            None
        );
    }

    #[test]
    fn master_ports_differ_between_concurrent_trials() {
        let ports: Vec<u16> = (0..200)
            .map(|t| master_port(12345, TrialId(t), 1))
            .collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| (20000..60000).contains(&p)));
    }

    #[test]
    fn wrapper_sets_ranks_and_log_files() {
        let script = worker_wrapper(
            3,
            true,
            Path::new("/r/t 1/stdout.log"),
            Path::new("/r/t 1/stderr.log"),
        );
        assert!(script.contains("WORLD_SIZE=3"), "{script}");
        assert!(
            script.starts_with("export CUDA_VISIBLE_DEVICES=\n"),
            "{script}"
        );
        assert!(script.contains("exec >>'/r/t 1/stdout.log' 2>>'/r/t 1/stderr.log'"));
        assert!(script.contains("exec >>'/r/t 1/stdout.rank'\"$RANK\".log"));
        assert!(script.ends_with("exec \"$@\"\n"));
    }

    #[test]
    fn checks_programs_on_the_path() {
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert!(check_program("sh", Path::new("/"), &env).is_ok());
        let err =
            check_program("rtune-no-such-program", Path::new("/"), &env).expect_err("missing");
        assert!(
            err.to_string().contains("not found: is it on PATH?"),
            "{err}"
        );
        assert!(check_program("/bin/sh", Path::new("/"), &env).is_ok());
        assert!(check_program("./nope", Path::new("/"), &env).is_err());
    }

    #[test]
    fn parses_step_lists() {
        assert_eq!(
            parse_step_list("12.0|rtune-trial_00000-run1\n12.1|other\n"),
            vec![
                ("12.0".to_string(), "rtune-trial_00000-run1".to_string()),
                ("12.1".to_string(), "other".to_string())
            ]
        );
    }
}
