//! Argument parsers shared by the subcommands.

use std::time::Duration;

use rampart_config::duration::parse_duration;

/// A duration argument such as `500ms`, `10s` or `5m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}
