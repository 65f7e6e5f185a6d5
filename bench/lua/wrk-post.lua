-- wrk request script for flowgate-bench: every request is the same POST, built once per thread.
--   BENCH_TOKEN      the bearer token sent in Authorization
--   BENCH_BODY_FILE  the request body (JSON), sent with Content-Type: application/json
--   BENCH_DELAY_MS   (optional) mean wait of each connection between requests: a paced load
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE")), "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"))

-- Waits are drawn from 0..2x the mean so the connections do not fire in step.
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  function delay()
    return math.random(0, 2 * pause)
  end
end
