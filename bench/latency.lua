-- wrk script used by bench/gateway.sh.
--
-- Sends plain GETs (wrk's default request) and, when the run is over, prints
-- machine-readable KEY=VALUE lines prefixed with "BENCH_" that the shell script
-- parses. wrk reports durations and latencies in microseconds; we print ms.

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout

  io.write(string.format("BENCH_REQUESTS=%d\n", summary.requests))
  io.write(string.format("BENCH_DURATION_S=%.3f\n", secs))
  io.write(string.format("BENCH_RPS=%.1f\n", summary.requests / secs))
  io.write(string.format("BENCH_P50_MS=%.3f\n", latency:percentile(50) / 1000))
  io.write(string.format("BENCH_P99_MS=%.3f\n", latency:percentile(99) / 1000))
  io.write(string.format("BENCH_P999_MS=%.3f\n", latency:percentile(99.9) / 1000))
  io.write(string.format("BENCH_MAX_MS=%.3f\n", latency.max / 1000))
  io.write(string.format("BENCH_ERRORS=%d\n", errors))
  io.write(string.format("BENCH_ERR_CONNECT=%d\n", e.connect))
  io.write(string.format("BENCH_ERR_READ=%d\n", e.read))
  io.write(string.format("BENCH_ERR_WRITE=%d\n", e.write))
  io.write(string.format("BENCH_ERR_STATUS=%d\n", e.status))
  io.write(string.format("BENCH_ERR_TIMEOUT=%d\n", e.timeout))
end
