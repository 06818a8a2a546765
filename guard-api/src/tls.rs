//! Mutual TLS for gRPC over TCP (guard-collector's ingest and query API,
//! guardd's `--grpc-listen`, shipping, guardctl), with rustls.
//!
//! Both ends show a certificate from the fleet's CA. A peer's certificate
//! names it (its first DNS name, else its common name) and gives its roles
//! (its organizational units): a `host` ships its own records, a `reader`
//! queries and follows them. Plaintext is for loopback only.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::either::Either;
use tonic::{Request, Status};

use crate::accepted::Accepted;
use tracing::warn;

/// rustls' default crypto provider, which every TLS end in Guard uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate chain in a PEM text.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("it holds no certificate".into());
    }
    Ok(chain)
}

/// The private key in a PEM text.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())
}

/// The authorities of a PEM text, to trust.
pub fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem)? {
        roots.add(certificate).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// What a certificate entitles its holder to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A guardd host: ships its own stream, and serves `--grpc-listen`.
    Host,
    /// Queries and follows records.
    Reader,
    /// A guard-collector's server certificate.
    Collector,
}

impl Role {
    /// The organizational unit that grants it.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Reader => "reader",
            Role::Collector => "collector",
        }
    }
}

/// The holder of a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its first DNS name, else its common name.
    pub name: String,
    /// Its organizational units.
    pub units: Vec<String>,
}

impl Peer {
    /// Reads a certificate's name and units.
    pub fn of(certificate: &CertificateDer) -> Result<Peer, String> {
        use x509_parser::prelude::*;
        let (_, parsed) = X509Certificate::from_der(certificate).map_err(|e| e.to_string())?;
        let subject = parsed.subject();
        let texts = |attributes: Vec<&AttributeTypeAndValue>| -> Vec<String> {
            attributes
                .into_iter()
                .filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect()
        };
        let dns = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
            });
        let name = dns
            .or_else(|| {
                texts(subject.iter_common_name().collect())
                    .into_iter()
                    .next()
            })
            .ok_or("the certificate names no DNS name and no common name")?;
        Ok(Peer {
            name,
            units: texts(subject.iter_organizational_unit().collect()),
        })
    }

    pub fn has(&self, role: Role) -> bool {
        self.units.iter().any(|u| u == role.unit())
    }
}

/// Who is at the other end of a connection a server accepted; the same in
/// every request's extensions.
#[derive(Clone, Debug)]
pub struct Remote {
    pub addr: Option<SocketAddr>,
    /// `None` on a plaintext connection.
    pub peer: Option<Peer>,
}

/// The peer of a request's connection: `None` on plaintext (which only
/// loopback listeners allowed so explicitly speak).
pub fn peer<T>(request: &Request<T>) -> Option<&Peer> {
    request
        .extensions()
        .get::<Remote>()
        .and_then(|r| r.peer.as_ref())
}

/// An interceptor that lets only peers with `role` in, to do `what` (for
/// the refusal).
pub fn require(
    role: Role,
    what: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| match peer(&request) {
        Some(peer) if !peer.has(role) => Err(Status::permission_denied(format!(
            "the certificate of `{}` (roles: {}) may not {what}: that takes the `{}` role (organizational unit)",
            peer.name,
            if peer.units.is_empty() {
                "none".to_string()
            } else {
                peer.units.join(", ")
            },
            role.unit()
        ))),
        _ => Ok(request),
    }
}

/// A certificate, its key, and the CA that peers' certificates must come
/// from: PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The TLS flags every program with gRPC over TCP takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// This program's certificate (PEM; a chain may follow it), for gRPC
    /// over TCP with mutual TLS. Re-read when it changes.
    #[arg(long, env = "GUARD_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "GUARD_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that the other end's certificate must come from.
    #[arg(long, env = "GUARD_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, when all three are given; an error when only some are.
    pub fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(certificate), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                certificate: certificate.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            _ => bail!("TLS needs all of --tls-cert, --tls-key and --tls-ca"),
        }
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl TlsFiles {
    fn chain_and_key(
        &self,
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let chain = certificates(&read(&self.certificate, "certificate")?)
            .map_err(|e| anyhow::anyhow!("the certificate {}: {e}", self.certificate.display()))?;
        let key = private_key(&read(&self.key, "key")?)
            .map_err(|e| anyhow::anyhow!("the key {}: {e}", self.key.display()))?;
        Ok((chain, key))
    }

    fn roots(&self) -> anyhow::Result<RootCertStore> {
        roots(&read(&self.ca, "CA")?)
            .map_err(|e| anyhow::anyhow!("the CA {}: {e}", self.ca.display()))
    }

    /// The certificate and key files, for errors about them.
    fn pair(&self) -> String {
        format!(
            "the certificate {} and key {}",
            self.certificate.display(),
            self.key.display()
        )
    }

    /// A server that requires a client certificate from the CA.
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let (chain, key) = self.chain_and_key()?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .build()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .with_context(|| self.pair())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A client that shows its certificate and trusts the CA.
    fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let (chain, key) = self.chain_and_key()?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .with_context(|| self.pair())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// What identifies the files' current contents.
    fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        [&self.certificate, &self.key, &self.ca]
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.ino()))
            })
            .collect()
    }
}

