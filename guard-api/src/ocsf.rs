//! Records as OCSF 1.4 events (Open Cybersecurity Schema Framework), for
//! log shippers and SIEMs: Process Activity (1007) for exec, File System
//! Activity (1001) for file actions, Network Activity (4001) for connect
//! and send, each with `action_id`/`disposition_id` for allowed, denied and
//! would-deny and the deciding rule as `policy`; Datastore Activity (6005)
//! for database statements. A self-protection denial
//! (an agent tampering with Guard or the kernel) is a Detection Finding
//! (2004). Guard's own fields that
//! OCSF has no place for are under `unmapped`.

use serde_json::{Value, json};

use crate::{
    record::{Action, Line, LossRecord, Record, SELF_PROTECTION_RULE, Verdict},
    time,
};

pub const VERSION: &str = "1.4.0";

/// The OCSF event for one line of `host`'s stream; `sealed` is the line as
/// sealed (kept as `raw_data`). A checkpoint has none: it is the stream's
/// own evidence, checked with `guardctl audit verify`.
pub fn event(host: &str, line: &Line, sealed: &str) -> Option<Value> {
    match line {
        Line::Decision(record) => Some(decision(host, record, sealed)),
        Line::Loss(loss) => Some(lost(host, loss, sealed)),
        Line::Checkpoint(_) => None,
    }
}

const DETECTION_FINDING: u32 = 2004;

/// (class_uid, class_name, category_uid, category_name, activity_id, activity_name)
fn class(r: &Record) -> (u32, &'static str, u32, &'static str, u32, &'static str) {
    const FILE: (u32, &str, u32, &str) = (1001, "File System Activity", 1, "System Activity");
    let with = |c: (u32, &'static str, u32, &'static str), id, name| (c.0, c.1, c.2, c.3, id, name);
    if finding(r).is_some() {
        return (
            DETECTION_FINDING,
            "Detection Finding",
            2,
            "Findings",
            1,
            "Create",
        );
    }
    match r.action {
        Action::Exec | Action::ExecMap => {
            (1007, "Process Activity", 1, "System Activity", 1, "Launch")
        }
        Action::Unlink | Action::Rmdir => with(FILE, 4, "Delete"),
        Action::Rename | Action::RenameInto => with(FILE, 5, "Rename"),
        Action::Truncate => with(FILE, 3, "Update"),
        Action::OpenWrite | Action::OpenRead => with(FILE, 14, "Open"),
        Action::Create | Action::Mkdir | Action::Symlink | Action::Link => with(FILE, 1, "Create"),
        Action::Connect => (4001, "Network Activity", 4, "Network Activity", 1, "Open"),
        Action::Sendmsg => (
            4001,
            "Network Activity",
            4,
            "Network Activity",
            6,
            "Traffic",
        ),
        Action::Statement => {
            let (id, name) = statement_activity(r);
            (
                DATASTORE,
                "Datastore Activity",
                6,
                "Application Activity",
                id,
                name,
            )
        }
        _ => with(FILE, 99, "Other"),
    }
}

const DATASTORE: u32 = 6005;

/// A statement's Datastore Activity, from its classes: the most
/// destructive wins.
fn statement_activity(r: &Record) -> (u32, &'static str) {
    let classes = r
        .statement
        .as_ref()
        .map(|s| &s.classes[..])
        .unwrap_or_default();
    let has = |names: &[&str]| classes.iter().any(|c| names.contains(&c.as_str()));
    if has(&["drop", "truncate", "delete_without_where"]) {
        (7, "Delete")
    } else if has(&[
        "alter",
        "rename",
        "comment",
        "privilege",
        "update_without_where",
    ]) {
        (2, "Update")
    } else if has(&["create"]) {
        (6, "Create")
    } else if has(&["write"]) {
        (5, "Write")
    } else if has(&["read"]) {
        (4, "Query")
    } else {
        (99, "Other")
    }
}

