//! The time the run loop gives the core: seconds since the Unix epoch, following tokio's clock.
//!
//! In a real run that is the wall clock (taken once, then advanced by the monotonic clock, so a
//! clock step of the system does not reorder events). Under the simulator the runtime's clock is
//! paused (`tokio::time::pause`) and jumps from event to event: the same function then returns
//! virtual time, starting from the moment the process first asked, so results, decisions and the
//! state file carry simulated times that look like a real run's.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// The wall-clock time and the monotonic instant of the first call.
fn anchor() -> &'static (f64, Instant) {
    static ANCHOR: OnceLock<(f64, Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (wall, Instant::now())
    })
}

/// Seconds since the Unix epoch by tokio's clock (virtual when the runtime's time is paused).
pub fn unix_now() -> f64 {
    let (wall, start) = *anchor();
    let now = tokio::time::Instant::now().into_std();
    // A paused clock starts at the real instant it was paused, which may precede the anchor.
    match now.checked_duration_since(start) {
        Some(elapsed) => wall + elapsed.as_secs_f64(),
        None => wall - start.duration_since(now).as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_follows_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        assert!((unix_now() - wall).abs() < 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_jumps_with_tokio() {
        let before = unix_now();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let after = unix_now();
        assert!((after - before - 3600.0).abs() < 1e-3, "{}", after - before);
    }
}
