//! Times as the records (RFC 3339) and the API (protobuf timestamps) carry
//! them.

use std::time::{Duration, SystemTime};

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Nanoseconds since the epoch.
pub fn nanos(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos)
}

pub fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// Wall-clock time now, in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// An RFC 3339 time as nanoseconds since the epoch (0 if it is not one).
pub fn rfc3339_nanos(time: &str) -> i64 {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

pub fn rfc3339(nanos: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(at).to_string()
}
