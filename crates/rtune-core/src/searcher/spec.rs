//! `[searcher]` of the experiment file: which searcher, with which settings.
//!
//! The table's `type` picks the searcher (`random`, the default, `tpe` or `bohb`); every other
//! key belongs to that searcher's config struct, which rejects keys it does not know. The
//! experiment's `num_samples`, `seed`, `metric` and `mode` apply to every searcher.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tpe::lookup;
use super::{Fidelity, GpSearcher, GpSettings, RandomSearcher, Searcher, TpeSearcher, TpeSettings};
use crate::scheduler::SchedulerSpec;
use crate::space::{Domain, SearchSpace};
use crate::{Config, Mode};

/// A `[searcher]` setting that cannot work. `path` is the dotted place to fix
/// (`searcher.gamma`, `searcher.points_to_evaluate[1].lr`, `space.lr`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidSearcherSetting {
    pub path: String,
    pub message: String,
}

impl InvalidSearcherSetting {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidSearcherSetting {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Random search has no settings of its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomConfig {}

/// `type = "tpe"`: Optuna-style TPE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TpeConfig {
    /// Random configs before the model is used (warm-start points count towards them).
    pub n_initial: usize,
    /// The top fraction of observations the good density `l(x)` is fitted on.
    pub gamma: f64,
    /// Candidates drawn from `l(x)`; the one with the best `l(x)/g(x)` is proposed.
    pub n_candidates: usize,
    /// Joint kernels over all parameters (keeps correlations) rather than independent ones.
    pub multivariate: bool,
    /// Trials without a result yet count as bad observations (spreads parallel proposals).
    pub constant_liar: bool,
    /// The share of proposals after the initial ones that are drawn at random.
    pub random_fraction: f64,
    /// Weight of the prior kernel (as wide as each domain) against 1 per observation.
    pub prior_weight: f64,
    /// Configs to try first, complete or partial (missing parameters are drawn at random).
    pub points_to_evaluate: Vec<Config>,
}

impl Default for TpeConfig {
    fn default() -> Self {
        TpeConfig {
            n_initial: 10,
            gamma: 0.1,
            n_candidates: 24,
            multivariate: true,
            constant_liar: false,
            random_fraction: 0.0,
            prior_weight: 1.0,
            points_to_evaluate: Vec::new(),
        }
    }
}

/// `type = "bohb"`: TPE fitted on the highest rung with enough results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BohbConfig {
    pub n_initial: usize,
    pub gamma: f64,
    pub n_candidates: usize,
    pub multivariate: bool,
    pub constant_liar: bool,
    pub random_fraction: f64,
    pub prior_weight: f64,
    pub points_to_evaluate: Vec<Config>,
    /// Results a rung needs before the model is fitted on it; default: 2 x (parameters + 1).
    pub min_points: Option<usize>,
    /// The result key that measures training progress; default: the scheduler's `time_attr`,
    /// else `training_iteration`.
    pub resource_attr: Option<String>,
}

impl Default for BohbConfig {
    fn default() -> Self {
        BohbConfig {
            n_initial: 0,
            gamma: 0.15,
            n_candidates: 64,
            multivariate: true,
            constant_liar: false,
            random_fraction: 1.0 / 3.0,
            prior_weight: 1.0,
            points_to_evaluate: Vec::new(),
            min_points: None,
            resource_attr: None,
        }
    }
}

/// `type = "gp"`: a Gaussian process over (config, resource) with expected improvement at the
/// acquisition rung (MOBSTER-class; for ASHA, and every other scheduler).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpConfig {
    /// Random configs before the model is used (warm-start points count towards them).
    pub n_initial: usize,
    /// Random candidates scored by expected improvement per proposal, before a local search.
    pub n_candidates: usize,
    /// The share of the later proposals drawn at random (default 1/3, as BOHB: the model can be
    /// confidently wrong about regions it has not seen, and a search that only follows it can
    /// stay in one basin).
    pub random_fraction: f64,
    /// Results a rung needs to be where the acquisition is evaluated; default: searched
    /// parameters + 2.
    pub min_points: Option<usize>,
    /// At most this many results enter the GP.
    pub max_observations: usize,
    /// Running trials without a result at the acquisition rung enter the GP at their posterior
    /// mean, so that parallel proposals spread out.
    pub fantasize: bool,
    /// With ASHA: count the expected improvement only where the config passes ASHA's cutoffs
    /// at the rungs below the acquisition rung (under the GP's joint posterior); on by default.
    pub pruning_aware: bool,
    pub points_to_evaluate: Vec<Config>,
    /// The result key that measures training progress; default: the scheduler's `time_attr`,
    /// else `training_iteration`.
    pub resource_attr: Option<String>,
}

