//! The control plane's certificates: one CA that signs every serving and client certificate (the
//! API server trusts it as its `--client-ca-file`), and the key the API server signs
//! ServiceAccount tokens with.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{Error, Result};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct KeyedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The control plane's CA.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA.
    pub fn generate() -> Result<Ca> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "rota-tests control-plane CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(pki)?).map_err(pki)?;
        Ok(Ca { issuer })
    }

    /// The CA's certificate.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key (the controller-manager signs CertificateSigningRequests with it).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A serving certificate for `dns` names and `ips`.
    pub fn serving(&self, common_name: &str, dns: &[&str], ips: &[IpAddr]) -> Result<KeyedCert> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = dns
            .iter()
            .map(|name| {
                Ok(SanType::DnsName(
                    (*name).try_into().map_err(|e: rcgen::Error| pki(e))?,
                ))
            })
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for user `user` in `groups`: how Kubernetes reads a client
    /// certificate (the common name is the user, each organization a group).
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<KeyedCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<KeyedCert> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(pki)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key pair for signing ServiceAccount tokens: the private key (PKCS#8) for the API server's
/// `--service-account-signing-key-file` and the controller-manager, the public key for
/// `--service-account-key-file`.
pub fn service_account_key() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(pki)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn pki(e: rcgen::Error) -> Error {
    Error::Pki(e.to_string())
}
