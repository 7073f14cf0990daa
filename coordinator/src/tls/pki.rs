//! Certificates as data: the bootstrap CA, the serving certificate it issues, what a
//! certificate says about itself, and the pure decisions about renewing one. No I/O here; every
//! decision takes an explicit `now`.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{Error, Result};

/// How long a bootstrapped CA is valid by default (`--tls-ca-validity`). It is rotated well
/// before it expires (see [`super::rotation`]); the serving certificates it signs live shorter.
pub const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(365 * 24);

/// How long a bootstrapped serving certificate is valid (it is renewed after two thirds).
pub const SERVING_VALIDITY: SignedDuration = SignedDuration::from_hours(90 * 24);

/// How far back a new certificate's `notBefore` is set, so that a peer whose clock runs a little
/// behind ours does not see a certificate from the future.
const BACKDATE: SignedDuration = SignedDuration::from_hours(1);

/// The common name of a bootstrapped CA.
const CA_COMMON_NAME: &str = "rota CA";

/// The common name of a bootstrapped serving certificate.
const SERVING_COMMON_NAME: &str = "rota-coordinator";

/// What a certificate says about itself, as far as rota's decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// DNS subject alternative names, lower-cased.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Whether the basic constraints make it a CA.
    pub is_ca: bool,
    /// The name constraints of a CA, `None` without the extension.
    pub name_constraints: Option<Constraints>,
    /// The raw (DER) subject name.
    subject: Vec<u8>,
    /// The raw (DER) issuer name.
    issuer: Vec<u8>,
    /// The subject public key (the bit string's content).
    public_key: Vec<u8>,
    /// The whole certificate (DER).
    der: Vec<u8>,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::invalid("certificate", e.to_string()))?;
        let validity = cert.validity();
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        let sans = cert.subject_alternative_name().map_err(|e| {
            Error::invalid("certificate's subject alternative names", e.to_string())
        })?;
        for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }
        let name_constraints =
            cert.extensions()
                .iter()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::NameConstraints(nc) => {
                        Some(Constraints::from_x509(nc, ext.critical))
                    }
                    _ => None,
                });
        Ok(CertInfo {
            not_before: timestamp(validity.not_before.timestamp())?,
            not_after: timestamp(validity.not_after.timestamp())?,
            dns_names,
            ips,
            is_ca: cert.is_ca(),
            name_constraints,
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            der: der.to_vec(),
        })
    }

    /// Reads the first certificate of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<CertInfo> {
        let first = first_certificate(pem)?;
        CertInfo::from_der(&first)
    }

    /// Whether `key` is this certificate's private key.
    pub fn matches_key(&self, key: &KeyPair) -> bool {
        key.der_bytes() == self.public_key.as_slice()
    }

    /// The certificate in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// A CA's name constraints, as far as rota uses them: DNS names and IP ranges (address and
/// mask bytes, as the extension encodes them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// Whether the extension is marked critical.
    pub critical: bool,
    /// Permitted DNS subtrees (a name and its subdomains), lower-cased.
    pub permitted_dns: Vec<String>,
    /// Permitted IP ranges.
    pub permitted_ips: Vec<Vec<u8>>,
    /// Excluded IP ranges.
    pub excluded_ips: Vec<Vec<u8>>,
}

impl Constraints {
    fn from_x509(nc: &x509_parser::extensions::NameConstraints<'_>, critical: bool) -> Self {
        let mut out = Constraints {
            critical,
            ..Constraints::default()
        };
        for subtree in nc.permitted_subtrees.iter().flatten() {
            match &subtree.base {
                GeneralName::DNSName(dns) => out.permitted_dns.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(range) => out.permitted_ips.push(range.to_vec()),
                _ => {}
            }
        }
        for subtree in nc.excluded_subtrees.iter().flatten() {
            if let GeneralName::IPAddress(range) = &subtree.base {
                out.excluded_ips.push(range.to_vec());
            }
        }
        out
    }

