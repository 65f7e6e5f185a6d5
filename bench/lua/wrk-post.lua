-- wrk request script for flowgate-bench: every request is the same POST, built once per thread.
--   BENCH_TOKEN      the bearer token sent in Authorization
--   BENCH_BODY_FILE  the request body (JSON), sent with Content-Type: application/json
--   BENCH_DELAY_MS   (optional) mean wait of each connection between requests: a paced load
--   BENCH_HEADER_NAME / BENCH_HEADER_VALUE   (optional) one more header (a signature)
--   BENCH_UNIQUE_NAME / BENCH_UNIQUE_PREFIX  (optional) a header new on every request: the
--                    prefix, then a count (a delivery id)
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE")), "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"))
local header = os.getenv("BENCH_HEADER_NAME")
if header then
  wrk.headers[header] = assert(os.getenv("BENCH_HEADER_VALUE"))
end

local unique = os.getenv("BENCH_UNIQUE_NAME")
if unique then
  local prefix, count = assert(os.getenv("BENCH_UNIQUE_PREFIX")), 0
  function request()
    count = count + 1
    wrk.headers[unique] = prefix .. count
    return wrk.format()
  end
end

-- Waits are drawn from 0..2x the mean so the connections do not fire in step.
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  function delay()
    return math.random(0, 2 * pause)
  end
end
