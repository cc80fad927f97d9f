//! Datagrams over HTTPS, for networks that pass nothing else.
//!
//! Some networks (corporate, hotel, guest) drop UDP and every TCP port but
//! 443, or let nothing out but through an HTTP proxy. There a node reaches the
//! server as a browser reaches a web app over a WebSocket: TLS on TCP, an
//! HTTP/1.1 `Upgrade: websocket` at [`PATH`], then each datagram (a QUIC
//! packet, a relay datagram) one binary WebSocket message. What a middlebox
//! sees is an ordinary `wss://` connection. Inside, it is a link like a TCP one
//! ([`crate::tcp`]): it gets a virtual address, and QUIC, the session and the
//! relay run over it unchanged.
//!
//! The TLS layer is camouflage and passage, not identity: the QUIC handshake
//! inside pins the server's key exactly as over UDP, so the node accepts any
//! certificate here. The server shows the certificate it is given
//! (`--cert`/`--key`, e.g. Let's Encrypt's, which a TLS-inspecting proxy that
//! checks upstream certificates needs) or else a self-signed one made at start.
//!
//! Through a proxy (`HTTPS_PROXY`, `--proxy`), the node first asks it for a
//! tunnel (`CONNECT host:port`), as browsers and curl do; a refusal comes back
//! as the proxy's own status line. The tunnel names the server as the user
//! wrote it, so a name that resolves only on the proxy's side (a network whose
//! only way out is the proxy often has no outside DNS) works: see [`Via`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// The path the WebSocket is upgraded at.
pub const PATH: &str = "/burrow";
/// The most a proxy's answer to CONNECT may be, head and all.
const MAX_PROXY_ANSWER: usize = 8 * 1024;
/// How long TLS, the upgrade (and a proxy's answer) may take.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why an HTTPS link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The TCP connection, TLS or the upgrade failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The WebSocket upgrade failed (not a burrow server there, or a proxy
    /// that broke it).
    #[error("WebSocket upgrade: {0}")]
    Upgrade(#[from] tokio_tungstenite::tungstenite::Error),
    /// The proxy refused the tunnel.
    #[error("the proxy at {proxy} refused the tunnel: {status}")]
    ProxyRefused {
        /// The proxy.
        proxy: String,
        /// Its status line.
        status: String,
    },
    /// The certificate or key file could not be used.
    #[error("{path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing within [`HANDSHAKE`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The WebSocket settings on both ends: messages no larger than a link's
/// datagram (plus room for the framing), nothing buffered beyond a few.
pub(crate) fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(crate::tcp::MAX_DATAGRAM);
    c.max_frame_size = Some(crate::tcp::MAX_DATAGRAM);
    c
}

/// The server's TLS config: the certificate chain and key in PEM files
/// `cert` and `key`, or a self-signed certificate made now.
pub fn server_tls(
    cert_key: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, reason: String| HttpsError::Cert {
        path: path.display().to_string(),
        reason,
    };
    let (chain, key) = match cert_key {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(bad(cert, "no certificate in it".into()));
            }
            let pk = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
            (chain, pk)
        }
        None => {
            let made =
                rcgen::generate_simple_self_signed(vec![crate::tls::SERVER_NAME.to_string()])
                    .map_err(|e| HttpsError::Cert {
                        path: "(self-signed)".into(),
                        reason: e.to_string(),
                    })?;
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(|e| {
                HttpsError::Cert {
                    path: "(self-signed)".into(),
                    reason: e.to_string(),
                }
            })?;
            (vec![made.cert.der().clone()], key)
        }
    };
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Takes a node's connection on the server's HTTPS port: TLS, then the
/// WebSocket upgrade at [`PATH`] (any other path is refused with a 404).
pub async fn accept(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> Result<WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>, HttpsError> {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let handshake = async {
        let tls = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await?;
        // The callback's type is tungstenite's, large error and all.
        #[allow(clippy::result_large_err)]
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() == PATH {
                Ok(resp)
            } else {
                let mut no = ErrorResponse::new(Some("not here".into()));
                *no.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                Err(no)
            }
        };
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(tls, check, Some(ws_config())).await?;
        Ok::<_, HttpsError>(ws)
    };
    tokio::time::timeout(HANDSHAKE, handshake)
        .await
        .map_err(|_| HttpsError::Timeout(HANDSHAKE))?
}

