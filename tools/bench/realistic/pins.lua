-- tools/bench/realistic/pins.lua: wrk script for pinsd's REST API that draws tenants and keys
-- the way `pinsctl bench` does: tenant <tenant-prefix>T uniform over TENANTS, key <key-prefix>R
-- with R uniform over KEYS or zipfian (P(R = r) ~ 1/(r+1)^S, r from 0), per call.
--
--   wrk -s pins.lua URL -- TENANTS KEYS DIST S PUT_PCT VALUE_SIZE [KEY_PREFIX TENANT_PREFIX]
--
--   DIST       uniform | zipfian (a CDF table over the KEYS ranks, built in init, searched by
--              bisection per call)
--   PUT_PCT    0..100: that share of calls is POST /api/v1/memory/pins (an upsert with the value
--              {"data":"xxx..."} of about VALUE_SIZE bytes), spread evenly (exactly PUT_PCT of
--              every 100 calls, as pinsctl bench's --mix); the others are
--              GET /api/v1/memory/pins/{key}?tenant_id=...
--
-- done() prints one line "JSON {...}" with requests, duration, req/s, latency p50/p99/p99.9/max in
-- ms and wrk's error counts (connect, read, write, timeout, and non-2xx/3xx answers as status).

local tenants, keys, dist, zs, put_pct, vsize = 100, 1000, "uniform", 0.99, 0, 200
local key_prefix, tenant_prefix = "bench-", "bench-t"
local cdf = nil
local n = 0
local body = nil
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_seed", thread_no)
end

function init(args)
  tenants = tonumber(args[1] or tenants)
  keys = tonumber(args[2] or keys)
  dist = args[3] or dist
  zs = tonumber(args[4] or zs)
  put_pct = tonumber(args[5] or put_pct)
  vsize = tonumber(args[6] or vsize)
  key_prefix = args[7] or key_prefix
  tenant_prefix = args[8] or tenant_prefix
  math.randomseed(1000003 * (thread_seed or 1) + 17)
  if dist == "zipfian" then
    cdf = {}
    local sum = 0
    for r = 1, keys do
      sum = sum + 1 / (r ^ zs)
      cdf[r] = sum
    end
    for r = 1, keys do
      cdf[r] = cdf[r] / sum
    end
  elseif dist ~= "uniform" then
    error("pins.lua: DIST must be uniform or zipfian, got " .. tostring(dist))
  end
  local pad = vsize - 12
  if pad < 0 then
    pad = 0
  end
  body = string.rep("x", pad)
end

local function draw_key()
  if cdf == nil then
    return math.random(0, keys - 1)
  end
  local u = math.random()
  local lo, hi = 1, keys
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo - 1
end

local post_headers = { ["Content-Type"] = "application/json" }

function request()
  n = n + 1
  local t = tenant_prefix .. math.random(0, tenants - 1)
  local k = key_prefix .. draw_key()
  -- exact proportions: call n is a put when floor(n * p / 100) steps up at n
  if put_pct > 0 and math.floor(n * put_pct / 100) ~= math.floor((n - 1) * put_pct / 100) then
    local b = '{"tenant_id":"' .. t .. '","key":"' .. k .. '","source":"bench","value":{"data":"' .. body .. '"}}'
    return wrk.format("POST", "/api/v1/memory/pins", post_headers, b)
  end
  return wrk.format("GET", "/api/v1/memory/pins/" .. k .. "?tenant_id=" .. t)
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,' ..
    '"max_ms":%.3f,"mean_ms":%.3f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
