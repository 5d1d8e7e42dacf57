//! QUIC links between peers: quinn endpoints with a fresh self-signed certificate per process
//! (rcgen), ALPN `statemesh/1`, and a secret-based authentication on top of TLS.
//!
//! TLS here provides encryption and a channel binding (exported keying material), not identity:
//! certificates are self-signed and accepted as such. Identity comes from the mesh secret: after
//! the handshake both sides prove knowledge of it with a MAC bound to that TLS session (see
//! [`crate::auth`]). A peer that fails is disconnected before it reads or writes any state, and
//! the failure goes to the `statemesh::audit` tracing target with the remote address.
//!
//! # Timers
//!
//! quinn's defaults (30 s idle timeout, no keep-alive) are far too slow for failure detection.
//! statemesh sends QUIC keep-alives after 3 s without sending and closes a connection idle for
//! 6 s. The mesh's own heartbeats (every 200 ms, sealed beside the connection: see
//! [`crate::views`]) and suspect timeout (1 s) judge liveness; the QUIC idle timeout only cleans
//! up a dead connection, which then becomes a "closed link" hint to the core (a link whose
//! peer is judged dead while its views come sealed is closed by the mesh at once). The
//! keep-alive was 300 ms while views rode in the connection and kept it busy anyway, then 1 s:
//! with 63 links per window at 64 windows, the keep-alives and their acknowledgements were a
//! fifth of the machine's UDP datagrams and a third of the idle mesh's CPU (1.19-1.25 % per
//! window at 1 s, 0.82-0.92 % at 3 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use statemesh_core::PeerId;

use crate::auth::{self, Binding, PROOF_LEN, Role};
use crate::keyring::{KeyId, SharedKeyring};

/// The ALPN protocol of statemesh links.
pub const ALPN: &[u8] = b"statemesh/1";

/// QUIC keep-alive interval: half the idle timeout, so that one lost keep-alive (resent
/// within the loss timer) does not close a live connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// QUIC idle timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// How long the authentication exchange may take.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a probe (see [`Endpoint::probe`]) may take, handshake and authentication together.
/// A peer on the LAN answers within milliseconds; an address that nobody holds never answers,
/// and the probe's slot is better given to the next candidate.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The tracing target of security events.
pub const AUDIT_TARGET: &str = "statemesh::audit";

const PREAMBLE: &[u8; 8] = b"SMESH\x01\x00\x00";
const RENEW_PREAMBLE: &[u8; 8] = b"SMRNW\x01\x00\x00";

/// The label under which keying material is exported for renewed proofs (see
/// [`Endpoint::renew`]): a renewed proof can never pass for a setup proof, nor the reverse.
pub const RENEW_EXPORTER_LABEL: &[u8] = b"EXPORTER-statemesh-renew-v1";

/// Application close code: authentication failed.
pub const CLOSE_AUTH_FAILED: u32 = 0x5501;
/// Application close code: a duplicate link to the same peer.
pub const CLOSE_DUPLICATE: u32 = 0x5502;
/// Application close code: protocol error (bad frame).
pub const CLOSE_PROTOCOL: u32 = 0x5503;
/// Application close code: the peer is leaving.
pub const CLOSE_LEAVING: u32 = 0x5504;
/// Application close code: a probe proved the peer and is done (see [`Endpoint::probe`]).
pub const CLOSE_PROBED: u32 = 0x5505;

/// A link that could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Building the TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Binding the UDP socket failed.
    #[error("could not bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Dialling failed.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection failed or closed during setup.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Reading the authentication exchange failed.
    #[error("authentication exchange: {0}")]
    Exchange(String),
    /// The peer did not prove knowledge of the mesh secret.
    #[error("peer at {addr} failed authentication")]
    AuthFailed {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The exchange took longer than [`AUTH_TIMEOUT`].
    #[error("authentication timed out")]
    Timeout,
    /// The peer claimed an invalid id or spoke another protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The endpoint is closed.
    #[error("endpoint closed")]
    Closed,
}

