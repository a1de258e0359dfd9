"""Checks of Rampart's own, loaded into schemathesis (SCHEMATHESIS_HOOKS=rampart_checks) by
crates/rampart/tests/openapi_schemathesis.rs: the gateway answers every request it refuses
with an RFC 9457 problem document, and only requests it passed reach the server (which marks
its answers with `x-served-by`)."""

import schemathesis


def _header(response, name):
    values = response.headers.get(name) or response.headers.get(name.lower()) or []
    if isinstance(values, str):
        return values
    return values[0] if values else ""


@schemathesis.check
def rampart_gateway_answers(ctx, response, case):
    served = _header(response, "x-served-by").endswith("-server")
    status = response.status_code
    if 200 <= status < 300 and not served:
        raise AssertionError(f"{status} did not come from the server")
    if status in (400, 401):
        if served:
            raise AssertionError(f"the server refused ({status}) what the gateway passed")
        content_type = _header(response, "content-type")
        if content_type != "application/problem+json":
            raise AssertionError(f"{status} with content type {content_type!r}, not a problem document")
        doc = response.json()
        if doc.get("status") != status or not doc.get("detail"):
            raise AssertionError(f"a problem document without status or detail: {doc}")
        for e in doc.get("errors", []):
            if not str(e.get("pointer", "")).startswith("/"):
                raise AssertionError(f"an error without a pointer: {e}")
