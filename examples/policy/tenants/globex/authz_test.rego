package authz

test_engineer_reads_code if {
	decision.allowed with input as {"method": "GET", "path": "/code/main.rs", "headers": {"x-user": "eve"}}
}

test_low_clearance_denied_on_secrets if {
	not decision.allowed with input as {"method": "GET", "path": "/code/secrets/key", "headers": {"x-user": "eve"}}
}

test_high_clearance_reads_secrets if {
	decision.allowed with input as {"method": "GET", "path": "/code/secrets/key", "headers": {"x-user": "sam"}}
}

test_wrong_department if {
	not decision.allowed with input as {"method": "GET", "path": "/payroll/2026", "headers": {"x-user": "eve"}}
}

test_unknown_user_is_401 if {
	d := decision with input as {"method": "GET", "path": "/code/x", "headers": {"x-user": "who"}}
	d.http_status == 401
}