/// How a listener speaks: mutual TLS, or plaintext (loopback only).
#[derive(Clone, Debug)]
pub enum Transport {
    Tls(TlsFiles),
    Plaintext,
}

impl Transport {
    /// The transport of a listener on `addr` (named by the `flag` that sets
    /// it): TLS when its files are given; plaintext only when `plaintext`
    /// asks for it, and only on a loopback address.
    pub fn listener(
        tls: Option<TlsFiles>,
        plaintext: bool,
        addr: SocketAddr,
        flag: &str,
    ) -> anyhow::Result<Transport> {
        match (tls, plaintext) {
            (Some(_), true) => bail!("--plaintext contradicts the --tls-* files"),
            (Some(files), false) => Ok(Transport::Tls(files)),
            (None, true) if addr.ip().is_loopback() => Ok(Transport::Plaintext),
            (None, true) => bail!(
                "{flag} {addr} is not a loopback address: plaintext serves loopback only; give --tls-cert, --tls-key and --tls-ca"
            ),
            (None, false) => bail!(
                "{flag} {addr} needs TLS: give --tls-cert, --tls-key and --tls-ca (`guardctl pki` makes them for a test fleet), or --plaintext to serve loopback without it"
            ),
        }
    }
}

/// Each file's modification time and inode, when it exists.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A server's TLS, re-read when its files change: the next connection
/// after a rotation uses the new certificate, key and CA.
struct ServerTls {
    files: TlsFiles,
    current: Mutex<(Stamp, TlsAcceptor)>,
}

impl ServerTls {
    fn load(files: TlsFiles) -> anyhow::Result<ServerTls> {
        let stamp = files.stamp();
        let acceptor = TlsAcceptor::from(Arc::new(files.server_config()?));
        Ok(ServerTls {
            files,
            current: Mutex::new((stamp, acceptor)),
        })
    }

