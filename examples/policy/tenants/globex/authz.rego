# ABAC for tenant "globex": a request is allowed when the user's attributes (department,
# clearance) satisfy the attributes of the resource its path falls under.
package authz

default decision := {"allowed": false, "http_status": 403, "body": "denied by globex policy"}

decision := {"allowed": true, "headers": {"x-clearance": sprintf("%d", [subject.clearance])}} if allowed

decision := {
	"allowed": false,
	"http_status": 401,
	"body": "unknown user",
	"headers": {"www-authenticate": "Bearer realm=\"globex\""},
} if not subject

subject := data.users[input.jwt.sub] if {
	input.jwt.sub
} else := data.users[input.headers["x-user"]]

# The most specific resource whose prefix matches the path.
resource := data.resources[name] if {
	some name
	matching[name]
	every other in object.keys(matching) {
		count(data.resources[other].prefix) <= count(data.resources[name].prefix)
	}
}

matching[name] := r if {
	some name, r in data.resources
	startswith(input.path, r.prefix)
}

allowed if {
	subject.clearance >= resource.classification
	subject.department in resource.departments
	input.method in resource.methods
}
