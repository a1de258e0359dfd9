-- wrk script used by bench/authz.sh: every request carries the headers the acme RBAC policy
-- needs (user vera, a viewer, reading /api/...), then the BENCH_ report of latency.lua.
wrk.headers["x-user"] = "vera"
wrk.headers["x-tenant"] = "acme"
wrk.path = "/api/orders/42?page=2"
dofile("bench/latency.lua")