/// The finding a record is, if any: its type and title. A self-protection
/// denial is a tamper attempt; a denial by an exhausted budget, a
/// blast-radius finding.
fn finding(r: &Record) -> Option<(&'static str, String)> {
    if r.rule == SELF_PROTECTION_RULE {
        let title = format!("tamper attempt: {} {}", r.action, r.target);
        return Some(("tamper", title.trim_end().to_string()));
    }
    let budget = r.budget.as_ref()?;
    Some((
        "blast_radius",
        format!(
            "{} budget spent after {}: {} {}",
            budget.name, budget.spent, r.action, r.target
        ),
    ))
}

/// The OCSF profiles of a decision: `security_control` (action,
/// disposition, policy) and `host` (device, actor).
const DECISION_PROFILES: &[&str] = &["security_control", "host"];

fn metadata(host: &str, seq: u64, hook: &str, profiles: &[&str]) -> Value {
    json!({
        "version": VERSION,
        "profiles": profiles,
        "product": {"name": "Guard", "vendor_name": "Guard", "version": env!("CARGO_PKG_VERSION"), "feature": {"name": hook}},
        "uid": format!("{host}/{seq}"),
        "sequence": seq,
    })
}

fn decision(host: &str, r: &Record, sealed: &str) -> Value {
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) = class(r);
    let (action_id, action, disposition_id, disposition, status_id, status, severity_id, severity) =
        match r.verdict {
            Verdict::Deny => (2, "Denied", 2, "Blocked", 2, "Failure", 3, "Medium"),
            Verdict::WouldDeny => (1, "Allowed", 15, "Detected", 1, "Success", 2, "Low"),
            Verdict::Allow => (1, "Allowed", 1, "Allowed", 1, "Success", 1, "Informational"),
        };
    let process = r.process.as_ref();
    let mut actor_process = json!({
        "pid": r.pid,
        "tid": r.tid,
        "name": r.comm,
        "user": {"uid": r.uid.to_string()},
    });
    if let Some(p) = process {
        actor_process["cmd_line"] = json!(p.cmdline.join(" "));
        if let Some(exe) = &p.exe {
            actor_process["file"] = file(exe, FileType::Regular);
        }
        if let Some(parent) = p.ancestry.first() {
            actor_process["parent_process"] = json!({"pid": parent.pid, "name": parent.comm});
        }
    }
    let mut event = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": format!("{class_name}: {activity_name}"),
        "time": time::rfc3339_nanos(&r.time) / 1_000_000,
        "severity_id": severity_id,
        "severity": severity,
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "status_id": status_id,
        "status": status,
        "message": r.message.clone().unwrap_or_else(|| format!("{} {}: {} ({})", r.action, r.target, r.verdict, r.rule)),
        "metadata": metadata(host, r.seq, &r.hook, DECISION_PROFILES),
        "device": device(host),
        "actor": {"process": actor_process},
        "policy": {"uid": r.rule, "name": r.rule, "version": r.generation.to_string()},
        "raw_data": sealed,
        "unmapped": {
            "agent": r.agent,
            "profile": r.profile,
            "policy_sha256": r.policy_sha256,
            "verdict": r.verdict,
            "cgroup": r.cgroup,
            "agent_cgroup": r.agent_cgroup,
        },
    });
    if let Some(message) = &r.message {
        event["policy"]["desc"] = json!(message);
    }
    if let Some(session) = &r.session {
        event["actor"]["user"] =
            json!({"uid": session.user.uid.to_string(), "name": session.user.name});
        event["actor"]["session"] = json!({"uid": session.session});
        if let Some(login) = &session.login {
            // A person's login: OCSF's session terminal and remote flag.
            if let Some(tty) = &login.tty {
                event["actor"]["session"]["terminal"] = json!(tty);
            }
            event["actor"]["session"]["is_remote"] = json!(login.remote_host.is_some());
            event["unmapped"]["login"] = json!(login);
        }
        if let Some(parent) = &session.parent_session {
            event["unmapped"]["parent_session"] = json!(parent);
        }
        if !session.labels.is_empty() {
            event["unmapped"]["labels"] = json!(session.labels);
        }
    }
    if !r.redacted.is_empty() {
        event["unmapped"]["redacted"] = json!(r.redacted);
    }
    if !r.flags.is_empty() {
        event["unmapped"]["flags"] = json!(r.flags);
    }
    match class_uid {
        DETECTION_FINDING => {
            let (kind, title) = finding(r).expect("findings have a kind");
            event["finding_info"] = json!({
                "uid": format!("{host}/{}", r.seq),
                "title": title,
                "types": [kind],
                "analytic": {"name": r.rule, "type_id": 1, "type": "Rule"},
            });
            event["severity_id"] = json!(4);
            event["severity"] = json!("High");
            // A finding's status is its own: new, not yet looked at.
            event["status_id"] = json!(1);
            event["status"] = json!("New");
            event["unmapped"]["target"] = json!(r.target);
        }
        // The process that executes the file: the same one, a new image.
        1007 => {
            event["process"] = json!({"pid": r.pid, "file": file(&r.target, FileType::Regular)})
        }
        DATASTORE => {
            let s = r.statement.clone().unwrap_or_default();
            // The statement guard knows no process, only the connection.
            if r.pid == 0 {
                event["actor"]
                    .as_object_mut()
                    .expect("an object")
                    .remove("process");
            }
            if r.session.is_none() {
                event["actor"]["user"] = json!({"name": s.user});
            }
            event["type_id"] = json!(1);
            event["type"] = json!("Database");
            event["database"] = json!({"name": s.database, "type_id": 1, "type": "Relational"});
            event["query_info"] = json!({"query_string": s.normalized, "uid": s.fingerprint});
            if let Ok(client) = s.client.parse::<std::net::SocketAddr>() {
                event["src_endpoint"] =
                    json!({"ip": client.ip().to_string(), "port": client.port()});
            }
            event["dst_endpoint"] = match s.server.parse::<std::net::SocketAddr>() {
                Ok(server) => json!({"ip": server.ip().to_string(), "port": server.port()}),
                Err(_) => json!({"hostname": s.server}),
            };
            event["unmapped"]["statement"] = json!({
                "dbname": s.dbname,
                "user": s.user,
                "classes": s.classes,
                "objects": s.objects,
                "monitored": s.monitored,
            });
            for (name, count) in [
                ("rows_changed", s.rows_changed),
                ("rows_read", s.rows_read),
                ("bytes_read", s.bytes_read),
            ] {
                if let Some(count) = count {
                    event["unmapped"]["statement"][name] = json!(count);
                }
            }
            if let Some(role) = &s.role {
                event["unmapped"]["statement"]["role"] = json!(role);
            }
            if !s.masked.is_empty() {
                event["unmapped"]["statement"]["masked"] = json!(s.masked);
            }
        }
        4001 => {
            event["dst_endpoint"] = match r.target.parse::<std::net::SocketAddr>() {
                Ok(addr) => json!({"ip": addr.ip().to_string(), "port": addr.port()}),
                // A unix-domain socket, by its name.
                Err(_) => json!({"name": r.target}),
            };
            event["connection_info"] = json!({
                "protocol_name": r.protocol,
                "direction_id": 2,
                "direction": "Outbound",
            });
        }
        _ => {
            let kind = match r.action {
                Action::Mkdir | Action::Rmdir => FileType::Folder,
                Action::Symlink => FileType::Symlink,
                _ => FileType::Unknown,
            };
            event["file"] = file(&r.target, kind);
            if let Some(f) = &r.file {
                event["file"]["uid"] = json!(format!("{}:{}", f.dev, f.ino));
            }
        }
    }
    event
}

