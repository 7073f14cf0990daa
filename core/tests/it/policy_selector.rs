//! Label selectors and Kubernetes versions, as policies and the scheduler read them.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use rota_core::policy::{KubeVersion, Selector};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: op.to_owned(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

#[test]
fn matches_labels_and_expressions() {
    let sel = Selector::parse(&LabelSelector {
        match_labels: Some(labels(&[("pool", "web")])),
        match_expressions: Some(vec![
            expr("zone", "In", &["a", "b"]),
            expr("tier", "NotIn", &["db"]),
            expr("kubernetes.io/os", "Exists", &[]),
            expr("rota.dev/skip", "DoesNotExist", &[]),
        ]),
    })
    .unwrap();
    let base = [
        ("pool", "web"),
        ("zone", "a"),
        ("kubernetes.io/os", "linux"),
    ];
    assert!(sel.matches(&labels(&base)));
    assert!(!sel.matches(&labels(&[
        ("pool", "web"),
        ("zone", "c"),
        ("kubernetes.io/os", "linux")
    ])));
    assert!(!sel.matches(&labels(&[("zone", "a"), ("kubernetes.io/os", "linux")])));
    let mut with_db = labels(&base);
    with_db.insert("tier".into(), "db".into());
    assert!(!sel.matches(&with_db));
    let mut skipped = labels(&base);
    skipped.insert("rota.dev/skip".into(), String::new());
    assert!(!sel.matches(&skipped));
    assert!(Selector::everything().matches(&BTreeMap::new()));
    assert!(
        Selector::parse(&LabelSelector::default())
            .unwrap()
            .is_everything()
    );
}

#[test]
fn reports_every_problem_with_its_field() {
    let problems = Selector::parse(&LabelSelector {
        match_labels: Some(labels(&[("Bad Key", "ok"), ("k", "-bad")])),
        match_expressions: Some(vec![
            expr("a", "Equals", &["x"]),
            expr("b", "In", &[]),
            expr("c", "Exists", &["x"]),
            expr("UPPER.example/x", "Exists", &[]),
            expr(&"x".repeat(64), "Exists", &[]),
        ]),
    })
    .unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "matchLabels[Bad Key]",
            "matchLabels[k]",
            "matchExpressions[0].operator",
            "matchExpressions[1].values",
            "matchExpressions[2].values",
            "matchExpressions[3].key",
            "matchExpressions[4].key",
        ]
    );
    assert!(problems[2].message.contains("unknown operator \"Equals\""));
}

#[test]
fn kubernetes_versions_parse_in_the_forms_clusters_report() {
    for (text, want) in [
        ("v1.33.2", KubeVersion::new(1, 33, 2)),
        ("1.33", KubeVersion::new(1, 33, 0)),
        ("v1.31.4+k3s1", KubeVersion::new(1, 31, 4)),
        ("v1.30.9-eks-8cce635", KubeVersion::new(1, 30, 9)),
    ] {
        assert_eq!(text.parse::<KubeVersion>(), Ok(want), "{text}");
    }
    for bad in ["", "v", "1", "1.x", "1.2.3.4", "one.two", "1..2", "-1.2"] {
        assert!(bad.parse::<KubeVersion>().is_err(), "{bad:?} accepted");
    }
    let v = KubeVersion::new(1, 33, 2);
    assert_eq!((v.to_string(), v.short()), ("1.33.2".into(), "1.33".into()));
    assert!(KubeVersion::new(1, 9, 0) < KubeVersion::new(1, 10, 0));
}
