//! Password hashes: PBKDF2-HMAC-SHA256 with a random 16-byte salt, from ring (already in the
//! tree through rustls, so no new crate; etcd uses bcrypt, which would be one). The
//! iteration count is stored with each hash, so it can be raised later without breaking
//! stored users. Hashing happens on the node that receives the request, before proposing: the
//! plain password never enters the Raft log (as etcd 3.5 sends `hashedPassword`).

use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, pbkdf2};
use serde::{Deserialize, Serialize};

use crate::error::KvError;

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is 600,000; this is lower because every
/// `etcdctl --user` invocation authenticates once and the store runs on small machines
/// (about 40 ms per check here, in the range of etcd's bcrypt cost 10).
pub const ITERATIONS: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Fresh random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, KvError> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| KvError::Internal("the system random generator failed".into()))?;
    Ok(buf)
}

pub fn hash(password: &str) -> Result<PasswordHash, KvError> {
    hash_with(password, ITERATIONS)
}

fn hash_with(password: &str, iterations: u32) -> Result<PasswordHash, KvError> {
    let salt = random_bytes(16)?;
    let mut out = vec![0u8; digest::SHA256_OUTPUT_LEN];
    let n = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(PasswordHash {
        iterations: n.get(),
        salt,
        hash: out,
    })
}

/// Constant-time comparison of `password` against the stored hash.
pub fn verify(password: &str, stored: &PasswordHash) -> bool {
    let Some(n) = NonZeroU32::new(stored.iterations) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        &stored.salt,
        password.as_bytes(),
        &stored.hash,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_password_and_salts_differ() {
        let a = hash_with("pw", 1000).unwrap();
        let b = hash_with("pw", 1000).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.hash, b.hash);
        assert!(verify("pw", &a));
        assert!(!verify("pW", &a));
        assert!(!verify("pw", &PasswordHash { iterations: 0, ..a }));
    }
}
