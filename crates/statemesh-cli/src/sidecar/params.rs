//! The parameters of every method, as the client sends them: one struct per shape, read
//! strictly (unknown fields are refused), and what a write waits for before it is answered.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};
use statemesh::{Scope, Value};

use super::rpc::RpcError;
use super::values;

/// A request's `params`: by-name parameters (`rpc::parse_request` refuses any other shape).
pub(super) type Params = Map<String, Json>;

/// Reads `p` as a `T`; what does not fit is an invalid-params error.
pub(super) fn parse<T: DeserializeOwned>(p: Params) -> Result<T, RpcError> {
    serde_json::from_value(Json::Object(p)).map_err(|e| RpcError::invalid_params(e.to_string()))
}

/// A `value` parameter as a mesh value.
pub(super) fn value(v: &Json) -> Result<Value, RpcError> {
    values::from_json(v).map_err(|e| RpcError::invalid_params(format!("value: {e}")))
}

/// A write's `scope`: `"durable"` (the default) or `"presence"`.
#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum ScopeParam {
    #[default]
    Durable,
    Presence,
}

impl From<ScopeParam> for Scope {
    fn from(s: ScopeParam) -> Self {
        match s {
            ScopeParam::Durable => Self::Durable,
            ScopeParam::Presence => Self::Presence,
        }
    }
}

/// No parameters (an empty object, or none at all).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct NoParams {}

/// `initialize`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct InitializeParams {
    #[serde(default)]
    pub(super) protocol: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) client: Option<Json>,
}

/// `get`, `leader_get`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelKey {
    pub(super) channel: String,
    pub(super) key: String,
}

/// `keys`, `leader_keys`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelOnly {
    pub(super) channel: String,
}

/// `counter`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct NameOnly {
    pub(super) name: String,
}

/// `keyring_use`, `keyring_remove`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyIdParam {
    pub(super) id: String,
}

/// `keyring_install`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyInstallParams {
    #[serde(default)]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) generate: bool,
}

/// `put`, `put_presence`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct PutParams {
    pub(super) channel: String,
    pub(super) key: String,
    pub(super) value: Json,
    #[serde(default)]
    pub(super) scope: Option<ScopeParam>,
    #[serde(default)]
    pub(super) durable: bool,
    #[serde(default)]
    pub(super) replicated: Option<usize>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// `delete`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteParams {
    pub(super) channel: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) durable: bool,
    #[serde(default)]
    pub(super) replicated: Option<usize>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// `add`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct AddParams {
    pub(super) name: String,
    pub(super) by: i64,
    #[serde(default)]
    pub(super) scope: ScopeParam,
    #[serde(default)]
    pub(super) durable: bool,
    #[serde(default)]
    pub(super) replicated: Option<usize>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// One operation of a `transact`.
#[derive(Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Op {
    Put {
        channel: String,
        key: String,
        value: Json,
        #[serde(default)]
        scope: ScopeParam,
    },
    Delete {
        channel: String,
        key: String,
    },
    Add {
        name: String,
        by: i64,
        #[serde(default)]
        scope: ScopeParam,
    },
}

/// `transact`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct TransactParams {
    pub(super) ops: Vec<Op>,
    #[serde(default)]
    pub(super) durable: bool,
    #[serde(default)]
    pub(super) replicated: Option<usize>,
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// `lead_acquire`, `backpressure_wait`: how long to wait at most (without it, as long as it
/// takes).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutOnly {
    #[serde(default)]
    pub(super) timeout_ms: Option<u64>,
}

/// `lead_put`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct LeadPutParams {
    pub(super) channel: String,
    pub(super) key: String,
    pub(super) value: Json,
    #[serde(default)]
    pub(super) term: Option<u64>,
}

/// `lead_delete`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct LeadDeleteParams {
    pub(super) channel: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) term: Option<u64>,
}

/// What a write waits for before it is answered.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ack {
    Applied,
    Durable(Duration),
    Replicated(usize, Duration),
}

/// What a write asks for, from its `durable`, `replicated` and `timeout_ms` parameters
/// (`default`: `--ack-timeout-ms`).
pub(super) fn ack(
    durable: bool,
    replicated: Option<usize>,
    timeout_ms: Option<u64>,
    default: Duration,
) -> Result<Ack, RpcError> {
    let within = timeout_ms.map_or(default, Duration::from_millis);
    match (durable, replicated) {
        (true, Some(_)) => Err(RpcError::invalid_params(
            "durable and replicated cannot be combined: choose one",
        )),
        (true, None) => Ok(Ack::Durable(within)),
        (false, Some(k)) => Ok(Ack::Replicated(k, within)),
        (false, None) => Ok(Ack::Applied),
    }
}
