//! Model-based searchers (TPE, BOHB) driven through the real tuner and schedulers on the
//! synthetic functions, in virtual time: every test is deterministic (seeded, no clock).
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rtune_core::scheduler::{Action, SchedulerSpec};
use rtune_core::searcher::{Searcher, SearcherContext, SearcherSpec, Suggestion};
use rtune_core::space::SearchSpace;
use rtune_core::synthetic::SyntheticFunction;
use rtune_core::tuner::{Effect, Exit, Tuner, TunerSettings};
use rtune_core::{Config, CoreRng, Mode, TrialId, TrialResult};
use serde_json::{Value, json};

/// One call into a searcher, as the tuner made it.
#[derive(Clone, Debug)]
enum Call {
    Suggest(TrialId),
    Result(TrialId, TrialResult),
    Complete(TrialId),
}

/// The calls a searcher got, each with the suggestion it gave (for `suggest`).
type CallLog = Vec<(Call, Option<Suggestion>)>;

/// A searcher that records the calls it gets and the suggestions it gives.
struct Recording {
    inner: Box<dyn Searcher>,
    log: Arc<Mutex<CallLog>>,
}

impl Searcher for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn suggest(&mut self, trial: TrialId, rng: &mut CoreRng) -> Suggestion {
        let s = self.inner.suggest(trial, rng);
        self.log
            .lock()
            .unwrap()
            .push((Call::Suggest(trial), Some(s.clone())));
        s
    }
    fn on_trial_result(&mut self, trial: TrialId, result: &TrialResult) {
        self.inner.on_trial_result(trial, result);
        self.log
            .lock()
            .unwrap()
            .push((Call::Result(trial, result.clone()), None));
    }
    fn on_trial_complete(&mut self, trial: TrialId, last: Option<&TrialResult>) {
        self.inner.on_trial_complete(trial, last);
        self.log.lock().unwrap().push((Call::Complete(trial), None));
    }
    fn total_trials(&self) -> Option<usize> {
        self.inner.total_trials()
    }
}

fn spec<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn build(
    searcher: &Value,
    scheduler: &SchedulerSpec,
    space: &SearchSpace,
    num_samples: usize,
    seed: u64,
) -> Box<dyn Searcher> {
    let spec: SearcherSpec = spec(searcher.clone());
    spec.build(&SearcherContext {
        space,
        num_samples,
        seed,
        metric: "loss",
        mode: Mode::Min,
        scheduler,
    })
    .unwrap()
}

/// What a simulated experiment found.
struct Outcome {
    /// The best value at full fidelity (iteration `max_t`).
    best: f64,
    /// Every trial's config, by trial id.
    configs: Vec<Config>,
    /// The searcher's proposals: (trial, reason, details).
    proposals: Vec<(TrialId, String, Value)>,
    calls: CallLog,
}

/// Run an experiment on `objective` in virtual time: `workers` trials at once, each result one
/// time unit, the running trials taking turns (so results of different trials interleave, as
/// with real parallel workers), until `budget` iterations have been trained. A trial's result
/// at iteration `r` is the function at fidelity `r / max_t`.
#[allow(clippy::too_many_arguments)]
fn simulate(
    objective: &dyn Fn(&Config, f64) -> f64,
    space: &SearchSpace,
    searcher: &Value,
    scheduler: Value,
    num_samples: usize,
    seed: u64,
    workers: usize,
    budget: usize,
    max_t: u64,
) -> Outcome {
    let scheduler: SchedulerSpec = spec(scheduler);
    let log = Arc::new(Mutex::new(Vec::new()));
    let recording = Recording {
        inner: build(searcher, &scheduler, space, num_samples, seed),
        log: log.clone(),
    };
    let mut tuner = Tuner::new(
        TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed,
            max_failures: 0,
            stop: Default::default(),
            ..TunerSettings::default()
        },
        Box::new(recording),
        scheduler.build("loss", Mode::Min, space).unwrap(),
    );
    let mut running: VecDeque<TrialId> = VecDeque::new();
    let mut proposals = Vec::new();
    let mut best = f64::INFINITY;
    let mut used = 0;
    let mut now = 0.0;
    let mut collect = |tuner: &mut Tuner, running: &mut VecDeque<TrialId>, now: f64| loop {
        let effects = tuner.drain_effects();
        if effects.is_empty() {
            break;
        }
        for effect in effects {
            match effect {
                Effect::Proposal {
                    trial,
                    reason,
                    details,
                    ..
                } => proposals.push((trial, reason, details)),
                Effect::EndProcess { trial } => {
                    running.retain(|r| *r != trial);
                    tuner.on_exit(trial, Exit::Success, now).unwrap();
                }
                _ => {}
            }
        }
    };
    while used < budget {
        while running.len() < workers {
            match tuner.next_to_run(now) {
                Some(launch) => running.push_back(launch.trial),
                None => break,
            }
        }
        collect(&mut tuner, &mut running, now);
        let Some(id) = running.pop_front() else {
            break;
        };
        let trial = tuner.trial(id).unwrap();
        let r = trial.iteration + 1;
        let value = objective(&trial.config, r as f64 / max_t as f64);
        used += 1;
        now += 1.0;
        if r == max_t {
            best = best.min(value);
        }
        let mut metrics = serde_json::Map::new();
        metrics.insert("loss".into(), json!(value));
        let reply = tuner.on_result(id, metrics, true, now).unwrap();
        if reply.action != Action::Continue || r >= max_t {
            tuner.on_exit(id, Exit::Success, now).unwrap();
        } else {
            running.push_back(id);
        }
        collect(&mut tuner, &mut running, now);
    }
    let configs = tuner.trials().iter().map(|t| t.config.clone()).collect();
    let calls = log.lock().unwrap().clone();
    Outcome {
        best,
        configs,
        proposals,
        calls,
    }
}

