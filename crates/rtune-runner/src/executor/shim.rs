//! The supervising shim between rtune and each trial process: `rtune __supervise`.
//!
//! The local executor does not start a trial's program itself but this shim, which starts the
//! program as its only child (in a process group of its own) and makes sure that nothing the
//! program started outlives the trial, whatever happens to rtune:
//!
//! * It asks the kernel for a signal when rtune dies (`PR_SET_PDEATHSIG`), so a `kill -9` of
//!   `rtune run` still ends the trial.
//! * It is a child subreaper (`PR_SET_CHILD_SUBREAPER`): processes whose parent exits, such as a
//!   grandchild started with `setsid` or a daemon that double-forked, are re-parented to the shim
//!   instead of init, so they stay its descendants and can be found by following the kernel's
//!   list of each process's children (`/proc/<pid>/task/<tid>/children`) down from the shim:
//!   a few reads per process of the trial, however many processes the machine runs.
//! * On [`STOP_SIGNAL`] (from the executor, or the parent-death signal) it sends SIGTERM to every
//!   descendant, waits the grace period it was started with and then SIGKILLs whatever is left.
//!   [`KILL_SIGNAL`] SIGKILLs everything at once.
//! * When the program exits, anything it left behind is SIGKILLed and reaped, and only then does
//!   the shim exit, with the program's status (an exit code is passed on, death by a signal is
//!   repeated on the shim itself), so the executor sees the program's own status.
//!
//! The shim is part of the `rtune` binary (a hidden subcommand), so it is always where rtune is.
//! Only a SIGKILL of the shim itself would leave the trial's processes behind.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The hidden subcommand of `rtune` (and the first argument of `rtune-supervise`) that runs the
/// shim.
pub const SUBCOMMAND: &str = "__supervise";
/// The shim alone as a binary of its own, installed next to `rtune`: it starts in about half
/// the time and page faults of the whole `rtune`, once per trial (docs/benchmarks.md, "Tuning
/// overhead").
pub const SHIM_BINARY: &str = "rtune-supervise";
/// Asks the shim to stop the trial: SIGTERM to every process of it, SIGKILL after the grace.
pub const STOP_SIGNAL: i32 = libc::SIGTERM;
/// Asks the shim to SIGKILL every process of the trial now.
pub const KILL_SIGNAL: i32 = libc::SIGUSR1;
/// How long the shim waits for SIGKILLed processes to disappear before it gives up on them (a
/// process in uninterruptible sleep cannot be hurried).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the process tree is looked at again while processes are being killed: the kernel
/// sends no event when a grandchild (whose parent still lives) exits.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);

/// How to start trial processes under the shim.
#[derive(Clone, Debug, PartialEq)]
pub struct Supervisor {
    /// The `rtune` binary.
    pub program: PathBuf,
    /// Time between SIGTERM and SIGKILL when the shim stops a trial by itself (rtune died);
    /// the experiment's `trial.stop_grace_s`.
    pub grace: Duration,
}

impl Supervisor {
    /// The arguments that make `rtune` run `command` under the shim, for the process `head_pid`.
    pub fn args(&self, head_pid: u32, command: &[String]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            SUBCOMMAND.into(),
            format!("--head-pid={head_pid}").into(),
            format!("--grace-ms={}", self.grace.as_millis()).into(),
            "--".into(),
        ];
        args.extend(command.iter().map(OsString::from));
        args
    }
}

/// What the shim was asked to do, parsed from the arguments after [`SUBCOMMAND`].
#[derive(Debug, PartialEq)]
struct ShimArgs {
    head_pid: i32,
    grace: Duration,
    command: Vec<OsString>,
}

