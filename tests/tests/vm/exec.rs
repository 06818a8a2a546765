//! Exec rules: a denied program is refused by path, by identity (links,
//! relative paths) and as a script's interpreter; other programs and untagged
//! processes run.

use crate::harness::*;

#[test]
fn exec_denied_directly() {
    let e = env();
    let r = assert_denied(
        tagged(&["exec", &e.p("tools/denied-tool"), "true"]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
    assert_eq!(r["message"], "this tool is off limits");
    assert_eq!(r["hook"], "bprm_check_security");
    assert!(r["file"]["ino"].as_u64().is_some_and(|i| i > 0), "{r}");
}

/// Each way to reach a denied program, one row each: what the agent runs,
/// the file the record names (the one actually executed) and the rule.
#[test]
fn exec_denied_by_every_route_to_the_program() {
    let e = env();
    for (runs, recorded, rule) in [
        // A symlink: the record names the file it points to.
        (
            "links/denied-symlink",
            "tools/denied-tool",
            "exec-denied-tool",
        ),
        // A hard link: denied by the file's identity, not its name.
        (
            "links/denied-hardlink",
            "links/denied-hardlink",
            "exec-denied-tool",
        ),
        // A script whose interpreter is denied.
        (
            "scripts/interp-script.sh",
            "tools/denied-tool",
            "exec-denied-tool",
        ),
        // A denied script.
        (
            "scripts/denied-script.sh",
            "scripts/denied-script.sh",
            "exec-denied-script",
        ),
        // A program in a denied subtree.
        (
            "denied-dir/inner-tool",
            "denied-dir/inner-tool",
            "exec-denied-dir",
        ),
    ] {
        assert_denied(
            tagged(&["exec", &e.p(runs), "true"]),
            "exec",
            &e.p(recorded),
            rule,
        );
    }
}

#[test]
fn exec_denied_via_relative_path() {
    let e = env();
    let outcome = e
        .guardd
        .probe(TAGGED, &e.path("tools"), &["exec", "./denied-tool", "true"]);
    assert_denied(
        outcome,
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_allowed_elsewhere() {
    let e = env();
    assert_allowed_tagged(
        tagged(&["exec", &e.p("tools/allowed-tool"), "true"]),
        "exec",
        &e.p("tools/allowed-tool"),
    );
}

#[test]
fn exec_untagged_is_not_confined() {
    let e = env();
    for target in [
        "tools/denied-tool",
        "links/denied-hardlink",
        "scripts/denied-script.sh",
        "denied-dir/inner-tool",
    ] {
        assert_untagged_ok(untagged(&["exec", &e.p(target), "true"]));
    }
}
