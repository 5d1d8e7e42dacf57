//! Every method the sidecar serves: [`METHODS`], the one list of them, then one function per
//! method, in the same order. A function reads its parameters and answers at once, or returns
//! the future its answer waits for; the session ([`super::session`]) decides when a method may
//! be called, and sends the answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde_json::{Map, Value as Json, json};
use statemesh::{Closed, KeyringError, Scope, Value, WriteError};

use super::answers::{
    closed_error, keyring_error, keyring_json, read_error, term_json, to_json, write_error, written,
};
use super::params::{
    self, AddParams, ChannelKey, ChannelOnly, DeleteParams, KeyIdParam, KeyInstallParams,
    LeadDeleteParams, LeadPutParams, NameOnly, NoParams, Op, Params, PutParams, ScopeParam,
    TimeoutOnly, TransactParams, ack,
};
use super::process::Stop;
use super::rpc::{RpcError, code};
use super::session::{Action, Session, Waiting, hold, slot};
use super::values;

/// A method's handler: the action for these parameters (an error is the answer).
pub(super) type Call = fn(&Session, Params) -> Result<Action, RpcError>;

/// How the session serves a method.
pub(super) enum Serve {
    /// `initialize`, the handshake: the session answers it itself, and starts the
    /// notifications once the answer is out.
    Handshake,
    /// Served in any state: leaving needs no session, and a client that gives up before
    /// `initialize` must not leave the sidecar running.
    Always(Call),
    /// Served once `initialize` was answered.
    Initialized(Call),
}

/// Every method, by name.
pub(super) const METHODS: &[(&str, Serve)] = &[
    ("initialize", Serve::Handshake),
    ("shutdown", Serve::Always(shutdown)),
    ("get", Serve::Initialized(get)),
    ("keys", Serve::Initialized(keys)),
    ("channels", Serve::Initialized(channels)),
    ("put", Serve::Initialized(put)),
    ("put_presence", Serve::Initialized(put_presence)),
    ("delete", Serve::Initialized(delete)),
    ("transact", Serve::Initialized(transact)),
    ("add", Serve::Initialized(add)),
    ("backpressure_wait", Serve::Initialized(backpressure_wait)),
    ("counter", Serve::Initialized(counter)),
    ("leader_get", Serve::Initialized(leader_get)),
    ("leader_keys", Serve::Initialized(leader_keys)),
    ("members", Serve::Initialized(members)),
    ("leader", Serve::Initialized(leader)),
    ("lead_acquire", Serve::Initialized(lead_acquire)),
    ("lead_put", Serve::Initialized(lead_put)),
    ("lead_delete", Serve::Initialized(lead_delete)),
    ("lead_release", Serve::Initialized(lead_release)),
    ("stats", Serve::Initialized(stats)),
    ("explain", Serve::Initialized(explain)),
    ("keyring_list", Serve::Initialized(keyring_list)),
    ("keyring_install", Serve::Initialized(keyring_install)),
    ("keyring_use", Serve::Initialized(keyring_use)),
    ("keyring_remove", Serve::Initialized(keyring_remove)),
];

/// How method `name` is served; `None`: there is no such method.
pub(super) fn find(name: &str) -> Option<&'static Serve> {
    METHODS.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
}

/// An answer, now.
fn reply(r: Json) -> Result<Action, RpcError> {
    Ok(Action::Reply(Ok(r)))
}

/// How long a write waits for its acknowledgement unless it says otherwise.
fn default_ack(s: &Session) -> Duration {
    Duration::from_millis(s.args.ack_timeout_ms)
}

fn shutdown(_: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    // The id is filled in by the caller; see `Session::message`.
    Ok(Action::Stop(Stop::Shutdown(None)))
}

fn get(s: &Session, p: Params) -> Result<Action, RpcError> {
    let ChannelKey { channel, key } = params::parse(p)?;
    let v = s
        .mesh()?
        .get::<Value>(&channel, &key)
        .map_err(|e| read_error(&e))?;
    reply(json!({
        "found": v.is_some(),
        "value": v.as_ref().map_or(Json::Null, values::to_json),
    }))
}

fn keys(s: &Session, p: Params) -> Result<Action, RpcError> {
    let ChannelOnly { channel } = params::parse(p)?;
    reply(json!(s.mesh()?.keys(&channel)))
}

fn channels(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    reply(json!(s.mesh()?.channels()))
}

fn put(s: &Session, p: Params) -> Result<Action, RpcError> {
    put_record(s, p, false)
}

fn put_presence(s: &Session, p: Params) -> Result<Action, RpcError> {
    put_record(s, p, true)
}

