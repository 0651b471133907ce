//! What this node offers: CPUs and GPU ids, detected or configured.

use std::process::{Command, Stdio};

/// The CPUs and GPUs one node can hand to trials.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResources {
    /// Logical CPUs (fractional values are allowed when configured by hand).
    pub cpus: f64,
    /// GPU ids as CUDA understands them in `CUDA_VISIBLE_DEVICES` ("0", "1" or UUIDs).
    pub gpus: Vec<String>,
}

/// Detects this node's resources.
///
/// CPUs: `std::thread::available_parallelism` (which honours the affinity mask and cgroup
/// quotas), 1 if unknown. GPUs: `CUDA_VISIBLE_DEVICES` if it is set (an empty value means
/// none), else the indices `nvidia-smi` lists, else none.
pub fn detect() -> NodeResources {
    NodeResources {
        cpus: detect_cpus(),
        gpus: detect_gpus(),
    }
}

/// The number of CPUs this process may use, 1 if unknown.
pub(crate) fn detect_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// GPU ids from `CUDA_VISIBLE_DEVICES`, else from `nvidia-smi`, else none.
pub(crate) fn detect_gpus() -> Vec<String> {
    if let Some(visible) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        return parse_visible_devices(&visible.to_string_lossy());
    }
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect(),
        // No driver, no GPUs, or no nvidia-smi: a CPU-only node.
        _ => Vec::new(),
    }
}

/// Parses a `CUDA_VISIBLE_DEVICES` value into GPU ids.
///
/// Entries are separated by commas and trimmed; empty entries are skipped. Like CUDA, the list
/// ends at the first negative index (`-1` is the usual way to hide every GPU).
pub fn parse_visible_devices(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .take_while(|entry| !entry.starts_with('-'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_visible_devices() {
        assert_eq!(parse_visible_devices("0,1"), vec!["0", "1"]);
        assert_eq!(parse_visible_devices(" 2 , 3 ,"), vec!["2", "3"]);
        assert!(parse_visible_devices("").is_empty());
        assert!(parse_visible_devices("-1").is_empty());
        assert_eq!(parse_visible_devices("0,-1,2"), vec!["0"]);
        assert_eq!(
            parse_visible_devices("GPU-8a1b,GPU-ffee"),
            vec!["GPU-8a1b", "GPU-ffee"]
        );
    }

    #[test]
    fn detect_finds_at_least_one_cpu() {
        let node = detect();
        assert!(node.cpus >= 1.0);
    }
}
