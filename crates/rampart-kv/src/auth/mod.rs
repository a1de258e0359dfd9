//! etcd-compatible authentication and role-based access control: the model, free of IO.
//!
//! - [`store`]: users, roles and permissions, the enabled flag and the token secret; they
//!   live in the replicated state (changed only through the Raft log), so every node agrees
//!   and they survive restarts.
//! - [`perm`]: key-range permissions and the matcher deciding whether a request's range is
//!   covered by a user's grants.
//! - [`password`]: salted PBKDF2 hashes; [`token`]: HMAC tokens valid on every node.
//!
//! Who may call what is decided in the `access` module; the gRPC `Auth` service is in
//! `auth_service`. This module depends on neither (nor on the node), so it stays pure.

pub mod password;
pub mod perm;
pub mod store;
pub mod token;

pub use perm::{Perm, PermKind, covered};
pub use store::{AuthCommand, AuthState, ROOT, Role, User};