/// The host, as an OCSF device (of a type Guard does not know).
fn device(host: &str) -> Value {
    json!({"hostname": host, "type_id": 0, "type": "Unknown"})
}

/// OCSF file types Guard names.
#[derive(Clone, Copy)]
enum FileType {
    Unknown,
    Regular,
    Folder,
    Symlink,
}

/// An OCSF file object: its path, its name, and its type.
fn file(path: &str, kind: FileType) -> Value {
    let (type_id, type_name) = match kind {
        FileType::Unknown => (0, "Unknown"),
        FileType::Regular => (1, "Regular File"),
        FileType::Folder => (2, "Folder"),
        FileType::Symlink => (7, "Symbolic Link"),
    };
    let name = path.rsplit('/').next().unwrap_or_default();
    json!({"path": path, "name": name, "type_id": type_id, "type": type_name})
}

/// A loss has no OCSF class of its own: a Base Event saying how many
/// records were lost where.
fn lost(host: &str, loss: &LossRecord, sealed: &str) -> Value {
    let mut event = base_event(
        host,
        loss.seq,
        "loss",
        time::rfc3339_nanos(&loss.time),
        format!(
            "{} record(s) lost at {}",
            loss.loss.records, loss.loss.stage
        ),
        loss.loss.records,
    );
    event["raw_data"] = json!(sealed);
    event["unmapped"] = json!({"loss": {"stage": loss.loss.stage, "records": loss.loss.records}});
    event
}

