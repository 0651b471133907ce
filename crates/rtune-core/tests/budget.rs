//! A trial at the end of its budget is never paused or exploited: restarting it would report
//! iterations it already reported (or train past its end).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use rtune_core::scheduler::{Action, Decision, Scheduler, SchedulerContext};
use rtune_core::searcher::{Searcher, Suggestion};
use rtune_core::tuner::{Exit, TunerSettings};
use rtune_core::{CheckpointId, Config, CoreRng, Mode, TrialId, TrialResult, TrialStatus, Tuner};
use serde_json::{Map, Value};

/// Hands out `{"x": i}` for trials 0 and 1.
struct Two;

impl Searcher for Two {
    fn name(&self) -> &'static str {
        "two"
    }
    fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
        if trial.0 < 2 {
            let mut c = Config::new();
            c.insert("x".into(), trial.0.into());
            Suggestion::Config(c)
        } else {
            Suggestion::Finished
        }
    }
}

/// Like a synchronous PBT releasing its barrier: every result of trial 1 exploits trial 0 (from
/// trial 1's checkpoint), whatever trial 0's state.
#[derive(Debug)]
struct ExploitTrialZero;

impl Scheduler for ExploitTrialZero {
    fn name(&self) -> &'static str {
        "exploit-zero"
    }
    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        if result.trial == TrialId(1) {
            let mut config = Config::new();
            config.insert("x".into(), 100.into());
            ctx.outbox.push(Decision::new(
                TrialId(0),
                Action::Exploit {
                    donor: CheckpointId {
                        trial: TrialId(1),
                        iteration: result.iteration(),
                    },
                    config,
                    description: "x=100".into(),
                },
                "bottom quantile",
            ));
        }
        Decision::continue_(result.trial, "")
    }
}

fn metrics(loss: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("loss".into(), loss.into());
    m
}

#[test]
fn a_trial_told_to_stop_at_its_last_iteration_is_not_exploited() {
    let settings = TunerSettings {
        metric: "loss".into(),
        mode: Mode::Min,
        seed: 1,
        max_failures: 0,
        stop: BTreeMap::from([("training_iteration".to_string(), 2.0)]),
        ..TunerSettings::default()
    };
    let mut t = Tuner::new(settings, Box::new(Two), Box::new(ExploitTrialZero));
    let a = t.next_to_run(0.0).unwrap().trial;
    let b = t.next_to_run(0.0).unwrap().trial;
    assert_eq!((a, b), (TrialId(0), TrialId(1)));
    t.on_result(a, metrics(5.0), true, 1.0).unwrap();
    let last = t.on_result(a, metrics(4.0), true, 2.0).unwrap();
    assert_eq!(last.action, Action::Stop, "the stop criterion is reached");
    // Trial 1 reports while trial 0 is still exiting: the scheduler asks to exploit trial 0.
    t.on_result(b, metrics(1.0), true, 2.5).unwrap();
    let effects = t.drain_effects();
    let zero = t.trial(a).unwrap();
    assert_eq!(zero.config["x"], 0, "trial 0 keeps its config");
    assert_eq!(zero.restore, None, "and does not restart from the donor");
    assert!(
        effects.iter().any(|e| matches!(e,
            rtune_core::tuner::Effect::Decision(d)
                if d.trial == a && d.action == Action::Stop
                    && d.reason.contains("not exploited: trial_00000 was already told to stop"))),
        "{effects:?}"
    );
    t.on_exit(a, Exit::Success, 3.0).unwrap();
    assert_eq!(t.trial(a).unwrap().status, TrialStatus::Terminated);
    assert_eq!(t.trial(a).unwrap().iteration, 2);
    assert!(t.next_to_run(4.0).is_none(), "nothing restarts trial 0");
}
