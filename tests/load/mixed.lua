-- wrk script: mixed webhook traffic through Envoy + flowgate, with every response recorded.
--
-- Used by tests/tests/faults_under_load.rs and the soak (tests/src/bin/soak.rs, scripts/soak.sh).
-- Driven by environment variables:
--
--   LOAD_SPEC  a file with one request kind per line, tab-separated:
--                kind <TAB> method <TAB> path <TAB> body <TAB> header: value <TAB> header: value ...
--              (body may be empty; no tabs or newlines inside fields)
--   LOAD_MODE  "per-thread": thread i sends only kind i (modulo the number of kinds), so every
--              response is known to belong to its kind; "rotate" (default): every thread cycles
--              through all kinds, and responses are recorded under the kind "mixed".
--   LOAD_OUT   where done() writes the JSON summary (see below).
--   LOAD_DELAY_MS  optional pause before each request on a connection (default 0: closed loop).
--
-- Each response is reduced to a signature -- kind, status, content-type, retry-after,
-- www-authenticate and the body (run ids replaced by "*", at most 512 bytes) -- and counted per
-- signature, so the summary stays small however long the run. The caller judges every signature.
--
-- Summary: {"requests", "duration_us", "bytes", "errors": {connect, read, write, status, timeout},
--           "latency_us": {p50, p90, p99, max}, "sent": {kind: n},
--           "responses": [{kind, status, content_type, retry_after, www_authenticate, body, count}],
--           "distinct_overflow": n}

local MAX_SIGNATURES = 2000
local MAX_BODY = 512

local function split(line, sep)
  local fields = {}
  local start = 1
  while true do
    local i = string.find(line, sep, start, true)
    if not i then
      table.insert(fields, string.sub(line, start))
      return fields
    end
    table.insert(fields, string.sub(line, start, i - 1))
    start = i + 1
  end
end

local function load_kinds()
  local path = assert(os.getenv("LOAD_SPEC"), "LOAD_SPEC is not set")
  local kinds = {}
  for line in io.lines(path) do
    if line ~= "" then
      local f = split(line, "\t")
      local headers = {}
      for i = 5, #f do
        local name, value = string.match(f[i], "^([^:]+):%s*(.*)$")
        if name then
          headers[name] = value
        end
      end
      local body = f[4]
      if body == "" then
        body = nil
      end
      table.insert(kinds, { name = f[1], request = wrk.format(f[2], f[3], headers, body) })
    end
  end
  assert(#kinds > 0, "LOAD_SPEC lists no request kinds")
  return kinds
end

-- Main state: hand each thread its index.
local threads = {}
local next_index = 0

function setup(thread)
  thread:set("thread_index", next_index)
  next_index = next_index + 1
  table.insert(threads, thread)
end

-- Thread state.
local kinds
local rotate
local position = 0
local current_kind = "mixed"
counts = {}
sent = {}
distinct = 0
distinct_overflow = 0

function init(args)
  kinds = load_kinds()
  rotate = os.getenv("LOAD_MODE") ~= "per-thread"
  if rotate then
    -- Threads start at different kinds so the mix is even from the first request on.
    position = thread_index % #kinds
  else
    current_kind = kinds[(thread_index % #kinds) + 1].name
  end
end

local delay_ms = tonumber(os.getenv("LOAD_DELAY_MS") or "0") or 0

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function request()
  local kind
  if rotate then
    kind = kinds[position + 1]
    position = (position + 1) % #kinds
  else
    kind = kinds[(thread_index % #kinds) + 1]
  end
  sent[kind.name] = (sent[kind.name] or 0) + 1
  return kind.request
end

local function header(headers, wanted)
  for name, value in pairs(headers) do
    if string.lower(name) == wanted then
      return value
    end
  end
  return ""
end

function response(status, headers, body)
  body = body or ""
  body = string.gsub(body, '"run_id"%s*:%s*"[^"]*"', '"run_id":"*"')
  if #body > MAX_BODY then
    body = string.sub(body, 1, MAX_BODY) .. "...(truncated)"
  end
  body = string.gsub(body, "[\t\n]", " ")
  local key = table.concat({
    current_kind,
    tostring(status),
    header(headers, "content-type"),
    header(headers, "retry-after"),
    header(headers, "www-authenticate"),
    body,
  }, "\t")
  if counts[key] == nil then
    if distinct >= MAX_SIGNATURES then
      distinct_overflow = distinct_overflow + 1
      return
    end
    distinct = distinct + 1
    counts[key] = 0
  end
  counts[key] = counts[key] + 1
end

-- JSON output (done() runs in the main state and collects every thread's tables).
local function json_string(s)
  s = string.gsub(s, '[%c"\\\128-\255]', function(c)
    if c == '"' then
      return '\\"'
    elseif c == "\\" then
      return "\\\\"
    else
      return string.format("\\u%04x", string.byte(c))
    end
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local merged = {}
  local merged_sent = {}
  local overflow = 0
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("counts")) do
      merged[key] = (merged[key] or 0) + n
    end
    for kind, n in pairs(thread:get("sent")) do
      merged_sent[kind] = (merged_sent[kind] or 0) + n
    end
    overflow = overflow + thread:get("distinct_overflow")
  end
  local out = {}
  table.insert(out, "{")
  table.insert(out, string.format('"requests": %d, "duration_us": %d, "bytes": %d,', summary.requests,
    summary.duration, summary.bytes))
  local e = summary.errors
  table.insert(out, string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d},',
    e.connect, e.read, e.write, e.status, e.timeout))
  table.insert(out, string.format('"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d},',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  local parts = {}
  for kind, n in pairs(merged_sent) do
    table.insert(parts, json_string(kind) .. ": " .. n)
  end
  table.insert(out, '"sent": {' .. table.concat(parts, ", ") .. "},")
  table.insert(out, '"distinct_overflow": ' .. overflow .. ",")
  parts = {}
  for key, n in pairs(merged) do
    local f = split(key, "\t")
    table.insert(parts, string.format(
      '{"kind": %s, "status": %s, "content_type": %s, "retry_after": %s, "www_authenticate": %s, "body": %s, "count": %d}',
      json_string(f[1]), f[2], json_string(f[3]), json_string(f[4]), json_string(f[5]), json_string(f[6]), n))
  end
  table.insert(out, '"responses": [\n' .. table.concat(parts, ",\n") .. "\n]")
  table.insert(out, "}")
  local path = assert(os.getenv("LOAD_OUT"), "LOAD_OUT is not set")
  local file = assert(io.open(path, "w"))
  file:write(table.concat(out, "\n"))
  file:close()
end
