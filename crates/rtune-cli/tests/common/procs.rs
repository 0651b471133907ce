//! Finding the processes a test started, by a marker in their environment, and waiting for
//! conditions with a deadline.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant, SystemTime};

/// How often a condition is looked at again while waiting for it.
const POLL: Duration = Duration::from_millis(20);

/// A `KEY=VALUE` environment entry no other process on the machine has: this test's pid, the
/// time and `label`.
pub fn unique_marker(label: &str) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (
        "RTUNE_TEST_MARKER".to_string(),
        format!("{label}-{}-{nanos}", std::process::id()),
    )
}

/// The live processes whose environment holds `key=value`, as `pid: command line`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<String> {
    let entry = format!("{key}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // A zombie's environment reads as empty: it holds nothing any more.
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let found = environ
                .split(|&b| b == 0)
                .any(|item| item == entry.as_bytes());
            if !found {
                return None;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline: Vec<String> = cmdline
                .split(|&b| b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            Some(format!("{pid}: {}", cmdline.join(" ")))
        })
        .collect()
}

/// Polls `condition` until it holds or `timeout` has passed; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits up to `timeout` for `child` to exit; None if it is still running.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Sends `signal` (`libc::SIGTERM`, ...) to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("a pid fits in i32");
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "cannot send signal {signal} to {pid}");
}

/// Whether `path` is a file with at least one line.
pub fn has_a_line(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains('\n'))
}
