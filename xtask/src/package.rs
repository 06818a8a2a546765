//! Debian packages, made with dpkg-deb from the release binaries:
//! - `guard`: guardd, guardctl and guard-pg, guardd's systemd unit, and
//!   /etc/guard/policy.yaml (a policy that confines nothing, with the
//!   example commented out below it);
//! - `guard-collector`: the collector, its unit, and its system user.
//!
//! Neither starts a service on install: an enforcing daemon starts when
//! its operator has written the policy (`systemctl enable --now guardd`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    guest::build,
    repo::{Repo, capture, run},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAINTAINER: &str = "Guard <guard@example.invalid>";

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: guard\n\nFiles: *\nLicense: Apache-2.0\n On Debian systems, the full text is in /usr/share/common-licenses/Apache-2.0.\n";

/// Where the installed binaries live, for the units.
const BIN: &str = "/usr/bin";

struct Package {
    name: &'static str,
    summary: &'static str,
    description: &'static str,
    binaries: &'static [&'static str],
    unit: &'static str,
    /// Extra files: path in the package, contents, mode.
    files: Vec<(String, String, u32)>,
    /// Files under /etc the administrator owns (kept on upgrade).
    conffiles: &'static [&'static str],
    /// Shell run after the files are in place.
    postinst: &'static str,
}

/// Reloads systemd's units, on a running systemd and not when installing
/// into another root (`dpkg --root`).
const DAEMON_RELOAD: &str = r#"if [ -d /run/systemd/system ] && [ -z "${DPKG_ROOT:-}" ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
"#;

/// Builds the release binaries and both packages; returns the .deb files.
pub fn package(repo: &Repo) -> Result<Vec<PathBuf>> {
    let artifacts = build(repo)?;
    let out = repo.release_dir().with_file_name("debian");
    // dpkg-shlibdeps wants debian/control and each package's files under
    // debian/<package>.
    let work = out.join("debian");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    fs::write(
        work.join("control"),
        "Source: guard\n\nPackage: guard\nArchitecture: any\n\nPackage: guard-collector\nArchitecture: any\n",
    )?;
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?;
    let mut debs = Vec::new();
    for package in packages(repo)? {
        let root = work.join(package.name);
        for binary in package.binaries {
            let path = format!("{BIN}/{binary}");
            put(
                &root,
                &path,
                &fs::read(artifacts.bin_dir.join(binary))?,
                0o755,
            )?;
            // As Debian's packages are: no symbols beyond those needed.
            run(Command::new("strip")
                .arg("--strip-unneeded")
                .arg(root.join(&path[1..])))?;
        }
        // The unit as packaging/ has it for a manual install, without its
        // install notes, and with the packages' paths.
        let unit = fs::read_to_string(repo.root.join("packaging").join(package.unit))?;
        let unit = format!(
            "# From the {} package.\n{}",
            package.name,
            &unit[unit.find("[Unit]").context("a [Unit] section")?..]
        )
        .replace("/usr/local/bin", BIN)
        .replace("/usr/local/share/doc", "/usr/share/doc");
        put(
            &root,
            &format!("/lib/systemd/system/{}", package.unit),
            unit.as_bytes(),
            0o644,
        )?;
        for (path, text, mode) in &package.files {
            put(&root, path, text.as_bytes(), *mode)?;
        }
        put(
            &root,
            &format!("/usr/share/doc/{}/copyright", package.name),
            COPYRIGHT.as_bytes(),
            0o644,
        )?;
        let depends = shlib_depends(&work, &root, package.binaries)?;
        let control = format!(
            "Package: {}\nVersion: {VERSION}\nArchitecture: {}\nMaintainer: {MAINTAINER}\nDepends: {depends}\nSection: admin\nPriority: optional\nHomepage: https://example.invalid/guard\nDescription: {}\n{}",
            package.name,
            arch.trim(),
            package.summary,
            package
                .description
                .lines()
                .map(|l| if l.is_empty() {
                    " .\n".to_string()
                } else {
                    format!(" {l}\n")
                })
                .collect::<String>()
        );
        put(&root, "/DEBIAN/control", control.as_bytes(), 0o644)?;
        if !package.conffiles.is_empty() {
            put(
                &root,
                "/DEBIAN/conffiles",
                (package.conffiles.join("\n") + "\n").as_bytes(),
                0o644,
            )?;
        }
        let postinst = format!("#!/bin/sh\nset -e\n{}{DAEMON_RELOAD}", package.postinst);
        put(&root, "/DEBIAN/postinst", postinst.as_bytes(), 0o755)?;
        let postrm = format!("#!/bin/sh\nset -e\n{DAEMON_RELOAD}");
        put(&root, "/DEBIAN/postrm", postrm.as_bytes(), 0o755)?;
        let deb = out.join(format!("{}_{VERSION}_{}.deb", package.name, arch.trim()));
        // gzip: fast, and every dpkg reads it.
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&root)
            .arg(&deb))?;
        debs.push(deb);
    }
    for deb in &debs {
        println!("{}", deb.display());
    }
    Ok(debs)
}