impl Default for GpConfig {
    fn default() -> Self {
        GpConfig {
            n_initial: 5,
            n_candidates: 256,
            random_fraction: 1.0 / 3.0,
            min_points: None,
            max_observations: 128,
            fantasize: true,
            pruning_aware: true,
            points_to_evaluate: Vec::new(),
            resource_attr: None,
        }
    }
}

/// The `[searcher]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SearcherSpec {
    /// Random samples and grids (Ray Tune's `BasicVariantGenerator`).
    Random(RandomConfig),
    /// Tree-structured Parzen estimator (Optuna's TPE).
    Tpe(TpeConfig),
    /// TPE on the highest rung with enough results (BOHB); for ASHA and HyperBand.
    Bohb(BohbConfig),
    /// Gaussian process with expected improvement, joint over config and resource (MOBSTER).
    Gp(GpConfig),
}

impl Default for SearcherSpec {
    fn default() -> Self {
        SearcherSpec::Random(RandomConfig::default())
    }
}

/// What every searcher is built with, from the rest of the experiment file.
#[derive(Clone, Debug)]
pub struct SearcherContext<'a> {
    pub space: &'a SearchSpace,
    pub num_samples: usize,
    pub seed: u64,
    pub metric: &'a str,
    pub mode: Mode,
    pub scheduler: &'a SchedulerSpec,
}

impl SearcherSpec {
    /// The searcher's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            SearcherSpec::Random(_) => "random",
            SearcherSpec::Tpe(_) => "tpe",
            SearcherSpec::Bohb(_) => "bohb",
            SearcherSpec::Gp(_) => "gp",
        }
    }

    /// Build the searcher, checking its settings against the space and the scheduler.
    pub fn build(
        &self,
        ctx: &SearcherContext<'_>,
    ) -> Result<Box<dyn Searcher>, InvalidSearcherSetting> {
        let common = match self {
            SearcherSpec::Random(_) => {
                return Ok(Box::new(RandomSearcher::new(
                    ctx.space.clone(),
                    ctx.num_samples,
                    ctx.seed,
                )));
            }
            SearcherSpec::Gp(c) => return build_gp(c, ctx),
            SearcherSpec::Tpe(c) => Common {
                n_initial: c.n_initial,
                gamma: c.gamma,
                n_candidates: c.n_candidates,
                multivariate: c.multivariate,
                constant_liar: c.constant_liar,
                random_fraction: c.random_fraction,
                prior_weight: c.prior_weight,
                points: &c.points_to_evaluate,
            },
            SearcherSpec::Bohb(c) => Common {
                n_initial: c.n_initial,
                gamma: c.gamma,
                n_candidates: c.n_candidates,
                multivariate: c.multivariate,
                constant_liar: c.constant_liar,
                random_fraction: c.random_fraction,
                prior_weight: c.prior_weight,
                points: &c.points_to_evaluate,
            },
        };
        common.check(ctx)?;
        let fidelity = match self {
            SearcherSpec::Bohb(c) => bohb_fidelity(c, ctx)?,
            _ => Fidelity::Latest,
        };
        let settings = TpeSettings {
            metric: ctx.metric.to_string(),
            mode: ctx.mode,
            seed: ctx.seed,
            num_samples: ctx.num_samples,
            n_initial: common.n_initial,
            gamma: common.gamma,
            n_candidates: common.n_candidates,
            multivariate: common.multivariate,
            constant_liar: common.constant_liar,
            random_fraction: common.random_fraction,
            prior_weight: common.prior_weight,
            points_to_evaluate: common.points.to_vec(),
            fidelity,
        };
        let name = self.name();
        let searcher = TpeSearcher::new(name, ctx.space.clone(), settings).map_err(
            |(parameter, kind)| {
                InvalidSearcherSetting::new(
                    format!("space.{parameter}"),
                    format!(
                        "the {name} searcher models every parameter and cannot expand a {kind}; write {{ choice = [...] }} instead, or use type = \"random\" under [searcher] for a grid search"
                    ),
                )
            },
        )?;
        Ok(Box::new(searcher))
    }
}

/// The settings TPE and BOHB share.
struct Common<'a> {
    n_initial: usize,
    gamma: f64,
    n_candidates: usize,
    multivariate: bool,
    constant_liar: bool,
    random_fraction: f64,
    prior_weight: f64,
    points: &'a [Config],
}

