//! The body of the `sidecar_rpc` cargo-fuzz target in `fuzz/`, and the seed inputs it starts
//! from.
//!
//! As with the core's targets (`statemesh_core::fuzzing`), the target in
//! `fuzz/fuzz_targets/sidecar_rpc.rs` is a one-liner calling [`sidecar_rpc`], and
//! `tests/tests/crashers.rs` replays every committed crash and seed input through the same
//! function with the ordinary test runner. The function panics when an invariant breaks and
//! must not panic otherwise. It is deterministic: an input replays exactly.
//!
//! | target | input | checked |
//! |---|---|---|
//! | [`sidecar_rpc`] | the byte stream a client writes to `statemesh sidecar`'s stdin | no panic; the same messages and errors whether the stream comes in one chunk, byte by byte or in chunks its own bytes choose; bounded buffering; bodies re-frame exactly; a frame right behind the input's bytes on one line is found; every request, rejection and framing error makes a well-formed answer; request values convert to mesh values and back unchanged |

use serde_json::{Value as Json, json};

use crate::sidecar::framing::{self, Decoded, FrameDecoder, FrameError, MAX_HEADER_BYTES};
use crate::sidecar::rpc::{self, RpcError, code};
use crate::sidecar::values;

/// The fuzz targets of this crate, by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus and crasher folders).
pub const TARGETS: [&str; 1] = ["sidecar_rpc"];

/// The function behind fuzz target `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    match name {
        "sidecar_rpc" => Some(sidecar_rpc),
        _ => None,
    }
}

/// The body limit of the decoders under test: small, so that inputs of a few KiB reach the
/// oversize path (a body skipped without being stored).
pub const MAX_BODY: usize = 4 * 1024;

/// The most a decoder may hold at any time: a partial header block or a partial body.
const MAX_BUFFERED: usize = if MAX_HEADER_BYTES > MAX_BODY {
    MAX_HEADER_BYTES
} else {
    MAX_BODY
};

/// The sidecar's input path on `data`, a byte stream from a client: framing
/// ([`FrameDecoder`], limit [`MAX_BODY`]), request parsing ([`rpc::parse_request`]), the
/// answers built for what it found ([`rpc`]'s helpers) and value conversion ([`values`]).
///
/// Panics if an invariant breaks:
///
/// - the stream decodes to the same messages and errors, in the same order, and leaves the
///   decoder in the same state, whether it is fed in one chunk, byte by byte, or in chunks
///   whose sizes the input's own bytes choose;
/// - the decoder never holds more than [`MAX_HEADER_BYTES`] or [`MAX_BODY`] bytes, and no body
///   is longer than [`MAX_BODY`];
/// - every body re-framed with [`framing::encode`] decodes back to exactly that body;
/// - a frame written right behind the input's bytes (line ends taken out) on the same line is
///   decoded;
/// - every framing error and every rejected message makes an error response that is JSON with
///   the right id and code; every accepted request makes a response and an error response
///   carrying its id, and re-sent as a notification it parses back to the same method and params;
/// - every params value that [`values::from_json`] accepts comes back equal through
///   [`values::to_json`] and `from_json`, also when the JSON goes through its text form (as it
///   does between the sidecar and a client).
pub fn sidecar_rpc(data: &[u8]) {
    let whole = feed(data, |_| data.len());
    let bytewise = feed(data, |_| 1);
    // Chunk sizes from 1 to 8,129 bytes, chosen by the byte a chunk starts with.
    let chosen = feed(data, |at| {
        let b = usize::from(data[at]);
        1 + b * b / 8
    });
    assert_eq!(
        bytewise, whole,
        "fed byte by byte, the stream decodes differently than in one chunk"
    );
    assert_eq!(
        chosen, whole,
        "fed in chunks, the stream decodes differently than in one chunk"
    );
    same_line(data);
    for item in &whole.out {
        match item {
            Decoded::Body(body) => {
                assert!(body.len() <= MAX_BODY, "a body of {} bytes", body.len());
                reframes(body);
                message(body);
            }
            Decoded::Error(e) => framing_error(e),
        }
    }
}