fn packages(repo: &Repo) -> Result<[Package; 2]> {
    let example = fs::read_to_string(repo.root.join("examples/policy.yaml"))?;
    let policy = format!(
        "# Guard's policy (docs in /usr/share/doc/guard/docs/policy.md).\n#\n# As installed it names no agent, so guardd confines nothing. The example\n# below shows every kind of rule: uncomment and adapt it, check it with\n#\n#     guardctl policy check --this-host /etc/guard/policy.yaml\n#\n# then start guardd: systemctl enable --now guardd.\nprofiles: []\nagents: []\n\n{}",
        example
            .lines()
            .map(|l| if l.is_empty() {
                "#\n".to_string()
            } else {
                format!("# {l}\n")
            })
            .collect::<String>()
    );
    let mut docs = vec![(
        "/usr/share/doc/guard/README.md".to_string(),
        fs::read_to_string(repo.root.join("README.md"))?,
        0o644,
    )];
    for entry in fs::read_dir(repo.root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().context("a doc's name")?.to_string_lossy();
            docs.push((
                format!("/usr/share/doc/guard/docs/{name}"),
                fs::read_to_string(&path)?,
                0o644,
            ));
        }
    }
    docs.push((
        "/usr/share/doc/guard/examples/policy.yaml".into(),
        example,
        0o644,
    ));
    docs.push(("/etc/guard/policy.yaml".into(), policy, 0o644));
    Ok([
        Package {
            name: "guard",
            summary: "guardrails for AI agents, enforced by the kernel (BPF LSM)",
            description: "guardd confines the processes of agents (commands started with\n`guardctl run --agent NAME`, and people's logins through PAM) by the\npolicy in /etc/guard/policy.yaml: exec, file changes, connections and\ndatabase statements (guard-pg), with every decision recorded in a\nhash chain. guardd is not started on install: write the policy, then\n`systemctl enable --now guardd`.",
            binaries: &["guardd", "guardctl", "guard-pg"],
            unit: "guardd.service",
            files: docs,
            conffiles: &["/etc/guard/policy.yaml"],
            postinst: "",
        },
        Package {
            name: "guard-collector",
            summary: "one store for the Guard records of many hosts",
            description: "guard-collector receives the record streams guardd ships over mutual\nTLS, checks their hash chains and signed checkpoints, stores them in\nSQLite or PostgreSQL, and serves queries. It runs as the system user\nguard-collector; put its TLS files in /etc/guard/tls, then\n`systemctl enable --now guard-collector`.",
            binaries: &["guard-collector"],
            unit: "guard-collector.service",
            files: vec![(
                "/usr/lib/sysusers.d/guard-collector.conf".into(),
                "u guard-collector - \"Guard collector\" /var/lib/guard-collector\n".into(),
                0o644,
            )],
            conffiles: &[],
            postinst: "systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} guard-collector.conf\n",
        },
    ])
}

/// Writes `contents` at `path` inside the package root `root`.
fn put(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<()> {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().context("a file in a directory")?)?;
    fs::write(&file, contents).with_context(|| format!("cannot write {}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The libraries `binaries` (staged in `root`) need, as dpkg-shlibdeps
/// says.
fn shlib_depends(work: &Path, root: &Path, binaries: &[&str]) -> Result<String> {
    let mut command = Command::new("dpkg-shlibdeps");
    command.current_dir(work.parent().context("the work directory's parent")?);
    command.arg("-O");
    for binary in binaries {
        command.arg(format!("-e{}", root.join(&BIN[1..]).join(binary).display()));
    }
    let out = capture(&mut command)?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps named no libraries")
}
