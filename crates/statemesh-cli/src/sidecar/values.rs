//! Values between JSON and statemesh's dynamic [`Value`].
//!
//! JSON null, booleans, strings, arrays and objects map one to one. Numbers: an integer that
//! fits an `i64` is an `Int`, a larger positive one a `Uint`, anything else an `F64`. Bytes,
//! which JSON lacks, are the object `{"$bytes": "<base64>"}` (standard alphabet, padded) in
//! both directions. Nesting is limited to [`MAX_VALUE_DEPTH`] levels, as in the mesh.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Number, Value as Json};
// The mesh's value type and its nesting bound, from the `statemesh` library; in a build
// without the runtime (feature `fuzzing` alone, for fuzz/) from the core, whose items
// `statemesh` re-exports: the same type either way.
#[cfg(feature = "runtime")]
pub use statemesh::{MAX_VALUE_DEPTH, Value};
#[cfg(not(feature = "runtime"))]
pub use statemesh_core::{Value, value::MAX_VALUE_DEPTH};

/// The key of the object standing for bytes.
pub const BYTES_KEY: &str = "$bytes";

/// Converts a JSON value for writing. Refuses nesting deeper than [`MAX_VALUE_DEPTH`] and
/// malformed `$bytes` objects.
pub fn from_json(json: &Json) -> Result<Value, String> {
    from_json_at(json, 0)
}

fn from_json_at(json: &Json, depth: usize) -> Result<Value, String> {
    let nested = |depth: usize| {
        if depth >= MAX_VALUE_DEPTH {
            Err(format!("value nested deeper than {MAX_VALUE_DEPTH} levels"))
        } else {
            Ok(depth + 1)
        }
    };
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::Uint(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => {
            let d = nested(depth)?;
            Value::List(
                items
                    .iter()
                    .map(|v| from_json_at(v, d))
                    .collect::<Result<_, _>>()?,
            )
        }
        Json::Object(map) => {
            if let Some(b) = map.get(BYTES_KEY)
                && map.len() == 1
            {
                let s = b
                    .as_str()
                    .ok_or_else(|| format!("{BYTES_KEY:?} must hold a base64 string"))?;
                return base64_decode(s)
                    .map(Value::Bytes)
                    .ok_or_else(|| format!("{BYTES_KEY:?} holds invalid base64"));
            }
            let d = nested(depth)?;
            Value::Map(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), from_json_at(v, d)?)))
                    .collect::<Result<BTreeMap<_, _>, String>>()?,
            )
        }
    })
}

/// Converts a value read from the mesh to JSON. Non-finite floats become null.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Uint(u) => Json::Number((*u).into()),
        Value::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => {
            let mut m = Map::new();
            m.insert(BYTES_KEY.into(), Json::String(base64_encode(b)));
            Json::Object(m)
        }
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// Standard base64 (RFC 4648 alphabet), `=` padding written and required. The unused low bits
/// of the last symbol are ignored when decoding (`Zh==` reads as `f`, like `Zg==`), as the
/// sidecar always did: an encoder that leaves them set is not refused.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes standard base64 with padding; `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    BASE64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn base64_known_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(raw.as_bytes()));
        }
        // Trailing bits in the last symbol are ignored.
        for (enc, raw) in [("Zh==", "f"), ("Zm9=", "fo"), ("Zm+=", "fo")] {
            assert_eq!(base64_decode(enc).as_deref(), Some(raw.as_bytes()), "{enc}");
        }
        for bad in [
            "Zg=", "Z===", "Zg==Zg==", "Zm9*", "====", "Zg", "Zm9", "Zg== ", " Zg==", "Zm9v\n",
            "Zm-_", "=Zg=", "Z=g=", "Zg=A",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_round_trips() {
        let j = json!({"a": [1, -2, 1.5, "s", null, true, {"$bytes": "AQID"}], "big": u64::MAX});
        let v = from_json(&j).expect("converts");
        let Value::Map(m) = &v else { panic!("a map") };
        assert_eq!(m.get("big"), Some(&Value::Uint(u64::MAX)));
        assert_eq!(to_json(&v), j);
    }

    /// A float in JSON text converts exactly, and comes back as the same value through JSON
    /// text (an invariant of the `sidecar_rpc` fuzz target). serde_json's default parser is an ulp
    /// off on the first three (and on about one in ten random floats), so a value read back and
    /// written again drifted.
    #[test]
    fn floats_from_text_are_exact() {
        for text in [
            "1.947700395895162e-169",
            "6.162599865641032e196",
            "-7.185646242661804e230",
            "0.30000000000000004",
            "2.2250738585072014e-308",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            let want: f64 = text.parse().expect("a float");
            let json: Json = serde_json::from_str(text).expect("JSON");
            let v = from_json(&json).expect("converts");
            assert_eq!(v, Value::F64(want), "{text}");
            let again: Json =
                serde_json::from_str(&serde_json::to_string(&to_json(&v)).expect("prints"))
                    .expect("JSON");
            assert_eq!(from_json(&again), Ok(v), "{text}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut ok = json!(1);
        for _ in 0..MAX_VALUE_DEPTH {
            ok = json!([ok]);
        }
        assert!(from_json(&ok).is_ok());
        let too_deep = json!({ "x": ok });
        assert!(from_json(&too_deep).is_err());
    }

    #[test]
    fn malformed_bytes_are_refused() {
        assert!(from_json(&json!({"$bytes": 3})).is_err());
        assert!(from_json(&json!({"$bytes": "!!"})).is_err());
        // With another key it is an ordinary map.
        assert!(matches!(
            from_json(&json!({"$bytes": 3, "x": 1})),
            Ok(Value::Map(_))
        ));
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn base64_decode_never_panics(s in "[A-Za-z0-9+/=*]{0,40}") {
            let _ = base64_decode(&s);
        }
    }
}
