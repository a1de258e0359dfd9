//! Rampart's Kubernetes operator (issue 18, in progress).
//!
//! - [`rollout`]: a resource's rollout as a pure, level-triggered state machine:
//!   Provisioning → Running, or → Failed → RolledBack to the last known good generation when
//!   the proxies refuse the config, health checks fail or errors rise within the bake time.
//!
//! The Kubernetes side (Gateway API and Rampart CRDs on kube-rs, the controller, leader
//! election, the workloads) builds on this.

pub mod rollout;
