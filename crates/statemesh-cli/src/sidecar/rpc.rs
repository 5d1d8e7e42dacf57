//! JSON-RPC 2.0 messages: parsing requests, building responses and notifications, and the
//! protocol's error codes. Pure functions, no IO.

use serde_json::{Map, Value, json};

/// The protocol version spoken by this sidecar (see `docs/sidecar.md`).
pub const PROTOCOL_VERSION: u64 = 1;

/// Stable error codes. JSON-RPC reserves -32768..-32000; statemesh's own codes are in
/// -32099..-32000.
pub mod code {
    /// The body is not valid UTF-8 JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid request object (or is a batch, which is not supported).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method's params are missing, of the wrong type, or carry unknown fields.
    pub const INVALID_PARAMS: i64 = -32602;
    /// A bug in the sidecar.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// This window does not hold the leadership the request needs (no lead guard, the lead
    /// was lost, or a stale term was given).
    pub const NOT_LEADER: i64 = -32001;
    /// A request came before `initialize` was answered.
    pub const NOT_INITIALIZED: i64 = -32002;
    /// The mesh is shut down (or shutting down).
    pub const MESH_CLOSED: i64 = -32003;
    /// A wait (acknowledgement, leadership) did not end within its timeout. For writes, the
    /// write itself was applied locally.
    pub const TIMEOUT: i64 = -32004;
    /// The mesh refused the write (invalid name, a value the document cannot hold).
    pub const WRITE_REFUSED: i64 = -32005;
    /// A stored value could not be read.
    pub const READ_FAILED: i64 = -32006;
    /// The sidecar could not join the mesh (answer to `initialize`; the sidecar then exits
    /// with status 3).
    pub const JOIN_FAILED: i64 = -32007;
    /// The client asked for a protocol version this sidecar does not speak.
    pub const UNSUPPORTED_PROTOCOL: i64 = -32008;
    /// An acknowledgement asked for will never come (persistence off, the store failed, the
    /// write no longer watched for replication). The write itself was applied locally.
    pub const NOT_ACKNOWLEDGED: i64 = -32009;
    /// A keyring change was refused (the last key, the primary key, a key not installed, a
    /// keyring or key file refused), changing nothing.
    pub const KEYRING_REFUSED: i64 = -32010;
    /// A write was refused because this window is too far ahead of its peers (its backlog is
    /// at the hard bound); nothing was written. Retry after `backpressure_wait` (its `data`
    /// says so: `retry`).
    pub const BUSY: i64 = -32011;
    /// The input stream's framing was malformed (the sidecar resynchronised).
    pub const FRAMING_ERROR: i64 = -32020;
    /// A message was longer than the limit (it was skipped).
    pub const MESSAGE_TOO_LARGE: i64 = -32021;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// One of [`code`].
    pub code: i64,
    /// A human-readable message (statemesh's own error text, passed on intact).
    pub message: String,
    /// Optional structured details.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data` attached.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `-32602`, invalid params.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        let mut e = Map::new();
        e.insert("code".into(), self.code.into());
        e.insert("message".into(), self.message.clone().into());
        if let Some(d) = &self.data {
            e.insert("data".into(), d.clone());
        }
        Value::Object(e)
    }
}

/// A request id: a string, a number, or null. Notifications have none.
pub type Id = Value;

/// A request (with an id) or a notification (without) from the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The id to answer with; `None` for a notification, which gets no answer.
    pub id: Option<Id>,
    /// The method name.
    pub method: String,
    /// The params: always an object (absent params are an empty object).
    pub params: Map<String, Value>,
}

/// A message that cannot be processed, with the id to answer it with (`null` when the id
/// could not be read).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The id of the offending request, or null.
    pub id: Id,
    /// What is wrong.
    pub error: RpcError,
    /// Whether the offending message is a well-formed notification (whose errors get no
    /// answer). Messages that are not valid requests at all are always answered.
    pub notification: bool,
}

/// Parses one message body into a request.
pub fn parse_request(body: &[u8]) -> Result<Request, Rejected> {
    let reject = |id: Id, code: i64, message: String| Rejected {
        id,
        error: RpcError::new(code, message),
        notification: false,
    };
    let text = std::str::from_utf8(body).map_err(|e| {
        reject(
            Value::Null,
            code::PARSE_ERROR,
            format!("body is not UTF-8: {e}"),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // Well-formed JSON that serde_json cannot hold (a number out of range, `1e400`) still
        // has a readable id: answer with it, so that the client knows which request failed.
        reject(
            readable_id(text).unwrap_or(Value::Null),
            code::PARSE_ERROR,
            format!("invalid JSON: {e}"),
        )
    })?;
    let mut obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(reject(
                Value::Null,
                code::INVALID_REQUEST,
                "batches are not supported: send one request per message".into(),
            ));
        }
        _ => {
            return Err(reject(
                Value::Null,
                code::INVALID_REQUEST,
                "a request must be a JSON object".into(),
            ));
        }
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(reject(
                Value::Null,
                code::INVALID_REQUEST,
                "\"id\" must be a string, a number or null".into(),
            ));
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    // Not a valid request, so not a valid notification either: always answered.
    let invalid = |message: &str| Rejected {
        id: answer_id.clone(),
        error: RpcError::new(code::INVALID_REQUEST, message),
        notification: false,
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(invalid("\"method\" must be a string")),
        None => return Err(invalid("missing \"method\"")),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(Rejected {
                id: answer_id.clone(),
                error: RpcError::invalid_params("params must be an object (by-name params)"),
                notification: id.is_none(),
            });
        }
    };
    Ok(Request { id, method, params })
}

