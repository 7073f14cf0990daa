//! Label and field selectors, in the syntax of `k8s.io/apimachinery/pkg/labels` and `fields`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::error::{Error, Result};
use super::meta;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|l| l.get(&self.key))
            .and_then(Value::as_str);
        match self.op {
            Op::Equals | Op::In => value.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values
                        .iter()
                        .next()
                        .and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == Op::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parse the string form (`a=b,c!=d,e in (x,y),f notin (z),g,!h`). Errors are 400s.
    pub fn parse(input: &str) -> Result<Self> {
        let mut lexer = Lexer::new(input);
        let mut requirements = Vec::new();
        loop {
            match lexer.peek()? {
                Token::End => break,
                _ => requirements.push(parse_requirement(&mut lexer)?),
            }
            match lexer.next()? {
                Token::End => break,
                Token::Comma => {}
                other => {
                    return Err(selector_error(
                        input,
                        &format!("found '{}', expected: ',' or 'end of string'", other.text()),
                    ));
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Build a selector from a `metav1.LabelSelector` JSON object (`matchLabels`,
    /// `matchExpressions`). `None` or `{}` gives the empty selector.
    pub fn from_json(selector: Option<&Value>) -> Result<Self> {
        let mut requirements = Vec::new();
        let Some(selector) = selector.filter(|s| !s.is_null()) else {
            return Ok(LabelSelector::default());
        };
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| Error::BadRequest(format!("invalid label value for {k}")))?;
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Equals,
                    values: BTreeSet::from([v.to_string()]),
                });
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let values: BTreeSet<String> =
                    meta::strings(e.get("values")).map(str::to_string).collect();
                let op = match e.get("operator").and_then(Value::as_str) {
                    Some("In") => Op::In,
                    Some("NotIn") => Op::NotIn,
                    Some("Exists") => Op::Exists,
                    Some("DoesNotExist") => Op::DoesNotExist,
                    other => {
                        return Err(Error::BadRequest(format!(
                            "{other:?} is not a valid label selector operator"
                        )));
                    }
                };
                if matches!(op, Op::In | Op::NotIn) && values.is_empty() {
                    return Err(Error::BadRequest(
                        "for 'in', 'notin' operators, values set can't be empty".into(),
                    ));
                }
                requirements.push(Requirement {
                    key: key.to_string(),
                    op,
                    values,
                });
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector has no requirements (matches everything; a PDB treats it as
    /// matching nothing).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's labels (`metadata.labels`) satisfy every requirement.
    pub fn matches_labels(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the object satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

fn selector_error(input: &str, detail: &str) -> Error {
    Error::BadRequest(format!(
        "unable to parse requirement: {detail} (selector {input:?})"
    ))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Comma,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Gt,
    Lt,
    Open,
    Close,
    End,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Ident(s) => s.clone(),
            Token::Comma => ",".into(),
            Token::Equals => "=".into(),
            Token::DoubleEquals => "==".into(),
            Token::NotEquals => "!=".into(),
            Token::Bang => "!".into(),
            Token::Gt => ">".into(),
            Token::Lt => "<".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::End => "end of string".into(),
        }
    }
}

struct Lexer<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
    peeked: Option<Token>,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Lexer {
            input,
            chars: input.chars().collect(),
            pos: 0,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<Token> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex()?);
        }
        Ok(self.peeked.clone().unwrap_or(Token::End))
    }

    fn next(&mut self) -> Result<Token> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn lex(&mut self) -> Result<Token> {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
        let Some(&c) = self.chars.get(self.pos) else {
            return Ok(Token::End);
        };
        let next = self.chars.get(self.pos + 1).copied();
        let (token, len) = match (c, next) {
            (',', _) => (Token::Comma, 1),
            ('=', Some('=')) => (Token::DoubleEquals, 2),
            ('=', _) => (Token::Equals, 1),
            ('!', Some('=')) => (Token::NotEquals, 2),
            ('!', _) => (Token::Bang, 1),
            ('>', _) => (Token::Gt, 1),
            ('<', _) => (Token::Lt, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            _ => {
                let start = self.pos;
                while self.pos < self.chars.len()
                    && !self.chars[self.pos].is_whitespace()
                    && !",=!<>()".contains(self.chars[self.pos])
                {
                    self.pos += 1;
                }
                let ident: String = self.chars[start..self.pos].iter().collect();
                if !ident
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                {
                    return Err(selector_error(
                        self.input,
                        &format!("invalid character in {ident:?}"),
                    ));
                }
                return Ok(Token::Ident(ident));
            }
        };
        self.pos += len;
        Ok(token)
    }
}

fn validate_key(input: &str, key: &str) -> Result<()> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && key.matches('/').count() <= 1;
    if valid {
        Ok(())
    } else {
        Err(selector_error(input, &format!("invalid label key {key:?}")))
    }
}

fn validate_value(input: &str, value: &str) -> Result<()> {
    let valid = value.is_empty()
        || (value.len() <= 63
            && !value.contains('/')
            && value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && value
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric()));
    if valid {
        Ok(())
    } else {
        Err(selector_error(
            input,
            &format!("invalid label value: {value:?}"),
        ))
    }
}

