//! Ed25519 detached signatures over a module's bytes.
//!
//! A signature travels beside its module (`PATH.sig`: the 64-byte signature in base64); the
//! trusted keys are 32-byte Ed25519 public keys in base64, as `rampart wasm keygen` prints
//! them. A private key is kept as PKCS#8 (base64, the file owner's only). Signing and
//! verification are ring's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the module has no signature ({0} is missing); sign it with `rampart wasm sign`")]
    Missing(String),
    #[error("the signature is not 64 bytes of base64")]
    Malformed,
    #[error("no trusted key signed this module (checked {0} key(s))")]
    Untrusted(usize),
    #[error("trusted key {index}: not a 32-byte Ed25519 public key in base64")]
    BadKey { index: usize },
    #[error("the private key is not Ed25519 PKCS#8 in base64")]
    BadPrivateKey,
    #[error("no randomness for a new key")]
    Random,
}

/// A new key pair: (private key as base64 PKCS#8, public key as base64).
pub fn generate() -> Result<(String, String), SignatureError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignatureError::Random)?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SignatureError::BadPrivateKey)?;
    Ok((
        B64.encode(pkcs8.as_ref()),
        B64.encode(pair.public_key().as_ref()),
    ))
}

/// The signature of `module` under `private_key` (base64 PKCS#8), in base64.
pub fn sign(private_key: &str, module: &[u8]) -> Result<String, SignatureError> {
    let der = B64
        .decode(private_key.trim())
        .map_err(|_| SignatureError::BadPrivateKey)?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SignatureError::BadPrivateKey)?;
    Ok(B64.encode(pair.sign(module).as_ref()))
}

/// The public key of a private key (both base64).
pub fn public_key(private_key: &str) -> Result<String, SignatureError> {
    let der = B64
        .decode(private_key.trim())
        .map_err(|_| SignatureError::BadPrivateKey)?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SignatureError::BadPrivateKey)?;
    Ok(B64.encode(pair.public_key().as_ref()))
}

/// The keys a module may be signed with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<[u8; 32]>);

impl TrustedKeys {
    /// Base64 public keys, each checked (the index of a bad one is reported).
    pub fn parse(keys: &[String]) -> Result<Self, SignatureError> {
        keys.iter()
            .enumerate()
            .map(|(index, k)| {
                B64.decode(k.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(SignatureError::BadKey { index })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The index of the trusted key whose signature `signature` (base64) is over `module`.
    pub fn verify(&self, module: &[u8], signature: &str) -> Result<usize, SignatureError> {
        let sig = B64
            .decode(signature.trim())
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(SignatureError::Malformed)?;
        self.0
            .iter()
            .position(|k| {
                UnparsedPublicKey::new(&ED25519, k)
                    .verify(module, &sig)
                    .is_ok()
            })
            .ok_or(SignatureError::Untrusted(self.0.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_under_its_key_only_and_over_these_bytes_only() {
        let (private, public) = generate().unwrap();
        let (_, other) = generate().unwrap();
        let module = b"\0asm\x01\0\0\0";
        let sig = sign(&private, module).unwrap();
        assert_eq!(public_key(&private).unwrap(), public);
        let both = TrustedKeys::parse(&[other.clone(), public.clone()]).unwrap();
        assert_eq!(both.verify(module, &sig), Ok(1));
        let only_other = TrustedKeys::parse(&[other]).unwrap();
        assert_eq!(
            only_other.verify(module, &sig),
            Err(SignatureError::Untrusted(1))
        );
        assert_eq!(
            both.verify(b"\0asm\x01\0\0\x01", &sig),
            Err(SignatureError::Untrusted(2))
        );
        assert_eq!(
            both.verify(module, "bm90IGEgc2ln"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            TrustedKeys::parse(&["c2hvcnQ=".into()]),
            Err(SignatureError::BadKey { index: 0 })
        );
    }
}
