//! How the sidecar shows the mesh to its client: the JSON of leadership, changes, terms and
//! keyrings, the JSON-RPC error for each mesh error, and the answer of a write (now, or once
//! acknowledged).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value as Json, json};
use statemesh::{
    AckError, Change, Closed, EntryKind, KeyringError, Mesh, Pending, ReadError, Term, WriteError,
};

use super::params::Ack;
use super::rpc::{RpcError, code};
use super::session::Action;

/// The JSON-RPC error for a refused write; the message is statemesh's own. A write refused
/// under backpressure names the method to wait with before retrying (`retry`).
pub(super) fn write_error(e: &WriteError) -> RpcError {
    let code = match e {
        WriteError::NotLeader { .. } => code::NOT_LEADER,
        WriteError::Closed => code::MESH_CLOSED,
        WriteError::Backpressure { backlog, limit } => {
            return RpcError::new(code::BUSY, e.to_string()).with_data(
                json!({"backlog": backlog, "limit": limit, "retry": "backpressure_wait"}),
            );
        }
        _ => code::WRITE_REFUSED,
    };
    RpcError::new(code, e.to_string())
}

/// The JSON-RPC error for a failed read.
pub(super) fn read_error(e: &ReadError) -> RpcError {
    RpcError::new(code::READ_FAILED, e.to_string())
}

/// The JSON-RPC error for a mesh that is shut down.
pub(super) fn closed_error(e: Closed) -> RpcError {
    RpcError::new(code::MESH_CLOSED, e.to_string())
}

/// The JSON of one of statemesh's public types (leadership, members, an explanation,
/// metrics): their own `serde` rendering, the one every command prints.
pub(super) fn to_json<T: Serialize>(value: &T) -> Json {
    // These types hold no map with non-string keys, so this cannot fail.
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// A change as its `kind`, `channel`, `key` and writer `by` (the `change` notification).
pub(super) fn change_json(c: &Change) -> Json {
    let kind = match c.kind {
        EntryKind::Record => "record",
        EntryKind::Counter => "counter",
        EntryKind::Leader => "leader",
    };
    json!({
        "kind": kind,
        "channel": c.channel,
        "key": c.key,
        "by": c.by.map(|p| p.to_string()),
    })
}

/// A duration in whole milliseconds.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A term as the sidecar shows it: `term` (its number) and `term_leader` (the window leading
/// under it; with the number, the fencing token).
pub(super) fn term_json(term: Term) -> Json {
    json!({"term": term.number, "term_leader": term.leader.to_string()})
}

/// The keyring: `primary`, `accepted`, `file`, and the key each link proved with.
pub(super) fn keyring_json(mesh: &Mesh) -> Json {
    let info = mesh.keyring().list();
    let links: Map<String, Json> = mesh
        .keyring()
        .peer_keys()
        .into_iter()
        .map(|(p, k)| (p.to_string(), json!(k)))
        .collect();
    json!({
        "primary": info.primary,
        "accepted": info.accepted,
        "file": info.file,
        "link_keys": links,
    })
}

/// The JSON-RPC error for a keyring change the mesh refused.
pub(super) fn keyring_error(e: &KeyringError) -> RpcError {
    RpcError::new(code::KEYRING_REFUSED, e.to_string())
}

/// The action for a write: answered now, or once acknowledged.
pub(super) fn written(
    pending: Result<Pending, WriteError>,
    ack: Ack,
    extra: Map<String, Json>,
) -> Action {
    let pending = match pending {
        Ok(p) => p,
        Err(e) => return Action::Reply(Err(write_error(&e))),
    };
    let mut result = extra;
    result.insert("changed".into(), json!(pending.changed()));
    let (wait, within, what) = match ack {
        Ack::Applied => return Action::Reply(Ok(Json::Object(result))),
        Ack::Durable(within) => {
            result.insert("durable".into(), json!(true));
            (
                Box::pin(pending.timeout(within).durable())
                    as std::pin::Pin<Box<dyn Future<Output = Result<(), AckError>> + Send>>,
                within,
                "durable".to_owned(),
            )
        }
        Ack::Replicated(k, within) => {
            result.insert("replicated".into(), json!(k));
            (
                Box::pin(pending.timeout(within).replicated(k)) as _,
                within,
                format!("replicated to {k} peers"),
            )
        }
    };
    Action::Wait(Box::pin(async move {
        match wait.await {
            Ok(()) => Ok(Json::Object(result)),
            Err(AckError::Timeout { .. }) => Err(RpcError::new(
                code::TIMEOUT,
                format!(
                    "timed out after {} ms waiting for the write to be {what}; it was applied locally",
                    millis(within)
                ),
            )
            .with_data(json!({"applied": true}))),
            Err(AckError::Closed) => Err(closed_error(Closed).with_data(json!({"applied": true}))),
            Err(a) => {
                let reason = match a {
                    AckError::PersistenceOff => "persistence_off",
                    AckError::StoreFailed(_) => "store_failed",
                    AckError::Untracked => "untracked",
                    _ => "other",
                };
                Err(RpcError::new(
                    code::NOT_ACKNOWLEDGED,
                    format!("{a}; the write was applied locally"),
                )
                .with_data(json!({"applied": true, "reason": reason})))
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_refused_under_backpressure_is_busy_with_its_backlog() {
        let e = write_error(&WriteError::Backpressure {
            backlog: 2_050,
            limit: 2_048,
        });
        assert_eq!(e.code, code::BUSY);
        assert_eq!(
            e.data,
            Some(json!({"backlog": 2_050, "limit": 2_048, "retry": "backpressure_wait"}))
        );
        let retry = e.data.as_ref().and_then(|d| d["retry"].as_str());
        assert!(
            retry.and_then(super::super::methods::find).is_some(),
            "names a method that exists: {retry:?}"
        );
        assert!(e.message.starts_with("busy"), "{}", e.message);
        assert_eq!(write_error(&WriteError::Closed).code, code::MESH_CLOSED);
        assert_eq!(
            write_error(&WriteError::InvalidName("".into())).code,
            code::WRITE_REFUSED
        );
    }
}