    /// The acceptor for the files as they are now. Files that do not load
    /// (e.g. half rotated) leave the last good ones in use, with an error
    /// logged once per change.
    fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = self.files.stamp();
        if stamp != current.0 {
            current.0 = stamp;
            match self.files.server_config() {
                Ok(config) => {
                    current.1 = TlsAcceptor::from(Arc::new(config));
                    tracing::info!(certificate = %self.files.certificate.display(), "TLS files reloaded");
                }
                Err(e) => tracing::error!(
                    "TLS files changed but do not load, the previous ones stay in use: {e:#}"
                ),
            }
        }
        current.1.clone()
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A connection a server accepted over TCP, plain or TLS.
pub type Connection =
    Accepted<Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>, Remote>;

/// Connections accepted, for [`crate::grpc::serve`].
pub type Incoming = mpsc::Receiver<std::io::Result<Connection>>;

/// The connections `listener` accepts, handshaken in `transport`: a TLS
/// handshake that fails (no certificate, another CA) is logged and the
/// connection dropped; handshakes run side by side, so a slow client holds
/// up no other.
pub fn incoming(listener: TcpListener, transport: &Transport) -> anyhow::Result<Incoming> {
    let tls = match transport {
        Transport::Tls(files) => Some(Arc::new(ServerTls::load(files.clone())?)),
        Transport::Plaintext => None,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // e.g. out of file descriptors: wait rather than spin.
                    warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                let remote = Remote {
                    addr: Some(addr),
                    peer: None,
                };
                let connection = Connection {
                    io: Either::Left(tcp),
                    info: remote,
                };
                if tx.send(Ok(connection)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, handshake(acceptor, tcp, addr)).await {
                    Ok(Ok(connection)) => {
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(e)) => warn!(peer = %addr, "TLS handshake refused: {e:#}"),
                    Err(_) => warn!(peer = %addr, "TLS handshake not done within {HANDSHAKE:?}"),
                }
            });
        }
    });
    Ok(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> anyhow::Result<Connection> {
    let stream = acceptor.accept(tcp).await?;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no client certificate")?;
    let peer = Peer::of(certificate).map_err(|e| anyhow::anyhow!("its certificate: {e}"))?;
    Ok(Connection {
        io: Either::Right(stream),
        info: Remote {
            addr: Some(addr),
            peer: Some(peer),
        },
    })
}

/// Where a client connects: `server` is `HOST:PORT`, or a URL with
/// `http://` (plaintext) or `https://` (TLS).
#[derive(Clone, Debug)]
pub struct Target {
    /// HOST:PORT, to dial.
    pub authority: String,
    /// The host, without brackets: the name the server's certificate must
    /// carry.
    pub host: String,
    pub tls: Option<TlsFiles>,
}

impl Target {
    /// Where to connect to `server`, and how: with TLS when its files are
    /// given; plaintext only to loopback.
    pub fn new(server: &str, tls: Option<TlsFiles>) -> anyhow::Result<Target> {
        let (scheme, authority) = match server.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest.trim_end_matches('/')),
            None => (None, server),
        };
        let uri: tonic::transport::Uri = format!("http://{authority}")
            .parse()
            .with_context(|| format!("`{server}` is not HOST:PORT or a URL"))?;
        let host = uri
            .host()
            .with_context(|| format!("`{server}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        match (scheme, &tls) {
            (Some("https") | None, Some(_)) => {}
            (Some("https"), None) => {
                bail!("{server}: TLS needs --tls-cert, --tls-key and --tls-ca")
            }
            (Some("http"), Some(_)) => bail!(
                "{server} is plaintext (http://) but TLS files are given: write https:// or HOST:PORT"
            ),
            (Some("http") | None, None) => {
                let loopback =
                    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    bail!(
                        "{server} is not on loopback: Guard speaks plaintext to loopback only; give --tls-cert, --tls-key and --tls-ca"
                    );
                }
            }
            (Some(other), _) => bail!("{server}: `{other}://` is neither http:// nor https://"),
        }
        Ok(Target {
            authority: authority.to_string(),
            host,
            tls,
        })
    }

    /// The URL to show: `https://` or `http://`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// A channel to the server; TLS files are read now, so a client made
    /// after a rotation uses the new ones.
    pub async fn connect(&self) -> anyhow::Result<tonic::transport::Channel> {
        let tls = match &self.tls {
            Some(files) => {
                let name = ServerName::try_from(self.host.clone())
                    .with_context(|| format!("`{}` is not a server name", self.host))?;
                Some((TlsConnector::from(Arc::new(files.client_config()?)), name))
            }
            None => None,
        };
        let authority = self.authority.clone();
        // The URI is required but unused: the connector dials.
        crate::http2::endpoint(format!("http://{}", self.authority))?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let (authority, tls) = (authority.clone(), tls.clone());
                async move {
                    let tcp = TcpStream::connect(&authority).await?;
                    let _ = tcp.set_nodelay(true);
                    let tcp = NoSigPipe(tcp);
                    let io = match tls {
                        Some((connector, name)) => {
                            Either::Right(connector.connect(name, tcp).await?)
                        }
                        None => Either::Left(tcp),
                    };
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
                }
            }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {}", self.url(), crate::error_chain(&e)))
    }
}

/// A client's TCP stream that writes with `MSG_NOSIGNAL`: a server that
/// closes the connection (e.g. refusing the certificate) is an error to
/// report, not a SIGPIPE that ends guardctl, which restores SIGPIPE's
/// default action for its output.
struct NoSigPipe(TcpStream);

impl AsyncRead for NoSigPipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use std::os::fd::AsFd as _;
        let stream = &self.get_mut().0;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                nix::sys::socket::send(
                    std::os::fd::AsRawFd::as_raw_fd(&stream.as_fd()),
                    buf,
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_only() {
        let files = TlsFiles {
            certificate: "c".into(),
            key: "k".into(),
            ca: "a".into(),
        };
        for ok in [
            "127.0.0.1:1",
            "http://localhost:1",
            "[::1]:1",
            "http://[::1]:1/",
        ] {
            let target = Target::new(ok, None).unwrap();
            assert_eq!(target.url(), format!("http://{}", target.authority), "{ok}");
        }
        let error = Target::new("10.1.2.3:50052", None).unwrap_err().to_string();
        assert!(error.contains("not on loopback"), "{error}");
        let error = Target::new("https://c.example:1", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("TLS needs --tls-cert"), "{error}");
        let error = Target::new("http://c.example:1", Some(files.clone()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("is plaintext"), "{error}");
        let target = Target::new("c.example:1", Some(files.clone())).unwrap();
        assert_eq!(
            (target.url().as_str(), target.host.as_str()),
            ("https://c.example:1", "c.example")
        );

        let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(matches!(
            Transport::listener(None, true, loopback, "--listen"),
            Ok(Transport::Plaintext)
        ));
        for (tls, plaintext, addr, says) in [
            (None, false, loopback, "needs TLS"),
            (None, true, any, "not a loopback address"),
            (Some(files), true, loopback, "contradicts"),
        ] {
            let error = Transport::listener(tls, plaintext, addr, "--listen").unwrap_err();
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