impl Common<'_> {
    fn check(&self, ctx: &SearcherContext<'_>) -> Result<(), InvalidSearcherSetting> {
        let bad = |key: &str, message: String| {
            Err(InvalidSearcherSetting::new(
                format!("searcher.{key}"),
                message,
            ))
        };
        if !(self.gamma > 0.0 && self.gamma < 1.0) {
            return bad(
                "gamma",
                format!(
                    "must be a fraction between 0 and 1 (exclusive), e.g. 0.1, got {}",
                    self.gamma
                ),
            );
        }
        if self.n_candidates == 0 {
            return bad("n_candidates", "must be at least 1, e.g. 24".into());
        }
        if !(0.0..=1.0).contains(&self.random_fraction) {
            return bad(
                "random_fraction",
                format!(
                    "must be between 0 and 1, e.g. 0.33, got {}",
                    self.random_fraction
                ),
            );
        }
        if !(self.prior_weight.is_finite() && self.prior_weight > 0.0) {
            return bad(
                "prior_weight",
                format!("must be more than 0, e.g. 1.0, got {}", self.prior_weight),
            );
        }
        if self.points.len() > ctx.num_samples {
            return bad(
                "points_to_evaluate",
                format!(
                    "holds {} points but num_samples is {}: every point is a trial; raise num_samples or remove points",
                    self.points.len(),
                    ctx.num_samples
                ),
            );
        }
        for (i, point) in self.points.iter().enumerate() {
            check_point(
                ctx.space,
                point,
                &format!("searcher.points_to_evaluate[{i}]"),
            )?;
        }
        Ok(())
    }
}

