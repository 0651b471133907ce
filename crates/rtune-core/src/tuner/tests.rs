use super::*;
use crate::scheduler::FifoScheduler;

/// A searcher that hands out `n` configs `{"x": i}`.
struct Counting(u32);

impl Searcher for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
        if trial.0 < self.0 {
            let mut c = Config::new();
            c.insert("x".into(), trial.0.into());
            Suggestion::Config(c)
        } else {
            Suggestion::Finished
        }
    }
}

fn tuner(n: u32, max_failures: u32) -> Tuner {
    let settings = TunerSettings {
        metric: "loss".into(),
        mode: Mode::Min,
        seed: 1,
        max_failures,
        stop: BTreeMap::from([("training_iteration".to_string(), 3.0)]),
        ..TunerSettings::default()
    };
    Tuner::new(settings, Box::new(Counting(n)), Box::new(FifoScheduler))
}

fn metrics(loss: f64) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("loss".into(), loss.into());
    m
}

#[test]
fn a_null_metric_is_a_diverged_trial_but_a_missing_one_is_a_wrong_name() {
    let mut t = tuner(1, 0);
    let a = t.next_to_run(0.0).expect("a");
    // NaN or infinity reaches rtune as null: recorded, the trial goes on.
    let mut null = serde_json::Map::new();
    null.insert("loss".into(), Value::Null);
    assert_eq!(t.check_report(a.trial, &null), Ok(()));
    let reply = t.on_result(a.trial, null, false, 1.0).expect("a null loss");
    assert_eq!(reply.action, Action::Continue);
    assert_eq!(t.trials()[0].best, None);
    let mut misspelled = serde_json::Map::new();
    misspelled.insert("los".into(), 0.5.into());
    assert!(matches!(
        t.check_report(a.trial, &misspelled),
        Err(ReportRefusal::MissingMetric { .. })
    ));
}

#[test]
fn runs_trials_to_the_stop_criterion_and_finds_the_best() {
    let mut t = tuner(2, 0);
    let a = t.next_to_run(0.0).unwrap();
    let b = t.next_to_run(0.0).unwrap();
    assert!(t.next_to_run(0.0).is_none());
    for (i, now) in [1.0, 2.0, 3.0].into_iter().enumerate() {
        let ra = t
            .on_result(a.trial, metrics(5.0 - i as f64), false, now)
            .unwrap();
        let rb = t.on_result(b.trial, metrics(9.0), false, now).unwrap();
        let expected = if i == 2 {
            Action::Stop
        } else {
            Action::Continue
        };
        assert_eq!(ra.action, expected);
        assert_eq!(rb.action, expected);
        assert_eq!(ra.result.iteration(), i as u64 + 1);
    }
    t.on_exit(a.trial, Exit::Success, 4.0).unwrap();
    assert!(!t.is_finished());
    t.on_exit(b.trial, Exit::Failure("killed".into()), 4.0)
        .unwrap();
    assert_eq!(t.trial(b.trial).unwrap().status, TrialStatus::Terminated);
    assert!(t.next_to_run(5.0).is_none());
    assert!(t.is_finished());
    let best = t.best_trial().unwrap();
    assert_eq!(best.id, a.trial);
    assert_eq!(best.best, Some((3.0, 3)));
    assert_eq!(best.time_total_s, 3.0);
}

#[test]
fn a_failed_trial_retries_from_its_checkpoint_then_errors() {
    let mut t = tuner(1, 1);
    let a = t.next_to_run(0.0).unwrap();
    t.on_result(a.trial, metrics(1.0), true, 1.0).unwrap();
    t.on_result(a.trial, metrics(1.0), false, 2.0).unwrap();
    t.on_exit(a.trial, Exit::Failure("exit code 1".into()), 3.0)
        .unwrap();
    assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Pending);
    let again = t.next_to_run(4.0).unwrap();
    assert_eq!(again.run, 1);
    assert_eq!(
        again.restore,
        Some(CheckpointId {
            trial: a.trial,
            iteration: 1
        })
    );
    let r = t.on_result(a.trial, metrics(0.5), false, 5.0).unwrap();
    assert_eq!(
        r.result.iteration(),
        2,
        "continues after the checkpoint's iteration"
    );
    t.on_exit(a.trial, Exit::Failure("exit code 1".into()), 6.0)
        .unwrap();
    assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Error);
    assert!(t.next_to_run(7.0).is_none());
    assert!(t.is_finished());
}

