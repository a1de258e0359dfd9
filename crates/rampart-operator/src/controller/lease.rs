//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
//! the holder renews `renewTime` every third of the lease's duration; another replica takes
//! the lease over only once it has gone unrenewed for the whole duration; every write carries
//! the resourceVersion read, so two replicas racing for it cannot both win (the API server
//! answers one of them 409 Conflict).
//!
//! Simplification: expiry is judged on this replica's clock against the holder's
//! `renewTime`, which assumes the replicas' clocks agree to well within the duration
//! (client-go measures the time since it last saw the record change instead).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, Error};

/// Where the lease is and who competes for it.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    pub duration: Duration,
}

/// This replica's hold on the lease.
pub struct Lease {
    api: Api<LeaseObject>,
    s: LeaseSettings,
}

impl Lease {
    pub fn new(client: Client, s: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &s.namespace),
            s,
        }
    }

    /// One round: takes the lease if it is free or expired, renews it if it is ours.
    /// `Ok(true)` while this replica holds it.
    pub async fn try_hold(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = LeaseObject {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.s.identity.as_str());
        let held_for =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
        let expired = spec.holder_identity.is_none()
            || spec
                .renew_time
                .as_ref()
                .is_none_or(|r| r.0.checked_add(held_for).is_ok_and(|until| until < now));
        if !mine && !expired {
            return Ok(false);
        }
        let (acquired, transitions) = if mine {
            (
                spec.acquire_time.map_or(now, |t| t.0),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now, spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec(acquired, now, transitions));
        conflict_is_false(
            self.api
                .replace(&self.s.name, &PostParams::default(), &lease)
                .await,
        )
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.s.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// [`Lease::try_hold`] bounded by a third of the lease's duration (a hung API call must
    /// not outlive the lease it renews).
    async fn attempt(&self) -> Result<bool, String> {
        match tokio::time::timeout(self.s.duration / 3, self.try_hold()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the API server did not answer in time".into()),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.attempt().await {
                Ok(true) => {
                    tracing::info!(identity = %self.s.identity, lease = %self.s.name, "leading");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the lease"),
            }
            tokio::time::sleep(self.s.duration / 3).await;
        }
    }

    /// Renews the lease every third of its duration; returns once it is lost: taken by
    /// another replica, or not renewed within two thirds of its duration (the renew
    /// deadline, measured from before the renewing request, so this replica stops before
    /// another may take over). The caller must stop writing at once.
    pub async fn hold(&self) {
        let deadline = self.s.duration * 2 / 3;
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.s.duration / 3).await;
            let started = tokio::time::Instant::now();
            match self.attempt().await {
                Ok(true) => renewed = started,
                Ok(false) => {
                    tracing::warn!(lease = %self.s.name, "another replica holds the lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease");
                    if renewed.elapsed() >= deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on a clean shutdown), so another replica need not wait it out.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.s.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the lease");
        }
    }
}

/// A write that lost a race (409) means another replica holds the lease.
fn conflict_is_false<T>(r: Result<T, Error>) -> Result<bool, Error> {
    match r {
        Ok(_) => Ok(true),
        Err(Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    //! The lease against kube's mock service: every request the client makes is seen and
    //! answered here, as the API server would.

    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    fn lease(s: &LeaseSettings) -> (Lease, Handle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (
            Lease::new(Client::new(service, "default"), s.clone()),
            handle,
        )
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "rampart-system".into(),
            name: "rampart-operator".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
        }
    }

    fn held(by: &str, renewed: Timestamp) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": "rampart-operator", "namespace": "rampart-system", "resourceVersion": "7" },
            "spec": {
                "holderIdentity": by, "leaseDurationSeconds": 15, "leaseTransitions": 2,
                "acquireTime": renewed.to_string(), "renewTime": renewed.to_string(),
            },
        })
    }

    fn reply(code: u16, body: &Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    /// The next request: its method, path and JSON body.
    async fn next(h: &mut Handle) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
        let (req, send) = h.next_request().await.expect("a request");
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (method, path, body, send)
    }

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/rampart-system/leases";

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (lease, mut h) = lease(&settings());
        let server = tokio::spawn(async move {
            let (m, path, _, send) = next(&mut h).await;
            assert_eq!((m, path), (Method::GET, format!("{PATH}/rampart-operator")));
            send.send_response(reply(200, &held("other", Timestamp::now())));
            h
        });
        assert!(!lease.try_hold().await.unwrap());
        let mut h = server.await.unwrap();
        // No write followed the read.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), h.next_request())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_with_the_version_read_and_a_lost_race_is_not_leading() {
        let (lease, mut h) = lease(&settings());
        let stale = Timestamp::now() - SignedDuration::from_secs(60);
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next(&mut h).await;
            send.send_response(reply(200, &held("other", stale)));
            let (m, path, body, send) = next(&mut h).await;
            assert_eq!((m, path), (Method::PUT, format!("{PATH}/rampart-operator")));
            assert_eq!(body["metadata"]["resourceVersion"], "7", "{body}");
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            // Another replica wrote first.
            let conflict = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified" });
            send.send_response(reply(409, &conflict));
        });
        assert!(!lease.try_hold().await.unwrap());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_our_own_is_renewed_keeping_its_acquire_time() {
        let (lease, mut h) = lease(&settings());
        let acquired = Timestamp::from_second(Timestamp::now().as_second() - 5).unwrap();
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next(&mut h).await;
            let missing = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found" });
            send.send_response(reply(404, &missing));
            let (m, path, body, send) = next(&mut h).await;
            assert_eq!((m, path.as_str()), (Method::POST, PATH));
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            send.send_response(reply(201, &body));
            // The next round renews.
            let (_, _, _, send) = next(&mut h).await;
            send.send_response(reply(200, &held("me", acquired)));
            let (m, _, body, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT);
            let time = |v: &Value| v.as_str().unwrap().parse::<Timestamp>().unwrap();
            assert_eq!(time(&body["spec"]["acquireTime"]), acquired);
            assert_eq!(body["spec"]["leaseTransitions"], 2);
            assert_ne!(body["spec"]["renewTime"], body["spec"]["acquireTime"]);
            send.send_response(reply(200, &body));
        });
        assert!(lease.try_hold().await.unwrap());
        assert!(lease.try_hold().await.unwrap());
        server.await.unwrap();
    }
}
