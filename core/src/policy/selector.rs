//! Label selectors (`matchLabels` + `matchExpressions`), checked once and then matched cheaply.
//!
//! The Kubernetes API server validates selectors of its own objects, but a `MaintenancePolicy`
//! reaches us with whatever the user wrote in a string field, so we check keys, values and
//! operators here and say which part is wrong.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A validated label selector. All requirements must hold (logical AND), as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    DoesNotExist { key: String },
}

/// What is wrong with a selector: the offending field below the selector and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorProblem {
    /// Path relative to the selector, e.g. `matchExpressions[1].operator`.
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

impl Selector {
    /// A selector without requirements; it selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Checks a Kubernetes `LabelSelector` and returns its matcher, or every problem found.
    pub fn parse(selector: &LabelSelector) -> Result<Self, Vec<SelectorProblem>> {
        let mut problems = Vec::new();
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            let field = format!("matchLabels[{key}]");
            check_key(key, &field, &mut problems);
            check_value(value, &field, &mut problems);
            requirements.push(Requirement::Equals {
                key: key.clone(),
                value: value.clone(),
            });
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            check_key(&expr.key, &format!("{field}.key"), &mut problems);
            let values = expr.values.clone().unwrap_or_default();
            for (j, value) in values.iter().enumerate() {
                check_value(value, &format!("{field}.values[{j}]"), &mut problems);
            }
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    problems.push(SelectorProblem {
                        field: format!("{field}.values"),
                        message: format!("operator {} needs at least one value", expr.operator),
                    });
                    continue;
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    problems.push(SelectorProblem {
                        field: format!("{field}.values"),
                        message: format!("operator {} takes no values", expr.operator),
                    });
                    continue;
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                other => {
                    problems.push(SelectorProblem {
                        field: format!("{field}.operator"),
                        message: format!(
                            "unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                        ),
                    });
                    continue;
                }
            };
            requirements.push(requirement);
        }
        if problems.is_empty() {
            Ok(Self { requirements })
        } else {
            Err(problems)
        }
    }

    /// Whether the selector has no requirements (and so selects everything).
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals { key, value } => labels.get(key) == Some(value),
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        })
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str, field: &str, problems: &mut Vec<SelectorProblem>) {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        problems.push(SelectorProblem {
            field: field.to_owned(),
            message: format!(
                "label key {key:?}: prefix {prefix:?} is not a DNS subdomain (lower-case \
                 alphanumerics, '-' and '.', at most 253 characters)"
            ),
        });
    }
    if name.is_empty() || !is_label_token(name) {
        problems.push(SelectorProblem {
            field: field.to_owned(),
            message: format!(
                "label key {key:?}: name must be 1-63 characters of alphanumerics, '-', '_' or \
                 '.', starting and ending with an alphanumeric"
            ),
        });
    }
}

fn check_value(value: &str, field: &str, problems: &mut Vec<SelectorProblem>) {
    if !value.is_empty() && !is_label_token(value) {
        problems.push(SelectorProblem {
            field: field.to_owned(),
            message: format!(
                "label value {value:?} must be empty or 1-63 characters of alphanumerics, '-', \
                 '_' or '.', starting and ending with an alphanumeric"
            ),
        });
    }
}

fn is_label_token(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let bytes = part.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    bytes.len() <= 63
                        && (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && (last.is_ascii_lowercase() || last.is_ascii_digit())
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                }
                _ => false,
            }
        })
}