#[test]
fn a_lost_run_restarts_from_its_checkpoint_without_counting_as_a_failure() {
    // max_failures = 0: a failure would make it an ERROR at once.
    let mut t = tuner(1, 0);
    let a = t.next_to_run(0.0).unwrap();
    t.on_result(a.trial, metrics(1.0), true, 1.0).unwrap();
    t.on_result(a.trial, metrics(1.0), false, 2.0).unwrap();
    t.on_exit(a.trial, Exit::Lost("job 7 requeued".into()), 3.0)
        .unwrap();
    let trial = t.trial(a.trial).unwrap();
    assert_eq!(trial.status, TrialStatus::Pending);
    assert_eq!(trial.failures, 0);
    assert_eq!(trial.iteration, 1, "iteration 2 is rolled back");
    let again = t.next_to_run(4.0).unwrap();
    assert_eq!(again.run, 1);
    assert_eq!(again.restore.map(|c| c.iteration), Some(1));
    for expected in [2, 3] {
        let r = t.on_result(a.trial, metrics(0.5), false, 5.0).unwrap();
        assert_eq!(r.result.iteration(), expected);
    }
    t.on_exit(a.trial, Exit::Success, 6.0).unwrap();
    assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Terminated);
    let iterations: Vec<u64> = t
        .trial(a.trial)
        .unwrap()
        .curve
        .iter()
        .map(|p| p.iteration)
        .collect();
    assert_eq!(iterations, [1, 2, 3]);
}

#[test]
fn queue_time_before_a_run_starts_is_not_training_time() {
    let mut t = tuner(1, 0);
    let a = t.next_to_run(100.0).unwrap();
    // The job waited in the queue for 50 s, then trained for 3 s.
    t.on_started(a.trial, 150.0).unwrap();
    let r = t.on_result(a.trial, metrics(1.0), false, 153.0).unwrap();
    assert_eq!(r.result.get("time_this_iter_s"), Some(3.0));
    assert_eq!(r.result.get("time_total_s"), Some(3.0));
}

#[test]
fn a_retry_without_checkpoint_is_announced() {
    let mut t = tuner(1, 1);
    let a = t.next_to_run(0.0).unwrap();
    t.drain_effects();
    t.on_exit(a.trial, Exit::Failure("segfault".into()), 1.0)
        .unwrap();
    let effects = t.drain_effects();
    assert!(
        effects.iter().any(
            |e| matches!(e, Effect::Warning { message, .. } if message.contains("from scratch"))
        )
    );
}

#[test]
fn stop_all_ends_everything() {
    let mut t = tuner(3, 0);
    let a = t.next_to_run(0.0).unwrap();
    t.drain_effects();
    t.stop_all(EndReason::Other {
        reason: "interrupted".into(),
    });
    let effects = t.drain_effects();
    assert!(effects.contains(&Effect::EndProcess { trial: a.trial }));
    t.on_exit(a.trial, Exit::Failure("SIGTERM".into()), 1.0)
        .unwrap();
    assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Terminated);
    assert!(t.next_to_run(1.0).is_none());
    assert!(t.is_finished());
}

fn with_retention(n: u32, keep: usize, score: Option<&str>) -> Tuner {
    tuner(n, 0).with_checkpoint_retention(CheckpointRetention {
        num_to_keep: Some(keep),
        score_attribute: score.map(str::to_string),
        score_mode: None,
    })
}

fn deleted(effects: &[Effect]) -> Vec<(u32, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteCheckpoint(c) => Some((c.trial.0, c.iteration)),
            _ => None,
        })
        .collect()
}

#[test]
fn retention_keeps_the_newest_checkpoints() {
    let mut t = with_retention(1, 2, None);
    t.settings.stop.clear();
    let a = t.next_to_run(0.0).expect("a trial");
    for i in 1u32..=4 {
        t.drain_effects();
        t.on_result(a.trial, metrics(1.0), true, f64::from(i))
            .expect("result");
        let expected = if i >= 3 {
            vec![(0, u64::from(i) - 2)]
        } else {
            vec![]
        };
        assert_eq!(deleted(&t.drain_effects()), expected, "after iteration {i}");
    }
    let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
    assert_eq!(kept, vec![3, 4]);
}

