//! TLS 1.3 with raw public keys (RFC 7250) for every burrow QUIC connection.
//!
//! Both ends present their Ed25519 key as a raw `SubjectPublicKeyInfo` and sign the
//! handshake with it; there are no certificates and no certificate authorities. The
//! verifiers here check that the key is Ed25519 and that the handshake signature is
//! valid: possession of the key is proved. *Which* key is acceptable is decided by
//! the caller after the handshake ([`peer_id`]), so a mismatch can be reported with
//! both keys named, before a single application byte is sent.

use std::sync::Arc;

use burrow_proto::{NodeId, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The name put in the TLS SNI field. Raw-public-key peers are identified by key,
/// not by name, so it is the same for everyone.
pub const SERVER_NAME: &str = "burrow";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(secret: &SecretKey) -> Arc<rustls::sign::CertifiedKey> {
    let der = secret.to_pkcs8_der();
    let signer =
        rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(der.as_slice()))
            .expect("a PKCS#8 built from an Ed25519 seed is a valid Ed25519 key");
    let spki = CertificateDer::from(secret.public().to_spki_der());
    Arc::new(rustls::sign::CertifiedKey::new(vec![spki], signer))
}

/// The TLS config for dialing out with `alpn`, presenting `secret`'s key.
pub fn client_config(secret: &SecretKey, alpn: &[u8]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RawKeyVerifier(provider())))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(secret)),
        ));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// The TLS config for accepting connections for any of `alpns`, presenting
/// `secret`'s key and requiring the client's.
pub fn server_config(secret: &SecretKey, alpns: &[&[u8]]) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(RawKeyVerifier(provider())))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(secret)),
        ));
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// The protocol (ALPN) `conn` agreed on.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The key the peer proved in `conn`'s handshake.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    NodeId::from_spki_der(certs.first()?.as_ref()).ok()
}

/// Accepts any Ed25519 raw public key whose handshake signature verifies.
#[derive(Debug)]
struct RawKeyVerifier(Arc<CryptoProvider>);

impl RawKeyVerifier {
    fn check_key(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        NodeId::from_spki_der(end_entity.as_ref())
            .map(|_| ())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for RawKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check_key(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for RawKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check_key(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
