//! API errors, shaped like the `Status` objects a real kube-apiserver returns.
//!
//! Each variant knows its HTTP code, its `reason` and its message in the exact wording of
//! `k8s.io/apimachinery/pkg/api/errors`, because clients (kube-rs, kubectl, rota) branch on them.

use serde_json::{Map, Value, json};

/// The result type of the emulated API server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One field-level cause of an error (`status.details.causes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable cause, e.g. `FieldValueRequired` or `DisruptionBudget`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// The field the cause refers to, if any (e.g. `metadata.name`).
    pub field: Option<String>,
}

/// An error of the emulated API server.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// 404: the object does not exist.
    #[error("{qualified} \"{name}\" not found")]
    NotFound {
        /// `pods`, `deployments.apps`, ...
        qualified: String,
        /// Object name.
        name: String,
    },
    /// 404: the URL names no resource this server serves.
    #[error("the server could not find the requested resource")]
    UnknownResource,
    /// 409: create of a name that exists.
    #[error("{qualified} \"{name}\" already exists")]
    AlreadyExists {
        /// `pods`, `deployments.apps`, ...
        qualified: String,
        /// Object name.
        name: String,
    },
    /// 409: optimistic concurrency or precondition failure.
    #[error("Operation cannot be fulfilled on {qualified} \"{name}\": {detail}")]
    Conflict {
        /// `pods`, `deployments.apps`, ...
        qualified: String,
        /// Object name.
        name: String,
        /// Why, e.g. the stale-resourceVersion sentence.
        detail: String,
    },
    /// 422: the object does not validate.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// Kind of the object (`Pod`).
        kind: String,
        /// API group of the kind.
        group: String,
        /// Object name (may be empty).
        name: String,
        /// Field errors, each message already prefixed with its field.
        causes: Vec<Cause>,
    },
    /// 422 without field causes: a patch that cannot be applied (a failed `test`, a missing
    /// path), as upstream answers it.
    #[error("{0}")]
    Unprocessable(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 403.
    #[error("{qualified} \"{name}\" is forbidden: {detail}")]
    Forbidden {
        /// `poddisruptionbudget.policy`.
        qualified: String,
        /// Object name.
        name: String,
        /// Why.
        detail: String,
    },
    /// 405.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 406.
    #[error("{0}")]
    NotAcceptable(String),
    /// 410: a watch or list asked for a resourceVersion older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The requested resourceVersion.
        requested: u64,
        /// The oldest resourceVersion still served.
        oldest: u64,
    },
    /// 415.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 429.
    #[error("{message}")]
    TooManyRequests {
        /// Message.
        message: String,
        /// `Retry-After` seconds (0: header omitted).
        retry_after_seconds: u32,
        /// Causes (the eviction API adds a `DisruptionBudget` cause).
        causes: Vec<Cause>,
    },
    /// 500 `InternalError`.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// A `Status` with a code but no reason, as the eviction API returns for two PDBs (500).
    #[error("{message}")]
    Failure {
        /// HTTP code.
        code: u16,
        /// Message.
        message: String,
    },
    /// 503 (used by fault injection).
    #[error("{0}")]
    ServiceUnavailable(String),
}