/// How an HTTPS link reaches the server.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    /// Straight to this address (the server's, resolved here).
    Direct(SocketAddr),
    /// Through the HTTP proxy `proxy` (`host:port`), which is asked for the
    /// server by the name it was given: nothing is resolved on our side.
    /// `server` is the server's address where we resolved it (what the link
    /// then records as its other end); else the link records the proxy's.
    Proxy {
        /// The proxy.
        proxy: &'a str,
        /// The server's address, if known here.
        server: Option<SocketAddr>,
    },
}

/// A WebSocket over TLS to the server.
pub type Stream = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens a WebSocket over TLS to the server `host` (a name or an address, for
/// the proxy's tunnel and the request) on `port`, the way `via` says. Returns
/// it and the server's address (the proxy's, through a proxy that resolved
/// the server for us).
pub async fn dial(host: &str, port: u16, via: Via<'_>) -> Result<(Stream, SocketAddr), HttpsError> {
    let handshake = async {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let (tcp, real) = match via {
            Via::Direct(to) => (TcpStream::connect(to).await?, to),
            Via::Proxy { proxy, server } => {
                let mut tcp = TcpStream::connect(proxy).await?;
                tunnel(&mut tcp, proxy, &target).await?;
                let real = match server {
                    Some(s) => s,
                    None => tcp.peer_addr()?,
                };
                (tcp, real)
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("burrow").expect("a valid name")
        });
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let url = format!("wss://{target}{PATH}");
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config())).await?;
        Ok::<_, HttpsError>((ws, real))
    };
    tokio::time::timeout(HANDSHAKE, handshake)
        .await
        .map_err(|_| HttpsError::Timeout(HANDSHAKE))?
}

/// Asks the HTTP proxy on `stream` for a tunnel to `target` (`host:port`).
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &str,
    target: &str,
) -> Result<(), HttpsError> {
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    use tokio::io::AsyncReadExt;
    // Never more than MAX_PROXY_ANSWER of it, newline or not.
    let mut reader = BufReader::new(stream.take(MAX_PROXY_ANSWER as u64));
    let mut status = String::new();
    let mut read = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await?;
        read += n;
        if n == 0 || read > MAX_PROXY_ANSWER {
            return Err(HttpsError::ProxyRefused {
                proxy: proxy.into(),
                status: "the proxy closed the connection or sent too much".into(),
            });
        }
        if status.is_empty() {
            status = line.trim().to_string();
        } else if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        // (A refusal usually comes with a page explaining it; its status
        // line says what matters.)
        return Err(HttpsError::ProxyRefused {
            proxy: proxy.into(),
            status,
        });
    }
    // Nothing after a yes belongs to the proxy: the tunnel starts there,
    // and TLS's ClientHello is ours to send first.
    if !reader.buffer().is_empty() {
        return Err(HttpsError::ProxyRefused {
            proxy: proxy.into(),
            status: "the proxy sent bytes past its answer".into(),
        });
    }
    Ok(())
}

/// Accepts whatever certificate the server shows: the QUIC handshake inside
/// proves the server's key (see the module's docs).
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy that refuses the tunnel: its own status line comes back, and
    /// nothing is sent past it. The tunnel asks for the server by name, a
    /// name nothing here resolves (`.invalid`): only the proxy needs to.
    #[tokio::test]
    async fn a_proxy_that_refuses_says_so() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = proxy.local_addr().unwrap();
        let answer = tokio::spawn(async move {
            let (mut s, _) = proxy.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                    .await
                    .unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 22\r\n\r\n<p>Access denied.</p>\n",
            )
            .await
            .unwrap();
            String::from_utf8(head).unwrap()
        });
        let proxy = at.to_string();
        let via = Via::Proxy {
            proxy: &proxy,
            server: None,
        };
        let err = dial("burrow.invalid", 443, via).await.expect_err("refused");
        let head = answer.await.unwrap();
        assert!(
            head.starts_with("CONNECT burrow.invalid:443 HTTP/1.1\r\n"),
            "{head}"
        );
        match err {
            HttpsError::ProxyRefused { status, .. } => assert_eq!(status, "HTTP/1.1 403 Forbidden"),
            other => panic!("expected a refusal, got {other}"),
        }
    }
}