fn synthetic(f: SyntheticFunction) -> (SearchSpace, impl Fn(&Config, f64) -> f64) {
    let space = SearchSpace::from_json(&f.space()).unwrap();
    (space, move |c: &Config, z: f64| {
        f.evaluate_config(c, z).unwrap()
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Median regret over `seeds` of one searcher/scheduler combination.
#[allow(clippy::too_many_arguments)]
fn median_regret(
    f: SyntheticFunction,
    searcher: &Value,
    scheduler: &Value,
    num_samples: usize,
    workers: usize,
    budget: usize,
    max_t: u64,
    seeds: u64,
) -> f64 {
    let (space, objective) = synthetic(f);
    median(
        (0..seeds)
            .map(|seed| {
                let out = simulate(
                    &objective,
                    &space,
                    searcher,
                    scheduler.clone(),
                    num_samples,
                    seed,
                    workers,
                    budget,
                    max_t,
                );
                out.best - f.optimum()
            })
            .collect(),
    )
}

#[test]
fn tpe_beats_random_search_on_branin_and_hartmann6() {
    let fifo = json!({"type": "fifo"});
    for (f, trials, workers) in [
        (SyntheticFunction::Branin, 50, 1),
        (SyntheticFunction::Hartmann6, 80, 1),
        (SyntheticFunction::Hartmann6, 80, 4),
    ] {
        let random = median_regret(
            f,
            &json!({"type": "random"}),
            &fifo,
            trials,
            workers,
            trials,
            1,
            10,
        );
        let tpe = median_regret(
            f,
            &json!({"type": "tpe"}),
            &fifo,
            trials,
            workers,
            trials,
            1,
            10,
        );
        println!(
            "{} {workers} workers: median regret random {random:.4}, tpe {tpe:.4}",
            f.name()
        );
        assert!(
            tpe < 0.5 * random,
            "{} with {workers} workers: TPE's median regret {tpe} is not clearly below random search's {random}",
            f.name()
        );
    }
}

#[test]
fn bohb_and_tpe_with_asha_beat_random_search_with_asha_on_the_multi_fidelity_functions() {
    let asha = json!({"type": "asha", "grace_period": 1, "max_t": 27, "reduction_factor": 3});
    // (function, budget in full trainings, how far below random+ASHA BOHB must be)
    for (f, full_budgets, bohb_margin) in [
        (SyntheticFunction::Branin, 20, 0.9),
        (SyntheticFunction::Hartmann6, 40, 0.6),
    ] {
        let budget = full_budgets * 27;
        let regret =
            |searcher: Value| median_regret(f, &searcher, &asha, 10_000, 4, budget, 27, 10);
        let random = regret(json!({"type": "random"}));
        let bohb = regret(json!({"type": "bohb"}));
        let tpe = regret(json!({"type": "tpe"}));
        println!(
            "{}: median regret random+asha {random:.4}, bohb+asha {bohb:.4}, tpe+asha {tpe:.4}",
            f.name()
        );
        assert!(
            bohb < bohb_margin * random,
            "{}: BOHB+ASHA's median regret {bohb} is not below {bohb_margin} x random+ASHA's {random}",
            f.name()
        );
        assert!(
            tpe < 0.5 * random,
            "{}: TPE+ASHA's median regret {tpe} is not clearly below random+ASHA's {random}",
            f.name()
        );
    }
}

#[test]
fn gp_with_asha_beats_random_search_with_asha_on_the_multi_fidelity_functions() {
    let asha = json!({"type": "asha", "grace_period": 1, "max_t": 27, "reduction_factor": 3});
    for (f, full_budgets) in [
        (SyntheticFunction::Branin, 20),
        (SyntheticFunction::Hartmann6, 40),
    ] {
        let budget = full_budgets * 27;
        let regret =
            |searcher: Value| median_regret(f, &searcher, &asha, 10_000, 4, budget, 27, 10);
        let random = regret(json!({"type": "random"}));
        let gp = regret(json!({"type": "gp"}));
        println!(
            "{}: median regret random+asha {random:.4}, gp+asha {gp:.4}",
            f.name()
        );
        assert!(
            gp < 0.5 * random,
            "{}: GP+ASHA's median regret {gp} is not clearly below random+ASHA's {random}",
            f.name()
        );
    }
}

#[test]
fn tpe_and_bohb_work_with_every_scheduler_and_explain_every_proposal() {
    let f = SyntheticFunction::Branin;
    let (space, objective) = synthetic(f);
    let schedulers = [
        json!({"type": "fifo"}),
        json!({"type": "asha", "grace_period": 1, "max_t": 9, "reduction_factor": 3}),
        json!({"type": "hyperband", "max_t": 9, "reduction_factor": 3}),
        json!({"type": "median", "grace_period": 2}),
        json!({"type": "pbt", "perturbation_interval": 3}),
    ];
    for scheduler in schedulers {
        for searcher in [
            json!({"type": "tpe", "n_initial": 4}),
            json!({"type": "bohb", "constant_liar": true}),
            json!({"type": "gp", "n_initial": 4, "n_candidates": 64}),
        ] {
            let out = simulate(
                &objective,
                &space,
                &searcher,
                scheduler.clone(),
                24,
                7,
                3,
                24 * 9,
                9,
            );
            let context = format!("{searcher} with {scheduler}");
            assert!(!out.configs.is_empty(), "{context}: no trials");
            assert_eq!(out.proposals.len(), out.configs.len(), "{context}");
            for (i, c) in out.configs.iter().enumerate() {
                let x0 = c["x0"].as_f64().unwrap();
                let x1 = c["x1"].as_f64().unwrap();
                assert!(
                    (-5.0..=10.0).contains(&x0) && (0.0..=15.0).contains(&x1),
                    "{context}: {c:?}"
                );
                let (trial, reason, details) = &out.proposals[i];
                assert_eq!(trial.0 as usize, i);
                assert!(
                    !reason.is_empty() && details["model"].is_string(),
                    "{context}: {reason}"
                );
            }
            if scheduler["type"] != "pbt" && scheduler["type"] != "hyperband" {
                // Past the initial configs, the model proposed most of them. (PBT and HyperBand
                // create every trial before any result: those can only be random.)
                let modelled = out
                    .proposals
                    .iter()
                    .filter(|(_, _, d)| d["model"] == searcher["type"])
                    .count();
                assert!(modelled >= 4, "{context}: {modelled} model proposals");
            }
        }
    }
}

#[test]
fn bohb_fits_on_the_highest_rung_with_enough_results_and_says_so() {
    let f = SyntheticFunction::Hartmann6;
    let (space, objective) = synthetic(f);
    let asha = json!({"type": "asha", "grace_period": 1, "max_t": 27, "reduction_factor": 3});
    let out = simulate(
        &objective,
        &space,
        &json!({"type": "bohb"}),
        asha,
        1000,
        3,
        4,
        40 * 27,
        27,
    );
    let rungs: Vec<f64> = out
        .proposals
        .iter()
        .filter_map(|(_, _, d)| d["rung"].as_f64())
        .collect();
    assert!(!rungs.is_empty());
    // Only ASHA's rungs, starting low and climbing as results accumulate.
    assert!(
        rungs.iter().all(|r| [1.0, 3.0, 9.0, 27.0].contains(r)),
        "{rungs:?}"
    );
    assert_eq!(rungs[0], 1.0);
    assert!(rungs.iter().any(|r| *r >= 9.0), "never climbed: {rungs:?}");
    assert!(rungs.windows(2).all(|w| w[1] >= w[0]), "{rungs:?}");
    let (_, reason, details) = out
        .proposals
        .iter()
        .find(|(_, _, d)| d["model"] == "bohb")
        .unwrap();
    assert!(
        reason.starts_with("bohb: best of 64 candidates"),
        "{reason}"
    );
    assert!(reason.contains("rung training_iteration = "), "{reason}");
    // Hartmann-6 has 6 parameters: a rung needs 2 x (6 + 1) results.
    assert!(details["observations"].as_u64().unwrap() >= 14, "{details}");
    assert!(details["ln_l_over_g"].is_number(), "{details}");
    let random = out
        .proposals
        .iter()
        .filter(|(_, r, _)| r.starts_with("random"))
        .count();
    assert!(random > 0, "a third of BOHB's proposals are random");
}

#[test]
fn the_same_calls_rebuild_the_same_searcher() {
    let f = SyntheticFunction::Hartmann6;
    let (space, objective) = synthetic(f);
    let asha = json!({"type": "asha", "grace_period": 1, "max_t": 9, "reduction_factor": 3});
    for searcher in [
        json!({"type": "tpe", "constant_liar": true, "n_initial": 5}),
        json!({"type": "bohb"}),
        json!({"type": "tpe", "multivariate": false, "n_initial": 5}),
        json!({"type": "gp", "n_candidates": 64}),
    ] {
        let a = simulate(
            &objective,
            &space,
            &searcher,
            asha.clone(),
            60,
            11,
            4,
            200,
            9,
        );
        let b = simulate(
            &objective,
            &space,
            &searcher,
            asha.clone(),
            60,
            11,
            4,
            200,
            9,
        );
        assert_eq!(a.configs, b.configs, "{searcher}");
        assert_eq!(a.proposals, b.proposals, "{searcher}");
        let c = simulate(
            &objective,
            &space,
            &searcher,
            asha.clone(),
            60,
            12,
            4,
            200,
            9,
        );
        assert_ne!(a.configs, c.configs, "{searcher}: the seed matters");
        // A fresh searcher fed the recorded calls in order answers every suggestion the same,
        // whatever the tuner's RNG holds.
        let scheduler: SchedulerSpec = spec(asha.clone());
        let mut fresh = build(&searcher, &scheduler, &space, 60, 11);
        let mut unrelated = <CoreRng as rand::SeedableRng>::seed_from_u64(999);
        let mut suggestions = 0;
        for (call, answered) in &a.calls {
            match call {
                Call::Suggest(id) => {
                    assert_eq!(Some(fresh.suggest(*id, &mut unrelated)), *answered);
                    suggestions += 1;
                }
                Call::Result(id, result) => fresh.on_trial_result(*id, result),
                Call::Complete(id) => fresh.on_trial_complete(*id, None),
            }
        }
        assert!(suggestions > 20, "{searcher}: {suggestions}");
    }
}

/// A space with every kind of domain the model handles, and an objective with a known best.
fn mixed() -> (SearchSpace, impl Fn(&Config, f64) -> f64) {
    let table = json!({
        "lr": {"loguniform": [1e-5, 1e-1]},
        "model": {"layers": {"randint": [1, 9]}, "act": {"choice": ["relu", "tanh", "gelu"]}},
        "bs": {"qrandint": [16, 128, 16]},
        "width": {"lograndint": [8, 1024]},
        "drop": {"quniform": [0.0, 0.5, 0.1]},
        "epochs": 3,
    });
    let space = SearchSpace::from_json(table.as_object().unwrap()).unwrap();
    let objective = |c: &Config, _z: f64| {
        let lr = c["lr"].as_f64().unwrap();
        let layers = c["model"]["layers"].as_i64().unwrap() as f64;
        let act = if c["model"]["act"] == "tanh" {
            0.0
        } else {
            1.0
        };
        let bs = c["bs"].as_i64().unwrap() as f64;
        let width = c["width"].as_i64().unwrap() as f64;
        let drop = c["drop"].as_f64().unwrap();
        (lr.log10() + 3.0).powi(2)
            + 0.1 * (layers - 6.0).powi(2)
            + act
            + ((bs - 64.0) / 64.0).abs()
            + (width.log2() - 7.0).abs() * 0.3
            + (drop - 0.2).abs()
    };
    (space, objective)
}

#[test]
fn log_int_and_choice_domains_are_proposed_as_their_own_kind_and_learnt() {
    for searcher in [
        json!({"type": "tpe"}),
        json!({"type": "gp", "n_initial": 10}),
    ] {
        domains_are_handled(&searcher);
    }
}

fn domains_are_handled(searcher: &Value) {
    let (space, objective) = mixed();
    let fifo = json!({"type": "fifo"});
    let mut tpe_regret = Vec::new();
    let mut random_regret = Vec::new();
    for seed in 0..6 {
        let out = simulate(
            &objective,
            &space,
            searcher,
            fifo.clone(),
            80,
            seed,
            1,
            80,
            1,
        );
        for c in &out.configs {
            let lr = &c["lr"];
            assert!(
                lr.is_f64() && (1e-5..=1e-1).contains(&lr.as_f64().unwrap()),
                "{c:?}"
            );
            let layers = c["model"]["layers"].as_i64().expect("an integer");
            assert!((1..9).contains(&layers), "{c:?}");
            assert!(["relu", "tanh", "gelu"].contains(&c["model"]["act"].as_str().unwrap()));
            let bs = c["bs"].as_i64().expect("an integer");
            assert!(bs % 16 == 0 && (16..=128).contains(&bs), "{c:?}");
            let width = c["width"].as_i64().expect("an integer");
            assert!((8..1024).contains(&width), "{c:?}");
            let drop = c["drop"].as_f64().unwrap();
            assert!(
                ((drop * 10.0).round() - drop * 10.0).abs() < 1e-9 && (0.0..=0.5).contains(&drop)
            );
            assert_eq!(c["epochs"], json!(3));
        }
        // The model's proposals (after 10 random ones) mostly pick the best choice.
        let late: Vec<&Config> = out.configs[40..].iter().collect();
        let tanh = late.iter().filter(|c| c["model"]["act"] == "tanh").count();
        assert!(
            tanh * 2 > late.len(),
            "{searcher} seed {seed}: tanh {tanh} of {}",
            late.len()
        );
        tpe_regret.push(out.best);
        let random = simulate(
            &objective,
            &space,
            &json!({"type": "random"}),
            fifo.clone(),
            80,
            seed,
            1,
            80,
            1,
        );
        random_regret.push(random.best);
    }
    let (tpe, random) = (median(tpe_regret), median(random_regret));
    println!("{searcher}: median best {tpe:.4}, random {random:.4}");
    assert!(tpe < 0.5 * random, "{searcher}: {tpe}, random {random}");
}

#[test]
fn points_to_evaluate_come_first_and_partial_points_are_completed() {
    let (space, objective) = mixed();
    let searcher = json!({"type": "tpe", "points_to_evaluate": [
        {"lr": 1e-3, "model": {"layers": 6, "act": "tanh"}, "bs": 64, "width": 128, "drop": 0.2},
        {"lr": 1e-4, "model.act": "gelu"},
    ]});
    let out = simulate(
        &objective,
        &space,
        &searcher,
        json!({"type": "fifo"}),
        12,
        5,
        2,
        12,
        1,
    );
    assert_eq!(
        Value::Object(out.configs[0].clone()),
        json!({"lr": 1e-3, "model": {"layers": 6, "act": "tanh"}, "bs": 64, "width": 128, "drop": 0.2, "epochs": 3})
    );
    assert_eq!(out.configs[1]["lr"], json!(1e-4));
    assert_eq!(out.configs[1]["model"]["act"], json!("gelu"));
    assert!(out.configs[1]["model"]["layers"].is_i64());
    assert_eq!(
        out.proposals[0].1,
        "warm start: searcher.points_to_evaluate[0]"
    );
    assert_eq!(
        out.proposals[1].1,
        "warm start: searcher.points_to_evaluate[1], 4 parameters drawn at random"
    );
    assert_eq!(out.proposals[2].1, "random initial config 3 of 10");
    // The best point is the optimum of the objective: it is the incumbent.
    assert!(out.best.abs() < 1e-9, "{}", out.best);
}

fn build_error(searcher: Value, space: Value, num_samples: usize) -> String {
    let space = SearchSpace::from_json(space.as_object().unwrap()).unwrap();
    let spec: SearcherSpec = match serde_json::from_value(searcher) {
        Ok(spec) => spec,
        Err(e) => return e.to_string(),
    };
    match spec.build(&SearcherContext {
        space: &space,
        num_samples,
        seed: 0,
        metric: "loss",
        mode: Mode::Min,
        scheduler: &SchedulerSpec::default(),
    }) {
        Ok(_) => panic!("built"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_settings_name_the_key_to_fix() {
    let space = json!({"lr": {"loguniform": [1e-5, 1e-1]}, "act": {"choice": ["relu", "tanh"]}, "n": {"randint": [1, 4]}});
    let cases = [
        (
            json!({"type": "tpe", "gamma": 1.5}),
            "searcher.gamma: must be a fraction between 0 and 1",
        ),
        (
            json!({"type": "bohb", "n_candidates": 0}),
            "searcher.n_candidates: must be at least 1",
        ),
        (
            json!({"type": "tpe", "random_fraction": -0.1}),
            "searcher.random_fraction: must be between 0 and 1",
        ),
        (
            json!({"type": "tpe", "prior_weight": 0.0}),
            "searcher.prior_weight: must be more than 0",
        ),
        (
            json!({"type": "bohb", "min_points": 1}),
            "searcher.min_points: must be at least 2",
        ),
        (
            json!({"type": "tpe", "points_to_evaluate": [{"lr": 1e-3}, {"lr": 1.0}]}),
            "searcher.points_to_evaluate[1].lr: 1.0 is outside the space's loguniform [0.00001, 0.1]",
        ),
        (
            json!({"type": "tpe", "points_to_evaluate": [{"act": "gelu"}]}),
            "searcher.points_to_evaluate[0].act: \"gelu\" is not one of the choices [\"relu\", \"tanh\"]",
        ),
        (
            json!({"type": "tpe", "points_to_evaluate": [{"n": 2.5}]}),
            "searcher.points_to_evaluate[0].n: 2.5 is outside the space's randint [1, 4] (high excluded)",
        ),
        (
            json!({"type": "tpe", "points_to_evaluate": [{"lrr": 1e-3}]}),
            "searcher.points_to_evaluate[0].lrr: not a searched parameter; the searched parameters are lr, act, n",
        ),
        (
            json!({"type": "tpe", "points_to_evaluate": [{}, {}, {}]}),
            "searcher.points_to_evaluate: holds 3 points but num_samples is 2",
        ),
        (
            json!({"type": "tpe", "gamma_": 0.1}),
            "unknown field `gamma_`",
        ),
        (json!({"type": "tpee"}), "unknown variant `tpee`"),
        (
            json!({"type": "gp", "n_candidates": 0}),
            "searcher.n_candidates: must be at least 1",
        ),
        (
            json!({"type": "gp", "max_observations": 1}),
            "searcher.max_observations: must be at least 2",
        ),
        (
            json!({"type": "gp", "points_to_evaluate": [{"lr": 1.0}]}),
            "searcher.points_to_evaluate[0].lr: 1.0 is outside the space's loguniform",
        ),
        (json!({"type": "gp", "gamma": 0.1}), "unknown field `gamma`"),
        (
            json!({"type": "gp", "random_fraction": 1.5}),
            "searcher.random_fraction: must be between 0 and 1",
        ),
    ];
    for (searcher, expected) in cases {
        let message = build_error(searcher.clone(), space.clone(), 2);
        assert!(message.contains(expected), "{searcher}: {message}");
    }
    let message = build_error(json!({"type": "bohb"}), json!({"g": {"grid": [1, 2]}}), 2);
    assert!(
        message.starts_with(
            "space.g: the bohb searcher models every parameter and cannot expand a grid"
        ),
        "{message}"
    );
}

/// Gives `searcher` trial `id`'s result `loss` at `training_iteration`.
fn tell(searcher: &mut dyn Searcher, id: TrialId, training_iteration: u64, loss: Value) {
    let mut metrics = serde_json::Map::new();
    metrics.insert("loss".into(), loss);
    metrics.insert("training_iteration".into(), json!(training_iteration));
    searcher.on_trial_result(
        id,
        &TrialResult {
            trial: id,
            metrics,
            has_checkpoint: false,
        },
    );
}

/// Feed a GP searcher results directly (no tuner): every suggestion must be a config in the
/// space, and the reason must say what the model could use.
fn feed(
    searcher: &mut dyn Searcher,
    values: &[Value],
    space: &SearchSpace,
    iterations: u64,
) -> Vec<(String, Value)> {
    let mut rng = <CoreRng as rand::SeedableRng>::seed_from_u64(0);
    let mut out = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let id = TrialId(i as u32);
        let Suggestion::Explained(p) = searcher.suggest(id, &mut rng) else {
            panic!("a proposal");
        };
        let x0 = p.config["x0"].as_f64().unwrap();
        let x1 = p.config["x1"].as_f64().unwrap();
        assert!(
            (-5.0..=10.0).contains(&x0) && (0.0..=15.0).contains(&x1),
            "{:?}",
            p.config
        );
        assert_eq!(p.config.len(), space.parameters().len());
        out.push((p.reason, p.details));
        for r in 1..=iterations {
            tell(searcher, id, r, value.clone());
        }
        searcher.on_trial_complete(id, None);
    }
    out
}

#[test]
fn gp_proposes_sensibly_on_degenerate_results() {
    let (space, _) = synthetic(SyntheticFunction::Branin);
    let asha: SchedulerSpec =
        spec(json!({"type": "asha", "grace_period": 1, "max_t": 9, "reduction_factor": 3}));
    let gp = json!({"type": "gp", "n_initial": 1, "n_candidates": 32, "random_fraction": 0.0});
    // One observation: not enough for a model, said so.
    let mut s = build(&gp, &asha, &space, 10, 1);
    let out = feed(s.as_mut(), &[json!(1.0), json!(1.0)], &space, 1);
    assert_eq!(out[0].0, "random initial config 1 of 1");
    assert!(
        out[1]
            .0
            .starts_with("random: 1 result of loss so far, the model needs 2"),
        "{}",
        out[1].0
    );
    // Every value equal; NaN, null, infinite and string values; all of them NaN.
    for values in [
        vec![json!(0.5); 12],
        vec![
            json!(1.0),
            json!("nan"),
            json!(null),
            json!(2.0),
            json!("inf"),
            json!(0.5),
            json!(3.0),
            json!("-inf"),
        ],
        vec![json!("nan"); 6],
    ] {
        let mut s = build(&gp, &asha, &space, 20, 2);
        let out = feed(s.as_mut(), &values, &space, 3);
        let last = &out.last().unwrap().0;
        if values.iter().all(|v| v == "nan") {
            assert!(
                last.starts_with("random: every result of loss so far is NaN or infinite"),
                "{last}"
            );
        } else {
            assert!(
                last.starts_with("gp: largest expected improvement"),
                "{last}"
            );
            let details = &out.last().unwrap().1;
            assert!(details["ei"].is_number(), "{details}");
        }
    }
    // Warm-start points come first, then the model.
    let gp = json!({"type": "gp", "n_initial": 2, "random_fraction": 0.0,
                    "points_to_evaluate": [{"x0": 1.0, "x1": 2.0}]});
    let mut s = build(&gp, &asha, &space, 10, 3);
    let out = feed(
        s.as_mut(),
        &[json!(3.0), json!(2.0), json!(1.0), json!(0.5)],
        &space,
        3,
    );
    assert_eq!(out[0].0, "warm start: searcher.points_to_evaluate[0]");
    assert_eq!(out[1].0, "random initial config 2 of 2");
    assert!(out[2].0.starts_with("gp: "), "{}", out[2].0);
    // Two trials at rungs 1 and 3: no rung has min_points (2 + 2) results, so the acquisition
    // is at the lowest.
    assert_eq!(out[2].1["rung"], json!(1.0));
    // By default a third of the proposals after the initial ones are random, and say so.
    let mut s = build(
        &json!({"type": "gp", "n_candidates": 16}),
        &asha,
        &space,
        65,
        4,
    );
    let values: Vec<Value> = (0..65).map(|i| json!(f64::from(i % 7))).collect();
    let out = feed(s.as_mut(), &values, &space, 1);
    let random = out[5..]
        .iter()
        .filter(|(reason, details)| {
            details["why"] == "random_fraction"
                && reason == "random (a share of 0.3333333333333333 of the proposals is random)"
        })
        .count();
    assert!((12..=28).contains(&random), "{random} of 60");
}

/// Feeds trial `i` the results `losses[i]` at iterations 1, 2, ... and returns the proposal
/// of the trial after the last.
fn proposal_after(searcher: &mut dyn Searcher, losses: &[Vec<f64>]) -> (String, Value) {
    let mut rng = <CoreRng as rand::SeedableRng>::seed_from_u64(0);
    for (i, curve) in losses.iter().enumerate() {
        let id = TrialId(i as u32);
        assert!(matches!(
            searcher.suggest(id, &mut rng),
            Suggestion::Explained(_)
        ));
        for (r, loss) in (1..).zip(curve) {
            tell(searcher, id, r, json!(loss));
        }
        searcher.on_trial_complete(id, None);
    }
    let Suggestion::Explained(p) = searcher.suggest(TrialId(losses.len() as u32), &mut rng) else {
        panic!("a proposal");
    };
    (p.reason, p.details)
}

#[test]
fn gp_with_asha_counts_expected_improvement_only_where_the_config_passes_the_lower_rungs() {
    let (space, _) = synthetic(SyntheticFunction::Branin);
    let asha: SchedulerSpec =
        spec(json!({"type": "asha", "grace_period": 1, "max_t": 9, "reduction_factor": 3}));
    // Eight trials stopped at rung 1, four more that reached rung 3: with min_points = 4 the
    // acquisition rung is 3, and rung 1 is the gate.
    let mut losses: Vec<Vec<f64>> = (0..8).map(|i| vec![2.0 + f64::from(i)]).collect();
    losses.extend((0..4).map(|i| vec![1.0 + f64::from(i), 1.5, 0.5 + f64::from(i)]));
    // With ASHA the gates are on by default.
    let gp = json!({"type": "gp", "n_initial": 2, "n_candidates": 32, "min_points": 4,
                    "random_fraction": 0.0});
    let mut s = build(&gp, &asha, &space, 20, 5);
    let (reason, details) = proposal_after(s.as_mut(), &losses);
    assert_eq!(details["rung"], json!(3.0), "{details}");
    assert_eq!(
        details["acquisition"],
        json!("expected_improvement_where_the_gates_pass")
    );
    // ASHA's cutoff: the 2/3 quantile of the 12 rung-1 scores, in the metric's units.
    let mut rung1: Vec<f64> = losses.iter().map(|c| -c[0]).collect();
    rung1.sort_by(f64::total_cmp);
    let position: f64 = 2.0 / 3.0 * 11.0;
    let (below, fraction) = (position.floor() as usize, position.fract());
    let cutoff = -(rung1[below] + fraction * (rung1[below + 1] - rung1[below]));
    let gates = details["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 1, "{details}");
    assert_eq!(gates[0]["rung"], json!(1.0));
    assert_eq!(gates[0]["recorded"], json!(12));
    assert!(
        (gates[0]["cutoff"].as_f64().unwrap() - cutoff).abs() < 1e-5,
        "{details}"
    );
    // The acquisition is the expected improvement where the gate passes: at most the plain
    // expected improvement, and the pass probability is a share of the draws.
    let pass = details["pass_probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&pass), "{details}");
    let acquisition = details["acquisition_value"].as_f64().unwrap();
    let ei = details["ei"].as_f64().unwrap();
    assert!(acquisition <= ei + 1e-6, "{details}");
    assert!(
        reason.contains("counted where it passes ASHA's cutoffs at rungs 1"),
        "{reason}"
    );
    // Off, or without ASHA's rungs: expected improvement alone.
    let plain = json!({"type": "gp", "n_initial": 2, "n_candidates": 32, "min_points": 4,
                       "pruning_aware": false, "random_fraction": 0.0});
    let fifo = SchedulerSpec::default();
    for (searcher, scheduler) in [(&plain, &asha), (&gp, &fifo)] {
        let mut s = build(searcher, scheduler, &space, 20, 5);
        let (reason, details) = proposal_after(s.as_mut(), &losses);
        assert_eq!(
            details["acquisition"],
            json!("expected_improvement"),
            "{details}"
        );
        assert!(details.get("gates").is_none(), "{details}");
        assert!(!reason.contains("cutoffs"), "{reason}");
    }
}

/// The local search also starts from the best configs at the highest rung any trial reached,
/// not at the acquisition rung: low rungs often rank configs differently from full training.
#[test]
fn gp_local_search_starts_from_the_best_configs_at_the_highest_rung_reached() {
    let (space, _) = synthetic(SyntheticFunction::Branin);
    let asha: SchedulerSpec =
        spec(json!({"type": "asha", "grace_period": 1, "max_t": 9, "reduction_factor": 3}));
    let gp = json!({"type": "gp", "n_initial": 2, "n_candidates": 32, "min_points": 4,
                    "random_fraction": 0.0});
    // Eight trials stopped at rung 1 and four that reached rung 3 (the acquisition rung).
    let mut losses: Vec<Vec<f64>> = (0..8).map(|i| vec![2.0 + f64::from(i)]).collect();
    losses.extend((0..4).map(|i| vec![1.0 + f64::from(i), 1.5, 0.5 + f64::from(i)]));
    let details_after = |losses: &[Vec<f64>]| {
        let mut s = build(&gp, &asha, &space, 20, 5);
        proposal_after(s.as_mut(), losses).1
    };
    let details = details_after(&losses);
    assert_eq!(details["rung"], json!(3.0), "{details}");
    assert_eq!(
        details["incumbent_starts"],
        json!({"rung": 3.0, "configs": 2}),
        "{details}"
    );
    // One more trial trains to rung 9: the acquisition rung stays 3 (one result at 9 is fewer
    // than min_points), the incumbent starts come from rung 9.
    losses.push(vec![1.0; 9]);
    let details = details_after(&losses);
    assert_eq!(details["rung"], json!(3.0), "{details}");
    assert_eq!(
        details["incumbent_starts"],
        json!({"rung": 9.0, "configs": 1}),
        "{details}"
    );
}

/// The searchers' own cost per proposal. Not a test of speed (the machine may be busy): run it
/// with `cargo test --release -p rtune-core --test searchers proposal_cost -- --ignored
/// --nocapture`.
///
/// TPE and BOHB (FIFO): fed `n` finished trials, then 200 proposals. The GP is measured as it
/// runs under ASHA (rungs 1, 3, 9, 27; so the acquisition counts the gates): fed `n` results
/// from trials that stopped at rung 1, 3, 9 or 27 in ASHA's proportions, then 100 proposals,
/// each followed by its trial's results, so that the results keep growing and the
/// hyperparameters are refitted as often as in a run (every 10% of growth). It prints the mean
/// and the slowest proposal.
#[test]
#[ignore]
fn proposal_cost() {
    let f = SyntheticFunction::Hartmann6;
    let (space, objective) = synthetic(f);
    let fifo = SchedulerSpec::default();
    for (kind, n) in [("tpe", 100), ("tpe", 1000), ("bohb", 100), ("bohb", 1000)] {
        let settings = json!({"type": kind, "random_fraction": 0.0});
        let mut searcher = build(&settings, &fifo, &space, n + 250, 1);
        let mut rng = <CoreRng as rand::SeedableRng>::seed_from_u64(0);
        for i in 0..n as u32 {
            let Suggestion::Explained(p) = searcher.suggest(TrialId(i), &mut rng) else {
                panic!("a proposal");
            };
            tell(
                searcher.as_mut(),
                TrialId(i),
                1,
                json!(objective(&p.config, 1.0)),
            );
            searcher.on_trial_complete(TrialId(i), None);
        }
        let reps: u32 = 200;
        let cpu_start = cpu_seconds();
        let start = std::time::Instant::now();
        for i in 0..reps {
            let Suggestion::Explained(p) = searcher.suggest(TrialId(n as u32 + i), &mut rng) else {
                panic!("a proposal");
            };
            assert_eq!(p.details["model"], kind);
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
        let cpu = match (cpu_start, cpu_seconds()) {
            (Some(a), Some(b)) => format!("{:.3} ms CPU", (b - a) * 1000.0 / f64::from(reps)),
            _ => "CPU time unknown".into(),
        };
        println!(
            "{kind}: {ms:.3} ms wall, {cpu} per proposal with {n} observations (6 parameters)"
        );
    }
    let asha: SchedulerSpec =
        spec(json!({"type": "asha", "grace_period": 1, "max_t": 27, "reduction_factor": 3}));
    for n in [100usize, 1000] {
        // Every proposal from the model (a third of a run's are random, and nearly free).
        let gp = json!({"type": "gp", "random_fraction": 0.0});
        let mut searcher = build(&gp, &asha, &space, 100_000, 1);
        let mut rng = <CoreRng as rand::SeedableRng>::seed_from_u64(0);
        // A trial's results under ASHA: it stops at rung 1, 3, 9 or 27 (with ASHA's shares
        // 2/3, 2/9, 2/27, 1/27); one result per rung it reached.
        let feed = |searcher: &mut dyn Searcher, id: TrialId, config: &Config| {
            let stop = match id.0 % 27 {
                0 => 27,
                1..=2 => 9,
                3..=8 => 3,
                _ => 1,
            };
            let mut fed = 0;
            for r in [1u64, 3, 9, 27].into_iter().filter(|r| *r <= stop) {
                tell(searcher, id, r, json!(objective(config, r as f64 / 27.0)));
                fed += 1;
            }
            searcher.on_trial_complete(id, None);
            fed
        };
        let propose = |searcher: &mut dyn Searcher, id: TrialId, rng: &mut CoreRng| {
            let Suggestion::Explained(p) = searcher.suggest(id, rng) else {
                panic!("a proposal");
            };
            p
        };
        // The run up to n results, as it would go.
        let (mut results, mut k) = (0usize, 0u32);
        while results < n {
            let p = propose(searcher.as_mut(), TrialId(k), &mut rng);
            results += feed(searcher.as_mut(), TrialId(k), &p.config);
            k += 1;
        }
        let reps = 100u32;
        let (mut slowest, mut refits) = (0.0f64, 0);
        let cpu_start = cpu_seconds();
        let start = std::time::Instant::now();
        for _ in 0..reps {
            let one = std::time::Instant::now();
            let p = propose(searcher.as_mut(), TrialId(k), &mut rng);
            slowest = slowest.max(one.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(p.details["model"], "gp", "{}", p.reason);
            refits += usize::from(p.details["refitted"] == json!(true));
            feed(searcher.as_mut(), TrialId(k), &p.config);
            k += 1;
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
        let cpu = match (cpu_start, cpu_seconds()) {
            (Some(a), Some(b)) => format!("{:.3} ms CPU", (b - a) * 1000.0 / f64::from(reps)),
            _ => "CPU time unknown".into(),
        };
        println!(
            "gp (asha): {ms:.3} ms wall, {cpu} per proposal from {n} observations on (6 \
             parameters; {refits} refits in {reps} proposals, the slowest {slowest:.1} ms wall)"
        );
    }
}

/// User + system CPU seconds of this process (Linux; clock ticks of 1/100 s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Regret at 25%, 50% and 100% of the budget of searcher variants with ASHA (4 workers, seeds
/// 0-9), for choosing defaults that help early: run with `cargo test --release -p rtune-core
/// --test searchers early_budget -- --ignored --nocapture` (figures in docs/benchmarks.md). The
/// GP is run to 50% only (the full budget takes minutes).
#[test]
#[ignore]
fn early_budget_variants() {
    let asha = json!({"type": "asha", "grace_period": 1, "max_t": 27, "reduction_factor": 3});
    for (f, full, d) in [
        (SyntheticFunction::Branin, 20, 2),
        (SyntheticFunction::Hartmann6, 40, 6),
    ] {
        for searcher in [
            json!({"type": "random"}),
            json!({"type": "bohb"}),
            json!({"type": "bohb", "min_points": d + 2}),
            json!({"type": "bohb", "min_points": d + 2, "random_fraction": 0.2}),
            json!({"type": "tpe"}),
            json!({"type": "tpe", "n_initial": 5}),
            json!({"type": "gp"}),
        ] {
            let mut line = format!("{} {searcher}:", f.name());
            for frac in [0.25, 0.5, 1.0] {
                if searcher["type"] == "gp" && frac > 0.5 {
                    continue;
                }
                let budget = (full as f64 * 27.0 * frac) as usize;
                let r = median_regret(f, &searcher, &asha, 10_000, 4, budget, 27, 10);
                line.push_str(&format!(" {frac}: {r:.4}"));
            }
            println!("{line}");
        }
    }
}
