//! HTTP/1.1 upgrades (WebSocket and friends): the request goes to the upstream on a
//! connection of its own; on `101 Switching Protocols` both sides are spliced byte for byte
//! until either closes.

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, request};
use hyper::body::Incoming;

use super::{Exchange, response_from_upstream};
use crate::body::ProxyBody;
use crate::error::{Blame, ProxyError};
use crate::ingress::strip_hop_by_hop;
use crate::upstream::{ClusterRuntime, ResponseTail};

pub(super) async fn forward_upgrade(
    x: &mut Exchange<'_>,
    cluster: &ClusterRuntime,
    parts: &mut request::Parts,
    body: Incoming,
    path_and_query: PathAndQuery,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let guard = cluster.pick_for(x.conn.original_dst, None)?;
    let ep = guard.endpoint().clone();
    x.log.upstream = Some(ep.addr);
    // A body sent with the upgrade request (rare, but allowed) goes along with it.
    let mut up = Request::new(ProxyBody::stream(body));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = Uri::from(path_and_query);
    *up.headers_mut() = std::mem::take(&mut parts.headers);
    let mut resp = cluster.send_upgrade(&ep, up).await.inspect_err(|e| {
        if e.blame() == Blame::Upstream {
            ep.record_failure();
        }
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        return Ok(response_from_upstream(
            rparts,
            ProxyBody::upstream(rbody, ResponseTail::new(guard, None)),
        ));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let Some(downstream) = downstream else {
        return Err(ProxyError::Internal(
            "the downstream connection cannot be upgraded".into(),
        ));
    };
    tokio::spawn(async move {
        // The endpoint stays counted as busy while the tunnel is open.
        let _guard = guard;
        if let (Ok(d), Ok(u)) = tokio::join!(downstream, upstream) {
            let mut d = hyper_util::rt::TokioIo::new(d);
            let mut u = hyper_util::rt::TokioIo::new(u);
            let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
        }
    });
    let (rparts, _) = resp.into_parts();
    Ok(Response::from_parts(rparts, ProxyBody::empty()))
}
