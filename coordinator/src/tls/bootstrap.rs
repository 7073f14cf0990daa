//! The self-made CA and serving certificate, kept in the coordinator's namespace.
//!
//! Replicas race safely: objects are created only when absent (a 409 means another replica
//! won, and its object is read and used) and replaced only on the `resourceVersion` that was
//! read (a 409 means another replica renewed first; its certificate is read and checked
//! again). An existing `rota-ca` Secret is never overwritten: an operator may put their own
//! (intermediate) CA there before the first start.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rcgen::KeyPair;

use super::pki::{self, Ca, CertInfo, KeyedCert, SubjectNames};
use super::{Error, Result};

/// The Secret holding the CA (`ca.crt`, `ca.key`).
pub const CA_SECRET: &str = "rota-ca";
/// The Secret holding the serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub const SERVING_SECRET: &str = "rota-coordinator-tls";
/// The ConfigMap publishing the CA certificate (`ca.crt`) to the agents.
pub const CA_CONFIGMAP: &str = "rota-ca";

/// Reads and writes of one object before giving up for this round (each retry follows a
/// concurrent write by another replica, so a few are plenty).
const ATTEMPTS: usize = 5;

/// What a bootstrap yields: the serving certificate and the CA that clients trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrapped {
    /// Certificate and key the server presents.
    pub serving: KeyedCert,
    /// The CA certificate (PEM) published to the agents.
    pub ca_pem: String,
}

