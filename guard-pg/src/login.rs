//! Credentials held by the guard: with them, the guard logs in to the
//! server itself (`scram-sha-256`, `md5` or `password`), so the client
//! never holds the database's password. The client is not asked for one:
//! who it is comes from the kernel (its session), not from a login.

use guard_policy::database::Database;
use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256},
    },
    message::frontend,
};

use crate::protocol::Message;

/// The role the guard logs in as, and its password.
pub struct Login {
    pub user: String,
    password: Vec<u8>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).finish()
    }
}

/// `database`'s credentials, if it names any, with `read` giving its
/// password file's contents (guardd reads them as root). The file holds
/// the password; a final line break is not part of it.
pub fn for_database(
    database: &Database,
    read: impl Fn(&std::path::Path) -> Result<Vec<u8>, String>,
) -> Result<Option<Login>, String> {
    let Some(credentials) = &database.credentials else {
        return Ok(None);
    };
    let mut password = read(&credentials.password_file)?;
    while password.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        password.pop();
    }
    if password.is_empty() {
        return Err(format!(
            "{} is empty: it must hold the password of role `{}`",
            credentials.password_file.display(),
            credentials.user
        ));
    }
    Ok(Some(Login {
        user: credentials.user.clone(),
        password,
    }))
}

/// One login in progress: answers the server's authentication requests.
pub struct Authenticating<'a> {
    login: &'a Login,
    scram: Option<ScramSha256>,
}

impl<'a> Authenticating<'a> {
    pub fn new(login: &'a Login) -> Self {
        Authenticating { login, scram: None }
    }

    /// The answer to the server's authentication request `code` with
    /// `data` (the request's body after its code), if it wants one.
    pub fn answer(&mut self, code: i32, data: &[u8]) -> Result<Option<Message>, String> {
        let mut buf = bytes::BytesMut::new();
        let io = |e: std::io::Error| format!("the server's SCRAM exchange: {e}");
        match code {
            // Cleartext.
            3 => frontend::password_message(&self.login.password, &mut buf).map_err(io)?,
            5 => {
                let salt = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("a malformed MD5 request")?;
                let hash = md5_hash(self.login.user.as_bytes(), &self.login.password, salt);
                frontend::password_message(hash.as_bytes(), &mut buf).map_err(io)?;
            }
            10 => {
                let offered = data
                    .split(|&b| b == 0)
                    .any(|m| m == SCRAM_SHA_256.as_bytes());
                if !offered {
                    return Err(
                        "the server offers no SASL mechanism the guard speaks (SCRAM-SHA-256)"
                            .into(),
                    );
                }
                // The guard's own TLS to the server is not bound (it could be,
                // but a server that supports binding accepts SCRAM without it).
                let scram = ScramSha256::new(&self.login.password, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut buf)
                    .map_err(io)?;
                self.scram = Some(scram);
            }
            11 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or("SASL continue before SASL start")?;
                scram.update(data).map_err(io)?;
                frontend::sasl_response(scram.message(), &mut buf).map_err(io)?;
            }
            12 => {
                let scram = self.scram.as_mut().ok_or("SASL final before SASL start")?;
                // Checks the server's signature: the server knows the password.
                scram.finish(data).map_err(io)?;
                return Ok(None);
            }
            other => {
                return Err(format!(
                    "the server asks for an authentication method the guard cannot answer ({other}); use scram-sha-256, md5 or password for role `{}`",
                    self.login.user
                ));
            }
        }
        Ok(Some(Message {
            bytes: buf.to_vec(),
        }))
    }
}
