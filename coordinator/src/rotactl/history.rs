//! `rotactl history NODE`: the node's Events, rota's and everyone else's (kubelet, node
//! controller, cluster autoscaler), from both Event APIs, oldest first.
//!
//! On a real API server `core/v1` and `events.k8s.io/v1` are two views of the same objects, so
//! an Event seen through both is shown once (same uid).

use rota_core::text::printable;
use std::collections::BTreeSet;
use std::io::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use super::status::plain_table;
use super::{Error, Output, Result, age};

/// One Event about the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEvent {
    /// When it (last) happened.
    pub time: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// Machine-readable reason, e.g. `SlotAdmitted`.
    pub reason: String,
    /// Who reported it.
    pub source: String,
    /// What happened.
    pub message: String,
    /// How often it happened.
    pub count: i32,
    /// Its uid.
    #[serde(skip)]
    pub uid: Option<String>,
}

/// Lists the node's Events from both APIs, merged and sorted by time.
pub async fn fetch(client: &Client, node: &str) -> Result<Vec<NodeEvent>> {
    let new_api: Api<Event> = Api::all(client.clone());
    let new = list_filtered(
        &new_api,
        &format!("regarding.kind=Node,regarding.name={node}"),
        |e: &Event| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Node") && r.name.as_deref() == Some(node)
            })
        },
    )
    .await
    .map_err(|e| Error::kube("listing events.k8s.io/v1 Events", e))?;
    let core_api: Api<CoreEvent> = Api::all(client.clone());
    let core = list_filtered(
        &core_api,
        &format!("involvedObject.kind=Node,involvedObject.name={node}"),
        |e: &CoreEvent| {
            e.involved_object.kind.as_deref() == Some("Node")
                && e.involved_object.name.as_deref() == Some(node)
        },
    )
    .await
    .map_err(|e| Error::kube("listing core/v1 Events", e))?;
    Ok(merge(
        new.iter().map(from_new).collect(),
        core.iter().map(from_core).collect(),
    ))
}

/// Lists with a field selector; an API server that does not support it (400) gets a full list,
/// filtered here.
async fn list_filtered<K>(
    api: &Api<K>,
    fields: &str,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = match api.list(&ListParams::default().fields(fields)).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 400 => {
            api.list(&ListParams::default()).await?
        }
        Err(e) => return Err(e),
    };
    Ok(listed.items.into_iter().filter(|e| keep(e)).collect())
}

/// Both lists, each Event once, oldest first.
pub fn merge(new: Vec<NodeEvent>, core: Vec<NodeEvent>) -> Vec<NodeEvent> {
    let mut seen = BTreeSet::new();
    let mut events: Vec<NodeEvent> = new
        .into_iter()
        .chain(core)
        .filter(|e| e.uid.as_ref().is_none_or(|uid| seen.insert(uid.clone())))
        .collect();
    events.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.message.cmp(&b.message))
    });
    events
}

fn from_new(e: &Event) -> NodeEvent {
    let time = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let source = e
        .reporting_controller
        .clone()
        .or_else(|| {
            e.deprecated_source
                .as_ref()
                .and_then(|s| s.component.clone())
        })
        .unwrap_or_default();
    NodeEvent {
        time,
        kind: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        source,
        message: e.note.clone().unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1),
        uid: e.metadata.uid.clone(),
    }
}

fn from_core(e: &CoreEvent) -> NodeEvent {
    let time = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let source = e
        .reporting_component
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
        .unwrap_or_default();
    NodeEvent {
        time,
        kind: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        source,
        message: e.message.clone().unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(e.count)
            .unwrap_or(1),
        uid: e.metadata.uid.clone(),
    }
}

/// Prints the Events as a table or JSON.
pub fn print(
    out: &mut dyn Write,
    events: &[NodeEvent],
    output: Output,
    now: Timestamp,
) -> Result<()> {
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, events)?;
            writeln!(out)?;
        }
        Output::Table if events.is_empty() => {
            writeln!(
                out,
                "no Events about this node (the API server keeps them about an hour)"
            )?;
        }
        Output::Table => {
            let mut table =
                plain_table(&["AGE", "TIME", "TYPE", "REASON", "FROM", "COUNT", "MESSAGE"]);
            for event in events {
                table.add_row(vec![
                    event.time.map_or_else(|| "-".to_owned(), |t| age(t, now)),
                    event
                        .time
                        .map_or_else(|| "-".to_owned(), |t| t.strftime("%F %T").to_string()),
                    printable(&event.kind),
                    printable(&event.reason),
                    printable(&event.source),
                    event.count.to_string(),
                    printable(&event.message),
                ]);
            }
            writeln!(out, "{}", table.trim_fmt())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(uid: &str, second: i64, reason: &str) -> NodeEvent {
        NodeEvent {
            time: Some(Timestamp::from_second(second).unwrap()),
            kind: "Normal".into(),
            reason: reason.into(),
            source: "rota-coordinator".into(),
            message: String::new(),
            count: 1,
            uid: Some(uid.into()),
        }
    }

    #[test]
    fn merged_once_and_oldest_first() {
        let merged = merge(
            vec![event("a", 30, "Granted"), event("b", 10, "SlotAdmitted")],
            vec![event("a", 30, "Granted"), event("c", 20, "NodeNotReady")],
        );
        let reasons: Vec<&str> = merged.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["SlotAdmitted", "NodeNotReady", "Granted"]);
    }
}
