//! The fake Kubernetes API over real HTTP, driven by a plain hyper client: one test binary,
//! so the client in `support` serves every module.

mod api;
mod support;
mod test_side;
mod watch;
