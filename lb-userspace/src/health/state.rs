//! The rise/fall state machine: pure, no I/O, no clock.

use std::fmt;

/// Health of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Up,
    Down,
}

impl Health {
    pub fn is_up(self) -> bool {
        self == Health::Up
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// Counts consecutive results and flips the state.
///
/// A new machine starts **Up**, as if it had just risen: a target that was
/// just configured is served at once and leaves after `fall` consecutive
/// failed probes. A Down target comes back after `rise` consecutive passes.
/// A result that agrees with the current state resets the opposite streak,
/// so a flapping target never changes state unless a whole streak completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl RiseFall {
    /// `rise` and `fall` of 0 are treated as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::with_state(rise, fall, Health::Up)
    }

    pub fn with_state(rise: u32, fall: u32, state: Health) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            state,
            streak: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one probe result; returns the new state if it changed.
    pub fn observe(&mut self, passed: bool) -> Option<Health> {
        let agrees = passed == self.state.is_up();
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.state {
            Health::Up => self.fall,
            Health::Down => self.rise,
        };
        if self.streak >= needed {
            self.state = if passed { Health::Up } else { Health::Down };
            self.streak = 0;
            Some(self.state)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sequence ('+' pass, '-' fail) and returns the states after each.
    fn run(rise: u32, fall: u32, seq: &str) -> String {
        let mut m = RiseFall::new(rise, fall);
        seq.chars()
            .map(|c| {
                m.observe(c == '+');
                if m.state().is_up() {
                    'U'
                } else {
                    'D'
                }
            })
            .collect()
    }

    #[test]
    fn starts_up() {
        assert_eq!(RiseFall::new(2, 3).state(), Health::Up);
    }

    #[test]
    fn falls_after_fall_failures() {
        assert_eq!(run(2, 3, "---"), "UUD");
        assert_eq!(run(2, 1, "-"), "D");
    }

    #[test]
    fn rises_after_rise_passes() {
        assert_eq!(run(2, 3, "---++"), "UUDDU");
        assert_eq!(run(3, 1, "-+++"), "DDDU");
    }

    #[test]
    fn flapping_never_changes_state() {
        assert_eq!(run(2, 3, "--+--+--+"), "UUUUUUUUU");
        assert_eq!(run(2, 2, "--+-+-+-++"), "UDDDDDDDDU");
    }

    #[test]
    fn observe_reports_transitions_once() {
        let mut m = RiseFall::new(2, 2);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Health::Down));
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Health::Up));
        assert_eq!(m.observe(true), None);
    }

    #[test]
    fn zero_is_one() {
        assert_eq!(run(0, 0, "-+"), "DU");
    }
}
