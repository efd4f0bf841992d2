//! Human-friendly durations in config files: `500ms`, `2s`, `5m`, `1h`, `1d`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as a number followed by a unit (`ms`, `s`, `m`, `h`, `d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Dur(d)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected a number and a unit (ms, s, m, h, d), e.g. \"2s\"")]
pub struct DurationError(pub String);

impl FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| DurationError(s.to_string()))?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| DurationError(s.to_string()))?;
        let ms_per = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(DurationError(s.to_string())),
        };
        n.checked_mul(ms_per)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| DurationError(s.to_string()))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % per == 0 {
                return write!(f, "{}{}", ms / per, unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

string_type!(Dur, "", "Duration", {
    "type": "string",
    "pattern": "^[0-9]+(ms|s|m|h|d)$",
    "description": "A duration: a whole number and a unit (ms, s, m, h, d), e.g. \"2s\"."
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, ms) in [
            ("500ms", 500),
            ("2s", 2000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            let d: Dur = s.parse().expect("valid");
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), s);
        }
        for bad in ["", "s", "2", "2x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad} should be refused");
        }
    }
}
