//! A session as records and guardd's local API show it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{pb, time};

/// A session, as guardd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub agent: String,
    pub profile: String,
    /// The launching user, from the control socket's peer credentials.
    pub uid: u32,
    pub user: Option<String>,
    /// The launcher's login uid (the human behind `sudo`), when the kernel
    /// tracks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub started: String,
    /// The session that launched this one (a sub-agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub cgroup: u64,
    /// A person's login (`guardctl login`); `None` for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
    /// RFC 3339, once the session's last process has exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// What a session's records carry about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub session: String,
    pub user: User,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
}

/// A login, as PAM describes it to `guardctl login`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub user: String,
    /// The terminal (PAM_TTY), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
    /// The remote host of an ssh login (PAM_RHOST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// The PAM service: `sshd`, `su-l`, `login`...
    pub service: String,
}

impl Login {
    pub fn to_proto(&self) -> pb::Login {
        pb::Login {
            user: self.user.clone(),
            tty: self.tty.clone().unwrap_or_default(),
            remote_host: self.remote_host.clone().unwrap_or_default(),
            service: self.service.clone(),
        }
    }

    pub fn from_proto(login: pb::Login) -> Self {
        let set = |s: String| Some(s).filter(|s| !s.is_empty());
        Self {
            user: login.user,
            tty: set(login.tty),
            remote_host: set(login.remote_host),
            service: login.service,
        }
    }
}

impl std::fmt::Display for Login {
    /// `alice on pts/0 from 10.0.0.7 (sshd)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.user)?;
        if let Some(tty) = &self.tty {
            write!(f, " on {tty}")?;
        }
        if let Some(host) = &self.remote_host {
            write!(f, " from {host}")?;
        }
        write!(f, " ({})", self.service)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
}

impl SessionRef {
    /// The API form of what a record carries about its session.
    pub fn into_proto(self) -> pb::Session {
        pb::Session {
            id: self.session,
            uid: self.user.uid,
            user: self.user.name.unwrap_or_default(),
            login_uid: self.user.login_uid,
            labels: self.labels.into_iter().collect(),
            parent: self.parent_session.unwrap_or_default(),
            login: self.login.as_ref().map(Login::to_proto),
        }
    }
}

impl Session {
    /// The API form of a session, as guardd's local API lists it.
    pub fn to_proto(&self) -> pb::SessionInfo {
        pb::SessionInfo {
            session: Some(self.reference().into_proto()),
            agent: self.agent.clone(),
            profile: self.profile.clone(),
            started: Some(time::timestamp(time::rfc3339_nanos(&self.started))),
            cgroup: self.cgroup,
        }
    }

    pub fn reference(&self) -> SessionRef {
        SessionRef {
            session: self.id.clone(),
            user: User {
                uid: self.uid,
                name: self.user.clone(),
                login_uid: self.login_uid,
            },
            labels: self.labels.clone(),
            parent_session: self.parent.clone(),
            login: self.login.clone(),
        }
    }
}