fn parse_args(args: &[OsString]) -> Result<ShimArgs, String> {
    let mut head_pid = None;
    let mut grace = None;
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if let Some(value) = text.strip_prefix("--head-pid=") {
            head_pid = Some(
                value
                    .parse::<i32>()
                    .map_err(|_| format!("bad --head-pid {value:?}"))?,
            );
        } else if let Some(value) = text.strip_prefix("--grace-ms=") {
            let ms = value
                .parse::<u64>()
                .map_err(|_| format!("bad --grace-ms {value:?}"))?;
            grace = Some(Duration::from_millis(ms));
        } else {
            return Err(format!("unknown argument {text:?}"));
        }
    }
    let command: Vec<OsString> = rest.cloned().collect();
    if command.is_empty() {
        return Err("no command after `--`".to_string());
    }
    Ok(ShimArgs {
        head_pid: head_pid.ok_or("--head-pid is missing")?,
        grace: grace.ok_or("--grace-ms is missing")?,
        command,
    })
}

/// Runs the shim with the arguments that follow [`SUBCOMMAND`]; returns the exit code when the
/// program exited with one (a program killed by a signal makes the shim die of the same signal).
pub fn main(args: &[OsString]) -> i32 {
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!(
                "rtune {SUBCOMMAND}: {message}\nusage: rtune {SUBCOMMAND} --head-pid=PID \
                 --grace-ms=MS -- PROGRAM [ARGS...] (started by rtune, not by hand)"
            );
            return 2;
        }
    };
    supervise(&args)
}

/// Whether a signal mask blocks no signal.
fn blocks_nothing(mask: &libc::sigset_t) -> bool {
    // SAFETY: sigismember reads a valid set; an invalid signal number only gives -1.
    (1..=libc::SIGRTMAX()).all(|signal| unsafe { libc::sigismember(mask, signal) } != 1)
}

/// The signals the shim waits for; blocked so that they queue up for `sigtimedwait`.
fn waited_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

fn supervise(args: &ShimArgs) -> i32 {
    let set = waited_signals();
    // SAFETY: plain system calls on valid arguments; the shim is single-threaded here.
    let old_mask = unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            STOP_SIGNAL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
        old
    };
    // rtune may have died before the parent-death signal was set up: then no signal comes.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != args.head_pid {
        eprintln!(
            "rtune: rtune (pid {}) is gone; not starting the trial",
            args.head_pid
        );
        return 1;
    }

    let program = &args.command[0];
    let mut command = std::process::Command::new(program);
    command.args(&args.command[1..]).process_group(0);
    // The program gets the signal mask rtune gave the shim, not the shim's own. That mask is
    // normally empty, which is what the standard library gives a child anyway; without a
    // `pre_exec` closure it starts the program with posix_spawn (vfork) instead of fork, which
    // copies no page tables: a measurable part of a short trial's start.
    if !blocks_nothing(&old_mask) {
        // SAFETY: the closure only calls sigprocmask, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let worker = match command.spawn() {
        Ok(child) => child.id() as i32,
        Err(error) => {
            eprintln!(
                "rtune: cannot start `{}`: {error}",
                Path::new(program).display()
            );
            return if error.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };

    let me = std::process::id() as i32;
    let mut worker_status: Option<libc::c_int> = None;
    // When to SIGKILL everything (after a stop's grace), and when to look again after that.
    let mut kill_at: Option<Instant> = None;
    let mut stopping = false;
    while worker_status.is_none() {
        worker_status = reap_children(worker).or(worker_status);
        if worker_status.is_some() {
            break;
        }
        let now = Instant::now();
        if let Some(at) = kill_at
            && now >= at
        {
            signal_tree(me, Some(worker), libc::SIGKILL);
            kill_at = Some(now + SWEEP_INTERVAL);
            continue;
        }
        match wait_signal(&set, kill_at.map(|at| at - now)) {
            Some(signal) if signal == KILL_SIGNAL => {
                kill_at = Some(Instant::now());
            }
            Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP) if !stopping => {
                stopping = true;
                // SAFETY: getppid cannot fail.
                if unsafe { libc::getppid() } != args.head_pid {
                    eprintln!(
                        "rtune: rtune (pid {}) died; stopping the trial (SIGTERM, SIGKILL after {} s)",
                        args.head_pid,
                        args.grace.as_secs_f64()
                    );
                }
                signal_tree(me, Some(worker), libc::SIGTERM);
                let at = Instant::now() + args.grace;
                kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
            }
            // SIGCHLD (reaped at the top of the loop), a repeated stop, or the timeout.
            _ => {}
        }
    }

    // The program is gone: whatever it left behind goes too, before the trial counts as ended.
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        reap_children(worker);
        let left = signal_tree(me, None, libc::SIGKILL);
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("rtune: {left} process(es) of the trial survived SIGKILL; giving up on them");
            break;
        }
        wait_signal(&set, Some(SWEEP_INTERVAL));
    }

    let status = worker_status.unwrap_or(0);
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    let signal = libc::WTERMSIG(status);
    // SAFETY: plain system calls; resetting the disposition and unblocking lets the signal
    // end the shim the way it ended the program. No core dump of the shim.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    128 + signal
}