/// A message written right behind garbage on the same line is decoded: `data` with its line
/// ends taken out (and cut shorter than a header block), then a frame.
fn same_line(data: &[u8]) {
    let mut input: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| *b != b'\n')
        .take(MAX_HEADER_BYTES - 64)
        .collect();
    let marker = br#"{"jsonrpc":"2.0","id":"marker","method":"channels"}"#;
    input.extend(framing::encode(marker));
    let mut decoder = FrameDecoder::new(MAX_BODY);
    let out = decoder.feed(&input);
    assert_eq!(
        out.last(),
        Some(&Decoded::Body(marker.to_vec())),
        "a message right behind garbage on its line is lost"
    );
    assert!(
        decoder.is_idle(),
        "a message behind garbage leaves the decoder busy"
    );
}

/// What a decoder made of a stream.
#[derive(Debug, PartialEq)]
struct Fed {
    out: Vec<Decoded>,
    idle: bool,
    buffered: usize,
}

/// Feeds `data` to a fresh decoder in chunks of `size(offset)` bytes (at least one).
fn feed(data: &[u8], mut size: impl FnMut(usize) -> usize) -> Fed {
    let mut decoder = FrameDecoder::new(MAX_BODY);
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = size(at).clamp(1, data.len() - at);
        out.extend(decoder.feed(&data[at..at + n]));
        at += n;
        assert!(
            decoder.buffered() <= MAX_BUFFERED,
            "the decoder holds {} bytes",
            decoder.buffered()
        );
    }
    Fed {
        out,
        idle: decoder.is_idle(),
        buffered: decoder.buffered(),
    }
}

fn reframes(body: &[u8]) {
    let mut decoder = FrameDecoder::new(MAX_BODY);
    let back = decoder.feed(&framing::encode(body));
    assert_eq!(
        back,
        vec![Decoded::Body(body.to_vec())],
        "a body does not decode back from its frame"
    );
    assert!(decoder.is_idle(), "a frame leaves the decoder busy");
}

