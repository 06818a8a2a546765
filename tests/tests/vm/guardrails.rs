//! Guardrails: rules that freeze a session, budgets that run out and refill,
//! and approval tickets a human approves once or for a time.

use crate::harness::*;
use std::{
    fs,
    time::{Duration, Instant},
};

/// A denial under a rule marked `freeze` stops the whole session through
/// the cgroup freezer; `guardctl session thaw` resumes it and `guardctl
/// session kill` ends it.
#[test]
fn a_freeze_rule_freezes_the_session_until_thawed_or_killed() {
    let e = env();
    let dir = e.path("freeze");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let victim = dir.join("keep/f");
    fs::write(&victim, "keep").unwrap();
    let policy = policy_of(
        &format!(
            "  - name: frz\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n          message: a bulk delete here stops the agent\n          freeze: true\n",
            dir.join("keep").display()
        ),
        &["frz"],
    );
    let root = "guard-freeze-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let script = format!(
        "sleep 300 & {} unlink {}; echo thawed; wait",
        bin("guard-probe").display(),
        victim.display()
    );
    let mut agent = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "frz", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let sessions = format!("/sys/fs/cgroup/{root}/frz");
    wait_populated(&sessions);
    let session = fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a session cgroup")
        .path();
    let id = session.file_name().unwrap().to_str().unwrap().to_string();
    let frozen = |want: bool| {
        let line = format!("frozen {}", u8::from(want));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(session.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == line)
        {
            assert!(Instant::now() < deadline, "session never `{line}`");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    frozen(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let denial = loop {
        let found = guardd
            .records()
            .into_iter()
            .find(|r| r["action"] == "unlink" && r["target"] == victim.display().to_string());
        match found {
            Some(record) => break record,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("no record of the denial"),
        }
    };
    assert_eq!(denial["verdict"], "deny");
    assert_eq!(
        denial["flags"],
        serde_json::json!(["session_frozen"]),
        "{denial}"
    );
    assert!(victim.exists());

    let ctl = |action: &str| {
        let out = guardd.guardctl(&["session", action, &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl("thaw");
    frozen(false);
    ctl("kill");
    let status = agent.wait().unwrap();
    assert!(
        !status.success(),
        "the killed session's command failed: {status:?}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(agent.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("thawed"),
        "the agent ran on after the thaw: {out}"
    );
}

/// Starts `guard-probe each STEPS` as agent `agent`, and returns the child
/// (stdout piped) with its session's cgroup once it runs.
fn each_in_session(
    guardd: &Guardd,
    root: &str,
    agent: &str,
    steps: &[String],
) -> (std::process::Child, std::path::PathBuf) {
    let child = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", agent, "--"])
        .arg(bin("guard-probe"))
        .arg("each")
        .args(steps)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let sessions = format!("/sys/fs/cgroup/{root}/{agent}");
    wait_populated(&sessions);
    let session = fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("a session cgroup")
        .path();
    (child, session)
}

/// Waits for a record that satisfies `matches`.
fn wait_record(guardd: &Guardd, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = guardd.records().into_iter().find(|r| matches(r)) {
            return found;
        }
        assert!(Instant::now() < deadline, "no record of {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn budgets_deny_when_spent_and_refill_with_time_or_reset() {
    let e = env();
    let dir = e.path("budget");
    fs::create_dir_all(dir.join("keep")).unwrap();
    for name in ["a", "b", "c", "d", "e", "f", "keep/x"] {
        fs::write(dir.join(name), "x").unwrap();
    }
    let policy = policy_of(
        &format!(
            "  - name: bulk\n    default: allow\n    files:\n      protect:\n        - id: keep\n          subtree: {}\n    budgets:\n      destroy: {{rate: 2/s, burst: 3}}\n      destinations: {{rate: 1/h, burst: 2}}\n",
            dir.join("keep").display()
        ),
        &["bulk"],
    );
    let root = "guard-budget-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let path = |name: &str| dir.join(name).display().to_string();
    // Destroy: three at once, then denied; a protected file stays denied
    // by its rule, spending nothing; 1.2 s later two more have refilled.
    let go = dir.join("go");
    let mut steps: Vec<String> = ["a", "b", "c", "d", "e", "keep/x"]
        .iter()
        .map(|n| format!("unlink:{}", path(n)))
        .collect();
    steps.push("@1200".into());
    steps.push(format!("unlink:{}", path("f")));
    // Destinations: two new ones, a repeat spends nothing, a third is
    // denied until a human refills the budget.
    for to in ["127.0.0.2:9", "127.0.0.3:9", "127.0.0.2:9", "127.0.0.4:9"] {
        steps.push(format!("connect-udp:{to}"));
    }
    steps.push(format!("@wait:{}", go.display()));
    for to in ["127.0.0.4:9", "127.0.0.5:9", "127.0.0.6:9"] {
        steps.push(format!("connect-udp:{to}"));
    }
    let (child, session) = each_in_session(&guardd, root, "bulk", &steps);
    let id = session.file_name().unwrap().to_str().unwrap().to_string();
    let finding = wait_record(&guardd, "the destinations budget denial", |r| {
        r["target"] == "127.0.0.4:9" && r["verdict"] == "deny"
    });
    assert_eq!(finding["rule"], "budget:destinations", "{finding}");
    assert_eq!(finding["budget"]["spent"], 2, "{finding}");
    let out = guardd.guardctl(&["session", "reset", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(&go, "").unwrap();
    assert_eq!(
        errnos_of(child),
        vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1],
        "destroy: 3 allowed, 2 over budget, the protected file, 1 refilled; destinations: 2 new, 1 seen, 1 over budget, then after the reset 2 new and 1 over"
    );
    for name in ["a", "b", "c", "f"] {
        assert!(!dir.join(name).exists(), "{name} was deleted");
    }
    for name in ["d", "e", "keep/x"] {
        assert!(dir.join(name).exists(), "{name} was kept");
    }
    for name in ["d", "e"] {
        let r = wait_record(&guardd, "a destroy budget denial", |r| {
            r["target"] == path(name)
        });
        assert_eq!(
            (
                &r["verdict"],
                &r["rule"],
                &r["budget"]["name"],
                &r["budget"]["spent"]
            ),
            (
                &"deny".into(),
                &"budget:destroy".into(),
                &"destroy".into(),
                &3.into()
            ),
            "{r}"
        );
        assert!(r["message"].as_str().unwrap().contains("budget"), "{r}");
    }
    let kept = wait_record(&guardd, "the protected file", |r| {
        r["target"] == path("keep/x")
    });
    assert_eq!(
        kept["rule"], "keep",
        "protected paths stay protected by their rule: {kept}"
    );
}

#[test]
fn approvable_denials_become_tickets_a_human_approves_once_or_for_a_time() {
    let e = env();
    let dir = e.path("approve");
    fs::create_dir_all(dir.join("keep")).unwrap();
    let file = dir.join("keep/data.db");
    fs::write(&file, "rows").unwrap();
    let policy = policy_of(
        &format!(
            "  - name: appr\n    default: allow\n    files:\n      protect:\n        - id: data\n          subtree: {}\n          message: ask a human\n          approvable: true\n    network:\n      deny:\n        - id: no-7\n          cidr: 127.0.0.7\n          approvable: true\n",
            dir.join("keep").display()
        ),
        &["appr"],
    );
    let root = "guard-approve-test";
    let guardd = Guardd::start(&dir, &policy, root);
    let (go1, go2) = (dir.join("go1"), dir.join("go2"));
    let truncate = format!("truncate:{}", file.display());
    let connect = "connect-udp:127.0.0.7:9".to_string();
    let steps = vec![
        truncate.clone(),
        format!("@wait:{}", go1.display()),
        truncate.clone(),
        truncate.clone(),
        connect.clone(),
        format!("@wait:{}", go2.display()),
        connect.clone(),
        connect.clone(),
        "@3500".into(),
        connect.clone(),
    ];
    let (child, _session) = each_in_session(&guardd, root, "appr", &steps);
    let ticket_for = |target: &str| {
        let r = wait_record(&guardd, "an approvable denial", |r| {
            r["target"] == target && r["verdict"] == "deny"
        });
        assert_eq!(r["ticket"]["state"], "requested", "{r}");
        r["ticket"]["id"].as_str().unwrap().to_string()
    };
    let ctl = |args: &[&str]| {
        let out = guardd.guardctl(args);
        assert!(
            out.status.success(),
            "guardctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let file_ticket = ticket_for(&file.display().to_string());
    let listed = ctl(&["tickets", "--json"]);
    assert!(
        listed.contains(&file_ticket) && listed.contains("pending"),
        "{listed}"
    );
    // An agent cannot approve its own ticket.
    let agent_approves = std::process::Command::new(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["run", "--agent", "appr", "--"])
        .arg(bin("guardctl"))
        .arg("--socket")
        .arg(&guardd.socket)
        .args(["approve", &file_ticket])
        .output()
        .unwrap();
    assert!(!agent_approves.status.success());
    assert!(
        String::from_utf8_lossy(&agent_approves.stderr).contains("agents cannot approve"),
        "{}",
        String::from_utf8_lossy(&agent_approves.stderr)
    );
    ctl(&["approve", &file_ticket, "--once"]);
    fs::write(&go1, "").unwrap();

    let net_ticket = ticket_for("127.0.0.7:9");
    ctl(&["approve", &net_ticket, "--ttl", "2s"]);
    fs::write(&go2, "").unwrap();

    assert_eq!(
        errnos_of(child),
        vec![1, 0, 1, 1, 0, 0, 1],
        "file: denied, once approved, denied again; destination: denied, allowed twice within the ttl, denied after it"
    );
    let approval = wait_record(&guardd, "the approval", |r| {
        r["action"] == "ticket_approve" && r["ticket"]["id"] == file_ticket.as_str()
    });
    assert_eq!(approval["ticket"]["once"], true, "{approval}");
    assert_eq!(approval["hook"], "guardctl", "{approval}");
    let used = wait_record(&guardd, "the use", |r| {
        r["ticket"]["state"] == "used" && r["ticket"]["id"] == file_ticket.as_str()
    });
    assert_eq!(used["verdict"], "allow", "{used}");
    assert_eq!(used["action"], "truncate", "{used}");
    assert!(
        used["flags"]
            .as_array()
            .unwrap()
            .contains(&"approved".into()),
        "{used}"
    );
    let uses = guardd
        .records()
        .into_iter()
        .filter(|r| r["ticket"]["state"] == "used" && r["ticket"]["id"] == net_ticket.as_str())
        .count();
    assert_eq!(uses, 2, "two uses of the destination within its ttl");
    wait_record(&guardd, "the expiry", |r| {
        r["action"] == "ticket_expire" && r["ticket"]["id"] == net_ticket.as_str()
    });
    let all = ctl(&["tickets", "--all", "--json"]);
    let states: Vec<(String, String)> = all
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&(file_ticket.clone(), "used".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(net_ticket.clone(), "expired".into())),
        "{states:?}"
    );
    assert!(
        file.exists() && fs::metadata(&file).unwrap().len() == 0,
        "the one approved truncate happened"
    );
}
