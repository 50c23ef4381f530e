//! Between the shim API's messages and the runtime's domain types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corten_api::containerd::v1::types::Status as WireStatus;
use corten_core::{any_value::AnyValue, runtime::Status};
use prost_types::{Any, Timestamp};

/// A shim's timestamp; Go's zero time (year 1, before the epoch) means "not
/// yet" and becomes `None`.
pub fn time(ts: Option<&Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn status(code: i32) -> Status {
    match WireStatus::try_from(code).unwrap_or(WireStatus::Unknown) {
        WireStatus::Unknown => Status::Unknown,
        WireStatus::Created => Status::Created,
        WireStatus::Running => Status::Running,
        WireStatus::Stopped => Status::Stopped,
        WireStatus::Paused => Status::Paused,
        WireStatus::Pausing => Status::Pausing,
    }
}

pub fn any(v: &AnyValue) -> Any {
    Any {
        type_url: v.type_url.clone(),
        value: v.value.clone(),
    }
}

pub fn any_value(a: Any) -> AnyValue {
    AnyValue::new(a.type_url, a.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_zero_time_is_none() {
        let zero = Timestamp {
            seconds: -62135596800,
            nanos: 0,
        };
        assert_eq!(time(Some(&zero)), None);
        assert_eq!(time(None), None);
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(time(Some(&timestamp(t))), Some(t));
    }

    #[test]
    fn statuses() {
        assert_eq!(status(2), Status::Running);
        assert_eq!(status(4), Status::Paused);
        assert_eq!(status(99), Status::Unknown);
    }
}
