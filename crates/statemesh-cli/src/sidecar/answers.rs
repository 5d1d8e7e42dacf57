//! How the sidecar shows the mesh to its client: the JSON of leadership, changes, terms and
//! keyrings, the JSON-RPC error for each mesh error, and the answer of a write (now, or once
//! acknowledged).

use std::time::Duration;

use serde_json::{Map, Value as Json, json};
use statemesh::{
    AckError, Change, EntryKind, LeadershipInfo, Mesh, MeshError, Pending, Term, WriteError,
};

use super::params::Ack;
use super::rpc::{RpcError, code};
use super::session::Action;

/// The JSON-RPC error for a mesh error; the message is statemesh's own.
pub(super) fn mesh_error(e: &MeshError) -> RpcError {
    let code = match e {
        MeshError::Write(w) if matches!(**w, WriteError::NotLeader { .. }) => code::NOT_LEADER,
        MeshError::Write(_) => code::WRITE_REFUSED,
        MeshError::Read(_) => code::READ_FAILED,
        MeshError::Closed => code::MESH_CLOSED,
        MeshError::Timeout(_) => code::TIMEOUT,
        _ => code::INTERNAL_ERROR,
    };
    RpcError::new(code, e.to_string())
}

/// Leadership as `leader`, `term` and `is_me` (`leader`, the `leadership` notification).
pub(super) fn leadership_json(l: &LeadershipInfo) -> Json {
    json!({
        "leader": l.leader.map(|p| p.to_string()),
        "term": l.term,
        "is_me": l.is_me,
    })
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
pub(super) fn keyring_error(e: &MeshError) -> RpcError {
    match e {
        MeshError::Secret(s) => RpcError::new(code::KEYRING_REFUSED, s.to_string()),
        other => mesh_error(other),
    }
}

/// The action for a write: answered now, or once acknowledged.
pub(super) fn written(
    pending: Result<Pending, MeshError>,
    ack: Ack,
    extra: Map<String, Json>,
) -> Action {
    let pending = match pending {
        Ok(p) => p,
        Err(e) => return Action::Reply(Err(mesh_error(&e))),
    };
    let mut result = extra;
    result.insert("changed".into(), json!(pending.changed()));
    let (wait, within, what) = match ack {
        Ack::Applied => return Action::Reply(Ok(Json::Object(result))),
        Ack::Durable(within) => {
            result.insert("durable".into(), json!(true));
            (
                Box::pin(pending.timeout(within).durable())
                    as std::pin::Pin<Box<dyn Future<Output = Result<(), MeshError>> + Send>>,
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
            Err(MeshError::Timeout(_)) => Err(RpcError::new(
                code::TIMEOUT,
                format!(
                    "timed out after {} ms waiting for the write to be {what}; it was applied locally",
                    millis(within)
                ),
            )
            .with_data(json!({"applied": true}))),
            Err(MeshError::Ack(a)) => {
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
            Err(e) => Err(mesh_error(&e).with_data(json!({"applied": true}))),
        }
    }))
}