/// Reaps every exited child (the program and re-parented orphans); returns the program's wait
/// status if it was among them.
fn reap_children(worker: i32) -> Option<libc::c_int> {
    let mut found = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == worker {
            found = Some(status);
        }
    }
}

/// Waits up to `timeout` (None: for ever) for one of the blocked signals in `set`.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    // SAFETY: siginfo_t is plain data that sigtimedwait fills in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let result = match timeout {
        Some(timeout) => {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: valid pointers to a signal set, siginfo and timespec.
            unsafe { libc::sigtimedwait(set, &mut info, &ts) }
        }
        // SAFETY: valid pointers to a signal set and siginfo.
        None => unsafe { libc::sigwaitinfo(set, &mut info) },
    };
    (result > 0).then_some(result)
}

/// Sends `signal` to every live descendant of `me` and, while the program has not been reaped
/// (`worker_group`: its process group, whose id cannot be reused until then), to every member of
/// its process group; returns how many descendants it signalled.
fn signal_tree(me: i32, worker_group: Option<i32>, signal: i32) -> usize {
    if let Some(group) = worker_group {
        // The group in one call: its members are the program's descendants (found below as
        // well), unless a process of the same session joined it from outside.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-group, signal);
        }
    }
    let targets = match descendants(me) {
        Some(found) => found,
        // No `children` files in this kernel (CONFIG_PROC_CHILDREN): read every process.
        None => trial_processes_from_table(me, worker_group),
    };
    for &pid in &targets {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
    targets.len()
}

/// The live (not zombie) processes below `root`, found from `root` down through each process's
/// `/proc/<pid>/task/<tid>/children` (children are listed under the thread that forked them).
/// Exact for the shim's tree, since as a child subreaper it keeps every orphan of the tree below
/// itself; what it reads grows with the trial's processes and threads, not with the machine's.
/// None when the kernel has no such files.
fn descendants(root: i32) -> Option<Vec<i32>> {
    if !Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
        return None;
    }
    let mut found: Vec<i32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        // A process that exited meanwhile has no task directory: it has no children left.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if pid != root && !found.contains(&pid) {
                    found.push(pid);
                    frontier.push(pid);
                }
            }
        }
    }
    // Zombies wait for their parent (or the shim) to reap them: they hold nothing any more.
    found.retain(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_proc_stat(&stat))
            .is_some_and(|stat| !stat.is_zombie())
    });
    Some(found)
}

/// [`descendants`] from the whole process table, plus the live members of process group
/// `group`: for kernels without `children` files.
fn trial_processes_from_table(root: i32, group: Option<i32>) -> Vec<i32> {
    let table = process_table();
    let mut found: Vec<i32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, stat) in &table {
            if stat.ppid == parent && *pid != root && !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    for (pid, stat) in &table {
        if Some(stat.pgrp) == group && *pid != root && !found.contains(pid) {
            found.push(*pid);
        }
    }
    found.retain(|pid| table.iter().any(|(p, stat)| p == pid && !stat.is_zombie()));
    found
}

/// One line of `/proc/<pid>/stat`, the fields the shim needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl ProcStat {
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses `pid (comm) S ppid pgrp ...`, where comm may itself contain spaces and parentheses.
pub(crate) fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

/// Every process this user can see, with its stat line; processes that exit while being read
/// are left out.
pub(crate) fn process_table() -> Vec<(i32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse_proc_stat(&stat)?))
        })
        .collect()
}