/// What an authentication exchange yields: the peer, the key it proved with, the link's stream.
type Exchanged = (PeerId, KeyId, quinn::SendStream, quinn::RecvStream);

/// An authenticated QUIC link to one peer: a connection and its one bidirectional stream.
#[derive(Debug)]
pub struct Link {
    /// The peer's id, proven with the mesh secret.
    pub peer: PeerId,
    /// The key of this side's keyring the peer proved with.
    pub key: KeyId,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether this side dialled.
    pub role: Role,
    /// The connection.
    pub connection: quinn::Connection,
    /// Frames to the peer.
    pub send: quinn::SendStream,
    /// Frames from the peer.
    pub recv: quinn::RecvStream,
}

/// A QUIC endpoint of one peer: it both accepts and dials.
#[derive(Debug, Clone)]
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    me: PeerId,
    keys: SharedKeyring,
    mesh: Arc<str>,
    client: quinn::ClientConfig,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` (port 0 for an ephemeral port) for peer `me` of mesh
    /// `mesh`, proving with `keys` (a [`Secret`](crate::secret::Secret), a
    /// [`Keyring`](crate::keyring::Keyring), or a [`SharedKeyring`] that the caller may change
    /// while the endpoint runs: every handshake reads it anew).
    pub fn bind(
        addr: SocketAddr,
        me: PeerId,
        keys: impl Into<SharedKeyring>,
        mesh: &str,
    ) -> Result<Self, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["statemesh".to_owned()])
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        let cert_der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_crypto =
            QuicServerConfig::try_from(server_tls).map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport());

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SelfSigned(provider)))
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_crypto =
            QuicClientConfig::try_from(client_tls).map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport());

        let bind = |addr| -> std::io::Result<quinn::Endpoint> {
            let socket = std::net::UdpSocket::bind(addr)?;
            let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
            let socket = crate::udp::wrap(socket, &runtime)?;
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                runtime,
            )
        };
        let endpoint = bind(addr).map_err(|source| LinkError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            me,
            keys: keys.into(),
            mesh: mesh.into(),
            client,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This peer's id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Dials `addr` and authenticates, allowing [`AUTH_TIMEOUT`] for the handshake and as much
    /// again for the authentication.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        self.connect_within(addr, AUTH_TIMEOUT).await
    }

    /// Dials `addr` and authenticates, allowing `timeout` for the handshake and as much again
    /// for the authentication.
    pub async fn connect_within(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Link, LinkError> {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, "statemesh")
            .map_err(|e| LinkError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| LinkError::Timeout)??;
        let result = tokio::time::timeout(timeout, self.client_exchange(&connection)).await;
        self.finish(connection, Role::Client, result)
    }

    /// Probes `addr`: dials it from a UDP socket of its own (this endpoint's IP, an ephemeral
    /// port), authenticates within [`PROBE_TIMEOUT`], and closes the connection with
    /// [`CLOSE_PROBED`]. Returns the peer that proved the mesh secret there.
    ///
    /// Probes are first contacts with addresses that no authenticated peer has answered from
    /// yet. Packets to an address that nobody holds wait in the kernel's neighbour queue,
    /// charged to the socket that sent them, until address resolution gives up (seconds);
    /// enough of them fill that socket's send buffer, and then nothing else it carries leaves.
    /// Each probe having a socket of its own, however many such addresses discovery offers,
    /// neither the heartbeats of established links nor the probes of real peers queue behind
    /// them. The link itself is then dialled from this endpoint.
    pub async fn probe(&self, addr: SocketAddr) -> Result<PeerId, LinkError> {
        let main = self
            .local_addr()
            .map_err(|source| LinkError::Bind { addr, source })?;
        let local = SocketAddr::new(main.ip(), 0);
        let endpoint = quinn::Endpoint::client(local).map_err(|source| LinkError::Bind {
            addr: local,
            source,
        })?;
        let prober = Self {
            endpoint,
            me: self.me,
            keys: self.keys.clone(),
            mesh: self.mesh.clone(),
            client: self.client.clone(),
        };
        let link = prober.connect_within(addr, PROBE_TIMEOUT / 2).await?;
        link.connection
            .close(quinn::VarInt::from_u32(CLOSE_PROBED), b"probed");
        Ok(link.peer)
    }

    /// Waits for the next incoming connection and authenticates it. `None` once the endpoint is
    /// closed.
    ///
    /// Not cancel-safe: dropping the future during the handshake or the exchange drops that
    /// connection. A loop that also waits on other things should take connections with
    /// [`incoming`](Self::incoming), which is, and authenticate each one elsewhere.
    pub async fn accept(&self) -> Option<Result<Link, LinkError>> {
        let incoming = self.incoming().await?;
        Some(self.authenticate(incoming).await)
    }

    /// Waits for the next incoming connection attempt, not yet handshaken or authenticated.
    /// `None` once the endpoint is closed. Cancel-safe.
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Completes the handshake of an incoming connection and authenticates it (at most
    /// [`AUTH_TIMEOUT`] for each).
    pub async fn authenticate(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let addr = incoming.remote_address();
        let connection = match tokio::time::timeout(AUTH_TIMEOUT, async { incoming.await }).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                tracing::debug!(%addr, "incoming handshake timed out");
                return Err(LinkError::Timeout);
            }
        };
        let result = tokio::time::timeout(AUTH_TIMEOUT, self.server_exchange(&connection)).await;
        self.finish(connection, Role::Server, result)
    }

    /// Closes the endpoint and every connection on it.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(CLOSE_LEAVING), b"leaving");
    }

    /// Waits until every connection is closed cleanly (bounded by the caller).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    fn finish(
        &self,
        connection: quinn::Connection,
        role: Role,
        result: Result<Result<Exchanged, LinkError>, tokio::time::error::Elapsed>,
    ) -> Result<Link, LinkError> {
        let remote = connection.remote_address();
        let outcome = result.map_err(|_| LinkError::Timeout).and_then(|r| r);
        match outcome {
            Ok((peer, key, send, recv)) => {
                tracing::debug!(target: AUDIT_TARGET, %remote, ?role, peer = %peer.short(), %key, "peer authenticated");
                Ok(Link {
                    peer,
                    key,
                    remote,
                    role,
                    connection,
                    send,
                    recv,
                })
            }
            Err(e) => {
                if matches!(e, LinkError::AuthFailed { .. }) {
                    tracing::warn!(target: AUDIT_TARGET, %remote, ?role, "peer refused: failed to prove the mesh secret");
                    connection.close(
                        quinn::VarInt::from_u32(CLOSE_AUTH_FAILED),
                        b"authentication failed",
                    );
                } else {
                    tracing::info!(target: AUDIT_TARGET, %remote, ?role, error = %e, "link setup failed");
                    connection.close(quinn::VarInt::from_u32(CLOSE_PROTOCOL), b"setup failed");
                }
                Err(e)
            }
        }
    }

    fn binding_material(connection: &quinn::Connection) -> Result<[u8; 32], LinkError> {
        let mut out = [0u8; 32];
        connection
            .export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
            .map_err(|_| LinkError::Tls("keying material export failed".into()))?;
        Ok(out)
    }

    async fn client_exchange(
        &self,
        connection: &quinn::Connection,
    ) -> Result<Exchanged, LinkError> {
        let remote = connection.remote_address();
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut hello = PREAMBLE.to_vec();
        hello.extend_from_slice(&self.me.to_bytes());
        send.write_all(&hello)
            .await
            .map_err(|e| LinkError::Exchange(e.to_string()))?;
        let server = read_peer(&mut recv).await?;
        let exporter = Self::binding_material(connection)?;
        let binding = Binding {
            channel: &exporter,
            client: self.me,
            server,
            mesh: &self.mesh,
        };
        let ring = self.keys.current();
        send.write_all(&auth::prove(ring.primary(), Role::Client, &binding))
            .await
            .map_err(|e| LinkError::Exchange(e.to_string()))?;
        let mut proof = [0u8; PROOF_LEN];
        recv.read_exact(&mut proof)
            .await
            .map_err(|e| proof_not_read(e, remote))?;
        let Some((key, _)) = auth::verify_any(&ring, Role::Server, &binding, &proof) else {
            return Err(LinkError::AuthFailed { addr: remote });
        };
        Ok((server, key, send, recv))
    }

    async fn server_exchange(
        &self,
        connection: &quinn::Connection,
    ) -> Result<Exchanged, LinkError> {
        let remote = connection.remote_address();
        let (mut send, mut recv) = connection.accept_bi().await?;
        let mut preamble = [0u8; 8];
        recv.read_exact(&mut preamble)
            .await
            .map_err(|e| LinkError::Exchange(e.to_string()))?;
        if &preamble != PREAMBLE {
            return Err(LinkError::Protocol("not a statemesh link"));
        }
        let client = read_peer(&mut recv).await?;
        send.write_all(&self.me.to_bytes())
            .await
            .map_err(|e| LinkError::Exchange(e.to_string()))?;
        let exporter = Self::binding_material(connection)?;
        let binding = Binding {
            channel: &exporter,
            client,
            server: self.me,
            mesh: &self.mesh,
        };
        let mut proof = [0u8; PROOF_LEN];
        recv.read_exact(&mut proof)
            .await
            .map_err(|e| proof_not_read(e, remote))?;
        let ring = self.keys.current();
        // Answer with the key the client proved with: both sides hold it.
        let Some((key, secret)) = auth::verify_any(&ring, Role::Client, &binding, &proof) else {
            return Err(LinkError::AuthFailed { addr: remote });
        };
        send.write_all(&auth::prove(secret, Role::Server, &binding))
            .await
            .map_err(|e| LinkError::Exchange(e.to_string()))?;
        Ok((client, key, send, recv))
    }

    /// The keyring this endpoint proves and verifies with.
    pub fn keys(&self) -> &SharedKeyring {
        &self.keys
    }

    /// Proves again, on the established link `connection` (where this side has `role` and the
    /// other side is `peer`), with the current primary key, and checks the peer's answer
    /// against the current keyring: after a change of keys, a link set up under a key that is
    /// being retired moves to a key both sides hold, without being dropped. Opens a stream of
    /// its own beside the link's; the peer answers it with
    /// [`answer_renewal`](Self::answer_renewal). Returns the key the peer answered with (the
    /// primary key of this side). At most [`AUTH_TIMEOUT`].
    pub async fn renew(
        &self,
        connection: &quinn::Connection,
        role: Role,
        peer: PeerId,
    ) -> Result<KeyId, LinkError> {
        let remote = connection.remote_address();
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            let ring = self.keys.current();
            let exporter = renew_material(connection)?;
            let binding = self.binding(&exporter, role, peer);
            let mut out = RENEW_PREAMBLE.to_vec();
            out.extend_from_slice(&auth::prove(ring.primary(), role, &binding));
            send.write_all(&out)
                .await
                .map_err(|e| LinkError::Exchange(e.to_string()))?;
            let mut answer = [0u8; 1 + PROOF_LEN];
            recv.read_exact(&mut answer[..1])
                .await
                .map_err(|e| LinkError::Exchange(e.to_string()))?;
            if answer[0] != 1 {
                return Err(LinkError::AuthFailed { addr: remote });
            }
            recv.read_exact(&mut answer[1..])
                .await
                .map_err(|e| LinkError::Exchange(e.to_string()))?;
            let _ = send.finish();
            auth::verify_any(&ring, other(role), &binding, &answer[1..])
                .map(|(key, _)| key)
                .ok_or(LinkError::AuthFailed { addr: remote })
        };
        tokio::time::timeout(AUTH_TIMEOUT, exchange)
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    /// Answers a renewal (see [`renew`](Self::renew)) that the peer opened as stream
    /// `send`/`recv` of link `connection`: checks its proof against the current keyring and
    /// answers with the key it proved with, or refuses. Returns the key the peer proved with.
    /// At most [`AUTH_TIMEOUT`].
    pub async fn answer_renewal(
        &self,
        connection: &quinn::Connection,
        role: Role,
        peer: PeerId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<KeyId, LinkError> {
        let remote = connection.remote_address();
        let exchange = async {
            let mut request = [0u8; 8 + PROOF_LEN];
            recv.read_exact(&mut request)
                .await
                .map_err(|e| LinkError::Exchange(e.to_string()))?;
            if &request[..8] != RENEW_PREAMBLE {
                return Err(LinkError::Protocol("not a renewal"));
            }
            let ring = self.keys.current();
            let exporter = renew_material(connection)?;
            let binding = self.binding(&exporter, role, peer);
            let found = auth::verify_any(&ring, other(role), &binding, &request[8..]);
            let mut answer = Vec::with_capacity(1 + PROOF_LEN);
            match found {
                Some((_, secret)) => {
                    answer.push(1);
                    answer.extend_from_slice(&auth::prove(secret, role, &binding));
                }
                None => answer.push(0),
            }
            send.write_all(&answer)
                .await
                .map_err(|e| LinkError::Exchange(e.to_string()))?;
            let _ = send.finish();
            found
                .map(|(key, _)| key)
                .ok_or(LinkError::AuthFailed { addr: remote })
        };
        tokio::time::timeout(AUTH_TIMEOUT, exchange)
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    fn binding<'a>(&'a self, channel: &'a [u8], role: Role, peer: PeerId) -> Binding<'a> {
        let (client, server) = match role {
            Role::Client => (self.me, peer),
            Role::Server => (peer, self.me),
        };
        Binding {
            channel,
            client,
            server,
            mesh: &self.mesh,
        }
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

fn renew_material(connection: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, RENEW_EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Tls("keying material export failed".into()))?;
    Ok(out)
}

/// Why the other side's proof never came: a refusal of ours (it closed the connection as
/// failing authentication) or just a lost connection (it closed a duplicate link, it exited).
fn proof_not_read(e: quinn::ReadExactError, addr: SocketAddr) -> LinkError {
    let refused = matches!(
        &e,
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(close)
        )) if close.error_code == quinn::VarInt::from_u32(CLOSE_AUTH_FAILED)
    );
    if refused {
        LinkError::AuthFailed { addr }
    } else {
        LinkError::Exchange(e.to_string())
    }
}

async fn read_peer(recv: &mut quinn::RecvStream) -> Result<PeerId, LinkError> {
    let mut id = [0u8; 16];
    recv.read_exact(&mut id)
        .await
        .map_err(|e| LinkError::Exchange(e.to_string()))?;
    PeerId::from_uuid(uuid_from(id)).map_err(|_| LinkError::Protocol("invalid peer id"))
}

fn uuid_from(bytes: [u8; 16]) -> statemesh_core::id::Uuid {
    statemesh_core::id::Uuid::from_bytes(bytes)
}

/// Bytes of QUIC datagrams (views) buffered per connection, each way.
const DATAGRAM_BUFFER: usize = 64 * 1024;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .unwrap_or_else(|_| unreachable!("6 s fits a VarInt")),
    ));
    // One bidirectional stream per link, opened by the dialler, and one at a time for
    // renewed proofs (either side, see `Endpoint::renew`).
    t.max_concurrent_bidi_streams(2u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Views travel as datagrams (a heartbeat a few hundred bytes long, five a second): a small
    // buffer each way, so that a peer that never proves the secret cannot park much memory in
    // one before its connection is closed, and a stalled reader loses old views, not memory.
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    Arc::new(t)
}

/// Accepts any certificate: identity is proven with the mesh secret after the handshake, bound
/// to this TLS session, so a certificate proves nothing here. Handshake signatures are still
/// verified, so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct SelfSigned(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SelfSigned {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
