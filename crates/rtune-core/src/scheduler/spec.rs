//! `[scheduler]` of the experiment file: which scheduler, with which settings.
//!
//! The table's `type` picks the scheduler; every other key belongs to that scheduler's config
//! struct, which rejects keys it does not know (a `grace_period` under `type = "fifo"` is a
//! mistake worth reporting, not something to ignore).

use serde::{Deserialize, Serialize};

use super::{
    AshaConfig, AshaScheduler, FifoScheduler, HyperBandConfig, HyperBandScheduler, InvalidSetting,
    MedianStoppingConfig, MedianStoppingScheduler, PbtConfig, PbtScheduler, Scheduler,
};
use crate::Mode;
use crate::space::SearchSpace;

/// FIFO has no settings; the empty struct makes any key under `type = "fifo"` an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FifoConfig {}

/// The `[scheduler]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SchedulerSpec {
    /// Every trial runs to its end.
    Fifo(FifoConfig),
    /// Asynchronous successive halving.
    Asha(AshaConfig),
    /// Ray Tune's median stopping rule.
    #[serde(alias = "median_stopping")]
    Median(MedianStoppingConfig),
    /// Synchronous HyperBand.
    #[serde(rename = "hyperband")]
    HyperBand(HyperBandConfig),
    /// Population based training.
    Pbt(PbtConfig),
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        SchedulerSpec::Fifo(FifoConfig::default())
    }
}

impl SchedulerSpec {
    /// The scheduler's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            SchedulerSpec::Fifo(_) => "fifo",
            SchedulerSpec::Asha(_) => "asha",
            SchedulerSpec::Median(_) => "median",
            SchedulerSpec::HyperBand(_) => "hyperband",
            SchedulerSpec::Pbt(_) => "pbt",
        }
    }

    /// Build the scheduler, checking its settings. `space` is the experiment's search space:
    /// PBT mutates its parameters when `hyperparam_mutations` is not given.
    pub fn build(
        &self,
        metric: &str,
        mode: Mode,
        space: &SearchSpace,
    ) -> Result<Box<dyn Scheduler>, InvalidSetting> {
        Ok(match self {
            SchedulerSpec::Fifo(_) => Box::new(FifoScheduler),
            SchedulerSpec::Asha(config) => {
                Box::new(AshaScheduler::new(config.clone(), metric, mode)?)
            }
            SchedulerSpec::Median(config) => {
                Box::new(MedianStoppingScheduler::new(config.clone(), metric, mode)?)
            }
            SchedulerSpec::HyperBand(config) => {
                Box::new(HyperBandScheduler::new(config.clone(), metric, mode)?)
            }
            SchedulerSpec::Pbt(config) => {
                Box::new(PbtScheduler::new(config.clone(), metric, mode, space)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<SchedulerSpec, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn each_type_reads_with_its_settings() {
        let spec = parse(
            serde_json::json!({"type": "asha", "grace_period": 1, "max_t": 5,
            "reduction_factor": 2}),
        )
        .expect("asha");
        let SchedulerSpec::Asha(config) = &spec else {
            panic!("not asha: {spec:?}");
        };
        assert_eq!(config.max_t, 5.0);
        assert_eq!(config.reduction_factor, 2.0);
        assert_eq!(spec.name(), "asha");
        for (ty, name) in [
            ("fifo", "fifo"),
            ("median", "median"),
            ("median_stopping", "median"),
            ("hyperband", "hyperband"),
            ("pbt", "pbt"),
        ] {
            let spec = parse(serde_json::json!({ "type": ty })).expect(ty);
            assert_eq!(spec.name(), name);
        }
        assert_eq!(SchedulerSpec::default().name(), "fifo");
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        let message = parse(serde_json::json!({"type": "fifo", "grace_period": 1}))
            .expect_err("fifo has no settings");
        assert!(message.contains("grace_period"), "{message}");
        let message =
            parse(serde_json::json!({"type": "asha", "grace_perod": 1})).expect_err("typo");
        assert!(message.contains("unknown field `grace_perod`"), "{message}");
        let message = parse(serde_json::json!({"type": "ashaa"})).expect_err("unknown type");
        assert!(message.contains("unknown variant `ashaa`"), "{message}");
    }

    #[test]
    fn build_checks_settings() {
        let space = SearchSpace::from_json(&crate::Config::new()).expect("empty space");
        let spec = parse(serde_json::json!({"type": "asha", "grace_period": 0})).expect("reads");
        let error = spec
            .build("loss", Mode::Min, &space)
            .expect_err("grace_period 0 is invalid");
        assert_eq!(error.field, "grace_period");
        let fifo = SchedulerSpec::default()
            .build("loss", Mode::Min, &space)
            .expect("fifo builds");
        assert_eq!(fifo.name(), "fifo");
    }
}