/// The id of a request whose JSON is well-formed but could not be read whole: its other
/// members are skipped without being converted. `None` if there is none, or it is unreadable.
fn readable_id(text: &str) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let parsed: IdOnly = serde_json::from_str(text).ok()?;
    parsed
        .id
        .filter(|id| matches!(id, Value::String(_) | Value::Number(_)))
}

/// The body of a success response.
pub fn response(id: &Id, result: Value) -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// The body of an error response.
pub fn error_response(id: &Id, error: &RpcError) -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()}))
}

/// The body of a notification.
pub fn notification(method: &str, params: Value) -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
}

fn to_vec(v: &Value) -> Vec<u8> {
    // Serialising a `serde_json::Value` cannot fail (its map keys are strings).
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_requests_and_notifications() {
        let r = parse_request(br#"{"jsonrpc":"2.0","id":7,"method":"get","params":{"a":1}}"#)
            .expect("valid");
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "get");
        assert_eq!(r.params.get("a"), Some(&json!(1)));
        let n = parse_request(br#"{"jsonrpc":"2.0","method":"x"}"#).expect("valid");
        assert_eq!(n.id, None);
        assert!(n.params.is_empty());
        let null_id = parse_request(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).expect("ok");
        assert_eq!(null_id.id, Some(Value::Null));
    }

    #[test]
    fn rejects_with_the_right_codes_and_ids() {
        let cases: &[(&[u8], i64, Value)] = &[
            (b"{not json", code::PARSE_ERROR, Value::Null),
            (b"\xff\xfe", code::PARSE_ERROR, Value::Null),
            (b"", code::PARSE_ERROR, Value::Null),
            (b"[]", code::INVALID_REQUEST, Value::Null),
            (b"42", code::INVALID_REQUEST, Value::Null),
            (
                br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (br#"{"id":3,"method":"x"}"#, code::INVALID_REQUEST, json!(3)),
            (
                br#"{"jsonrpc":"1.0","id":"a","method":"x"}"#,
                code::INVALID_REQUEST,
                json!("a"),
            ),
            (
                br#"{"jsonrpc":"2.0","id":4,"method":5}"#,
                code::INVALID_REQUEST,
                json!(4),
            ),
            (
                br#"{"jsonrpc":"2.0","id":5}"#,
                code::INVALID_REQUEST,
                json!(5),
            ),
            (
                br#"{"jsonrpc":"2.0","id":6,"method":"x","params":[1]}"#,
                code::INVALID_PARAMS,
                json!(6),
            ),
        ];
        for (body, code, id) in cases {
            let e = parse_request(body).expect_err("rejected");
            assert_eq!(e.error.code, *code, "{}", String::from_utf8_lossy(body));
            assert_eq!(&e.id, id, "{}", String::from_utf8_lossy(body));
        }
    }

    /// Issue 14: a number out of range made the answer's id null though it was readable.
    #[test]
    fn a_number_out_of_range_is_a_parse_error_with_the_id() {
        for (body, id) in [
            (
                &br#"{"jsonrpc":"2.0","id":7,"method":"put","params":{"value":1e400}}"#[..],
                json!(7),
            ),
            (
                br#"{"params":{"value":-1e400},"id":"a","jsonrpc":"2.0","method":"put"}"#,
                json!("a"),
            ),
            (
                br#"{"jsonrpc":"2.0","method":"put","params":1e400}"#,
                Value::Null,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1e400,"method":"put"}"#,
                Value::Null,
            ),
            (br#"{"jsonrpc":"2.0","id":7,"method":"put","#, Value::Null),
        ] {
            let e = parse_request(body).expect_err("refused");
            assert_eq!(
                e.error.code,
                code::PARSE_ERROR,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(e.id, id, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn deep_json_is_a_parse_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_request(deep.as_bytes()).expect_err("too deep");
        assert_eq!(e.error.code, code::PARSE_ERROR);
    }

    #[test]
    fn responses_are_json_rpc() {
        let r: Value = serde_json::from_slice(&response(&json!(1), json!({"x": 2}))).expect("json");
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": 1, "result": {"x": 2}}));
        let e: Value = serde_json::from_slice(&error_response(
            &json!("a"),
            &RpcError::new(code::TIMEOUT, "late").with_data(json!({"applied": true})),
        ))
        .expect("json");
        assert_eq!(
            e,
            json!({"jsonrpc": "2.0", "id": "a", "error": {"code": -32004, "message": "late", "data": {"applied": true}}})
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&body);
        }

        #[test]
        fn arbitrary_json_never_panics(s in r#"[\[\]{}",:0-9a-z\\ ]{0,200}"#) {
            let _ = parse_request(s.as_bytes());
        }
    }
}