#[test]
fn retention_by_score_keeps_the_best_and_always_the_latest() {
    let mut t = with_retention(1, 1, Some("loss"));
    t.settings.stop.clear();
    let a = t.next_to_run(0.0).expect("a trial");
    for (i, loss) in [2.0, 1.0, 3.0].into_iter().enumerate() {
        t.on_result(a.trial, metrics(loss), true, i as f64 + 1.0)
            .expect("result");
    }
    // Best is iteration 2 (loss 1.0); iteration 3 is the latest; iteration 1 goes.
    let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
    assert_eq!(kept, vec![2, 3]);
    t.on_result(a.trial, metrics(0.5), true, 4.0)
        .expect("result");
    let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
    assert_eq!(kept, vec![4], "the new best is also the latest");
}

/// Exploits trial 1 from trial 0's latest checkpoint on trial 1's second result.
#[derive(Debug)]
struct ExploitOnce;

impl Scheduler for ExploitOnce {
    fn name(&self) -> &'static str {
        "exploit-once"
    }
    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let donor = ctx.trial(TrialId(0)).and_then(Trial::latest_checkpoint);
        match donor {
            Some(donor) if result.trial == TrialId(1) && result.iteration() == 2 => Decision::new(
                result.trial,
                Action::Exploit {
                    donor,
                    config: Config::new(),
                    description: "x=0".into(),
                },
                "test exploit",
            ),
            _ => Decision::continue_(result.trial, "go on"),
        }
    }
}

#[test]
fn a_checkpoint_an_exploit_will_restart_from_is_never_deleted() {
    let settings = TunerSettings {
        metric: "loss".into(),
        mode: Mode::Min,
        seed: 1,
        max_failures: 1,
        stop: BTreeMap::new(),
        ..TunerSettings::default()
    };
    let mut t = Tuner::new(settings, Box::new(Counting(2)), Box::new(ExploitOnce))
        .with_checkpoint_retention(CheckpointRetention {
            num_to_keep: Some(1),
            ..CheckpointRetention::default()
        });
    let a = t.next_to_run(0.0).expect("trial 0");
    let b = t.next_to_run(0.0).expect("trial 1");
    t.on_result(a.trial, metrics(1.0), true, 1.0).expect("a1");
    t.on_result(b.trial, metrics(5.0), true, 1.0).expect("b1");
    // b exploits a@1: b's own checkpoint 1 is dropped, and b must end its process.
    t.drain_effects();
    let reply = t.on_result(b.trial, metrics(5.0), true, 2.0).expect("b2");
    assert_eq!(reply.action, Action::Pause);
    let effects = t.drain_effects();
    let deleted_now = deleted(&effects);
    assert!(deleted_now.contains(&(1, 1)), "{effects:?}");
    assert!(
        deleted_now.contains(&(1, 2)),
        "the report after the exploit is not kept"
    );
    // a moves on: a@1 is pinned by b's pending restart, so it stays.
    t.on_result(a.trial, metrics(0.9), true, 2.0).expect("a2");
    assert!(!deleted(&t.drain_effects()).contains(&(0, 1)));
    t.on_exit(b.trial, Exit::Success, 3.0).expect("b exits");
    assert_eq!(t.trials()[1].status, TrialStatus::Paused);
    assert_eq!(t.trials()[1].iteration, 1, "b continues from a's iteration");
    // Its results after a's iteration were replaced by the exploit (superseded.json says so),
    // not rolled back to be reported again.
    assert!(
        t.drain_effects().contains(&Effect::Truncated {
            trial: b.trial,
            through_iteration: 1,
            reason: Truncation::Exploited
        }),
        "the exploit's truncation"
    );
    let relaunch = t.next_to_run(3.0).expect("b restarts");
    assert_eq!(
        relaunch.restore,
        Some(CheckpointId {
            trial: a.trial,
            iteration: 1
        })
    );
    // b fails before its own first checkpoint: the retry starts from a@1 again, not scratch.
    t.on_exit(b.trial, Exit::Failure("boom".into()), 4.0)
        .expect("b fails");
    assert_eq!(
        t.trials()[1].restore,
        Some(CheckpointId {
            trial: a.trial,
            iteration: 1
        })
    );
    let retry = t.next_to_run(5.0).expect("b retries");
    t.on_result(retry.trial, metrics(0.8), true, 6.0)
        .expect("b's own checkpoint");
    // Now nobody needs a@1: the next collection of a's checkpoints removes it.
    let effects = t.drain_effects();
    assert!(deleted(&effects).contains(&(0, 1)), "{effects:?}");
}