/// The program to start trial processes under: `rtune-supervise` when it sits next to the
/// running `rtune` (every build and install puts it there), else `rtune` itself, whose hidden
/// subcommand runs the same shim with the same arguments.
pub fn supervisor_program(rtune_exe: &Path) -> PathBuf {
    rtune_exe
        .parent()
        .map(|dir| dir.join(SHIM_BINARY))
        .filter(|shim| shim.is_file())
        .unwrap_or_else(|| rtune_exe.to_path_buf())
}

/// Whether `arg` (the first argument after the program) asks for the shim.
pub fn is_shim_invocation(arg: Option<&OsStr>) -> bool {
    arg == Some(OsStr::new(SUBCOMMAND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_shim_binary_is_used_when_it_sits_next_to_rtune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rtune = dir.path().join("rtune");
        std::fs::write(&rtune, "").expect("rtune");
        assert_eq!(
            supervisor_program(&rtune),
            rtune,
            "without it, rtune's own subcommand"
        );
        std::fs::write(dir.path().join(SHIM_BINARY), "").expect("rtune-supervise");
        assert_eq!(supervisor_program(&rtune), dir.path().join(SHIM_BINARY));
    }

    #[test]
    fn arguments_round_trip() {
        let supervisor = Supervisor {
            program: PathBuf::from("/x/rtune"),
            grace: Duration::from_millis(1500),
        };
        let args = supervisor.args(42, &["sh".into(), "-c".into(), "--head-pid=1".into()]);
        assert!(is_shim_invocation(args.first().map(OsString::as_os_str)));
        assert_eq!(
            parse_args(&args[1..]),
            Ok(ShimArgs {
                head_pid: 42,
                grace: Duration::from_millis(1500),
                command: vec!["sh".into(), "-c".into(), "--head-pid=1".into()],
            })
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        let args = |list: &[&str]| -> Vec<OsString> { list.iter().map(OsString::from).collect() };
        let err = parse_args(&args(&["--grace-ms=1", "--", "x"])).expect_err("no pid");
        assert!(err.contains("--head-pid"), "{err}");
        let err = parse_args(&args(&["--head-pid=1", "--grace-ms=1", "--"])).expect_err("no cmd");
        assert!(err.contains("no command"), "{err}");
        let err = parse_args(&args(&["--head-pid=x"])).expect_err("bad pid");
        assert!(err.contains("bad --head-pid"), "{err}");
        let err = parse_args(&args(&["--what"])).expect_err("unknown");
        assert!(err.contains("unknown argument"), "{err}");
    }

    #[test]
    fn parses_proc_stat_lines() {
        assert_eq!(
            parse_proc_stat("42 (a (b) c) S 1 40 40 0"),
            Some(ProcStat {
                state: 'S',
                ppid: 1,
                pgrp: 40
            })
        );
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_found_through_the_children_lists() {
        let me = std::process::id() as i32;
        if descendants(me).is_none() {
            eprintln!("SKIPPED: this kernel has no /proc/<pid>/task/<tid>/children");
            return;
        }
        // A child that starts a grandchild and waits for it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & wait"])
            .spawn()
            .expect("sh starts");
        let sh = child.id() as i32;
        let below_sh = |found: &[i32]| -> Vec<i32> {
            found
                .iter()
                .copied()
                .filter(|&pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|stat| parse_proc_stat(&stat))
                        .is_some_and(|stat| stat.ppid == sh)
                })
                .collect()
        };
        // Bounded polling until sh has started its grandchild.
        let deadline = Instant::now() + Duration::from_secs(30);
        let found = loop {
            let found = descendants(me).expect("children files");
            if !below_sh(&found).is_empty() || Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(SWEEP_INTERVAL);
        };
        let below_sh = below_sh(&found);
        for &pid in below_sh.iter().chain([sh].iter()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        child.wait().expect("reaped");
        assert!(found.contains(&sh), "{found:?}");
        assert_eq!(below_sh.len(), 1, "the grandchild: {found:?}");
        assert!(!found.contains(&me));
    }

    #[test]
    fn finds_this_process_in_the_table() {
        let me = std::process::id() as i32;
        let table = process_table();
        assert!(table.iter().any(|(pid, _)| *pid == me));
    }
}
