//! Identities: every node and server is an Ed25519 key pair.
//!
//! The public key is the node's id, written as 64 lowercase hex digits; people see
//! the first [`NodeId::SHORT_LEN`] of them. In TLS the key travels as a raw public
//! key: a DER `SubjectPublicKeyInfo`, whose Ed25519 form is a fixed 12-byte prefix
//! followed by the 32 key bytes.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410): the key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A node's (or server's) public identity: an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

/// Why a string or key could not be read as a [`NodeId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    /// Not 64 hex digits.
    #[error("a node id is 64 hex digits")]
    BadHex,
    /// The bytes are not a valid Ed25519 public key (or not an Ed25519 SPKI).
    #[error("not an Ed25519 public key")]
    NotEd25519,
}

impl NodeId {
    /// How many hex digits of an id are shown to people.
    pub const SHORT_LEN: usize = 8;

    /// Builds an id from raw key bytes, checking that they are a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, NodeIdError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| NodeIdError::NotEd25519)?;
        Ok(NodeId(bytes))
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first [`Self::SHORT_LEN`] hex digits, as shown to people.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(Self::SHORT_LEN);
        s
    }

    /// The key as a DER `SubjectPublicKeyInfo`, the form TLS raw public keys use.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        der
    }

    /// Reads a DER `SubjectPublicKeyInfo` holding an Ed25519 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, NodeIdError> {
        let key = der
            .strip_prefix(&SPKI_PREFIX[..])
            .ok_or(NodeIdError::NotEd25519)?;
        let bytes: [u8; 32] = key.try_into().map_err(|_| NodeIdError::NotEd25519)?;
        Self::from_bytes(bytes)
    }

    /// Checks `signature` over `message` against this key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| NodeIdError::BadHex)?;
        Self::from_bytes(bytes)
    }
}

/// A node's (or server's) secret key. Its bytes never leave the home directory.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// A fresh key from `rng` (the OS RNG in production, a seeded one in tests).
    pub fn generate<R: rand::CryptoRng + rand::RngCore>(rng: &mut R) -> Self {
        SecretKey(ed25519_dalek::SigningKey::generate(rng))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storing in the key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public id.
    pub fn public(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The key as PKCS#8 v1 DER, the form TLS libraries load.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.0.to_bytes());
        der
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.public().short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn id_round_trips_through_text_and_spki() {
        let id = key(1).public();
        assert_eq!(id.to_string().len(), 64);
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        assert_eq!(NodeId::from_spki_der(&id.to_spki_der()), Ok(id));
        assert_eq!(id.short().len(), NodeId::SHORT_LEN);
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!("abc".parse::<NodeId>(), Err(NodeIdError::BadHex));
        assert_eq!(
            NodeId::from_spki_der(&[0x30, 0x2a]),
            Err(NodeIdError::NotEd25519)
        );
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let (a, b) = (key(1), key(2));
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hullo", &sig));
        assert!(!b.public().verify(b"hello", &sig));
    }
}
