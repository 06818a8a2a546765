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

#[test]
fn exec_denied_via_symlink() {
    let e = env();
    // The record names the file actually executed.
    assert_denied(
        tagged(&["exec", &e.p("links/denied-symlink"), "true"]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_denied_via_hard_link_by_identity() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("links/denied-hardlink"), "true"]),
        "exec",
        &e.p("links/denied-hardlink"),
        "exec-denied-tool",
    );
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
fn exec_denied_as_script_interpreter() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("scripts/interp-script.sh")]),
        "exec",
        &e.p("tools/denied-tool"),
        "exec-denied-tool",
    );
}

#[test]
fn exec_of_denied_script() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("scripts/denied-script.sh")]),
        "exec",
        &e.p("scripts/denied-script.sh"),
        "exec-denied-script",
    );
}

#[test]
fn exec_denied_in_subtree() {
    let e = env();
    assert_denied(
        tagged(&["exec", &e.p("denied-dir/inner-tool"), "true"]),
        "exec",
        &e.p("denied-dir/inner-tool"),
        "exec-denied-dir",
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