/// Parses `bytes` as JSON; panics if they are not (a body the sidecar writes must be JSON).
fn json(bytes: &[u8]) -> Json {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "the sidecar would write a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Checks an answer body: `{"jsonrpc": "2.0", "id": id, key: ...}`; returns `key`'s value.
fn answer(body: &[u8], id: &Json, key: &str) -> Json {
    let mut v = json(body);
    assert_eq!(v["jsonrpc"], "2.0", "an answer without jsonrpc 2.0: {v}");
    assert_eq!(&v["id"], id, "an answer with the wrong id: {v}");
    v.get_mut(key)
        .map(Json::take)
        .unwrap_or_else(|| panic!("an answer without {key:?}: {v}"))
}

/// The error response the sidecar sends for a framing error, as it builds it.
fn framing_error(e: &FrameError) {
    let err = match e {
        FrameError::TooLarge { length, max } => {
            assert!(*length > MAX_BODY as u64, "{e}: not too large");
            assert_eq!(*max, MAX_BODY);
            RpcError::new(code::MESSAGE_TOO_LARGE, e.to_string())
                .with_data(json!({"length": length, "max": max}))
        }
        _ => RpcError::new(code::FRAMING_ERROR, e.to_string()),
    };
    let error = answer(
        &rpc::error_response(&Json::Null, &err),
        &Json::Null,
        "error",
    );
    assert_eq!(error["code"], err.code);
}

/// One message body through request parsing, answers and value conversion.
fn message(body: &[u8]) {
    let request = match rpc::parse_request(body) {
        Ok(r) => r,
        Err(rejected) => {
            let error = answer(
                &rpc::error_response(&rejected.id, &rejected.error),
                &rejected.id,
                "error",
            );
            assert_eq!(error["code"], rejected.error.code);
            return;
        }
    };
    let id = request.id.clone().unwrap_or(Json::Null);
    let params = Json::Object(request.params.clone());
    // Answers carrying the request's id and params (as a result, as error data).
    let result = answer(&rpc::response(&id, params.clone()), &id, "result");
    assert_eq!(result, params, "params changed in a response");
    let err =
        RpcError::new(code::METHOD_NOT_FOUND, request.method.clone()).with_data(params.clone());
    let error = answer(&rpc::error_response(&id, &err), &id, "error");
    assert_eq!(error["data"], params, "params changed in an error response");
    // The request sent again as a notification (as a client would build it) reads the same.
    let again = rpc::parse_request(&rpc::notification(&request.method, params.clone()))
        .unwrap_or_else(|r| panic!("a notification built from a request is refused: {r:?}"));
    assert_eq!(again.id, None);
    assert_eq!(again.method, request.method);
    assert_eq!(
        again.params, request.params,
        "params changed through JSON text"
    );
    // Values: the params as a whole, each param, and each op's value in a transaction.
    round_trips(&params);
    for v in request.params.values() {
        round_trips(v);
    }
    if let Some(ops) = request.params.get("ops").and_then(Json::as_array) {
        for op in ops {
            if let Some(v) = op.get("value") {
                round_trips(v);
            }
        }
    }
}

/// If `j` converts to a mesh value, it converts back to JSON and again to an equal value,
/// directly and through JSON text.
fn round_trips(j: &Json) {
    let Ok(value) = values::from_json(j) else {
        return;
    };
    let back = values::to_json(&value);
    assert_eq!(
        values::from_json(&back).as_ref(),
        Ok(&value),
        "a value changed through to_json and from_json: {j}"
    );
    let text = serde_json::to_vec(&back).unwrap_or_else(|e| panic!("to_json made {e}"));
    assert_eq!(
        values::from_json(&json(&text)).as_ref(),
        Ok(&value),
        "a value changed through JSON text: {j}"
    );
    if let Json::Object(m) = j
        && let Some(Json::String(s)) = m.get(values::BYTES_KEY)
        && let Some(bytes) = values::base64_decode(s)
    {
        assert_eq!(
            values::base64_decode(&values::base64_encode(&bytes)),
            Some(bytes),
            "base64 does not round-trip"
        );
    }
}

/// The seed inputs of fuzz target `target`, by file name (`fuzz/corpus/<target>/<name>`).
/// Empty for unknown targets.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "sidecar_rpc" => sidecar_seeds(),
        _ => Vec::new(),
    }
}

/// A request body.
fn request(id: u64, method: &str, params: Json) -> Vec<u8> {
    let mut r = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if !params.as_object().is_some_and(|p| p.is_empty()) {
        r["params"] = params;
    }
    serde_json::to_vec(&r).unwrap_or_default()
}

/// Framed bodies, one after another.
fn stream<B: AsRef<[u8]>>(bodies: impl IntoIterator<Item = B>) -> Vec<u8> {
    bodies
        .into_iter()
        .flat_map(|b| framing::encode(b.as_ref()))
        .collect()
}