/// Keeps the CA, its published certificate and the serving certificate in one namespace.
#[derive(Clone)]
pub struct Bootstrap {
    namespace: String,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    names: SubjectNames,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("namespace", &self.namespace)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// A bootstrap in `namespace` whose serving certificates carry `names`.
    pub fn new(client: kube::Client, namespace: &str, names: SubjectNames) -> Bootstrap {
        Bootstrap {
            namespace: namespace.to_owned(),
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client, namespace),
            names,
        }
    }

    /// Makes sure the CA exists, is published, and has issued a serving certificate that is
    /// good at `now`; creates, publishes or renews what is missing. Idempotent: call it at
    /// start and then periodically.
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace))]
    pub async fn ensure(&self, now: Timestamp) -> Result<Bootstrapped> {
        let ca = self.ensure_ca(now).await?;
        self.publish_ca(&ca).await?;
        let serving = self.ensure_serving(&ca, now).await?;
        Ok(Bootstrapped {
            serving,
            ca_pem: ca.cert_pem().to_owned(),
        })
    }

    /// The CA of `rota-ca`, created when the Secret does not exist.
    async fn ensure_ca(&self, now: Timestamp) -> Result<Ca> {
        for _ in 0..ATTEMPTS {
            let existing = self
                .secrets
                .get_opt(CA_SECRET)
                .await
                .map_err(|e| self.api_error("reading Secret", CA_SECRET, e))?;
            if let Some(secret) = existing {
                let cert = secret_field(&secret, CA_SECRET, "ca.crt")?;
                let key = secret_field(&secret, CA_SECRET, "ca.key")?;
                return Ca::from_pem(&cert, &key).map_err(|e| {
                    Error::invalid(format!("Secret {}/{CA_SECRET}", self.namespace), e)
                });
            }
            let ca = Ca::generate(now, pki::CA_VALIDITY)?;
            let secret = secret(
                CA_SECRET,
                "Opaque",
                [("ca.crt", ca.cert_pem()), ("ca.key", ca.key_pem())],
            );
            match self.secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = CA_SECRET, not_after = %ca.info().not_after, "created the CA");
                    return Ok(ca);
                }
                Err(e) if is_status(&e, 409) => {
                    tracing::debug!("another replica created the CA first; using it");
                }
                Err(e) => return Err(self.api_error("creating Secret", CA_SECRET, e)),
            }
        }
        Err(Error::Contended(format!("Secret {CA_SECRET}")))
    }

    /// Makes the ConfigMap `rota-ca` hold the CA certificate.
    async fn publish_ca(&self, ca: &Ca) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let existing = self
                .config_maps
                .get_opt(CA_CONFIGMAP)
                .await
                .map_err(|e| self.api_error("reading ConfigMap", CA_CONFIGMAP, e))?;
            let written = match existing {
                Some(cm) if cm_field(&cm) == Some(ca.cert_pem()) => return Ok(()),
                Some(mut cm) => {
                    cm.metadata.managed_fields = None;
                    cm.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert("ca.crt".to_owned(), ca.cert_pem().to_owned());
                    self.config_maps
                        .replace(CA_CONFIGMAP, &PostParams::default(), &cm)
                        .await
                }
                None => {
                    let cm = ConfigMap {
                        metadata: metadata(CA_CONFIGMAP),
                        data: Some(BTreeMap::from([(
                            "ca.crt".to_owned(),
                            ca.cert_pem().to_owned(),
                        )])),
                        ..ConfigMap::default()
                    };
                    self.config_maps.create(&PostParams::default(), &cm).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(configmap = CA_CONFIGMAP, "published the CA certificate");
                    return Ok(());
                }
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(self.api_error("writing ConfigMap", CA_CONFIGMAP, e)),
            }
        }
        Err(Error::Contended(format!("ConfigMap {CA_CONFIGMAP}")))
    }

    /// The serving certificate of `rota-coordinator-tls`, issued (or reissued) by `ca` when
    /// it is absent or unfit at `now`.
    async fn ensure_serving(&self, ca: &Ca, now: Timestamp) -> Result<KeyedCert> {
        for _ in 0..ATTEMPTS {
            let existing = self
                .secrets
                .get_opt(SERVING_SECRET)
                .await
                .map_err(|e| self.api_error("reading Secret", SERVING_SECRET, e))?;
            let reason = match &existing {
                None => "it does not exist".to_owned(),
                Some(secret) => match self.usable(secret, ca, now) {
                    Ok(serving) => return Ok(serving),
                    Err(reason) => reason,
                },
            };
            tracing::info!(secret = SERVING_SECRET, %reason, "issuing a serving certificate");
            let serving = ca.issue_serving(&self.names, now, pki::SERVING_VALIDITY)?;
            let data = [
                ("tls.crt", serving.cert_pem.as_str()),
                ("tls.key", serving.key_pem.as_str()),
                ("ca.crt", ca.cert_pem()),
            ];
            let written = match existing {
                None => {
                    let secret = secret(SERVING_SECRET, "kubernetes.io/tls", data);
                    self.secrets.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // Keeps the type (immutable), labels and resourceVersion of what was read.
                    secret.metadata.managed_fields = None;
                    secret.data = Some(secret_data(data));
                    secret.string_data = None;
                    self.secrets
                        .replace(SERVING_SECRET, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => return Ok(serving),
                Err(e) if is_status(&e, 409) => {
                    tracing::debug!("another replica wrote the serving certificate first");
                }
                Err(e) => return Err(self.api_error("writing Secret", SERVING_SECRET, e)),
            }
        }
        Err(Error::Contended(format!("Secret {SERVING_SECRET}")))
    }

    /// The stored serving certificate if it can be used at `now`, else why not.
    fn usable(&self, secret: &Secret, ca: &Ca, now: Timestamp) -> Result<KeyedCert, String> {
        let read = |key| secret_field(secret, SERVING_SECRET, key).map_err(|e| e.to_string());
        let (cert_pem, key_pem, ca_pem) = (read("tls.crt")?, read("tls.key")?, read("ca.crt")?);
        let info = CertInfo::from_pem(&cert_pem).map_err(|e| format!("tls.crt: {e}"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("tls.key: {e}"))?;
        if let Some(reissue) = pki::check_serving(
            &info,
            info.matches_key(&key),
            ca.issued(&info),
            &self.names,
            now,
        ) {
            return Err(reissue.to_string());
        }
        if ca_pem != ca.cert_pem() {
            return Err("its ca.crt is not the current CA".to_owned());
        }
        Ok(KeyedCert { cert_pem, key_pem })
    }

    fn api_error(&self, action: &str, name: &str, source: kube::Error) -> Error {
        let action = format!("{action} {}/{name}", self.namespace);
        if is_status(&source, 403) {
            Error::Forbidden { action, source }
        } else {
            Error::Kube { action, source }
        }
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/part-of".to_owned(), "rota".to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "rota-coordinator".to_owned(),
            ),
        ])),
        ..ObjectMeta::default()
    }
}

fn secret_data<'a>(
    data: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, ByteString> {
    data.into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

fn secret<'a>(
    name: &str,
    type_: &str,
    data: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Secret {
    Secret {
        metadata: metadata(name),
        type_: Some(type_.to_owned()),
        data: Some(secret_data(data)),
        ..Secret::default()
    }
}

/// A UTF-8 value of a Secret (PEM is text).
fn secret_field(secret: &Secret, name: &str, key: &str) -> Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| Error::invalid(format!("Secret {name}"), format!("it has no {key}")))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| Error::invalid(format!("Secret {name}"), format!("{key} is not text")))
}

fn cm_field(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get("ca.crt").map(String::as_str)
}
