//! Auth tokens: `<user hex>.<expiry unix seconds>.<HMAC-SHA256 hex>` under a secret that lives
//! in the replicated auth state.
//!
//! etcd's default "simple" tokens are random strings remembered by the member that issued
//! them, so a client that reconnects to another member must authenticate again. Here a token
//! issued by any node is valid on every node (like etcd's JWT tokens, without a key file to
//! distribute): the secret is drawn at `AuthEnable` by the proposing node and replicated with
//! the users. The MAC key of a user's tokens is the secret plus that user's password salt
//! ([`crate::auth::AuthState::token_secret`]). Consequences: tokens survive restarts and
//! leader changes; deleting a user or changing their password revokes their tokens at once
//! (as etcd does); disabling and re-enabling auth draws a new secret and so revokes every
//! token; a token otherwise lives until its TTL (etcd's `--auth-token-ttl`, 300 s).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// Seconds since the epoch (0 if the clock is before 1970).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &[u8], user_hex: &str, expiry: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::sign(&key, format!("{user_hex}.{expiry}").as_bytes())
}

/// A token for `user`, valid for `ttl`.
pub fn issue(secret: &[u8], user: &str, ttl: Duration) -> String {
    let user_hex = hex(user.as_bytes());
    let expiry = now_secs().saturating_add(ttl.as_secs());
    let tag = mac(secret, &user_hex, expiry);
    format!("{user_hex}.{expiry}.{}", hex(tag.as_ref()))
}

/// The user a token claims to be for, unverified (to pick the key that verifies it).
pub fn claimed_user(token: &str) -> Option<String> {
    String::from_utf8(unhex(token.split('.').next()?)?).ok()
}

/// The user a token names, if its MAC is right and it has not expired.
pub fn verify(secret: &[u8], token: &str) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    let mut parts = token.split('.');
    let (user_hex, expiry, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let expiry: u64 = expiry.parse().ok()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(
        &key,
        format!("{user_hex}.{expiry}").as_bytes(),
        &unhex(tag)?,
    )
    .ok()?;
    if expiry < now_secs() {
        return None;
    }
    String::from_utf8(unhex(user_hex)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tampering() {
        let t = issue(b"secret", "alice.x", Duration::from_secs(60));
        assert_eq!(verify(b"secret", &t).as_deref(), Some("alice.x"));
        assert_eq!(verify(b"other", &t), None);
        assert_eq!(verify(b"", &t), None);
        let forged = t.replacen(&hex(b"alice.x"), &hex(b"root"), 1);
        assert_eq!(verify(b"secret", &forged), None);
        let expired = issue(b"secret", "alice", Duration::ZERO);
        let past = expired.replacen(
            &format!(".{}.", now_secs()),
            &format!(".{}.", now_secs() - 10),
            1,
        );
        assert_eq!(verify(b"secret", &past), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics_or_verifies(s in ".{0,80}") {
            prop_assert_eq!(verify(b"secret", &s), None);
        }
    }
}