    /// The constraints of a CA that may only issue certificates for `names`: their DNS names
    /// (a wildcard's parent domain), their IP addresses as single-address ranges, and, when
    /// there are none, every IP address excluded, so that no leaf can carry one.
    pub fn for_names(names: &SubjectNames) -> Constraints {
        let mut permitted_dns: Vec<String> = Vec::new();
        for dns in names.dns() {
            let base = dns.strip_prefix("*.").unwrap_or(dns).to_owned();
            if !permitted_dns.contains(&base) {
                permitted_dns.push(base);
            }
        }
        let subnets = |ips: &[IpAddr], prefix_v4, prefix_v6| -> Vec<Vec<u8>> {
            ips.iter()
                .map(|ip| cidr_bytes(&cidr(*ip, prefix_v4, prefix_v6)))
                .collect()
        };
        let any = [IpAddr::from([0u8; 4]), IpAddr::from([0u8; 16])];
        Constraints {
            critical: true,
            permitted_dns,
            permitted_ips: subnets(names.ips(), 32, 128),
            excluded_ips: if names.ips().is_empty() {
                subnets(&any, 0, 0)
            } else {
                Vec::new()
            },
        }
    }

    fn to_rcgen(&self) -> Result<NameConstraints> {
        let range = |bytes: &Vec<u8>| -> Result<GeneralSubtree> {
            let subnet = match bytes.len() {
                8 => <[u8; 4]>::try_from(&bytes[..4])
                    .ok()
                    .zip(<[u8; 4]>::try_from(&bytes[4..]).ok())
                    .map(|(addr, mask)| CidrSubnet::V4(addr, mask)),
                32 => <[u8; 16]>::try_from(&bytes[..16])
                    .ok()
                    .zip(<[u8; 16]>::try_from(&bytes[16..]).ok())
                    .map(|(addr, mask)| CidrSubnet::V6(addr, mask)),
                _ => None,
            };
            subnet
                .map(GeneralSubtree::IpAddress)
                .ok_or_else(|| Error::invalid("name constraint", "not an IP range"))
        };
        Ok(NameConstraints {
            permitted_subtrees: self
                .permitted_dns
                .iter()
                .map(|dns| Ok(GeneralSubtree::DnsName(dns.clone())))
                .chain(self.permitted_ips.iter().map(range))
                .collect::<Result<_>>()?,
            excluded_subtrees: self.excluded_ips.iter().map(range).collect::<Result<_>>()?,
        })
    }
}

fn cidr(ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> CidrSubnet {
    match ip {
        IpAddr::V4(v4) => CidrSubnet::from_v4_prefix(v4.octets(), prefix_v4),
        IpAddr::V6(v6) => CidrSubnet::from_v6_prefix(v6.octets(), prefix_v6),
    }
}

/// The extension's encoding of a range: the address, then the mask.
fn cidr_bytes(subnet: &CidrSubnet) -> Vec<u8> {
    match subnet {
        CidrSubnet::V4(addr, mask) => addr.iter().chain(mask).copied().collect(),
        CidrSubnet::V6(addr, mask) => addr.iter().chain(mask).copied().collect(),
    }
}

/// Whether a certificate is due for renewal at `now`: less than a third of its lifetime is
/// left (or it has expired), or it is not valid yet. A third leaves a 90-day certificate 30
/// days of retries before it expires, as cert-manager does by default.
pub fn needs_renewal(cert: &CertInfo, now: Timestamp) -> bool {
    if now < cert.not_before {
        return true;
    }
    let lifetime = cert.not_after.duration_since(cert.not_before);
    let renew_at = cert
        .not_after
        .checked_sub(lifetime / 3)
        .unwrap_or(cert.not_before);
    now >= renew_at
}

/// Why a serving certificate must be replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// It is due for renewal (see [`needs_renewal`]).
    Renewal {
        /// When it expires.
        not_after: Timestamp,
    },
    /// It lacks names the server is reached by (the configured names changed).
    MissingNames(Vec<String>),
    /// It was not issued by the current CA.
    OtherIssuer,
    /// Its private key does not belong to it.
    KeyMismatch,
}

