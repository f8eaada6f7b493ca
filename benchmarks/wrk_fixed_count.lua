-- wrk script: POST one JSON body until a fixed number of responses, then stop and report.
-- Run with one wrk thread (-t1). Environment: BODY (path of the body file), N (responses to wait for),
-- HEADERS (optional extra header lines).
-- wrk runs for a duration; this script counts responses, and when the count is reached it
-- interrupts wrk (SIGINT, which wrk answers by stopping and printing its summary) and records
-- the time, so items/s is measured over exactly N responses. done() prints one JSON line
-- starting with "FIXED_COUNT " that service_bench.py reads.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec_t;
  int clock_gettime(int clk_id, timespec_t *tp);
  int getpid(void);
  int kill(int pid, int sig);
]]

local function now()
  local ts = ffi.new("timespec_t")
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local body_path = os.getenv("BODY")
local limit = tonumber(os.getenv("N") or "1000")

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(body_path, "rb"))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  -- HEADERS: extra "Name: value" lines (e.g. the OIP binary extension's Inference-Header-Content-Length)
  for line in string.gmatch(os.getenv("HEADERS") or "", "[^\n]+") do
    local name, value = string.match(line, "^([^:]+):%s*(.*)$")
    if name then wrk.headers[name] = value end
  end
  wrk.body = f:read("*a")
  f:close()
  n, bad, t_start, t_end = 0, 0, now(), 0
end

function response(status, headers, body)
  if t_end > 0 then return end
  n = n + 1
  if status ~= 200 then bad = bad + 1 end
  if n >= limit then
    t_end = now()
    ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk stops all threads and reports
  end
end

function done(summary, latency, requests)
  local count, errors, first, last = 0, 0, math.huge, 0
  for _, thread in ipairs(threads) do
    count = count + thread:get("n")
    errors = errors + thread:get("bad")
    first = math.min(first, thread:get("t_start"))
    last = math.max(last, thread:get("t_end"))
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    'FIXED_COUNT {"responses": %d, "non_200": %d, "socket_errors": %d, "seconds": %.6f, ' ..
    '"p50_us": %d, "p99_us": %d, "complete": %s}\n',
    count, errors, socket_errors, last - first, latency:percentile(50), latency:percentile(99),
    tostring(last > 0 and count >= limit)))
  io.flush()
end
