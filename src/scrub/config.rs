//! The scrub's configuration: `scrubRate`, `scrubInterval`.

use crate::config::{parse_duration, Size};
use std::time::Duration;

/// How fast and how often the background scrub reads the store, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubConfig {
    /// `scrubRate`: bytes per second the background scrub reads at most.
    pub rate: u64,
    /// `scrubInterval`: a full pass starts this long after the previous one started (None:
    /// only on demand).
    pub interval: Option<Duration>,
}

/// 1 MiB/s: a few per cent of an SD card's or eMMC's sequential read and of a Pi core's
/// SHA-256 + AES-GCM, and 590 GiB a week: a full pass of a 64 GB card takes under a day.
pub const DEFAULT_RATE: u64 = 1 << 20;

/// Weekly: rot is found within about a week, and reads (which do not wear flash) stay a
/// small share of the card's time.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(7 * 86400);

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            rate: DEFAULT_RATE,
            interval: Some(DEFAULT_INTERVAL),
        }
    }
}

/// Validates `scrubRate` (64KiB to 4GiB per second) and `scrubInterval` (1m to 366d, or
/// `"off"`).
pub fn resolve(rate: Option<Size>, interval: Option<String>) -> Result<ScrubConfig, String> {
    let d = ScrubConfig::default();
    let rate = match rate {
        None => d.rate,
        Some(s) => match s.bytes("scrubRate")? as u64 {
            r if (64 << 10..=4 << 30).contains(&r) => r,
            r => return Err(format!("scrubRate: {r} is out of range (64KiB to 4GiB)")),
        },
    };
    let interval = match interval.as_deref() {
        None => d.interval,
        Some("off") => None,
        Some(t) => match parse_duration(t) {
            Ok(i) if (60..=366 * 86400).contains(&i.as_secs()) => Some(i),
            Ok(_) => {
                return Err(format!(
                    "scrubInterval: {t:?} is out of range (1m to 366d, or \"off\")"
                ))
            }
            Err(e) => return Err(format!("scrubInterval: {e} (or \"off\")")),
        },
    };
    Ok(ScrubConfig { rate, interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_ranges_and_off() {
        assert_eq!(resolve(None, None).unwrap(), ScrubConfig::default());
        let c = resolve(Some(Size::Text("4MiB".into())), Some("off".into())).unwrap();
        assert_eq!((c.rate, c.interval), (4 << 20, None));
        let c = resolve(Some(Size::Bytes(65536)), Some("1d".into())).unwrap();
        assert_eq!(c.interval, Some(Duration::from_secs(86400)));
        assert!(resolve(Some(Size::Bytes(1000)), None).is_err());
        assert!(resolve(None, Some("10s".into())).is_err());
        assert!(resolve(None, Some("weekly".into())).is_err());
    }
}