fn parse_requirement(lexer: &mut Lexer<'_>) -> Result<Requirement> {
    let input = lexer.input;
    let negated = if lexer.peek()? == Token::Bang {
        lexer.next()?;
        true
    } else {
        false
    };
    let key = match lexer.next()? {
        Token::Ident(k) => k,
        other => {
            return Err(selector_error(
                input,
                &format!("found '{}', expected: identifier", other.text()),
            ));
        }
    };
    validate_key(input, &key)?;
    if negated {
        return Ok(Requirement {
            key,
            op: Op::DoesNotExist,
            values: BTreeSet::new(),
        });
    }
    let op = match lexer.peek()? {
        Token::Comma | Token::End => {
            return Ok(Requirement {
                key,
                op: Op::Exists,
                values: BTreeSet::new(),
            });
        }
        Token::Equals | Token::DoubleEquals => Op::Equals,
        Token::NotEquals => Op::NotEquals,
        Token::Gt => Op::GreaterThan,
        Token::Lt => Op::LessThan,
        Token::Ident(word) if word == "in" => Op::In,
        Token::Ident(word) if word == "notin" => Op::NotIn,
        other => {
            return Err(selector_error(
                input,
                &format!(
                    "found '{}', expected: '=', '!=', '==', 'in', notin'",
                    other.text()
                ),
            ));
        }
    };
    lexer.next()?;
    let mut values = BTreeSet::new();
    if matches!(op, Op::In | Op::NotIn) {
        if lexer.next()? != Token::Open {
            return Err(selector_error(input, "found '', expected: '('"));
        }
        loop {
            match lexer.next()? {
                Token::Ident(v) => {
                    validate_value(input, &v)?;
                    values.insert(v);
                }
                Token::Close => break,
                Token::Comma => {
                    if matches!(lexer.peek()?, Token::Comma | Token::Close) {
                        values.insert(String::new());
                    }
                    continue;
                }
                other => {
                    return Err(selector_error(
                        input,
                        &format!("found '{}', expected: ',', ')' or identifier", other.text()),
                    ));
                }
            }
        }
        if values.is_empty() {
            return Err(selector_error(
                input,
                "for 'in', 'notin' operators, values set can't be empty",
            ));
        }
    } else {
        match lexer.peek()? {
            Token::Ident(v) => {
                lexer.next()?;
                validate_value(input, &v)?;
                if matches!(op, Op::GreaterThan | Op::LessThan) && v.parse::<i64>().is_err() {
                    return Err(selector_error(
                        input,
                        &format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"),
                    ));
                }
                values.insert(v);
            }
            Token::Comma | Token::End if matches!(op, Op::Equals | Op::NotEquals) => {
                values.insert(String::new());
            }
            other => {
                return Err(selector_error(
                    input,
                    &format!("found '{}', expected: identifier", other.text()),
                ));
            }
        }
    }
    Ok(Requirement { key, op, values })
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// The fields a resource can be selected by (beyond `metadata.name` and `metadata.namespace`).
fn extra_fields(group: &str, resource: &str) -> &'static [&'static str] {
    match (group, resource) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "secrets") => &["type"],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parse a field selector for a resource; unknown fields are a 400, as upstream.
    pub fn parse(input: &str, group: &str, resource: &str) -> Result<Self> {
        let mut terms = Vec::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(Error::BadRequest(format!(
                    "invalid selector: '{input}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !extra_fields(group, resource).contains(&field)
            {
                return Err(Error::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, eq, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *eq
        })
    }
}

/// The string value of a selectable field (`""` when absent, `"false"` for an absent boolean).
fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        "source" => "/source/component".to_string(),
        f => format!("/{}", f.replace('.', "/")),
    };
    match obj.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if matches!(field, "spec.unschedulable" | "spec.hostNetwork") => "false".to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn label_selector_table() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("app notin (db)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<4", false),
            ("missing=", false),
            ("app=", false),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for sel in [
            "app=web=x",
            "app in web",
            "app in ()",
            "=x",
            "a b",
            "app=we b",
        ] {
            let err = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(err.code(), 400, "{sel}");
        }
    }

    #[test]
    fn json_selector() {
        let s = LabelSelector::from_json(Some(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]
        })))
        .unwrap();
        assert!(s.matches(&obj(json!({"app": "web", "tier": "front"}))));
        assert!(!s.matches(&obj(json!({"app": "web"}))));
        assert!(
            LabelSelector::from_json(Some(&json!({})))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let sel =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "", "pods").unwrap();
        assert!(sel.matches(&pod));
        let sel = FieldSelector::parse("spec.nodeName==n2", "", "pods").unwrap();
        assert!(!sel.matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1", "", "configmaps")
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(
            FieldSelector::parse("nonsense", "", "pods")
                .unwrap_err()
                .code(),
            400
        );
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.unschedulable=false", "", "nodes")
                .unwrap()
                .matches(&node)
        );
    }
}