impl std::fmt::Display for Reissue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reissue::Renewal { not_after } => write!(f, "due for renewal (expires {not_after})"),
            Reissue::MissingNames(names) => write!(f, "lacks the names {}", names.join(", ")),
            Reissue::OtherIssuer => f.write_str("not issued by the current CA"),
            Reissue::KeyMismatch => f.write_str("its key does not match it"),
        }
    }
}

/// Decides whether a stored serving certificate can be used at `now`, or why it must be
/// reissued. `key_matches` and `issued_by_ca` are facts checked beforehand
/// ([`CertInfo::matches_key`], [`Ca::issued`]).
pub fn check_serving(
    cert: &CertInfo,
    key_matches: bool,
    issued_by_ca: bool,
    wanted: &SubjectNames,
    now: Timestamp,
) -> Option<Reissue> {
    if !key_matches {
        return Some(Reissue::KeyMismatch);
    }
    if !issued_by_ca {
        return Some(Reissue::OtherIssuer);
    }
    let missing = wanted.missing_from(cert);
    if !missing.is_empty() {
        return Some(Reissue::MissingNames(missing));
    }
    needs_renewal(cert, now).then_some(Reissue::Renewal {
        not_after: cert.not_after,
    })
}

/// The names a serving certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectNames {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl SubjectNames {
    /// The Service's DNS names (`SERVICE`, `SERVICE.NS`, `SERVICE.NS.svc`,
    /// `SERVICE.NS.svc.DOMAIN`) plus `extra` names and IP addresses.
    pub fn for_service(
        service: &str,
        namespace: &str,
        cluster_domain: &str,
        extra: &[String],
    ) -> Result<SubjectNames> {
        let domain = cluster_domain.trim_matches('.');
        let mut names = SubjectNames {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        for name in [
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{domain}"),
        ] {
            names.add(&name)?;
        }
        for name in extra {
            names.add(name)?;
        }
        Ok(names)
    }

    fn add(&mut self, name: &str) -> Result<()> {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            if !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        validate_dns_name(&name)?;
        if !self.dns.contains(&name) {
            self.dns.push(name);
        }
        Ok(())
    }

    /// The DNS names.
    pub fn dns(&self) -> &[String] {
        &self.dns
    }

    /// The IP addresses.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// The names (and addresses) a CA with `constraints` may certify: all without them. A
    /// serving certificate carries only these, since one name outside a CA's constraints makes
    /// verifiers refuse the whole certificate.
    pub fn permitted_by(&self, constraints: Option<&Constraints>) -> SubjectNames {
        let Some(c) = constraints else {
            return self.clone();
        };
        let dns_ok = |name: &String| {
            c.permitted_dns.is_empty()
                || c.permitted_dns
                    .iter()
                    .any(|base| name == base || name.ends_with(&format!(".{base}")))
        };
        let ip_ok = |ip: &IpAddr| {
            let bytes: Vec<u8> = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            let within = |range: &Vec<u8>| {
                range.len() == 2 * bytes.len()
                    && bytes
                        .iter()
                        .zip(&range[..bytes.len()])
                        .zip(&range[bytes.len()..])
                        .all(|((b, addr), mask)| b & mask == addr & mask)
            };
            (c.permitted_ips.is_empty() || c.permitted_ips.iter().any(within))
                && !c.excluded_ips.iter().any(within)
        };
        SubjectNames {
            dns: self.dns.iter().filter(|d| dns_ok(d)).cloned().collect(),
            ips: self.ips.iter().filter(|ip| ip_ok(ip)).copied().collect(),
        }
    }

    /// The names (and addresses) that `cert` does not carry.
    pub fn missing_from(&self, cert: &CertInfo) -> Vec<String> {
        let dns = self
            .dns
            .iter()
            .filter(|name| !cert.dns_names.contains(name))
            .cloned();
        let ips = self
            .ips
            .iter()
            .filter(|ip| !cert.ips.contains(ip))
            .map(IpAddr::to_string);
        dns.chain(ips).collect()
    }
}

