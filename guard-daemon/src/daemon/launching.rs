//! Starting sessions and placing processes in them: `guardctl run` (by
//! root, by the users an agent's `launched_by` names, or by an agent for a
//! sub-agent) and `guardctl login` (a person's login, from PAM). guardd
//! moves each session's first process into its cgroup itself, so no
//! launcher needs write access to Guard's cgroups.

use std::{collections::BTreeMap, ffi::CString, path::PathBuf};

use guard_api::session::{Login, Session};
use guard_policy::policy::{AgentDef, People};
use nix::unistd::{Gid, Group, Uid, User};
use tracing::info;

use crate::{
    canary, cgroup,
    session::{self, Process},
};

use super::{caller::Caller, refusal::Refusal, state::State};

/// A session to create.
struct NewSession {
    agent: String,
    profile: String,
    /// The cgroup directory it is created in.
    dir: PathBuf,
    parent: Option<String>,
    labels: BTreeMap<String, String>,
    login: Option<Login>,
}

/// Who a session's records name as its user, and the process that may
/// place its first process (none for a login: guardd places it).
struct Launcher {
    uid: u32,
    name: Option<String>,
    login_uid: Option<u32>,
    pid: Option<i32>,
}

impl State {
    /// Starts a session of `agent` for a `guardctl run` by `caller`, who may
    /// then place its child in it ([`State::place_process`]). Returns the
    /// session and its reasons file.
    pub(super) fn start_session(
        &mut self,
        agent: String,
        profile: Option<String>,
        labels: BTreeMap<String, String>,
        caller: &Caller,
    ) -> Result<(Session, Option<PathBuf>), Refusal> {
        session::check_labels(&labels).map_err(Refusal::Invalid)?;
        let generation = self.current().clone();
        let compiled = &generation.compiled;
        let def = compiled
            .agent_defs
            .iter()
            .find(|a| a.name == agent && a.name != canary::AGENT)
            .ok_or_else(|| {
                Refusal::Invalid(format!("no agent `{agent}` in the policy in force"))
            })?;
        let parent = self
            .parent_session(caller.pid)
            .map_err(Refusal::NotAllowed)?;
        if caller.agent && parent.is_none() {
            return Err(Refusal::NotAllowed(
                "cannot tell which session the caller runs in".into(),
            ));
        }
        if !caller.agent && caller.uid != 0 {
            may_launch(def, caller)?;
            if profile.as_ref().is_some_and(|p| *p != def.profile) {
                return Err(Refusal::NotAllowed(format!(
                    "only root runs agent `{agent}` under another profile than its own (`{}`)",
                    def.profile
                )));
            }
        }
        let (profile, dir) = match &parent {
            Some(parent) => {
                // The kernel applies the outermost session's profile to
                // everything below it.
                let outermost = self.outermost(parent.clone());
                if profile.as_ref().is_some_and(|p| *p != outermost.profile) {
                    return Err(Refusal::Invalid(format!(
                        "a sub-agent runs under its parent session's profile `{}`",
                        outermost.profile
                    )));
                }
                let dir = self
                    .sessions
                    .path(&parent.id)
                    .expect("a live session has a path")
                    .to_path_buf();
                (outermost.profile, dir)
            }
            None => (
                profile.unwrap_or_else(|| def.profile.clone()),
                self.root.agent_path(&agent),
            ),
        };
        let new = NewSession {
            agent,
            profile,
            dir,
            parent: parent.map(|p| p.id),
            labels,
            login: None,
        };
        let launcher = Launcher {
            uid: caller.uid,
            name: user_name(caller.uid),
            login_uid: session::login_uid(caller.pid),
            pid: Some(caller.pid),
        };
        self.create_session(new, launcher)
    }

    /// Moves process `pid` into session `id`, for the caller that started
    /// the session: once, and only its own child, still where the caller
    /// runs and with the caller's uid (a child that has not executed
    /// anything yet: `guardctl run` holds it until this returns).
    pub(super) fn place_process(
        &mut self,
        id: &str,
        pid: i32,
        caller: &Caller,
    ) -> Result<(), Refusal> {
        if !self.sessions.take_launcher(id, caller.pid) {
            return Err(Refusal::NotAllowed(format!(
                "session {id} is not one this process started and has placed no process in yet"
            )));
        }
        let child = Process::read(pid);
        let own = Process::read(caller.pid);
        let placeable = match (&child, &own) {
            (Some(child), Some(own)) => {
                child.parent == caller.pid && child.uid == caller.uid && child.cgroup == own.cgroup
            }
            _ => false,
        };
        if !placeable {
            return Err(Refusal::NotAllowed(format!(
                "process {pid} is not the caller's own child, in the caller's cgroup and with its uid"
            )));
        }
        self.move_into(id, pid)
    }