/// `put` and `put_presence` (`presence`): the same parameters, but `put_presence` writes
/// presence-scoped records only.
fn put_record(s: &Session, p: Params, presence: bool) -> Result<Action, RpcError> {
    let PutParams {
        channel,
        key,
        value,
        scope,
        durable,
        replicated,
        timeout_ms,
    } = params::parse(p)?;
    let scope = match (presence, scope) {
        (true, Some(ScopeParam::Durable)) => {
            return Err(RpcError::invalid_params(
                "put_presence writes presence-scoped records: leave out `scope`",
            ));
        }
        (true, _) => ScopeParam::Presence,
        (false, s) => s.unwrap_or_default(),
    };
    let ack = ack(durable, replicated, timeout_ms, default_ack(s))?;
    let value = params::value(&value)?;
    let mesh = s.mesh()?;
    let pending = mesh.put(&channel, &key, &value, Scope::from(scope));
    Ok(written(pending, ack, Map::new()))
}

fn delete(s: &Session, p: Params) -> Result<Action, RpcError> {
    let DeleteParams {
        channel,
        key,
        durable,
        replicated,
        timeout_ms,
    } = params::parse(p)?;
    let ack = ack(durable, replicated, timeout_ms, default_ack(s))?;
    let pending = s.mesh()?.delete(&channel, &key);
    Ok(written(pending, ack, Map::new()))
}

fn transact(s: &Session, p: Params) -> Result<Action, RpcError> {
    let TransactParams {
        ops,
        durable,
        replicated,
        timeout_ms,
    } = params::parse(p)?;
    let ack = ack(durable, replicated, timeout_ms, default_ack(s))?;
    // Convert every value first: a bad one refuses the whole transaction.
    let mut converted = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        converted.push(match op {
            Op::Put { value, .. } => Some(
                values::from_json(value)
                    .map_err(|e| RpcError::invalid_params(format!("ops[{i}].value: {e}")))?,
            ),
            _ => None,
        });
    }
    let pending = s.mesh()?.transact(|tx| {
        for (op, value) in ops.iter().zip(&converted) {
            match (op, value) {
                (
                    Op::Put {
                        channel,
                        key,
                        scope,
                        ..
                    },
                    Some(v),
                ) => tx.put(channel, key, v, (*scope).into())?,
                (Op::Delete { channel, key }, _) => tx.delete(channel, key)?,
                (Op::Add { name, by, scope }, _) => tx.add(name, *by, (*scope).into())?,
                (Op::Put { .. }, None) => {}
            }
        }
        Ok(())
    });
    Ok(written(pending, ack, Map::new()))
}

fn add(s: &Session, p: Params) -> Result<Action, RpcError> {
    let AddParams {
        name,
        by,
        scope,
        durable,
        replicated,
        timeout_ms,
    } = params::parse(p)?;
    let ack = ack(durable, replicated, timeout_ms, default_ack(s))?;
    let mesh = s.mesh()?;
    let pending = mesh.add(&name, by, scope.into());
    let mut extra = Map::new();
    extra.insert("value".into(), json!(mesh.counter(&name)));
    Ok(written(pending, ack, extra))
}

/// Resolves once this window's backlog is under half the soft bound again (answered at once,
/// in order, if writes are not pushed back now), with the backlog then.
fn backpressure_wait(s: &Session, p: Params) -> Result<Action, RpcError> {
    let TimeoutOnly { timeout_ms } = params::parse(p)?;
    let mesh = s.mesh()?.clone();
    let mut wait: Waiting = Box::pin(async move {
        within(timeout_ms, "the backlog to clear", mesh.backpressure())
            .await?
            .map_err(closed_error)?;
        Ok(json!({"backlog": mesh.metrics().backlog}))
    });
    // Not pushed back (or closed): ready at its first poll, so answered now, before the
    // requests behind it; else awaited in its own task (see `Session::message`).
    let mut cx = Context::from_waker(Waker::noop());
    Ok(match wait.as_mut().poll(&mut cx) {
        Poll::Ready(answer) => Action::Reply(answer),
        Poll::Pending => Action::Wait(wait),
    })
}

/// `wait`, given up after `timeout_ms` if there is one (-32004: timed out waiting for `what`).
async fn within<T>(
    timeout_ms: Option<u64>,
    what: &str,
    wait: impl Future<Output = T>,
) -> Result<T, RpcError> {
    let Some(ms) = timeout_ms else {
        return Ok(wait.await);
    };
    tokio::time::timeout(Duration::from_millis(ms), wait)
        .await
        .map_err(|_| {
            RpcError::new(
                code::TIMEOUT,
                format!("timed out waiting for {what} ({ms} ms)"),
            )
        })
}

fn counter(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NameOnly { name } = params::parse(p)?;
    reply(json!(s.mesh()?.counter(&name)))
}

fn leader_get(s: &Session, p: Params) -> Result<Action, RpcError> {
    let ChannelKey { channel, key } = params::parse(p)?;
    let v = s
        .mesh()?
        .leader_get::<Value>(&channel, &key)
        .map_err(|e| read_error(&e))?;
    reply(match v {
        Some((v, term)) => json!({
            "found": true,
            "value": values::to_json(&v),
            "term": term.number,
            "term_leader": term.leader.to_string(),
        }),
        None => {
            json!({"found": false, "value": null, "term": null, "term_leader": null})
        }
    })
}