/// Drives a tuner only through [`Tuner::apply`], keeping every input and outcome as the journal
/// would (through their JSON text, as the runner does: a float may not survive it bit for bit
/// otherwise).
struct Journaled {
    tuner: Tuner,
    lines: Vec<(Input, Outcome)>,
}

impl Journaled {
    fn feed(&mut self, input: Input) -> Output {
        let line = serde_json::to_string(&input).expect("serialize");
        let input: Input = serde_json::from_str(&line).expect("parse back");
        let (output, outcome) = self.tuner.apply(&input).expect("input fits the state");
        let line = serde_json::to_string(&outcome).expect("serialize");
        let outcome: Outcome = serde_json::from_str(&line).expect("parse back");
        self.lines.push((input, outcome));
        output
    }
}

fn exploit_tuner() -> Tuner {
    let settings = TunerSettings {
        metric: "loss".into(),
        mode: Mode::Min,
        seed: 7,
        max_failures: 2,
        stop: BTreeMap::from([("training_iteration".to_string(), 4.0)]),
        ..TunerSettings::default()
    };
    Tuner::new(settings, Box::new(Counting(3)), Box::new(ExploitOnce))
}

/// Replaying the journal through a fresh core gives the same state, decisions included.
#[test]
fn replaying_the_inputs_rebuilds_the_same_state() {
    let mut live = Journaled {
        tuner: exploit_tuner(),
        lines: Vec::new(),
    };
    let mut now = 0.0;
    let mut running: Vec<(TrialId, u32)> = Vec::new();
    for step in 0..40u32 {
        now += 0.37;
        while running.len() < 2 {
            match live.feed(Input::Next { now, started: None }) {
                Output::Launch(Some(l)) => running.push((l.trial, l.run)),
                _ => break,
            }
        }
        if running.is_empty() {
            break;
        }
        let (trial, run) = running[step as usize % running.len()];
        let ending = live.tuner.trial(trial).and_then(|t| t.ending);
        let exit = if ending.is_some() || step % 11 == 10 {
            Some(if step % 11 == 10 {
                Exit::Failure("crash".into())
            } else {
                Exit::Success
            })
        } else {
            let out = live.feed(Input::Report {
                now,
                trial,
                run,
                metrics: metrics(f64::from(step % 5) + f64::from(trial.0)),
                checkpoint: step % 2 == 0,
            });
            match out {
                Output::Reply(r) if r.action != Action::Continue => Some(Exit::Success),
                _ => None,
            }
        };
        if let Some(exit) = exit {
            live.feed(Input::Exit {
                now,
                trial,
                run,
                exit,
            });
            running.retain(|&(t, _)| t != trial);
        }
        if step == 20 {
            // A head dies here and a new one takes over.
            live.feed(Input::Resume {
                now,
                errored: ErroredTrials::Keep,
            });
            running.clear();
        }
    }
    let mut replayed = exploit_tuner();
    for (input, outcome) in &live.lines {
        let out = replayed.replay(input, outcome).expect("replay");
        if let Output::Launch(launch) = out {
            assert_eq!(launch, outcome.started, "the same trials start");
        }
    }
    assert!(live.lines.len() > 30, "{}", live.lines.len());
    assert_eq!(replayed.replay_divergences(), 0);
    assert_eq!(live.tuner.fingerprint(), replayed.fingerprint());

    // A snapshot taken half-way and the lines after it give the same state too.
    let half = live.lines.len() / 2;
    let mut first_half = exploit_tuner();
    for (input, outcome) in &live.lines[..half] {
        first_half.replay(input, outcome).expect("replay");
    }
    let text = serde_json::to_string(&first_half.snapshot()).expect("snapshot");
    let mut from_snapshot = exploit_tuner();
    from_snapshot
        .restore_snapshot(serde_json::from_str(&text).expect("parse"))
        .expect("restore");
    for (input, outcome) in &live.lines[half..] {
        from_snapshot.replay(input, outcome).expect("replay");
    }
    assert_eq!(from_snapshot.replay_divergences(), 0);
    assert_eq!(live.tuner.fingerprint(), from_snapshot.fingerprint());
    assert_eq!(live.tuner.state_digest(), from_snapshot.state_digest());
    // The snapshot written without a copy is the snapshot.
    let mut written = Vec::new();
    live.tuner.write_snapshot(&mut written).expect("write");
    assert_eq!(
        String::from_utf8(written).expect("utf-8"),
        serde_json::to_string(&live.tuner.snapshot()).expect("snapshot")
    );
    assert_ne!(live.tuner.state_digest(), first_half.state_digest());

    // A compaction's check: the snapshot read back trial by trial matches the state it was
    // written from, and neither a snapshot of another state nor one with a trial changed does.
    let mut written = Vec::new();
    live.tuner.write_snapshot(&mut written).expect("write");
    let check = |text: &[u8]| serde_json::from_slice(text).expect("a snapshot");
    assert!(
        live.tuner
            .matches_snapshot(exploit_tuner(), check(&written))
    );
    let mut earlier = Vec::new();
    first_half.write_snapshot(&mut earlier).expect("write");
    assert!(
        !live
            .tuner
            .matches_snapshot(exploit_tuner(), check(&earlier))
    );
    let mut changed: Value = serde_json::from_slice(&written).expect("JSON");
    changed["trials"][1]["time_total_s"] = serde_json::json!(12345.5);
    let changed = serde_json::to_vec(&changed).expect("JSON");
    assert!(
        !live
            .tuner
            .matches_snapshot(exploit_tuner(), check(&changed))
    );
    // Trials out of order are refused as a restore refuses them.
    let mut swapped: Value = serde_json::from_slice(&written).expect("JSON");
    let trials = swapped["trials"].as_array_mut().expect("trials");
    trials.swap(0, 1);
    let swapped = serde_json::to_vec(&swapped).expect("JSON");
    assert!(
        !live
            .tuner
            .matches_snapshot(exploit_tuner(), check(&swapped))
    );
}

