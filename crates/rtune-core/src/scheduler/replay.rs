//! Replaying a PBT policy: one trial re-run from scratch with the config schedule a PBT trial
//! ended up with (Ray Tune's `PopulationBasedTrainingReplay`).
//!
//! A policy is a list of `(from_iteration, config)`: the trial starts with the first config and,
//! once it reaches each later entry's iteration, restarts from its own checkpoint at that
//! iteration with that entry's config. Nothing is random, so a replay is reproducible.

use serde::{Deserialize, Serialize};

use crate::scheduler::{Action, Decision, Scheduler, SchedulerContext};
use crate::trial::CheckpointId;
use crate::{Config, TrialResult};

/// One step of a policy: from `from_iteration` on, the trial trains with `config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyStep {
    pub from_iteration: u64,
    pub config: Config,
}

/// Switches a trial's config at the iterations of a recorded policy.
#[derive(Debug)]
pub struct PolicyReplayScheduler {
    /// The steps after the first, in iteration order.
    changes: Vec<PolicyStep>,
    next: usize,
    /// The config the trial runs with now (to describe only what a switch changes).
    current: Config,
}

impl PolicyReplayScheduler {
    /// `policy` must start at iteration 0 (the trial's initial config, which the searcher hands
    /// out); later steps must have increasing iterations.
    pub fn new(policy: &[PolicyStep]) -> Result<Self, String> {
        let Some(first) = policy.first() else {
            return Err("the policy is empty".into());
        };
        if first.from_iteration != 0 {
            return Err(format!(
                "the policy's first step starts at iteration {}, not 0",
                first.from_iteration
            ));
        }
        for pair in policy.windows(2) {
            if pair[1].from_iteration <= pair[0].from_iteration {
                return Err(format!(
                    "the policy's iterations must increase, but {} follows {}",
                    pair[1].from_iteration, pair[0].from_iteration
                ));
            }
        }
        Ok(PolicyReplayScheduler {
            changes: policy[1..].to_vec(),
            next: 0,
            current: first.config.clone(),
        })
    }
}

impl Scheduler for PolicyReplayScheduler {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn save(&self) -> serde_json::Value {
        super::save_fields(&[
            ("next", serde_json::to_value(self.next)),
            ("current", serde_json::to_value(&self.current)),
        ])
    }

    fn restore(&mut self, mut state: serde_json::Value) -> Result<(), String> {
        self.next = super::load_field(&mut state, "next")?;
        self.current = super::load_field(&mut state, "current")?;
        Ok(())
    }

    fn on_trial_result(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let t = result.iteration();
        let Some(step) = self.changes.get(self.next) else {
            return Decision::continue_(result.trial, "the policy has no more changes");
        };
        if t < step.from_iteration {
            return Decision::continue_(
                result.trial,
                format!(
                    "the next policy change is at iteration {}",
                    step.from_iteration
                ),
            );
        }
        if !result.has_checkpoint {
            // Without a checkpoint at this iteration the switch would restart from scratch; keep
            // the old config and say so rather than silently diverging from the policy.
            self.next += 1;
            return Decision::continue_(
                result.trial,
                format!(
                    "policy change at iteration {} skipped: the trial reported no checkpoint there",
                    step.from_iteration
                ),
            );
        }
        self.next += 1;
        let description = describe_change(&self.current, &step.config);
        self.current = step.config.clone();
        Decision::new(
            result.trial,
            Action::Exploit {
                donor: CheckpointId {
                    trial: result.trial,
                    iteration: t,
                },
                config: step.config.clone(),
                description: description.clone(),
            },
            format!("replayed policy: from iteration {t} the config is {description}"),
        )
        .with_details(serde_json::json!({ "iteration": t, "config": step.config }))
    }
}

/// The keys whose values differ, as PBT describes an exploit (`lr=2.4e-5`), so a replayed trial's
/// name reads like the original's.
fn describe_change(old: &Config, new: &Config) -> String {
    let changed: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={}", super::pbt::short(v)))
        .collect();
    if changed.is_empty() {
        "no change".to_string()
    } else {
        changed.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::TrialId;
    use rand::SeedableRng;
    use serde_json::json;

    fn config(lr: f64) -> Config {
        json!({ "lr": lr }).as_object().cloned().unwrap_or_default()
    }

    fn result(t: u64, checkpoint: bool) -> TrialResult {
        TrialResult {
            trial: TrialId(0),
            metrics: json!({ "training_iteration": t, "loss": 1.0 })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            has_checkpoint: checkpoint,
        }
    }

    #[test]
    fn switches_config_at_the_recorded_iterations() {
        let policy = vec![
            PolicyStep {
                from_iteration: 0,
                config: config(1e-3),
            },
            PolicyStep {
                from_iteration: 2,
                config: config(1e-4),
            },
            PolicyStep {
                from_iteration: 4,
                config: config(1e-5),
            },
        ];
        let mut s = PolicyReplayScheduler::new(&policy).expect("valid policy");
        let mut rng = crate::CoreRng::seed_from_u64(0);
        let mut ctx = SchedulerContext::new(&mut rng, &[]);
        assert_eq!(
            s.on_trial_result(&mut ctx, &result(1, true)).action,
            Action::Continue
        );
        match s.on_trial_result(&mut ctx, &result(2, true)).action {
            Action::Exploit {
                donor,
                config: c,
                description,
            } => {
                assert_eq!(
                    donor,
                    CheckpointId {
                        trial: TrialId(0),
                        iteration: 2
                    }
                );
                assert_eq!(c, config(1e-4));
                // Only what changed, shown short: the replayed trial's name reads like PBT's.
                assert_eq!(description, "lr=1e-4");
            }
            other => panic!("expected a config switch, got {other:?}"),
        }
        // A restarted run continues from iteration 2; without a checkpoint at 4 the change is
        // skipped with a reason.
        assert_eq!(
            s.on_trial_result(&mut ctx, &result(3, true)).action,
            Action::Continue
        );
        let d = s.on_trial_result(&mut ctx, &result(4, false));
        assert_eq!(d.action, Action::Continue);
        assert!(d.reason.contains("skipped"), "{}", d.reason);
    }

    #[test]
    fn rejects_malformed_policies() {
        assert!(PolicyReplayScheduler::new(&[]).is_err());
        let late = vec![PolicyStep {
            from_iteration: 1,
            config: config(1e-3),
        }];
        assert!(PolicyReplayScheduler::new(&late).is_err());
        let unordered = vec![
            PolicyStep {
                from_iteration: 0,
                config: config(1e-3),
            },
            PolicyStep {
                from_iteration: 3,
                config: config(1e-3),
            },
            PolicyStep {
                from_iteration: 3,
                config: config(1e-3),
            },
        ];
        assert!(PolicyReplayScheduler::new(&unordered).is_err());
    }
}
