//! How the user's `[trial.env]` combines with the variables the executors set themselves.
//!
//! Every executor sets the variables distributed training reads (`RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), `CUDA_VISIBLE_DEVICES` and a
//! default `OMP_NUM_THREADS`. A variable in the launch environment ([`super::TrialLaunch::env`],
//! which ends with the user's `[trial.env]`) replaces the executor's value, and one given an
//! empty value is removed from the trial's environment altogether (`LOCAL_RANK = ""` in
//! `[trial.env]` leaves `LOCAL_RANK` unset), whether the executor, rtune's own environment or the
//! run loop set it. When a key appears more than once, the last value counts.

use super::slurm_common::shell_quote;

/// Set to `true` for a worker without GPUs by the local executor: accelerate then forms the
/// workers' gloo process group on the CPU (without it, it treats each rank as a separate job).
pub const ACCELERATE_USE_CPU: &str = "ACCELERATE_USE_CPU";

/// The variables an executor sets on its own for every worker.
pub const EXECUTOR_VARIABLES: [&str; 8] = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
];

/// The launch environment's last word on `key`: `None` when it does not mention it,
/// `Some(None)` when it unsets it (an empty value), `Some(Some(value))` when it sets it.
pub fn lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<Option<&'a str>> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| (!v.is_empty()).then_some(v.as_str()))
}

/// Whether the launch environment sets or unsets `key` (so the executor leaves it alone).
pub fn mentions(env: &[(String, String)], key: &str) -> bool {
    lookup(env, key).is_some()
}

/// `base` (rtune's environment) with the launch environment applied: later values replace
/// earlier ones, empty values remove the variable. Order of first appearance is kept.
pub fn merge(base: &[(String, String)], launch: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(base.len() + launch.len());
    for (key, value) in base.iter().chain(launch) {
        match out.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => out.push((key.clone(), value.clone())),
        }
    }
    out.retain(|(_, v)| !v.is_empty());
    out
}

/// Shell lines that re-apply the launch environment's word on the executor's variables, for a
/// wrapper script that sets them itself (the SLURM executors derive `RANK` & co. from SLURM's
/// task numbering inside the step): `export KEY='value'` or `unset KEY`. Empty when the launch
/// environment mentions none of them.
pub fn shell_overrides(env: &[(String, String)]) -> String {
    let mut lines = String::new();
    for key in EXECUTOR_VARIABLES {
        match lookup(env, key) {
            None => {}
            Some(None) => lines.push_str(&format!("unset {key}\n")),
            Some(Some(value)) => {
                lines.push_str(&format!("export {key}={}\n", shell_quote(value)));
            }
        }
    }
    lines
}

/// `script` (a wrapper ending in `exec "$@"`) with [`shell_overrides`] inserted just before that
/// last line, so they win over what the script set before.
pub fn with_overrides(script: String, env: &[(String, String)]) -> String {
    let overrides = shell_overrides(env);
    if overrides.is_empty() {
        return script;
    }
    match script.rfind("exec \"$@\"") {
        Some(at) => format!("{}{overrides}{}", &script[..at], &script[at..]),
        None => format!("{script}{overrides}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_last_value_counts_and_empty_unsets() {
        let e = env(&[("A", "1"), ("B", "2"), ("A", ""), ("B", "3")]);
        assert_eq!(lookup(&e, "A"), Some(None));
        assert_eq!(lookup(&e, "B"), Some(Some("3")));
        assert_eq!(lookup(&e, "C"), None);
        assert!(mentions(&e, "A") && !mentions(&e, "C"));
    }

    #[test]
    fn merge_replaces_and_removes() {
        let base = env(&[("PATH", "/bin"), ("LOCAL_RANK", "5"), ("HOME", "/root")]);
        let launch = env(&[("RTUNE_ADDR", "x"), ("LOCAL_RANK", ""), ("HOME", "/tmp")]);
        assert_eq!(
            merge(&base, &launch),
            env(&[("PATH", "/bin"), ("HOME", "/tmp"), ("RTUNE_ADDR", "x")])
        );
    }

    #[test]
    fn overrides_go_before_the_exec_line() {
        let script = "export RANK=\"$SLURM_PROCID\"\nexec \"$@\"\n".to_string();
        let e = env(&[("LOCAL_RANK", ""), ("MASTER_PORT", "29500"), ("OTHER", "")]);
        assert_eq!(
            with_overrides(script.clone(), &e),
            "export RANK=\"$SLURM_PROCID\"\nunset LOCAL_RANK\nexport MASTER_PORT='29500'\n\
             exec \"$@\"\n"
        );
        assert_eq!(with_overrides(script.clone(), &env(&[("X", "1")])), script);
    }
}
