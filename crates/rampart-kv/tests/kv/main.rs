//! The store's integration tests: real nodes over loopback gRPC, in one test binary.

mod api;
mod cluster;
mod storage_suite;
mod support;
