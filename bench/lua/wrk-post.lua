-- wrk request script for flowgate-bench: every request is the same POST, built once per thread.
--   BENCH_TOKEN      the bearer token sent in Authorization
--   BENCH_BODY_FILE  the request body (JSON), sent with Content-Type: application/json
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE")), "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"))
