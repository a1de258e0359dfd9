//! Durations as protobuf's `google.protobuf.Duration`.

use std::time::Duration;

use envoy_types::pb::google::protobuf::Duration as PbDuration;

pub(crate) fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