/// A gap the collector recorded: records `first` to `last` of `host` never
/// arrived.
pub fn gap(host: &str, first: u64, last: u64, time_nanos: i64) -> Value {
    let mut event = base_event(
        host,
        first,
        "gap",
        time_nanos,
        format!("records {first} to {last} of {host} never reached the collector"),
        last + 1 - first,
    );
    event["unmapped"] = json!({"gap": {"first_seq": first, "last_seq": last}});
    event
}

/// A Base Event (class 0) about `count` records that are missing.
fn base_event(
    host: &str,
    seq: u64,
    feature: &str,
    time_nanos: i64,
    message: String,
    count: u64,
) -> Value {
    json!({
        "class_uid": 0,
        "class_name": "Base Event",
        "category_uid": 0,
        "category_name": "Uncategorized",
        "activity_id": 99,
        "activity_name": "Other",
        "type_uid": 99,
        "time": time_nanos / 1_000_000,
        "severity_id": 3,
        "severity": "Medium",
        "status_id": 2,
        "status": "Failure",
        "message": message,
        "metadata": metadata(host, seq, feature, &["host"]),
        "device": device(host),
        "count": count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> Line {
        Line::parse(json).unwrap()
    }

    const BASE: &str = r#""seq":7,"time":"2026-11-22T10:00:01.5Z","agent":"coder","profile":"coding","session":"s1","user":{"uid":1000,"name":"dev"},"generation":3,"policy_sha256":"ab","agent_cgroup":1,"cgroup":2,"pid":42,"tid":43,"uid":1000,"comm":"rm""#;

    #[test]
    fn a_denied_unlink_is_a_blocked_file_system_delete() {
        let json = format!(
            r#"{{{BASE},"hook":"path_unlink","action":"unlink","verdict":"deny","target":"/srv/data/db.sqlite","file":{{"dev":3,"ino":9}},"rule":"keep-data","message":"data stays","process":{{"cmdline":["rm","-rf","/srv/data"],"exe":"/usr/bin/rm","ancestry":[{{"pid":41,"comm":"bash"}}]}}}}"#
        );
        let e = event("web-1", &line(&json), &json).unwrap();
        assert_eq!(
            (e["class_uid"].as_u64(), e["activity_id"].as_u64()),
            (Some(1001), Some(4))
        );
        assert_eq!(e["type_uid"], 100104);
        assert_eq!(
            (e["action_id"].as_u64(), e["disposition_id"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(e["time"], 1_795_341_601_500i64);
        assert_eq!(e["file"]["path"], "/srv/data/db.sqlite");
        assert_eq!(e["file"]["name"], "db.sqlite");
        assert_eq!(e["policy"]["uid"], "keep-data");
        assert_eq!(e["policy"]["desc"], "data stays");
        assert_eq!(e["actor"]["process"]["cmd_line"], "rm -rf /srv/data");
        assert_eq!(e["actor"]["process"]["parent_process"]["name"], "bash");
        assert_eq!(e["actor"]["session"]["uid"], "s1");
        assert_eq!(e["device"]["hostname"], "web-1");
        assert_eq!(e["metadata"]["uid"], "web-1/7");
        assert_eq!(e["raw_data"], json.as_str());
    }

    #[test]
    fn a_budget_denial_is_a_blast_radius_finding() {
        let line = Line::parse(&format!(
            r#"{{{BASE},"hook":"path_unlink","action":"unlink","verdict":"deny","target":"/w/t9","rule":"budget:destroy","budget":{{"name":"destroy","spent":50,"burst":50,"rate":"30/min"}}}}"#
        ))
        .unwrap();
        let e = event("h", &line, "raw").unwrap();
        assert_eq!(e["class_uid"], 2004);
        assert_eq!(e["finding_info"]["types"][0], "blast_radius");
        assert_eq!(e["finding_info"]["analytic"]["name"], "budget:destroy");
        assert_eq!(
            e["finding_info"]["title"],
            "destroy budget spent after 50: unlink /w/t9"
        );
    }

    #[test]
    fn a_self_protection_denial_is_a_tamper_finding() {
        let json = format!(
            r#"{{{BASE},"hook":"task_kill","action":"signal","verdict":"deny","target":"pid 812","rule":"self-protection","message":"no agent may do this"}}"#
        );
        let e = event("web-1", &line(&json), &json).unwrap();
        assert_eq!(
            (e["class_uid"].as_u64(), e["type_uid"].as_u64()),
            (Some(2004), Some(200401))
        );
        assert_eq!(e["finding_info"]["types"][0], "tamper");
        assert_eq!(e["finding_info"]["title"], "tamper attempt: signal pid 812");
        assert_eq!(e["finding_info"]["uid"], "web-1/7");
        assert_eq!(e["disposition_id"], 2);
        assert_eq!(e["severity"], "High");
        assert_eq!(e["unmapped"]["target"], "pid 812");
    }

    #[test]
    fn exec_and_connect_and_monitor_mode() {
        let exec = format!(
            r#"{{{BASE},"hook":"bprm_check_security","action":"exec","verdict":"would_deny","target":"/usr/bin/curl","rule":"no-curl"}}"#
        );
        let e = event("h", &line(&exec), &exec).unwrap();
        assert_eq!(
            (e["class_uid"].as_u64(), e["type_uid"].as_u64()),
            (Some(1007), Some(100701))
        );
        assert_eq!(
            (e["action_id"].as_u64(), e["disposition_id"].as_u64()),
            (Some(1), Some(15))
        );
        assert_eq!(e["process"]["file"]["path"], "/usr/bin/curl");
        let connect = format!(
            r#"{{{BASE},"hook":"socket_connect","action":"connect","verdict":"allow","target":"[::ffff:10.0.0.1]:5432","protocol":"tcp","rule":"default"}}"#
        );
        let e = event("h", &line(&connect), &connect).unwrap();
        assert_eq!(
            (e["class_uid"].as_u64(), e["type_uid"].as_u64()),
            (Some(4001), Some(400101))
        );
        assert_eq!(e["dst_endpoint"]["port"], 5432);
        assert_eq!(e["dst_endpoint"]["ip"], "::ffff:10.0.0.1");
        assert_eq!(e["connection_info"]["protocol_name"], "tcp");
        assert_eq!(e["action_id"], 1);
    }

    #[test]
    fn a_loss_is_a_base_event_with_its_count() {
        let json = r#"{"seq":9,"time":"2026-11-22T10:00:02Z","loss":{"stage":"ring_buffer","records":12}}"#;
        let e = event("h", &line(json), json).unwrap();
        assert_eq!(
            (e["class_uid"].as_u64(), e["count"].as_u64()),
            (Some(0), Some(12))
        );
        assert_eq!(e["unmapped"]["loss"]["stage"], "ring_buffer");
    }
}
