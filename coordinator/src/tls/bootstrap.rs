//! The self-made CA and serving certificate, kept in the coordinator's namespace.
//!
//! Replicas race safely: objects are created only when absent (a 409 means another replica
//! won, and its object is read and used) and replaced only on the `resourceVersion` that was
//! read (a 409 means another replica renewed first; its certificate is read and checked
//! again). An existing `rota-ca` Secret that rota did not make is never overwritten nor
//! rotated: an operator may put their own (intermediate) CA there before the first start.
//!
//! The CA rota makes is constrained to the serving certificate's names, lives
//! `--tls-ca-validity`, and is rotated as [`super::rotation`] decides. Its Secret (type
//! [`CA_SECRET_TYPE`], label [`SECRET_LABEL`]) holds:
//!
//! | key | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the active CA, which signs the serving certificate |
//! | `next.crt`, `next.key` | the CA being introduced, during a rotation |
//! | `next.published-at` | when the trust bundle was first seen holding it (RFC 3339) |
//! | `previous.crt`, `previous.retired-at` | the CA that signed before, certificate only, while it stays trusted |
//!
//! The ConfigMap `rota-ca` (`ca.crt`) is the trust bundle: every certificate of the
//! rotation, in that order.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rcgen::KeyPair;

use super::pki::{self, Ca, CertInfo, Constraints, KeyedCert, SubjectNames};
use super::rotation::{Authority, Facts, Life, Policy, Retired, Rotation, Staged};
use super::{Error, Result};

/// The Secret holding the CA (`ca.crt`, `ca.key`).
pub const CA_SECRET: &str = "rota-ca";
/// The Secret holding the serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub const SERVING_SECRET: &str = "rota-coordinator-tls";
/// The ConfigMap publishing the CA certificates (`ca.crt`, the trust bundle) to the agents.
pub const CA_CONFIGMAP: &str = "rota-ca";
/// The type of the Secret holding a CA rota made (a type of its own, so that no tool takes it
/// for a generic or TLS Secret to mount or copy).
pub const CA_SECRET_TYPE: &str = "rota.dev/ca";
/// The label on the CA Secret, naming what it holds.
pub const SECRET_LABEL: &str = "rota.dev/secret";
/// The label on objects the coordinator made.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Reads and writes of one object before giving up for this round (each retry follows a
/// concurrent write by another replica, so a few are plenty).
const ATTEMPTS: usize = 5;

/// What a bootstrap yields: the serving certificate and the CA that clients trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrapped {
    /// Certificate and key the server presents.
    pub serving: KeyedCert,
    /// The CA certificates (PEM) published to the agents: the trust bundle.
    pub ca_pem: String,
}

impl Authority for Ca {
    type Cert = String;
    fn life(&self) -> Life {
        Life {
            not_before: self.info().not_before,
            not_after: self.info().not_after,
        }
    }
    fn cert(&self) -> String {
        self.cert_pem().to_owned()
    }
}