/// A DNS name a certificate can carry: labels of letters, digits and hyphens (a leading `*`
/// label allowed), at most 253 characters.
fn validate_dns_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("subject name {name:?}"), why));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for (i, label) in name.split('.').enumerate() {
        if i == 0 && label == "*" {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return bad("labels must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return bad("labels are letters, digits and inner hyphens");
        }
    }
    Ok(())
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that can issue serving certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256) without name constraints, valid from shortly before
    /// `now` for `validity`. The bootstrap uses [`Ca::generate_for`]; this is the shape of a
    /// CA an operator might bring.
    pub fn generate(now: Timestamp, validity: SignedDuration) -> Result<Ca> {
        Ca::generate_with(None, now, validity)
    }

    /// A new self-signed CA (ECDSA P-256) that can only certify `names`: critical name
    /// constraints ([`Constraints::for_names`]) make verifiers refuse any other name it signs,
    /// so its key, if stolen, cannot impersonate anything but the coordinator.
    pub fn generate_for(
        names: &SubjectNames,
        now: Timestamp,
        validity: SignedDuration,
    ) -> Result<Ca> {
        Ca::generate_with(Some(Constraints::for_names(names)), now, validity)
    }

    fn generate_with(
        constraints: Option<Constraints>,
        now: Timestamp,
        validity: SignedDuration,
    ) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.name_constraints = constraints
            .as_ref()
            .map(Constraints::to_rcgen)
            .transpose()?;
        // A name of its own (from its key) per CA: clients tell CAs apart by name first, so a
        // client trusting another rota CA gets "unknown issuer", not a signature mismatch.
        let key_id: String = params
            .key_identifier(&key)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        params.distinguished_name = name(&format!("{CA_COMMON_NAME} {key_id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset_date_time(shifted(now, -BACKDATE)?)?;
        params.not_after = offset_date_time(shifted(now, validity)?)?;
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and private key (PEM). The first certificate of `cert_pem`
    /// is the issuer; it must be a CA and match the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let der = first_certificate(cert_pem)?;
        let info = CertInfo::from_der(&der)?;
        if !info.is_ca {
            return Err(Error::invalid(
                "CA certificate",
                "its basic constraints do not make it a CA",
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::invalid("CA private key", e.to_string()))?;
        if !info.matches_key(&key) {
            return Err(Error::invalid(
                "CA private key",
                "it does not belong to the CA certificate",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| Error::invalid("CA certificate", e.to_string()))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            info,
            issuer,
        })
    }

    /// The CA certificate (PEM), as clients should trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What the CA certificate says.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Whether this CA signed `cert`.
    pub fn issued(&self, cert: &CertInfo) -> bool {
        if cert.issuer != self.info.subject {
            return false;
        }
        let (Ok((_, leaf)), Ok((_, ca))) = (
            x509_parser::parse_x509_certificate(&cert.der),
            x509_parser::parse_x509_certificate(&self.info.der),
        ) else {
            return false;
        };
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// A serving certificate for `names` with a fresh key, valid from shortly before `now` for
    /// `validity` but never beyond the CA itself.
    pub fn issue_serving(
        &self,
        names: &SubjectNames,
        now: Timestamp,
        validity: SignedDuration,
    ) -> Result<KeyedCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(SERVING_COMMON_NAME);
        params.subject_alt_names = names
            .dns()
            .iter()
            .map(|dns| Ok(SanType::DnsName(dns.clone().try_into()?)))
            .chain(names.ips().iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset_date_time(shifted(now, -BACKDATE)?)?;
        params.not_after = offset_date_time(shifted(now, validity)?.min(self.info.not_after))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The first certificate of a PEM bundle, in DER.
pub fn first_certificate(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::invalid("certificate", "no PEM CERTIFICATE block"))?
        .map_err(|e| Error::invalid("certificate", e.to_string()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rota");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn shifted(at: Timestamp, by: SignedDuration) -> Result<Timestamp> {
    at.checked_add(by)
        .map_err(|e| Error::invalid("certificate validity", e.to_string()))
}

fn offset_date_time(at: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|e| Error::invalid("certificate validity", e.to_string()))
}

fn timestamp(seconds: i64) -> Result<Timestamp> {
    Timestamp::from_second(seconds)
        .map_err(|e| Error::invalid("certificate validity", e.to_string()))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cert(not_before: &str, not_after: &str) -> CertInfo {
        CertInfo {
            not_before: at(not_before),
            not_after: at(not_after),
            dns_names: vec!["rota-coordinator".into()],
            ips: vec![],
            is_ca: false,
            name_constraints: None,
            subject: vec![],
            issuer: vec![],
            public_key: vec![],
            der: vec![],
        }
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_lifetime_is_left() {
        // A 90-day certificate: renewal is due 30 days before it expires.
        let c = cert("2025-01-01T00:00:00Z", "2025-04-01T00:00:00Z");
        let table = [
            ("2024-12-31T23:59:59Z", true, "not valid yet"),
            ("2025-01-01T00:00:00Z", false, "just issued"),
            ("2025-02-15T00:00:00Z", false, "half-way"),
            ("2025-03-01T23:59:59Z", false, "a second before two thirds"),
            (
                "2025-03-02T00:00:00Z",
                true,
                "two thirds of the lifetime gone",
            ),
            ("2025-03-31T23:59:59Z", true, "about to expire"),
            ("2025-04-01T00:00:00Z", true, "expiry instant"),
            ("2026-01-01T00:00:00Z", true, "long expired"),
        ];
        for (now, due, why) in table {
            assert_eq!(needs_renewal(&c, at(now)), due, "{why} ({now})");
        }
    }

    #[test]
    fn a_short_lived_certificate_renews_by_the_same_rule() {
        let c = cert("2025-01-01T00:00:00Z", "2025-01-01T03:00:00Z");
        assert!(!needs_renewal(&c, at("2025-01-01T01:59:59Z")));
        assert!(needs_renewal(&c, at("2025-01-01T02:00:00Z")));
    }

    #[test]
    fn a_certificate_without_lifetime_is_always_due() {
        let c = cert("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z");
        assert!(needs_renewal(&c, at("2025-01-01T00:00:00Z")));
    }

    #[test]
    fn serving_check_reasons_in_order() {
        let names =
            SubjectNames::for_service("rota-coordinator", "ops", "cluster.local", &[]).unwrap();
        let mut c = cert("2025-01-01T00:00:00Z", "2025-04-01T00:00:00Z");
        c.dns_names = names.dns().to_vec();
        let fresh = at("2025-01-02T00:00:00Z");
        let late = at("2025-03-20T00:00:00Z");
        let table: [(bool, bool, Timestamp, Option<Reissue>); 5] = [
            (true, true, fresh, None),
            (
                true,
                true,
                late,
                Some(Reissue::Renewal {
                    not_after: c.not_after,
                }),
            ),
            (true, false, fresh, Some(Reissue::OtherIssuer)),
            (false, true, fresh, Some(Reissue::KeyMismatch)),
            (false, false, late, Some(Reissue::KeyMismatch)),
        ];
        for (key, issuer, now, want) in table {
            assert_eq!(check_serving(&c, key, issuer, &names, now), want);
        }
        let wider = SubjectNames::for_service(
            "rota-coordinator",
            "ops",
            "cluster.local",
            &["rota.example.com".into(), "10.0.0.7".into()],
        )
        .unwrap();
        assert_eq!(
            check_serving(&c, true, true, &wider, fresh),
            Some(Reissue::MissingNames(vec![
                "rota.example.com".into(),
                "10.0.0.7".into()
            ]))
        );
    }

    #[test]
    fn service_names_cover_every_form_of_the_service() {
        let names = SubjectNames::for_service(
            "rota-coordinator",
            "rota-system",
            "cluster.local.",
            &[
                "Rota.Example.com".into(),
                "192.0.2.1".into(),
                "::1".into(),
                "rota-coordinator".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            names.dns(),
            [
                "rota-coordinator",
                "rota-coordinator.rota-system",
                "rota-coordinator.rota-system.svc",
                "rota-coordinator.rota-system.svc.cluster.local",
                "rota.example.com",
            ]
        );
        assert_eq!(
            names.ips(),
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_extra_names_are_refused() {
        for bad in [
            "",
            "-rota.example",
            "rota_x.example",
            "a..b",
            "rota.example/x",
        ] {
            let err = SubjectNames::for_service("rota", "ns", "cluster.local", &[bad.into()]);
            assert!(err.is_err(), "{bad:?} accepted");
        }
        SubjectNames::for_service("rota", "ns", "cluster.local", &["*.rota.example".into()])
            .unwrap();
    }

    #[test]
    fn a_generated_ca_issues_a_serving_certificate_it_recognises() {
        let now = at("2025-06-01T00:00:00Z");
        let ca = Ca::generate(now, CA_VALIDITY).unwrap();
        assert!(ca.info().is_ca);
        let names = SubjectNames::for_service(
            "rota-coordinator",
            "ns",
            "cluster.local",
            &["10.1.2.3".into()],
        )
        .unwrap();
        let issued = ca.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert!(ca.issued(&info));
        assert!(info.matches_key(&KeyPair::from_pem(&issued.key_pem).unwrap()));
        assert_eq!(info.dns_names, names.dns());
        assert_eq!(info.ips, names.ips());
        assert_eq!(info.not_before, now - BACKDATE);
        assert_eq!(info.not_after, now + SERVING_VALIDITY);
        assert_eq!(check_serving(&info, true, true, &names, now), None);

        let other = Ca::generate(now, CA_VALIDITY).unwrap();
        assert!(!other.issued(&info));
        assert!(!info.matches_key(&KeyPair::from_pem(other.key_pem()).unwrap()));

        // A CA read back from its PEM signs the same way.
        let reread = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let again = reread.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        assert!(ca.issued(&CertInfo::from_pem(&again.cert_pem).unwrap()));
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let now = at("2025-06-01T00:00:00Z");
        let ca = Ca::generate(now, SignedDuration::from_hours(24)).unwrap();
        let names = SubjectNames::for_service("rota", "ns", "cluster.local", &[]).unwrap();
        let issued = ca.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.not_after, ca.info().not_after);
    }

    #[test]
    fn a_ca_with_someone_elses_key_or_a_leaf_certificate_is_refused() {
        let now = at("2025-06-01T00:00:00Z");
        let ca = Ca::generate(now, CA_VALIDITY).unwrap();
        let other = Ca::generate(now, CA_VALIDITY).unwrap();
        let err = Ca::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let names = SubjectNames::for_service("rota", "ns", "cluster.local", &[]).unwrap();
        let leaf = ca.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not make it a CA"), "{err}");
        assert!(Ca::from_pem("garbage", ca.key_pem()).is_err());
        assert!(Ca::from_pem(ca.cert_pem(), "garbage").is_err());
    }

    /// What a rustls client trusting only `ca` says about `leaf` presented as `name`.
    fn verify(ca: &Ca, leaf: &KeyedCert, name: &str, now: Timestamp) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_certificate(ca.cert_pem()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let seconds = u64::try_from(now.as_second()).unwrap();
        verifier
            .verify_server_cert(
                &first_certificate(&leaf.cert_pem).unwrap(),
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    seconds,
                )),
            )
            .map(|_| ())
    }

    #[test]
    fn a_constrained_ca_certifies_only_the_coordinators_names() {
        let now = at("2030-06-01T00:00:00Z");
        let names =
            SubjectNames::for_service("rota-coordinator", "ops", "cluster.local", &[]).unwrap();
        let ca = Ca::generate_for(&names, now, CA_VALIDITY).unwrap();
        let constraints = ca.info().name_constraints.clone().unwrap();
        assert!(constraints.critical);
        assert_eq!(constraints, Constraints::for_names(&names));
        assert_eq!(constraints.permitted_dns, names.dns());
        assert_eq!(
            constraints.excluded_ips.len(),
            2,
            "every IPv4 and IPv6 address"
        );

        let good = ca.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        for name in names.dns() {
            verify(&ca, &good, name, now).unwrap();
        }
        // The same CA signing any other name, or an address: refused, whichever name is asked.
        for extra in [
            "evil.example.com",
            "kubernetes.default.svc",
            "10.0.0.1",
            "rota-coordinator.other",
        ] {
            let wider = SubjectNames::for_service(
                "rota-coordinator",
                "ops",
                "cluster.local",
                &[extra.to_owned()],
            )
            .unwrap();
            let bad = ca.issue_serving(&wider, now, SERVING_VALIDITY).unwrap();
            let err = verify(&ca, &bad, "rota-coordinator.ops.svc", now).unwrap_err();
            assert!(
                format!("{err:?}").contains("NameConstraint"),
                "{extra}: {err:?}"
            );
            let alone = SubjectNames {
                dns: vec![],
                ips: vec![],
            };
            let mut only = alone.clone();
            only.add(extra).unwrap();
            let leaf = ca.issue_serving(&only, now, SERVING_VALIDITY).unwrap();
            let asked = extra
                .parse::<IpAddr>()
                .map_or(extra.to_owned(), |ip| ip.to_string());
            assert!(verify(&ca, &leaf, &asked, now).is_err(), "{extra} accepted");
        }
        // An unconstrained CA (an operator's) signs anything: the constraint is what refuses.
        let open = Ca::generate(now, CA_VALIDITY).unwrap();
        let leaf = open
            .issue_serving(
                &SubjectNames::for_service("evil", "x", "cluster.local", &[]).unwrap(),
                now,
                SERVING_VALIDITY,
            )
            .unwrap();
        verify(&open, &leaf, "evil.x.svc", now).unwrap();
    }

    #[test]
    fn configured_addresses_are_permitted_and_only_they() {
        let now = at("2030-06-01T00:00:00Z");
        let names = SubjectNames::for_service(
            "rota-coordinator",
            "ops",
            "cluster.local",
            &["10.96.0.10".into(), "*.rota.example".into()],
        )
        .unwrap();
        let ca = Ca::generate_for(&names, now, CA_VALIDITY).unwrap();
        let leaf = ca.issue_serving(&names, now, SERVING_VALIDITY).unwrap();
        verify(&ca, &leaf, "10.96.0.10", now).unwrap();
        verify(&ca, &leaf, "a.rota.example", now).unwrap();
        let other_ip = SubjectNames::for_service(
            "rota-coordinator",
            "ops",
            "cluster.local",
            &["10.96.0.11".into()],
        )
        .unwrap();
        let bad = ca.issue_serving(&other_ip, now, SERVING_VALIDITY).unwrap();
        assert!(verify(&ca, &bad, "rota-coordinator.ops.svc", now).is_err());
    }

    #[test]
    fn only_permitted_names_are_kept_for_a_constrained_ca() {
        let names =
            SubjectNames::for_service("rota-coordinator", "ops", "cluster.local", &[]).unwrap();
        let wider = SubjectNames::for_service(
            "rota-coordinator",
            "ops",
            "cluster.local",
            &[
                "rota.example.com".into(),
                "10.0.0.7".into(),
                "x.rota-coordinator.ops".into(),
            ],
        )
        .unwrap();
        let constraints = Constraints::for_names(&names);
        let kept = wider.permitted_by(Some(&constraints));
        assert_eq!(
            kept.dns(),
            [
                "rota-coordinator",
                "rota-coordinator.ops",
                "rota-coordinator.ops.svc",
                "rota-coordinator.ops.svc.cluster.local",
                "x.rota-coordinator.ops",
            ]
        );
        assert!(kept.ips().is_empty());
        assert_eq!(wider.permitted_by(None), wider);
        let with_ip = Constraints::for_names(&wider);
        assert_eq!(wider.permitted_by(Some(&with_ip)), wider);
    }
}
