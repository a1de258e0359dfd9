-- wrk script used by bench/openapi.sh: POSTs the 1 KiB JSON order in BENCH_BODY_FILE (valid
-- for shop.yaml's createOrder) to the URL's path, then the BENCH_ report of latency.lua.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["content-type"] = "application/json"
-- createOrder asks for an API key (or a bearer token): the gateway checks one is there.
wrk.headers["x-api-key"] = "bench"
dofile("bench/latency.lua")
