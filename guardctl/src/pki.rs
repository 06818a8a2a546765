//! `guardctl pki`: a small certificate authority for a test fleet, and the
//! certificates its hosts, readers and collectors show each other (see
//! docs/audit.md, "Transport security", for the same with openssl).

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use guard_api::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long the CA's own certificate is valid.
const CA_DAYS: i64 = 3650;

/// Makes `dir/ca.pem` and `dir/ca.key`.
pub fn make_ca(dir: &Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (certificate, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let pair = KeyPair::generate()?;
    let made = params.self_signed(&pair)?;
    write_new(&key, &pair.serialize_pem(), 0o600)?;
    write_new(&certificate, &made.pem(), 0o644)?;
    println!(
        "made {} and {}: CA `{name}`, valid for {CA_DAYS} days; keep ca.key off the hosts",
        certificate.display(),
        key.display()
    );
    Ok(())
}

/// What to issue.
pub struct Request<'a> {
    /// The CA's directory (ca.pem, ca.key).
    pub ca: &'a Path,
    pub role: Role,
    /// A host's --host-name, a reader's name, or a collector's DNS name.
    pub name: &'a str,
    /// More names or addresses the holder serves on (DNS or IP).
    pub addresses: &'a [String],
    pub days: i64,
    /// Where NAME.pem and NAME.key go.
    pub out: &'a Path,
}

/// Makes `out/NAME.pem` and `out/NAME.key`, signed by the CA: the name is
/// the certificate's first DNS name and its common name; the role its
/// organizational unit.
pub fn issue(request: &Request) -> anyhow::Result<()> {
    let Request {
        ca,
        role,
        name,
        addresses,
        days,
        out,
    } = *request;
    if name.is_empty() || name.contains('/') {
        bail!("`{name}` is not a name for a certificate");
    }
    let read = |file: &str| {
        let path = ca.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (make the CA with `guardctl pki ca {}`)",
                path.display(),
                ca.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).context("ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("ca.pem")?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.unit());
    params.subject_alt_names =
        std::iter::once(name)
            .chain(addresses.iter().map(String::as_str))
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.to_string().try_into().map(SanType::DnsName).map_err(|e| {
                    anyhow::anyhow!("`{n}` is neither a DNS name nor an IP address: {e}")
                }),
            })
            .collect::<anyhow::Result<_>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // A host ships (a client) and serves --grpc-listen.
        Role::Host => vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
        Role::Reader => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Role::Collector => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    validity(&mut params, days);
    let pair = KeyPair::generate()?;
    let made = params.signed_by(&pair, &issuer)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (certificate, key) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    write_new(&key, &pair.serialize_pem(), 0o600)?;
    write_new(&certificate, &made.pem(), 0o644)?;
    println!(
        "made {} and {}: role {}, name `{name}`, valid for {days} days",
        certificate.display(),
        key.display(),
        role.unit()
    );
    Ok(())
}

/// Valid from a minute ago (clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(days);
}

/// Writes a file that must not exist yet: a certificate or key is never
/// overwritten.
fn write_new(path: &PathBuf, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