impl Error {
    /// 422 with one field error, message formatted as `field: Required value: detail` etc.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        Error::Invalid {
            kind: kind.to_string(),
            group: group.to_string(),
            name: name.to_string(),
            causes,
        }
    }

    /// The stale-resourceVersion 409.
    pub fn stale(qualified: &str, name: &str) -> Self {
        Error::Conflict {
            qualified: qualified.to_string(),
            name: name.to_string(),
            detail: "the object has been modified; please apply your changes to the latest version and try again"
                .to_string(),
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Error::NotFound { .. } | Error::UnknownResource => 404,
            Error::AlreadyExists { .. } | Error::Conflict { .. } => 409,
            Error::Invalid { .. } | Error::Unprocessable(_) => 422,
            Error::BadRequest(_) => 400,
            Error::Forbidden { .. } => 403,
            Error::MethodNotAllowed => 405,
            Error::NotAcceptable(_) => 406,
            Error::Expired { .. } => 410,
            Error::UnsupportedMediaType(_) => 415,
            Error::TooManyRequests { .. } => 429,
            Error::Internal(_) => 500,
            Error::Failure { code, .. } => *code,
            Error::ServiceUnavailable(_) => 503,
        }
    }

    /// The `reason` of the `Status` (empty for [`Error::Failure`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } | Error::UnknownResource => "NotFound",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::Conflict { .. } => "Conflict",
            Error::Invalid { .. } | Error::Unprocessable(_) => "Invalid",
            Error::BadRequest(_) => "BadRequest",
            Error::Forbidden { .. } => "Forbidden",
            Error::MethodNotAllowed => "MethodNotAllowed",
            Error::NotAcceptable(_) => "NotAcceptable",
            Error::Expired { .. } => "Expired",
            Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Error::TooManyRequests { .. } => "TooManyRequests",
            Error::Internal(_) => "InternalError",
            Error::Failure { .. } => "",
            Error::ServiceUnavailable(_) => "ServiceUnavailable",
        }
    }

    /// Seconds for a `Retry-After` header, when the error carries one.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::TooManyRequests {
                retry_after_seconds,
                ..
            } if *retry_after_seconds > 0 => Some(*retry_after_seconds),
            _ => None,
        }
    }

    /// The error as a `meta/v1 Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), json!("Status"));
        status.insert("apiVersion".into(), json!("v1"));
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), json!("Failure"));
        status.insert("message".into(), json!(self.to_string()));
        if !self.reason().is_empty() {
            status.insert("reason".into(), json!(self.reason()));
        }
        if let Some(details) = self.details() {
            status.insert("details".into(), details);
        }
        status.insert("code".into(), json!(self.code()));
        Value::Object(status)
    }

    fn details(&self) -> Option<Value> {
        // `details` of an error about one object: its name, group (when not core) and kind.
        let named = |kind: &str, group: &str, name: &str| {
            let mut d = Map::new();
            d.insert("name".into(), json!(name));
            if !group.is_empty() {
                d.insert("group".into(), json!(group));
            }
            d.insert("kind".into(), json!(kind));
            d
        };
        match self {
            Error::NotFound { qualified, name }
            | Error::AlreadyExists { qualified, name }
            | Error::Conflict {
                qualified, name, ..
            }
            | Error::Forbidden {
                qualified, name, ..
            } => {
                let (kind, group) = qualified.split_once('.').unwrap_or((qualified, ""));
                Some(Value::Object(named(kind, group, name)))
            }
            Error::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let mut d = named(kind, group, name);
                d.insert("causes".into(), causes_json(causes));
                Some(Value::Object(d))
            }
            Error::TooManyRequests {
                retry_after_seconds,
                causes,
                ..
            } => {
                let mut d = Map::new();
                if !causes.is_empty() {
                    d.insert("causes".into(), causes_json(causes));
                }
                if *retry_after_seconds > 0 {
                    d.insert("retryAfterSeconds".into(), json!(retry_after_seconds));
                }
                Some(Value::Object(d))
            }
            Error::Internal(message) => Some(json!({"causes": [{"message": message}]})),
            _ => None,
        }
    }
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(
        causes
            .iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("reason".into(), json!(c.reason));
                m.insert("message".into(), json!(c.message));
                if let Some(field) = &c.field {
                    m.insert("field".into(), json!(field));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// The `Status` object of a successful operation (evictions answer this with code 201).
pub fn success_status(code: u16) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_upstream_wording() {
        let e = Error::NotFound {
            qualified: "deployments.apps".into(),
            name: "web".into(),
        };
        let s = e.to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["code"], 404);
    }

    #[test]
    fn failure_has_no_reason() {
        let s = Error::Failure {
            code: 500,
            message: "x".into(),
        }
        .to_status();
        assert!(s.get("reason").is_none());
        assert_eq!(s["code"], 500);
    }
}
