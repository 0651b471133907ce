//! FIFO: every trial runs to completion (or to the experiment's stop criteria).

use super::{Decision, Scheduler, SchedulerContext};
use crate::TrialResult;

#[derive(Debug, Default)]
pub struct FifoScheduler;

impl Scheduler for FifoScheduler {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn on_trial_result(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        Decision::continue_(result.trial, "fifo: trials run to completion")
    }
}