fn sidecar_seeds() -> Vec<(String, Vec<u8>)> {
    // A valid request for every method, with the params docs/sidecar.md shows.
    let methods = [
        (
            "initialize",
            json!({"protocol": 1, "client": {"name": "my-extension", "version": "1.2.0"}}),
        ),
        ("get", json!({"channel": "workspaces", "key": "ws-1"})),
        ("keys", json!({"channel": "workspaces"})),
        ("channels", json!({})),
        (
            "put",
            json!({
                "channel": "workspaces", "key": "ws-1",
                "value": {"status": "running", "ports": [8080, 8081]}, "durable": true
            }),
        ),
        (
            "put_presence",
            json!({"channel": "windows", "key": "01a1feb9", "value": {"title": "main.rs"}}),
        ),
        (
            "delete",
            json!({"channel": "workspaces", "key": "ws-1", "replicated": 1, "timeout_ms": 2000}),
        ),
        (
            "add",
            json!({"name": "workspaces/ws-1/desired", "by": 1, "scope": "durable"}),
        ),
        ("counter", json!({"name": "workspaces/ws-1/desired"})),
        (
            "transact",
            json!({"ops": [
                {"op": "put", "channel": "workspaces", "key": "ws-2",
                 "value": {"status": "starting"}},
                {"op": "delete", "channel": "workspaces", "key": "ws-1"},
                {"op": "add", "name": "workspaces/ws-2/desired", "by": 2, "scope": "presence"}
            ], "durable": true}),
        ),
        ("leader", json!({})),
        ("members", json!({})),
        ("lead_acquire", json!({"timeout_ms": 5000})),
        (
            "lead_put",
            json!({
                "channel": "probes", "key": "api:443", "value": {"status": "up", "ms": 12},
                "term": 3
            }),
        ),
        (
            "lead_delete",
            json!({"channel": "probes", "key": "api:443", "term": 3}),
        ),
        ("lead_release", json!({})),
        ("leader_get", json!({"channel": "probes", "key": "api:443"})),
        ("leader_keys", json!({"channel": "probes"})),
        ("stats", json!({})),
        ("explain", json!({})),
        ("shutdown", json!({})),
        ("keyring_list", json!({})),
        ("keyring_install", json!({"key_file": "/home/me/new.key"})),
        ("keyring_use", json!({"id": "0c3a77e1b2d4a690"})),
        ("keyring_remove", json!({"id": "6b1f0c3a9d2e4f51"})),
        ("backpressure_wait", json!({"timeout_ms": 5000})),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = methods
        .iter()
        .enumerate()
        .map(|(i, (method, params))| {
            (
                format!("method-{method}"),
                framing::encode(&request(i as u64 + 1, method, params.clone())),
            )
        })
        .collect();

    // A short session, LSP-style headers and all: initialize, write, read, a notification.
    let mut session = Vec::new();
    for (i, body) in [
        request(1, "initialize", json!({"protocol": 1})),
        request(
            2,
            "put",
            json!({"channel": "c", "key": "k", "value": [1, -2, 1.5, "s", null, true]}),
        ),
        br#"{"jsonrpc":"2.0","method":"add","params":{"name":"n","by":-1}}"#.to_vec(),
        request(3, "get", json!({"channel": "c", "key": "k"})),
    ]
    .iter()
    .enumerate()
    {
        if i % 2 == 0 {
            session
                .extend_from_slice(b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n");
        }
        session.extend(framing::encode(body));
    }
    seeds.push(("session".into(), session));

    // Header variants: any case, bare newlines, spaces, blank lines between messages, the
    // same length twice.
    let get = request(7, "get", json!({"channel": "c", "key": "k"}));
    let mut headers = b"\r\n\r\ncontent-length:".to_vec();
    headers.extend(format!("  {} \n\n", get.len()).as_bytes());
    headers.extend(&get);
    headers.extend(
        format!(
            "\nCONTENT-LENGTH: {0}\r\nContent-Length: {0}\r\n\r\n",
            get.len()
        )
        .as_bytes(),
    );
    headers.extend(&get);
    seeds.push(("headers".into(), headers));

    // Garbage (JSON sent without headers, a line without a colon), then a frame.
    let mut garbage = get.clone();
    garbage.extend_from_slice(b"\r\nno colon here\r\n\r\nxxContent-Length: 2\r\n\r\n{}");
    seeds.push(("garbage-then-frame".into(), garbage));

    // Garbage and a frame on one line.
    let mut same_line = b"not a header ".to_vec();
    same_line.extend(framing::encode(&get));
    same_line.extend_from_slice(b"X-Name");
    same_line.extend(framing::encode(&get));
    seeds.push(("garbage-on-the-frame-line".into(), same_line));

    // Bad lengths: not a number, two different ones, none at all; a frame after each.
    let mut lengths = Vec::new();
    for bad in [
        &b"Content-Length: 12x\r\n\r\n"[..],
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"Content-Length: 99999999999999999999999\r\n\r\n",
        b"Content-Type: application/json\r\n\r\n{}",
        b"Bad Name: 1\r\n\r\n",
    ] {
        lengths.extend_from_slice(bad);
        lengths.extend(framing::encode(b"{}"));
    }
    seeds.push(("bad-lengths".into(), lengths));

    // A body over the limit, skipped, then a frame; and a length no one could store.
    let big = request(
        9,
        "put",
        json!({"channel": "c", "key": "big", "value": "x".repeat(MAX_BODY)}),
    );
    let mut oversize = framing::encode(&big);
    oversize.extend(framing::encode(&get));
    seeds.push(("oversize-body".into(), oversize));
    seeds.push((
        "huge-length".into(),
        b"Content-Length: 18446744073709551615\r\n\r\n{}".to_vec(),
    ));

    // Header blocks over MAX_HEADER_BYTES (one long line; many lines), each then a frame.
    let mut long_header = format!("X-Padding: {}\r\n", "p".repeat(MAX_HEADER_BYTES)).into_bytes();
    long_header.extend(framing::encode(&get));
    for i in 0..MAX_HEADER_BYTES / 64 + 1 {
        long_header.extend(format!("X-Line-{i:04}: {}\r\n", "q".repeat(48)).as_bytes());
    }
    long_header.extend(framing::encode(&get));
    seeds.push(("header-too-large".into(), long_header));

    // Bodies that are not requests: bad JSON, not UTF-8, empty, a batch, invalid requests.
    seeds.push((
        "bad-json".into(),
        stream([
            b"{not json".to_vec(),
            b"\xff\xfe{}".to_vec(),
            Vec::new(),
            br#"{"jsonrpc":"2.0","id":1,"method":"get""#.to_vec(),
            // Nested deeper than serde_json's recursion limit (128).
            "[".repeat(130).into_bytes(),
        ]),
    ));
    let mut batch = b"[".to_vec();
    batch.extend(request(1, "get", json!({"channel": "c", "key": "k"})));
    batch.push(b',');
    batch.extend(request(2, "keys", json!({"channel": "c"})));
    batch.push(b']');
    seeds.push(("batch".into(), framing::encode(&batch)));
    seeds.push((
        "invalid-requests".into(),
        stream([
            &br#"{"id":1,"method":"get"}"#[..],
            br#"{"jsonrpc":"1.0","id":"a","method":"get"}"#,
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"get"}"#,
            br#"{"jsonrpc":"2.0","id":4,"method":5}"#,
            br#"{"jsonrpc":"2.0","id":5}"#,
            br#"{"jsonrpc":"2.0","id":6,"method":"get","params":["c","k"]}"#,
            br#"{"jsonrpc":"2.0","method":"get","params":3}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"no_such_method"}"#,
            b"42",
        ]),
    ));

    // Values: bytes, big and negative integers, floats, unicode, too deep, bad base64.
    let mut deep = json!(1);
    for _ in 0..=values::MAX_VALUE_DEPTH {
        deep = json!([deep]);
    }
    seeds.push((
        "values".into(),
        stream([
            request(
                1,
                "put",
                json!({"channel": "c", "key": "k", "value": {
                    "bytes": {"$bytes": "AAEC/w=="},
                    "empty": {"$bytes": ""},
                    "not bytes": {"$bytes": 3, "x": 1},
                    "ints": [0, -1, i64::MIN, i64::MAX, u64::MAX],
                    "floats": [
                        0.1, -0.0, 1e300, 2.5e-308, 1.7976931348623157e308,
                        0.30000000000000004, 123.45678901234568, 6.02214076e23
                    ],
                    "text": "h\u{e9}llo \u{1f600}\n\"quoted\"",
                }}),
            ),
            request(
                2,
                "put",
                json!({"channel": "c", "key": "k", "value": {"$bytes": "Zh=="}}),
            ),
            request(
                3,
                "put",
                json!({"channel": "c", "key": "k", "value": {"$bytes": "Zg="}}),
            ),
            request(
                4,
                "lead_put",
                json!({"channel": "c", "key": "k", "value": deep}),
            ),
        ]),
    ));

    // A message cut short inside its body.
    let mut cut = framing::encode(&get);
    cut.truncate(cut.len() - 5);
    seeds.push(("cut-short".into(), cut));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass_and_are_named_uniquely() {
        let seeds = seeds("sidecar_rpc");
        let mut names: Vec<&str> = seeds.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), seeds.len());
        for (name, input) in &seeds {
            let run = std::panic::catch_unwind(|| sidecar_rpc(input));
            assert!(run.is_ok(), "seed {name} fails");
        }
    }
}