fn leader_keys(s: &Session, p: Params) -> Result<Action, RpcError> {
    let ChannelOnly { channel } = params::parse(p)?;
    reply(json!(s.mesh()?.leader_keys(&channel)))
}

fn members(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    reply(to_json(&s.mesh()?.members()))
}

fn leader(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    reply(to_json(&s.mesh()?.leadership().current()))
}

fn lead_acquire(s: &Session, p: Params) -> Result<Action, RpcError> {
    let TimeoutOnly { timeout_ms } = params::parse(p)?;
    let mesh = s.mesh()?.clone();
    let slot_ = s.lead.clone();
    let out = s.out.clone();
    Ok(Action::Wait(Box::pin(async move {
        let lead = within(timeout_ms, "leadership", mesh.lead()).await?;
        let lead = lead.ok_or_else(|| closed_error(Closed))?;
        let term = hold(&slot_, lead, &out);
        Ok(term_json(term))
    })))
}

fn lead_put(s: &Session, p: Params) -> Result<Action, RpcError> {
    let LeadPutParams {
        channel,
        key,
        value,
        term,
    } = params::parse(p)?;
    let value = params::value(&value)?;
    lead_write(s, &channel, &key, Some(&value), term)
}

fn lead_delete(s: &Session, p: Params) -> Result<Action, RpcError> {
    let LeadDeleteParams { channel, key, term } = params::parse(p)?;
    lead_write(s, &channel, &key, None, term)
}

/// `lead_put` (`Some` value) and `lead_delete` (`None`), under the held lead guard, whose term
/// must be `term` if the client gave one.
fn lead_write(
    s: &Session,
    channel: &str,
    key: &str,
    value: Option<&Value>,
    term: Option<u64>,
) -> Result<Action, RpcError> {
    let held = slot(&s.lead);
    let Some(h) = held.as_ref() else {
        return Err(RpcError::new(
            code::NOT_LEADER,
            "no lead guard is held: call lead_acquire first",
        ));
    };
    let mine = h.lead.term();
    if let Some(t) = term
        && t != mine
    {
        let e = WriteError::NotLeader { term: t };
        return Err(write_error(&e).with_data(json!({"held_term": mine})));
    }
    match value {
        Some(v) => h.lead.put(channel, key, v),
        None => h.lead.delete(channel, key),
    }
    .map_err(|e| write_error(&e))?;
    reply(term_json(h.lead.term_id()))
}

fn lead_release(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    let held = slot(&s.lead).take();
    let released = held.is_some();
    if let Some(h) = held {
        h.watcher.abort();
    }
    reply(json!({"released": released}))
}

fn stats(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    let mesh = s.mesh()?;
    let c = &s.out.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    reply(json!({
        "mesh": to_json(&mesh.metrics()),
        "sidecar": {
            "messages_in": load(&c.messages_in),
            "framing_errors": load(&c.framing_errors),
            "responses_out": load(&c.responses_out),
            "errors_out": load(&c.errors_out),
            "notifications_out": load(&c.notifications_out),
        },
    }))
}

fn explain(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    reply(to_json(&s.mesh()?.explain()))
}

fn keyring_list(s: &Session, p: Params) -> Result<Action, RpcError> {
    let NoParams {} = params::parse(p)?;
    reply(keyring_json(s.mesh()?))
}

fn keyring_install(s: &Session, p: Params) -> Result<Action, RpcError> {
    let KeyInstallParams { key_file, generate } = params::parse(p)?;
    let key = match (key_file, generate) {
        (Some(f), false) => statemesh::read_key_file(&f)
            .map_err(|e| RpcError::new(code::KEYRING_REFUSED, e.to_string()))?,
        (None, true) => statemesh::Secret::generate(),
        _ => {
            return Err(RpcError::invalid_params(
                "give exactly one of `key_file` and `generate: true`",
            ));
        }
    };
    let mesh = s.mesh()?;
    let id = mesh.keyring().install(key).map_err(|e| keyring_error(&e))?;
    let mut out = keyring_json(mesh);
    out["installed"] = json!(id.to_string());
    reply(out)
}

fn keyring_use(s: &Session, p: Params) -> Result<Action, RpcError> {
    keyring_change(s, p, statemesh::KeyringHandle::use_key)
}

fn keyring_remove(s: &Session, p: Params) -> Result<Action, RpcError> {
    keyring_change(s, p, statemesh::KeyringHandle::remove)
}

/// `keyring_use` and `keyring_remove`: `change` applied to the key named by `id`.
fn keyring_change(
    s: &Session,
    p: Params,
    change: fn(&statemesh::KeyringHandle, statemesh::KeyId) -> Result<(), KeyringError>,
) -> Result<Action, RpcError> {
    let KeyIdParam { id } = params::parse(p)?;
    let id: statemesh::KeyId = id
        .parse()
        .map_err(|e: statemesh::SecretError| RpcError::invalid_params(e.to_string()))?;
    let mesh = s.mesh()?;
    change(&mesh.keyring(), id).map_err(|e| keyring_error(&e))?;
    reply(keyring_json(mesh))
}
