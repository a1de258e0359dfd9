package authz

test_viewer_can_read if {
	decision.allowed with input as {"method": "GET", "path": "/api/orders/1", "headers": {"x-user": "vera"}}
}

test_viewer_cannot_write if {
	not decision.allowed with input as {"method": "POST", "path": "/api/orders", "headers": {"x-user": "vera"}}
}

test_admin_can_write_and_roles_go_upstream if {
	d := decision with input as {"method": "POST", "path": "/api/orders", "headers": {"x-user": "ada"}}
	d.allowed
	d.headers["x-roles"] == "admin,viewer"
}

test_jwt_subject_wins if {
	decision.allowed with input as {"method": "GET", "path": "/api/x", "headers": {"x-user": "nobody"}, "jwt": {"sub": "vera"}}
}

test_unknown_user_gets_403 if {
	d := decision with input as {"method": "GET", "path": "/api/orders", "headers": {"x-user": "mallory"}}
	not d.allowed
	d.http_status == 403
}
