//! Rampart's Kubernetes operator (issue 18, in progress).
//!
//! - [`rollout`]: a resource's rollout as a pure, level-triggered state machine:
//!   Provisioning → Running, or → Failed → RolledBack to the last known good generation when
//!   the proxies refuse the config, health checks fail or errors rise within the bake time.
//!
//! - [`crds`]: Rampart's custom resources (RampartPolicy, RampartFunction, RampartWasmPlugin,
//!   RampartCluster) on kube-rs, their CRDs generated from the types, the rollout kept in
//!   their status.
//!
//! - [`gateway`], [`translate`]: Gateways and HTTPRoutes (gateway.networking.k8s.io/v1) as
//!   Rampart listeners, route tables and clusters, ordered by the Gateway API's precedence.
//!
//! - [`manifests`]: what installs the operator (namespace, service account, least-privilege
//!   RBAC, a Deployment of two replicas running `rampart operator run`).
//!
//! - [`workloads`]: what a RampartCluster runs (the store's StatefulSet with peer mTLS, its
//!   Services and PodDisruptionBudget, the control plane, the proxies), and its peer PKI.
//!
//! - [`controller`]: the controller: Gateways and HTTPRoutes reconciled into the store through
//!   a [`controller::Platform`] the binary provides, each generation rolled out and reverted
//!   by the state machine, leader election on a Lease, metrics.

pub mod controller;
/// The kube-rs client the controller is built on, for the binary that makes its client.
pub use kube;
pub mod crds;
pub mod gateway;
pub mod manifests;
pub mod rollout;
pub mod translate;
pub mod workloads;
