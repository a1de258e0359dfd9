# RBAC for tenant "acme": users are bound to roles, roles grant (method, path prefix)
# permissions. The entry point is data.authz.decision (OPA-Envoy's decision shape).
package authz

default decision := {
	"allowed": false,
	"http_status": 403,
	"body": {"error": "forbidden", "tenant": "acme"},
	"headers": {"content-type": "application/json"},
}

decision := {
	"allowed": true,
	"headers": {"x-user": user, "x-roles": concat(",", sort(roles))},
} if allowed

# The verified JWT subject when the jwt filter ran, else the x-user header (demo only).
user := input.jwt.sub if {
	input.jwt.sub
} else := input.headers["x-user"]

roles contains role if {
	some role in data.bindings[user]
}

allowed if {
	some role in roles
	some perm in data.roles[role].permissions
	perm.method in {"*", input.method}
	startswith(input.path, perm.path_prefix)
}