/// Keeps the CA, its published certificate and the serving certificate in one namespace.
#[derive(Clone)]
pub struct Bootstrap {
    namespace: String,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    names: SubjectNames,
    policy: Policy,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("namespace", &self.namespace)
            .field("names", &self.names)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// A bootstrap in `namespace` whose serving certificates carry `names`, its CA rotated
    /// by `policy`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        names: SubjectNames,
        policy: Policy,
    ) -> Bootstrap {
        Bootstrap {
            namespace: namespace.to_owned(),
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client, namespace),
            names,
            policy,
        }
    }

    /// Makes sure the CA exists, is rotated when due, is published, and has issued a serving
    /// certificate that is good at `now`; creates, publishes, rotates or renews what is due.
    /// Idempotent: call it at start and then periodically (a rotation takes several calls).
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace))]
    pub async fn ensure(&self, now: Timestamp) -> Result<Bootstrapped> {
        let rotation = self.ensure_ca(now).await?;
        let serving = self.ensure_serving(&rotation.active, now).await?;
        Ok(Bootstrapped {
            serving,
            ca_pem: bundle_pem(&rotation),
        })
    }

    /// The CAs of `rota-ca` after this round's rotation steps, the bundle published; the
    /// Secret is created when it does not exist.
    async fn ensure_ca(&self, now: Timestamp) -> Result<Rotation<Ca>> {
        for _ in 0..ATTEMPTS {
            let existing = self
                .secrets
                .get_opt(CA_SECRET)
                .await
                .map_err(|e| self.api_error("reading Secret", CA_SECRET, e))?;
            let Some(mut secret) = existing else {
                let ca = Ca::generate_for(&self.names, now, self.policy.validity)?;
                let rotation = Rotation::new(ca);
                let mut secret = secret(CA_SECRET, CA_SECRET_TYPE, []);
                secret.data = Some(encode(&rotation));
                secret
                    .metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(SECRET_LABEL.to_owned(), "ca".to_owned());
                match self.secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(
                            secret = CA_SECRET,
                            not_after = %rotation.active.info().not_after,
                            "created the CA"
                        );
                        self.publish(&rotation).await?;
                        return Ok(rotation);
                    }
                    Err(e) if is_status(&e, 409) => {
                        tracing::debug!("another replica created the CA first; using it");
                        continue;
                    }
                    Err(e) => return Err(self.api_error("creating Secret", CA_SECRET, e)),
                }
            };
            let rotation = decode(&secret)
                .map_err(|e| Error::invalid(format!("Secret {}/{CA_SECRET}", self.namespace), e))?;
            let published = self.published().await?;
            let facts = Facts {
                managed: managed(&secret),
                conforming: rotation.active.info().name_constraints.as_ref()
                    == Some(&Constraints::for_names(&self.names)),
                next_published: rotation.next.as_ref().is_some_and(|next| {
                    published
                        .as_deref()
                        .is_some_and(|bundle| bundle.contains(next.ca.cert_pem().trim()))
                }),
            };
            if !facts.managed && pki::needs_renewal(rotation.active.info(), now) {
                tracing::warn!(
                    secret = CA_SECRET,
                    not_after = %rotation.active.info().not_after,
                    "the CA is not one rota made, so rota does not rotate it; replace it before it expires"
                );
            }
            let steps = rotation.plan(facts, &self.policy, now);
            if steps.is_empty() {
                self.publish(&rotation).await?;
                return Ok(rotation);
            }
            let mut rotation = rotation;
            for step in &steps {
                rotation = rotation.apply(*step, now, || {
                    Ca::generate_for(&self.names, now, self.policy.validity)
                })?;
            }
            secret.metadata.managed_fields = None;
            secret
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(SECRET_LABEL.to_owned(), "ca".to_owned());
            secret.data = Some(encode(&rotation));
            secret.string_data = None;
            match self
                .secrets
                .replace(CA_SECRET, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    for step in steps {
                        tracing::info!(
                            secret = CA_SECRET,
                            %step,
                            active_not_after = %rotation.active.info().not_after,
                            "CA rotation"
                        );
                    }
                    self.publish(&rotation).await?;
                    return Ok(rotation);
                }
                Err(e) if is_status(&e, 409) => {
                    tracing::debug!("another replica changed the CA first; reading it again");
                }
                Err(e) => return Err(self.api_error("writing Secret", CA_SECRET, e)),
            }
        }
        Err(Error::Contended(format!("Secret {CA_SECRET}")))
    }

    /// The trust bundle as published now, if it is.
    async fn published(&self) -> Result<Option<String>> {
        let cm = self
            .config_maps
            .get_opt(CA_CONFIGMAP)
            .await
            .map_err(|e| self.api_error("reading ConfigMap", CA_CONFIGMAP, e))?;
        Ok(cm.as_ref().and_then(cm_field).map(str::to_owned))
    }

    /// Makes the ConfigMap `rota-ca` hold the trust bundle of `rotation`.
    async fn publish(&self, rotation: &Rotation<Ca>) -> Result<()> {
        let bundle = bundle_pem(rotation);
        for _ in 0..ATTEMPTS {
            let existing = self
                .config_maps
                .get_opt(CA_CONFIGMAP)
                .await
                .map_err(|e| self.api_error("reading ConfigMap", CA_CONFIGMAP, e))?;
            let written = match existing {
                Some(cm) if cm_field(&cm) == Some(bundle.as_str()) => return Ok(()),
                Some(mut cm) => {
                    cm.metadata.managed_fields = None;
                    cm.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert("ca.crt".to_owned(), bundle.clone());
                    self.config_maps
                        .replace(CA_CONFIGMAP, &PostParams::default(), &cm)
                        .await
                }
                None => {
                    let cm = ConfigMap {
                        metadata: metadata(CA_CONFIGMAP),
                        data: Some(BTreeMap::from([("ca.crt".to_owned(), bundle.clone())])),
                        ..ConfigMap::default()
                    };
                    self.config_maps.create(&PostParams::default(), &cm).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(
                        configmap = CA_CONFIGMAP,
                        certificates = rotation.bundle().len(),
                        "published the CA trust bundle"
                    );
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
        let names = self.names.permitted_by(ca.info().name_constraints.as_ref());
        if names != self.names {
            tracing::warn!(
                configured = ?self.names,
                certified = ?names,
                "the active CA may not certify some of the configured names; they are served \
                 once the CA rotation under way completes"
            );
        }
        for _ in 0..ATTEMPTS {
            let existing = self
                .secrets
                .get_opt(SERVING_SECRET)
                .await
                .map_err(|e| self.api_error("reading Secret", SERVING_SECRET, e))?;
            let reason = match &existing {
                None => "it does not exist".to_owned(),
                Some(secret) => match usable(secret, ca, &names, now) {
                    Ok(serving) => return Ok(serving),
                    Err(reason) => reason,
                },
            };
            tracing::info!(secret = SERVING_SECRET, %reason, "issuing a serving certificate");
            let serving = ca.issue_serving(&names, now, pki::SERVING_VALIDITY)?;
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

    fn api_error(&self, action: &str, name: &str, source: kube::Error) -> Error {
        let action = format!("{action} {}/{name}", self.namespace);
        if is_status(&source, 403) {
            Error::Forbidden { action, source }
        } else {
            Error::Kube { action, source }
        }
    }
}

/// The stored serving certificate if it can be used at `now`, else why not.
fn usable(
    secret: &Secret,
    ca: &Ca,
    names: &SubjectNames,
    now: Timestamp,
) -> Result<KeyedCert, String> {
    let read = |key| secret_field(secret, SERVING_SECRET, key).map_err(|e| e.to_string());
    let (cert_pem, key_pem, ca_pem) = (read("tls.crt")?, read("tls.key")?, read("ca.crt")?);
    let info = CertInfo::from_pem(&cert_pem).map_err(|e| format!("tls.crt: {e}"))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("tls.key: {e}"))?;
    if let Some(reissue) =
        pki::check_serving(&info, info.matches_key(&key), ca.issued(&info), names, now)
    {
        return Err(reissue.to_string());
    }
    if ca_pem != ca.cert_pem() {
        return Err("its ca.crt is not the current CA".to_owned());
    }
    Ok(KeyedCert { cert_pem, key_pem })
}

/// Whether rota made the CA Secret (and so may rotate it): its own type, or the label earlier
/// releases put on the Opaque Secret they made.
fn managed(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(CA_SECRET_TYPE)
        || secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY))
            .is_some_and(|by| by == "rota-coordinator")
}

/// The trust bundle: every certificate of the rotation, one after the other.
fn bundle_pem(rotation: &Rotation<Ca>) -> String {
    rotation
        .bundle()
        .iter()
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect()
}

/// The Secret's data for `rotation` (see the module docs for the keys).
fn encode(rotation: &Rotation<Ca>) -> BTreeMap<String, ByteString> {
    let mut data = vec![
        ("ca.crt", rotation.active.cert_pem().to_owned()),
        ("ca.key", rotation.active.key_pem().to_owned()),
    ];
    if let Some(next) = &rotation.next {
        data.push(("next.crt", next.ca.cert_pem().to_owned()));
        data.push(("next.key", next.ca.key_pem().to_owned()));
        if let Some(at) = next.published_at {
            data.push(("next.published-at", at.to_string()));
        }
    }
    if let Some(previous) = &rotation.previous {
        data.push(("previous.crt", previous.cert.clone()));
        data.push(("previous.retired-at", previous.retired_at.to_string()));
    }
    data.into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
        .collect()
}

/// The rotation stored in the CA Secret.
fn decode(secret: &Secret) -> Result<Rotation<Ca>> {
    let optional = |key: &str| -> Result<Option<String>> {
        match secret.data.as_ref().and_then(|data| data.get(key)) {
            None => Ok(None),
            Some(_) => secret_field(secret, CA_SECRET, key).map(Some),
        }
    };
    let at = |key: &str| -> Result<Option<Timestamp>> {
        optional(key)?
            .map(|text| {
                text.trim()
                    .parse::<Timestamp>()
                    .map_err(|e| Error::invalid(key, e))
            })
            .transpose()
    };
    let active = Ca::from_pem(
        &secret_field(secret, CA_SECRET, "ca.crt")?,
        &secret_field(secret, CA_SECRET, "ca.key")?,
    )?;
    let next = match (optional("next.crt")?, optional("next.key")?) {
        (Some(cert), Some(key)) => Some(Staged {
            ca: Ca::from_pem(&cert, &key)?,
            published_at: at("next.published-at")?,
        }),
        _ => None,
    };
    let previous = match (optional("previous.crt")?, at("previous.retired-at")?) {
        (Some(cert), Some(retired_at)) => {
            let info = CertInfo::from_pem(&cert)?;
            Some(Retired {
                cert,
                life: Life {
                    not_before: info.not_before,
                    not_after: info.not_after,
                },
                retired_at,
            })
        }
        _ => None,
    };
    Ok(Rotation {
        active,
        next,
        previous,
    })
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/part-of".to_owned(), "rota".to_owned()),
            (MANAGED_BY.to_owned(), "rota-coordinator".to_owned()),
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
pub(crate) fn secret_field(secret: &Secret, name: &str, key: &str) -> Result<String> {
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