/// Every key of a warm-start point names a searched parameter, and every value lies in its
/// domain.
fn check_point(
    space: &SearchSpace,
    point: &Config,
    place: &str,
) -> Result<(), InvalidSearcherSetting> {
    let names = space.searched_names();
    // Keys that are neither a searched parameter nor a table leading to one.
    let mut stack: Vec<(String, &Value)> = point.iter().map(|(k, v)| (k.clone(), v)).collect();
    while let Some((key, value)) = stack.pop() {
        if names.contains(&key) {
            continue;
        }
        let prefix = format!("{key}.");
        match value {
            Value::Object(table) if names.iter().any(|n| n.starts_with(&prefix)) => {
                stack.extend(table.iter().map(|(k, v)| (format!("{key}.{k}"), v)));
            }
            _ => {
                return Err(InvalidSearcherSetting::new(
                    format!("{place}.{key}"),
                    format!(
                        "not a searched parameter; the searched parameters are {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    for parameter in space.parameters() {
        if let Some(value) = lookup(point, &parameter.path) {
            check_value(&parameter.domain, value).map_err(|message| {
                InvalidSearcherSetting::new(format!("{place}.{}", parameter.name()), message)
            })?;
        }
    }
    Ok(())
}

/// Whether `value` is one the domain can produce.
fn check_value(domain: &Domain, value: &Value) -> Result<(), String> {
    match domain {
        Domain::Choice(values) | Domain::Grid(values) => {
            if values.contains(value) {
                Ok(())
            } else {
                let options: Vec<String> = values.iter().map(Value::to_string).collect();
                Err(format!(
                    "{value} is not one of the choices [{}]",
                    options.join(", ")
                ))
            }
        }
        _ => {
            let Some(x) = value.as_f64().filter(|x| x.is_finite()) else {
                return Err(format!("{value} is not a number"));
            };
            let fits = domain
                .clamp(x)
                .and_then(|v| v.as_f64())
                .is_some_and(|c| (c - x).abs() <= 1e-12 * x.abs().max(1.0));
            if fits && (!domain.is_integer() || value.is_i64() || x.fract() == 0.0) {
                Ok(())
            } else {
                Err(format!(
                    "{value} is outside the space's {} (or not one of its steps)",
                    describe(domain)
                ))
            }
        }
    }
}

fn describe(domain: &Domain) -> String {
    match domain {
        Domain::Uniform { low, high } | Domain::LogUniform { low, high } => {
            format!("{} [{low}, {high}]", domain.kind())
        }
        Domain::QUniform { low, high, q } | Domain::QLogUniform { low, high, q } => {
            format!("{} [{low}, {high}, {q}]", domain.kind())
        }
        Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => {
            format!("{} [{low}, {high}] (high excluded)", domain.kind())
        }
        Domain::QRandInt { low, high, q } => format!("qrandint [{low}, {high}, {q}]"),
        Domain::Choice(_) | Domain::Grid(_) => domain.kind().to_string(),
    }
}

/// BOHB's resource and rungs: the scheduler's milestones under ASHA, every value otherwise.
fn bohb_fidelity(
    c: &BohbConfig,
    ctx: &SearcherContext<'_>,
) -> Result<Fidelity, InvalidSearcherSetting> {
    let d = ctx.space.parameters().len();
    let min_points = c.min_points.unwrap_or(2 * (d + 1)).max(2);
    if c.min_points.is_some_and(|m| m < 2) {
        return Err(InvalidSearcherSetting::new(
            "searcher.min_points",
            "must be at least 2 (a good and a bad result)",
        ));
    }
    let (resource_attr, levels) = resource(c.resource_attr.as_ref(), ctx)?;
    Ok(Fidelity::Rungs {
        resource_attr,
        levels,
        min_points,
    })
}

/// The resource key (`resource_attr`, else the scheduler's `time_attr`, else
/// `training_iteration`) and, when it is ASHA's `time_attr`, ASHA's rungs.
fn resource(
    resource_attr: Option<&String>,
    ctx: &SearcherContext<'_>,
) -> Result<(String, Option<Vec<f64>>), InvalidSearcherSetting> {
    let scheduler_attr = match ctx.scheduler {
        SchedulerSpec::Asha(a) => Some(a.time_attr.clone()),
        SchedulerSpec::HyperBand(h) => Some(h.time_attr.clone()),
        SchedulerSpec::Median(m) => Some(m.time_attr.clone()),
        _ => None,
    };
    let resource_attr = resource_attr
        .cloned()
        .or(scheduler_attr)
        .unwrap_or_else(|| "training_iteration".to_string());
    if resource_attr.is_empty() {
        return Err(InvalidSearcherSetting::new(
            "searcher.resource_attr",
            "must name a reported key, e.g. \"training_iteration\"",
        ));
    }
    let levels = match ctx.scheduler {
        SchedulerSpec::Asha(a) if a.time_attr == resource_attr => {
            let mut levels = Vec::new();
            let mut level = a.grace_period;
            while level <= a.max_t * (1.0 + 1e-9) && levels.len() < 64 {
                levels.push(level);
                level *= a.reduction_factor;
            }
            if levels.last().is_some_and(|l| *l < a.max_t) {
                levels.push(a.max_t);
            }
            Some(levels)
        }
        _ => None,
    };
    Ok((resource_attr, levels))
}

fn build_gp(
    c: &GpConfig,
    ctx: &SearcherContext<'_>,
) -> Result<Box<dyn Searcher>, InvalidSearcherSetting> {
    let bad = |key: &str, message: String| {
        Err(InvalidSearcherSetting::new(
            format!("searcher.{key}"),
            message,
        ))
    };
    if c.n_candidates == 0 {
        return bad("n_candidates", "must be at least 1, e.g. 256".into());
    }
    if !(0.0..=1.0).contains(&c.random_fraction) {
        return bad(
            "random_fraction",
            format!(
                "must be between 0 and 1, e.g. 0.33, got {}",
                c.random_fraction
            ),
        );
    }
    if c.max_observations < 2 {
        return bad(
            "max_observations",
            format!("must be at least 2, e.g. 200, got {}", c.max_observations),
        );
    }
    if c.min_points.is_some_and(|m| m < 1) {
        return bad("min_points", "must be at least 1".into());
    }
    if c.points_to_evaluate.len() > ctx.num_samples {
        return bad(
            "points_to_evaluate",
            format!(
                "holds {} points but num_samples is {}: every point is a trial; raise num_samples or remove points",
                c.points_to_evaluate.len(),
                ctx.num_samples
            ),
        );
    }
    for (i, point) in c.points_to_evaluate.iter().enumerate() {
        check_point(
            ctx.space,
            point,
            &format!("searcher.points_to_evaluate[{i}]"),
        )?;
    }
    let (resource_attr, levels) = resource(c.resource_attr.as_ref(), ctx)?;
    // The rungs are ASHA's exactly when `resource` derived them from its settings.
    let rung_cutoff_quantile = match ctx.scheduler {
        SchedulerSpec::Asha(a) if c.pruning_aware && levels.is_some() => {
            Some(1.0 - 1.0 / a.reduction_factor)
        }
        _ => None,
    };
    let settings = GpSettings {
        metric: ctx.metric.to_string(),
        mode: ctx.mode,
        seed: ctx.seed,
        num_samples: ctx.num_samples,
        n_initial: c.n_initial,
        n_candidates: c.n_candidates,
        random_fraction: c.random_fraction,
        min_points: c.min_points.unwrap_or(ctx.space.parameters().len() + 2),
        max_observations: c.max_observations,
        fantasize: c.fantasize,
        points_to_evaluate: c.points_to_evaluate.clone(),
        resource_attr,
        levels,
        rung_cutoff_quantile,
    };
    let searcher = GpSearcher::new(ctx.space.clone(), settings).map_err(|(parameter, kind)| {
        InvalidSearcherSetting::new(
            format!("space.{parameter}"),
            format!(
                "the gp searcher models every parameter and cannot expand a {kind}; write {{ choice = [...] }} instead, or use type = \"random\" under [searcher] for a grid search"
            ),
        )
    })?;
    Ok(Box::new(searcher))
}