/// The journal's recorded outcomes win over a later release's code: a replay under a
/// scheduler that decides differently rebuilds the trials as they really went, and says how
/// often it differed.
#[test]
fn a_replay_under_code_that_decides_otherwise_keeps_what_happened() {
    let mut live = Journaled {
        tuner: exploit_tuner(),
        lines: Vec::new(),
    };
    let a = match live.feed(Input::Next {
        now: 0.0,
        started: None,
    }) {
        Output::Launch(Some(l)) => l,
        other => panic!("{other:?}"),
    };
    let b = match live.feed(Input::Next {
        now: 0.0,
        started: None,
    }) {
        Output::Launch(Some(l)) => l,
        other => panic!("{other:?}"),
    };
    for (i, now) in [1.0, 2.0].into_iter().enumerate() {
        for l in [&a, &b] {
            live.feed(Input::Report {
                now,
                trial: l.trial,
                run: l.run,
                metrics: metrics(i as f64 + 1.0),
                checkpoint: true,
            });
        }
    }
    // b's second result exploited a@1 (ExploitOnce).
    assert!(live.tuner.trial(b.trial).expect("b").ending.is_some());
    // The next release's scheduler never exploits.
    let settings = live.tuner.settings().clone();
    let mut next_release = Tuner::new(
        settings,
        Box::new(Counting(3)),
        Box::new(crate::scheduler::FifoScheduler),
    );
    for (input, outcome) in &live.lines {
        next_release.replay(input, outcome).expect("replay");
    }
    assert!(next_release.replay_divergences() > 0);
    let tb = next_release.trial(b.trial).expect("b");
    assert_eq!(
        tb.ending,
        Some(Ending::Pause),
        "the recorded exploit stands"
    );
    assert_eq!(tb.restore.map(|c| c.trial), Some(a.trial));
    assert_eq!(tb.tag, "@perturbed[x=0]");
}