    /// Starts a session for a person's login (`guardctl login`, run by PAM
    /// as root) under the first agent whose `logins` names the user or one
    /// of their groups, and moves the caller's parent (the process opening
    /// the login session, whose children become the login's) into it.
    /// `None` when no agent takes the user's logins.
    pub(super) fn start_login(
        &mut self,
        login: Login,
        caller: &Caller,
    ) -> Result<Option<Session>, Refusal> {
        let user = User::from_name(&login.user)
            .ok()
            .flatten()
            .ok_or_else(|| Refusal::Invalid(format!("no user `{}`", login.user)))?;
        let gids = user_groups(&user);
        let generation = self.current().clone();
        let Some(def) = generation
            .compiled
            .agent_defs
            .iter()
            .find(|a| includes(&a.logins, user.uid.as_raw(), &gids))
        else {
            return Ok(None);
        };
        let opener = Process::read(caller.pid)
            .map(|p| p.parent)
            .ok_or_else(|| Refusal::Failed("cannot read the caller's parent".into()))?;
        let new = NewSession {
            agent: def.name.clone(),
            profile: def.profile.clone(),
            dir: self.root.agent_path(&def.name),
            parent: None,
            labels: BTreeMap::new(),
            login: Some(login),
        };
        let launcher = Launcher {
            uid: user.uid.as_raw(),
            name: Some(user.name.clone()),
            login_uid: session::login_uid(opener),
            pid: None,
        };
        let (session, _why_file) = self.create_session(new, launcher)?;
        self.move_into(&session.id, opener)?;
        info!(session = %session.id, pid = opener, "login placed in its session");
        Ok(Some(session))
    }

    /// Creates a session's cgroup, adds it to the table and opens its
    /// reasons file (returned, if guardd keeps them).
    fn create_session(
        &mut self,
        new: NewSession,
        launcher: Launcher,
    ) -> Result<(Session, Option<PathBuf>), Refusal> {
        let NewSession {
            agent,
            profile,
            dir,
            parent,
            labels,
            login,
        } = new;
        let generation = self.current().clone();
        let compiled = &generation.compiled;
        let index = compiled
            .profile_index(&profile)
            .filter(|_| profile != canary::AGENT)
            .ok_or_else(|| {
                Refusal::Invalid(format!("no profile `{profile}` in the policy in force"))
            })?;
        let id = session::new_id()
            .map_err(|e| Refusal::Failed(format!("cannot make a session id: {e}")))?;
        let path = dir.join(&id);
        std::fs::create_dir(&path)
            .map_err(|e| Refusal::Failed(format!("cannot create {}: {e}", path.display())))?;
        let cgroup = cgroup::cgroup_id(&path).map_err(|e| Refusal::Failed(e.to_string()))?;
        if parent.is_none()
            && let Err(e) = self.enforcer.add_cgroup(compiled, cgroup, index)
        {
            let _ = std::fs::remove_dir(&path);
            return Err(Refusal::Failed(e.to_string()));
        }
        let session = Session {
            id,
            agent,
            profile,
            uid: launcher.uid,
            user: launcher.name,
            login_uid: launcher.login_uid,
            labels,
            started: guard_api::time::now_rfc3339(),
            parent,
            cgroup,
            login,
            ended: None,
        };
        info!(
            session = %session.id,
            agent = %session.agent,
            profile = %session.profile,
            uid = session.uid,
            parent = ?session.parent,
            login = ?session.login.as_ref().map(ToString::to_string),
            "session started"
        );
        self.sessions.insert(session.clone(), path, launcher.pid);
        self.keep();
        let why_file = self.why.open(&session);
        Ok((session, why_file))
    }

    /// Writes `pid` into session `id`'s cgroup.
    fn move_into(&mut self, id: &str, pid: i32) -> Result<(), Refusal> {
        let procs = self
            .sessions
            .path(id)
            .ok_or_else(|| Refusal::NotFound(format!("no session {id}")))?
            .join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| {
            Refusal::Failed(format!("cannot move process {pid} into session {id}: {e}"))
        })
    }
}

/// Refuses `caller` (neither root nor an agent) unless `def`'s
/// `launched_by` names it or one of its groups.
fn may_launch(def: &AgentDef, caller: &Caller) -> Result<(), Refusal> {
    if includes(&def.launched_by, caller.uid, &caller.gids) {
        return Ok(());
    }
    let who = match user_name(caller.uid) {
        Some(name) => format!("user `{name}` (uid {})", caller.uid),
        None => format!("uid {}", caller.uid),
    };
    let rule = match def.launched_by.location {
        Some(at) => format!("its `launched_by` (policy {at}) names {}", def.launched_by),
        None => format!(
            "only root may: it has no `launched_by` (policy {})",
            def.location
        ),
    };
    Err(Refusal::NotAllowed(format!(
        "{who} may not launch agent `{}`: {rule}",
        def.name
    )))
}

/// Whether `uid`, with groups `gids`, is one of `people`, by the user and
/// group databases now; a number is an id.
fn includes(people: &People, uid: u32, gids: &[u32]) -> bool {
    let user = |name: &str| match name.parse() {
        Ok(id) => Some(id),
        Err(_) => User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()),
    };
    let group = |name: &str| match name.parse() {
        Ok(id) => Some(id),
        Err(_) => Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    };
    people.users.iter().any(|name| user(name) == Some(uid))
        || people
            .groups
            .iter()
            .any(|name| group(name).is_some_and(|gid| gids.contains(&gid)))
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A user's gid and supplementary groups, from the group database.
fn user_groups(user: &User) -> Vec<u32> {
    CString::new(user.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid])
        .into_iter()
        .map(Gid::as_raw)
        .collect()
}
