-- wrk: POST the JSON body in the file named by WRK_BODY to every request.
local f = assert(io.open(os.getenv("WRK_BODY"), "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

-- Report latency percentiles and failed responses (status >= 400, as wrk counts them)
-- as one JSON line for bench.py.
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
