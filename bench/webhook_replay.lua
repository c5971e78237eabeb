-- wrk script for bench/webhook_bench.py: replay pre-signed GitHub deliveries, each exactly once.
--
-- Environment: BENCH_PREFIX (thread t reads BENCH_PREFIX .. t .. ".txt", lines "id signature body"),
-- BENCH_MARKER (a 2xx body containing it counts as accepted), BENCH_CLOSE ("1": Connection: close),
-- BENCH_OUT (where done() writes the JSON summary).
-- Requests are formatted once in init(), so request() is a table lookup for both servers alike.

local threads = {}
local count = 0

function setup(thread)
  thread:set("tid", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  marker = os.getenv("BENCH_MARKER")
  local close = os.getenv("BENCH_CLOSE") == "1"
  reqs = {}
  for line in io.lines(os.getenv("BENCH_PREFIX") .. tid .. ".txt") do
    local id, sig, body = line:match("^(%S+) (%S+) (.*)$")
    local h = {
      ["Content-Type"] = "application/json",
      ["User-Agent"] = "GitHub-Hookshot/bench",
      ["X-GitHub-Event"] = "pull_request",
      ["X-GitHub-Delivery"] = id,
      ["X-GitHub-Hook-ID"] = "109948940",
      ["X-Hub-Signature-256"] = sig,
    }
    if close then h["Connection"] = "close" end
    reqs[#reqs + 1] = wrk.format("POST", nil, h, body)
  end
  n = 0
  wrapped = false
  accepted = 0
  ok_ids = {}
end

function request()
  n = n + 1
  if n > #reqs then
    n = 1
    wrapped = true
  end
  return reqs[n]
end

function response(status, headers, body)
  if status >= 200 and status < 300 and body:find(marker, 1, true) then
    accepted = accepted + 1
    local id = body:match('"delivery":%s*"([^"]+)"')
    if id then ok_ids[#ok_ids + 1] = id end
  end
end

function done(summary, latency, requests)
  local total, any_wrapped, ids = 0, false, {}
  for _, t in ipairs(threads) do
    total = total + t:get("accepted")
    any_wrapped = any_wrapped or t:get("wrapped")
    for _, id in ipairs(t:get("ok_ids")) do ids[#ids + 1] = '"' .. id .. '"' end
  end
  local e = summary.errors
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "accepted": %d, "wrapped": %s, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"ok_ids": [%s]}\n',
    summary.requests, summary.duration, total, tostring(any_wrapped), latency:percentile(50),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(ids, ",")))
  out:close()
end
