-- mlship shadow traffic (loaded by the edge's haproxy.cfg; docs/deploy.md "Progressive delivery").
-- While on, a share of the live POST requests to one path is copied, in a task (the client's request
-- goes on to the stable server untouched and never waits for this), to the stable server and to the
-- candidate with core.httpclient; both answers are kept in memory, at most MAX, until the deployer
-- reads them with `mlship shadow dump` on the admin socket. No client ever gets the candidate's answer.
-- A request whose body did not fit the buffer (tune.bufsize) is not copied (counted as "large").
-- Admin socket: mlship shadow start <percent> <path> <stable ip:port> <candidate ip:port> | stop | dump
local cfg = {on = false, percent = 0, path = "/predict", stable = "", candidate = ""}
local results = {}
local stats = {sampled = 0, recorded = 0, dropped = 0, large = 0}
local MAX = 5000

local function esc(s)
  return ((s or ""):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub("\r", "\\r"):gsub("\t", "\\t"))
end

local function post(addr, path, body, ctype)
  local hc = core.httpclient()
  local res = hc:post{url = "http://" .. addr .. path, body = body,
                      headers = {["content-type"] = {ctype}, ["content-length"] = {tostring(#body)}}, timeout = 5000}
  if res == nil or res.status == nil then return 0, "" end
  return res.status, res.body or ""
end

core.register_action("mlship_shadow", {"http-req"}, function(txn)
  if not cfg.on or txn.sf:method() ~= "POST" or txn.sf:path() ~= cfg.path then return end
  if math.random() * 100 >= cfg.percent then return end
  local body = txn.sf:req_body() or ""
  local length = tonumber(txn.sf:req_hdr("content-length") or "")
  if length == nil or length ~= #body then stats.large = stats.large + 1; return end
  local ctype = txn.sf:req_hdr("content-type") or "application/json"
  local stable, cand, path = cfg.stable, cfg.candidate, cfg.path
  stats.sampled = stats.sampled + 1
  core.register_task(function()
    local s_status, s_body = post(stable, path, body, ctype)
    local c_status, c_body = post(cand, path, body, ctype)
    if #results >= MAX then stats.dropped = stats.dropped + 1; return end
    results[#results + 1] = table.concat({s_status, c_status, esc(body), esc(s_body), esc(c_body)}, "\t")
    stats.recorded = stats.recorded + 1
  end)
end)

core.register_cli({"mlship", "shadow"}, "mlship shadow start <percent> <path> <stable ip:port> <candidate ip:port> | stop | dump : shadow traffic", function(applet, _, _, cmd, a1, a2, a3, a4)
  if cmd == "start" then
    local pct = tonumber(a1)
    if pct == nil or pct <= 0 or pct > 100 or a2 == nil or a3 == nil or a4 == nil then
      applet:send("usage: mlship shadow start <percent> <path> <stable ip:port> <candidate ip:port>\n")
      return
    end
    cfg.percent, cfg.path, cfg.stable, cfg.candidate, cfg.on = pct, a2, a3, a4, true
    results, stats = {}, {sampled = 0, recorded = 0, dropped = 0, large = 0}
    applet:send("Shadow started.\n")
  elseif cmd == "stop" then
    cfg.on = false
    applet:send("Shadow stopped.\n")
  elseif cmd == "dump" then
    local out = results
    results = {}
    applet:send(string.format("# sampled %d recorded %d dropped %d large %d\n", stats.sampled, stats.recorded, stats.dropped, stats.large))
    for _, line in ipairs(out) do applet:send(line .. "\n") end
  else
    applet:send("usage: mlship shadow start|stop|dump\n")
  end
end)