#[test]
fn an_input_that_changes_nothing_records_nothing() {
    let mut t = tuner(1, 0);
    let (_, started) = t
        .apply(&Input::Next {
            now: 0.0,
            started: None,
        })
        .expect("next");
    assert!(started.started.is_some());
    assert_eq!(started.created.len(), 1);
    let (output, outcome) = t
        .apply(&Input::Next {
            now: 0.0,
            started: None,
        })
        .expect("next");
    assert_eq!(output, Output::Launch(None));
    assert!(outcome.finished, "the searcher said it is finished");
    let (output, outcome) = t
        .apply(&Input::Next {
            now: 0.0,
            started: None,
        })
        .expect("next");
    assert_eq!(output, Output::Launch(None));
    assert!(outcome.is_empty(), "{outcome:?}");
}

#[test]
fn a_lost_run_rolls_back_to_its_checkpoint_and_resumes_there() {
    let mut t = tuner(2, 0);
    t.settings.stop.clear();
    let a = t.next_to_run(0.0).expect("a");
    let b = t.next_to_run(0.0).expect("b");
    t.on_result(a.trial, metrics(3.0), true, 1.0).expect("a1");
    t.on_result(a.trial, metrics(2.0), false, 2.0).expect("a2");
    t.on_result(a.trial, metrics(1.0), false, 3.0).expect("a3");
    t.on_result(b.trial, metrics(5.0), false, 1.0).expect("b1");
    t.drain_effects();
    t.resume(ErroredTrials::Keep, 10.0);
    let effects = t.drain_effects();
    let ta = &t.trials()[0];
    assert_eq!(
        ta.status,
        TrialStatus::Paused,
        "it resumes from its checkpoint"
    );
    assert_eq!(ta.iteration, 1);
    assert_eq!(ta.curve.len(), 1, "results after the checkpoint are gone");
    assert_eq!(ta.best, Some((3.0, 1)), "a rolled-back best does not count");
    let tb = &t.trials()[1];
    assert_eq!(tb.iteration, 0);
    assert!(tb.curve.is_empty());
    assert!(effects.contains(&Effect::Truncated {
        trial: a.trial,
        through_iteration: 1,
        reason: Truncation::RolledBack
    }));
    assert!(effects.iter().any(
        |e| matches!(e, Effect::Warning { trial, message } if *trial == b.trial && message.contains("from scratch"))
    ));
    let first = t.next_to_run(11.0).expect("b again, PENDING first");
    assert_eq!((first.trial, first.run, first.restore), (b.trial, 1, None));
    let again = t.next_to_run(11.0).expect("a again");
    assert_eq!((again.trial, again.run), (a.trial, 1));
    assert_eq!(again.restore.map(|c| c.iteration), Some(1));
    let r = t
        .on_result(a.trial, metrics(2.0), false, 12.0)
        .expect("a2 again");
    assert_eq!(r.result.iteration(), 2, "no iteration twice, no gap");
}

#[test]
fn an_interrupt_pauses_checkpointed_trials_and_keeps_the_rest_waiting() {
    let mut t = tuner(3, 0);
    t.settings.stop.clear();
    let a = t.next_to_run(0.0).expect("a");
    let b = t.next_to_run(0.0).expect("b");
    t.on_result(a.trial, metrics(3.0), true, 1.0).expect("a1");
    t.on_result(b.trial, metrics(3.0), false, 1.0).expect("b1");
    t.interrupt(&InterruptReason::CtrlC);
    assert!(
        t.next_to_run(2.0).is_none(),
        "nothing starts while interrupted"
    );
    t.on_exit(a.trial, Exit::Failure("SIGTERM".into()), 2.0)
        .expect("a ends");
    t.on_exit(b.trial, Exit::Failure("SIGTERM".into()), 2.0)
        .expect("b ends");
    assert_eq!(t.trials()[0].status, TrialStatus::Paused);
    assert_eq!(t.trials()[1].status, TrialStatus::Interrupted);
    assert!(!t.is_finished());
    t.resume(ErroredTrials::Keep, 3.0);
    assert_eq!(t.trials()[1].status, TrialStatus::Pending);
    let next: Vec<TrialId> = std::iter::from_fn(|| t.next_to_run(4.0).map(|l| l.trial)).collect();
    assert_eq!(next, vec![TrialId(1), TrialId(0), TrialId(2)]);
}
