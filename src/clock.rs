//! Wall time. The only module that reads it: everything else is handed `now`, so tests can fix it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, the resolution of JWT `exp`/`nbf`/`iat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// Time left until `later`, zero when it has passed.
    pub fn until(self, later: UnixTime) -> Duration {
        Duration::from_secs(later.0.saturating_sub(self.0))
    }
}

impl UnixTime {
    /// RFC 3339 in UTC at second precision, as `metav1.Time` serialises:
    /// `2026-01-01T00:00:00Z`.
    pub fn rfc3339(self) -> String {
        let t = i64::try_from(self.0)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// Where `now` comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A fixed instant, for tests.
    Fixed(UnixTime),
}

impl Clock {
    /// The current time according to this clock.
    pub fn now(&self) -> UnixTime {
        match self {
            #[allow(clippy::disallowed_methods)] // the one place wall time is read
            Clock::System => UnixTime(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
            Clock::Fixed(t) => *t,
        }
    }

    /// The current time as a `SystemTime`, for certificate validity and logs.
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.now().0)
    }
}
