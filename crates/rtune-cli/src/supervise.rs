//! `rtune-supervise`: the supervising shim alone (`rtune_runner::executor::shim`), as a small
//! binary that starts several times faster than the whole `rtune`; rtune runs every trial
//! process under it when it sits next to the `rtune` binary, and `rtune __supervise` otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if !rtune_runner::executor::shim::is_shim_invocation(args.get(1).map(|a| a.as_os_str())) {
        eprintln!(
            "rtune-supervise: rtune's trial shim, started by rtune, not by hand \
             (usage: rtune-supervise __supervise --head-pid=PID --grace-ms=MS -- PROGRAM [ARGS...])"
        );
        return ExitCode::from(2);
    }
    let code = rtune_runner::executor::shim::main(&args[2..]);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
