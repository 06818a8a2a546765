//! TLS on both legs of a connection (rustls): the guard's own certificate
//! for clients, and the server's certificate checked against the
//! authorities and the name the policy gives.

use std::{path::Path, sync::Arc};

use guard_policy::database::Database;

use guard_api::tls;
use rustls::{ClientConfig, ServerConfig, pki_types::ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The TLS of one database's listener.
#[derive(Clone, Default)]
pub struct Tls {
    /// Where clients' TLS ends; `None`: a client's request for TLS is
    /// answered `N` and it goes on in plain text, or gives up.
    pub clients: Option<TlsAcceptor>,
    /// Clients that do not ask for TLS are refused.
    pub clients_required: bool,
    /// TLS to the server, and the name its certificate must carry; `None`:
    /// plain text.
    pub server: Option<(TlsConnector, ServerName<'static>)>,
}

/// The TLS `database`'s policy entry asks for; `read` gives each file's
/// contents.
pub fn for_database(
    database: &Database,
    read: impl Fn(&Path) -> Result<Vec<u8>, String>,
) -> Result<Tls, String> {
    let mut tls = Tls::default();
    if let Some(client) = &database.client_tls {
        let (certificate, key) = (read(&client.certificate)?, read(&client.key)?);
        tls.clients = Some(acceptor(&certificate, &key).map_err(|e| format!("client_tls: {e}"))?);
        tls.clients_required = client.required;
    }
    if let Some(server) = &database.server_tls {
        let ca = read(&server.ca)?;
        tls.server = Some(connector(&ca, &server.name).map_err(|e| format!("server_tls: {e}"))?);
    }
    Ok(tls)
}

/// An acceptor with the certificate chain and key of these PEM texts.
pub fn acceptor(certificate_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    let chain = tls::certificates(certificate_pem).map_err(|e| format!("the certificate: {e}"))?;
    let key = tls::private_key(key_pem).map_err(|e| format!("the key: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    // What libpq 17 offers; clients that offer nothing are served too.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector that trusts the authorities of this PEM text, for a server
/// whose certificate names `name`.
pub fn connector(ca_pem: &[u8], name: &str) -> Result<(TlsConnector, ServerName<'static>), String> {
    let roots = tls::roots(ca_pem).map_err(|e| format!("the CA file: {e}"))?;
    let config = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("server name `{name}`: {e}"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
