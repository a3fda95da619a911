-- wrk script for the laneway load benchmarks.
--   LW_HOST       Host header to send (default bj.example.com)
--   LW_ALTERNATE  "1": every other request carries X-Laneway-Lane: LW_LANE
--                 (baseline, lane, baseline, ...); "0": baseline only
--   LW_LANE       lane name for the alternate requests (default t-1)
-- done() prints one machine-readable line, LWRESULT {json}, with the totals
-- and the latency percentiles in microseconds.
local host = os.getenv("LW_HOST") or "bj.example.com"
local lane = os.getenv("LW_LANE") or "t-1"
local alternate = os.getenv("LW_ALTERNATE") == "1"

wrk.headers["Host"] = host

if alternate then
   local reqs = {}
   local n = 0
   function init(args)
      reqs[0] = wrk.format(nil, nil, { ["Host"] = host })
      reqs[1] = wrk.format(nil, nil, { ["Host"] = host, ["X-Laneway-Lane"] = lane })
   end
   function request()
      n = n + 1
      return reqs[n % 2]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'LWRESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
