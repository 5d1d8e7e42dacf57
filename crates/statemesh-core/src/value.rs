//! A dynamic value: what the generic keyed API reads and writes, and how typed leader records
//! travel between peers.

use std::cell::Cell;
use std::collections::BTreeMap;

use automerge::ObjId;
use autosurgeon::reconcile::{MapReconciler, SeqReconciler};
use autosurgeon::{Hydrate, HydrateError, ReadDoc, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};

/// The deepest nesting of maps and lists a [`Value`] may have. Anything deeper is refused, so
/// hostile input can never exhaust the stack.
pub const MAX_VALUE_DEPTH: usize = 32;

/// A dynamically typed value, shaped like JSON plus bytes and unsigned integers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float.
    F64(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Self>),
    /// A map with string keys.
    Map(BTreeMap<String, Self>),
}

/// A value that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Nested deeper than [`MAX_VALUE_DEPTH`].
    #[error("value nested deeper than {MAX_VALUE_DEPTH} levels")]
    TooDeep,
    /// The token stream ended inside a map or list, or had tokens left over.
    #[error("malformed value encoding")]
    Malformed,
}

/// One token of a value's flat, pre-order encoding on the wire. A flat encoding decodes without
/// recursion, so no input can overflow the stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Token {
    /// [`Value::Null`].
    Null,
    /// [`Value::Bool`].
    Bool(bool),
    /// [`Value::Int`].
    Int(i64),
    /// [`Value::Uint`].
    Uint(u64),
    /// [`Value::F64`].
    F64(f64),
    /// [`Value::Str`], or a map key.
    Str(String),
    /// [`Value::Bytes`].
    Bytes(Vec<u8>),
    /// A list of this many values follows.
    List(u32),
    /// A map of this many key (a `Str` token) and value pairs follows.
    Map(u32),
}

impl Value {
    /// The flat pre-order encoding of this value.
    pub fn to_tokens(&self) -> Vec<Token> {
        enum Item<'a> {
            Key(&'a str),
            Value(&'a Value),
        }
        let mut out = Vec::new();
        let mut stack = vec![Item::Value(self)];
        while let Some(item) = stack.pop() {
            let v = match item {
                Item::Key(k) => {
                    out.push(Token::Str(k.to_owned()));
                    continue;
                }
                Item::Value(v) => v,
            };
            match v {
                Self::Null => out.push(Token::Null),
                Self::Bool(b) => out.push(Token::Bool(*b)),
                Self::Int(i) => out.push(Token::Int(*i)),
                Self::Uint(u) => out.push(Token::Uint(*u)),
                Self::F64(f) => out.push(Token::F64(*f)),
                Self::Str(s) => out.push(Token::Str(s.clone())),
                Self::Bytes(b) => out.push(Token::Bytes(b.clone())),
                Self::List(items) => {
                    out.push(Token::List(u32::try_from(items.len()).unwrap_or(u32::MAX)));
                    stack.extend(items.iter().rev().map(Item::Value));
                }
                Self::Map(map) => {
                    out.push(Token::Map(u32::try_from(map.len()).unwrap_or(u32::MAX)));
                    for (k, v) in map.iter().rev() {
                        stack.push(Item::Value(v));
                        stack.push(Item::Key(k));
                    }
                }
            }
        }
        out
    }

    /// Rebuilds a value from its flat encoding, refusing nesting deeper than
    /// [`MAX_VALUE_DEPTH`] and any leftover or missing token.
    pub fn from_tokens(tokens: &[Token]) -> Result<Self, ValueError> {
        enum Frame {
            List(Vec<Value>, usize),
            Map(BTreeMap<String, Value>, usize, Option<String>),
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut iter = tokens.iter();
        let mut result = None;
        while result.is_none() {
            let token = iter.next().ok_or(ValueError::Malformed)?;
            // A map expecting a key takes the next token as the key.
            if let Some(Frame::Map(_, _, key @ None)) = stack.last_mut() {
                match token {
                    Token::Str(s) => {
                        *key = Some(s.clone());
                        continue;
                    }
                    _ => return Err(ValueError::Malformed),
                }
            }
            let mut done = match token {
                Token::Null => Some(Self::Null),
                Token::Bool(b) => Some(Self::Bool(*b)),
                Token::Int(i) => Some(Self::Int(*i)),
                Token::Uint(u) => Some(Self::Uint(*u)),
                Token::F64(f) => Some(Self::F64(*f)),
                Token::Str(s) => Some(Self::Str(s.clone())),
                Token::Bytes(b) => Some(Self::Bytes(b.clone())),
                Token::List(0) => Some(Self::List(Vec::new())),
                Token::Map(0) => Some(Self::Map(BTreeMap::new())),
                Token::List(n) | Token::Map(n) => {
                    if stack.len() >= MAX_VALUE_DEPTH {
                        return Err(ValueError::TooDeep);
                    }
                    // Each element takes at least one token: a count beyond what is left is a lie.
                    let n = *n as usize;
                    if n > iter.len() {
                        return Err(ValueError::Malformed);
                    }
                    stack.push(match token {
                        Token::List(_) => Frame::List(Vec::with_capacity(n), n),
                        _ => Frame::Map(BTreeMap::new(), n, None),
                    });
                    None
                }
            };
            // Fold completed values into their parents.
            while let Some(value) = done.take() {
                match stack.last_mut() {
                    None => result = Some(value),
                    Some(Frame::List(items, n)) => {
                        items.push(value);
                        if items.len() == *n {
                            let Some(Frame::List(items, _)) = stack.pop() else {
                                unreachable!()
                            };
                            done = Some(Self::List(items));
                        }
                    }
                    Some(Frame::Map(map, n, key)) => {
                        let k = key.take().ok_or(ValueError::Malformed)?;
                        map.insert(k, value);
                        if map.len() == *n {
                            let Some(Frame::Map(map, _, _)) = stack.pop() else {
                                unreachable!()
                            };
                            done = Some(Self::Map(map));
                        }
                    }
                }
            }
        }
        if iter.next().is_some() {
            return Err(ValueError::Malformed);
        }
        result.ok_or(ValueError::Malformed)
    }
}

thread_local! {
    static HYDRATE_DEPTH: Cell<usize> = const { Cell::new(0) };
}

impl Reconcile for Value {
    type Key<'a> = autosurgeon::reconcile::NoKey;

    fn reconcile<R: Reconciler>(&self, mut reconciler: R) -> Result<(), R::Error> {
        match self {
            Self::Null => reconciler.none(),
            Self::Bool(b) => reconciler.boolean(*b),
            Self::Int(i) => reconciler.i64(*i),
            Self::Uint(u) => reconciler.u64(*u),
            Self::F64(f) => reconciler.f64(*f),
            Self::Str(s) => reconciler.str(s),
            Self::Bytes(b) => reconciler.bytes(b),
            Self::List(items) => {
                let mut seq = reconciler.seq()?;
                let old = seq.len()?;
                for (i, item) in items.iter().enumerate() {
                    if i < old {
                        seq.set(i, item)?;
                    } else {
                        seq.insert(i, item)?;
                    }
                }
                for i in (items.len()..old).rev() {
                    seq.delete(i)?;
                }
                Ok(())
            }
            Self::Map(map) => {
                let mut m = reconciler.map()?;
                let stale: Vec<String> = m
                    .entries()
                    .map(|(k, _)| k.to_string())
                    .filter(|k| !map.contains_key(k))
                    .collect();
                for k in stale {
                    m.delete(&k)?;
                }
                for (k, v) in map {
                    m.put(k, v)?;
                }
                Ok(())
            }
        }
    }
}

/// Counts nesting while a value is hydrated or built (one counter per thread); a guard whose
/// level exceeds [`MAX_VALUE_DEPTH`] is refused, so hostile input cannot exhaust the stack.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Result<Self, ValueError> {
        let depth = HYDRATE_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        // Built before the check, so the increment is undone on refusal too.
        let guard = Self;
        if depth > MAX_VALUE_DEPTH {
            return Err(ValueError::TooDeep);
        }
        Ok(guard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        HYDRATE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn too_deep(_: ValueError) -> HydrateError {
    HydrateError::unexpected(
        "a value nested at most 32 levels deep",
        "a deeper value".into(),
    )
}

impl Hydrate for Value {
    fn hydrate_none() -> Result<Self, HydrateError> {
        Ok(Self::Null)
    }
    fn hydrate_bool(b: bool) -> Result<Self, HydrateError> {
        Ok(Self::Bool(b))
    }
    fn hydrate_bytes(bytes: &[u8]) -> Result<Self, HydrateError> {
        Ok(Self::Bytes(bytes.to_vec()))
    }
    fn hydrate_f64(f: f64) -> Result<Self, HydrateError> {
        Ok(Self::F64(f))
    }
    fn hydrate_counter(c: i64) -> Result<Self, HydrateError> {
        Ok(Self::Int(c))
    }
    fn hydrate_int(i: i64) -> Result<Self, HydrateError> {
        Ok(Self::Int(i))
    }
    fn hydrate_uint(u: u64) -> Result<Self, HydrateError> {
        Ok(Self::Uint(u))
    }
    fn hydrate_string(s: &str) -> Result<Self, HydrateError> {
        Ok(Self::Str(s.to_owned()))
    }
    fn hydrate_timestamp(t: i64) -> Result<Self, HydrateError> {
        Ok(Self::Int(t))
    }
    fn hydrate_map<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Self, HydrateError> {
        let _guard = DepthGuard::enter().map_err(too_deep)?;
        let mut map = BTreeMap::new();
        for item in doc.map_range(obj, ..) {
            let key = item.key.to_string();
            let v = Self::hydrate(doc, obj, key.as_str().into())?;
            map.insert(key, v);
        }
        Ok(Self::Map(map))
    }
    fn hydrate_seq<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Self, HydrateError> {
        let _guard = DepthGuard::enter().map_err(too_deep)?;
        let len = doc.length(obj);
        let mut items = Vec::with_capacity(len);
        for i in 0..len {
            items.push(Self::hydrate(doc, obj, i.into())?);
        }
        Ok(Self::List(items))
    }
    fn hydrate_text<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Self, HydrateError> {
        Ok(Self::Str(doc.text(obj)?))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::Uint),
            (-1e9f64..1e9).prop_map(Value::F64),
            "[a-z]{0,8}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn tokens_round_trip(v in value()) {
            prop_assert_eq!(Value::from_tokens(&v.to_tokens()), Ok(v));
        }

        #[test]
        fn arbitrary_tokens_never_panic(tokens in proptest::collection::vec(
            prop_oneof![
                Just(Token::Null),
                (0u32..4).prop_map(Token::List),
                (0u32..4).prop_map(Token::Map),
                "[a-b]{0,2}".prop_map(Token::Str),
            ], 0..24)) {
            let _ = Value::from_tokens(&tokens);
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut tokens = vec![Token::List(1); MAX_VALUE_DEPTH + 1];
        tokens.push(Token::Null);
        assert_eq!(Value::from_tokens(&tokens), Err(ValueError::TooDeep));
        let mut ok = vec![Token::List(1); MAX_VALUE_DEPTH];
        ok.push(Token::Null);
        assert!(Value::from_tokens(&ok).is_ok());
    }

    #[test]
    fn lying_counts_and_leftovers_are_refused() {
        assert_eq!(
            Value::from_tokens(&[Token::List(3), Token::Null]),
            Err(ValueError::Malformed)
        );
        assert_eq!(
            Value::from_tokens(&[Token::Null, Token::Null]),
            Err(ValueError::Malformed)
        );
        assert_eq!(
            Value::from_tokens(&[Token::Map(1), Token::Null, Token::Null]),
            Err(ValueError::Malformed)
        );
        assert_eq!(Value::from_tokens(&[]), Err(ValueError::Malformed));
    }
}

/// Builds a [`Value`] straight from any [`Reconcile`] type, without a document: the fast path
/// for leader records, which a probe leader may rewrite hundreds of times a second.
pub fn reconcile_to_value<T: Reconcile>(value: &T) -> Result<Value, BuildError> {
    build(value).map(|(v, _)| v)
}

/// `value` as Automerge holds it once reconciled into a new key of a map, for
/// `batch_create_object` to make it with the record in one splice of the columns: `None` when
/// building it fails or would lose what the document keeps (text, counters and timestamps are
/// built as strings and integers), and the caller then reconciles it into the document.
pub(crate) fn hydrate_new<T: Reconcile>(value: &T) -> Option<automerge::hydrate::Value> {
    let (built, lossy) = build(value).ok()?;
    (!lossy).then(|| built.into_hydrate())
}

/// `value` built without a document, and whether building it lost a kind the document keeps.
fn build<T: Reconcile>(value: &T) -> Result<(Value, bool), BuildError> {
    let mut out = Value::Null;
    let lossy = Cell::new(false);
    value.reconcile(Builder {
        slot: &mut out,
        lossy: &lossy,
    })?;
    Ok((out, lossy.get()))
}

impl Value {
    /// This value as Automerge's hydrated form (its depth is bounded where it was built).
    fn into_hydrate(self) -> automerge::hydrate::Value {
        use automerge::ScalarValue as S;
        use automerge::hydrate;
        match self {
            Self::Null => S::Null.into(),
            Self::Bool(b) => S::Boolean(b).into(),
            Self::Int(n) => S::Int(n).into(),
            Self::Uint(n) => S::Uint(n).into(),
            Self::F64(x) => S::F64(x).into(),
            Self::Str(s) => S::Str(s.into()).into(),
            Self::Bytes(b) => S::Bytes(b).into(),
            Self::List(items) => items
                .into_iter()
                .map(Self::into_hydrate)
                .collect::<Vec<_>>()
                .into(),
            Self::Map(map) => hydrate::Map::from(
                map.into_iter()
                    .map(|(k, v)| (k, v.into_hydrate()))
                    .collect::<std::collections::HashMap<String, _>>(),
            )
            .into(),
        }
    }
}

/// A value that [`reconcile_to_value`] could not build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Autosurgeon reported stale heads (cannot happen without a document; kept for the trait).
    #[error(transparent)]
    Stale(#[from] autosurgeon::reconcile::StaleHeads),
    /// A list index out of range.
    #[error("list index {0} out of range")]
    Index(usize),
    /// Nested deeper than [`MAX_VALUE_DEPTH`].
    #[error("value nested deeper than {MAX_VALUE_DEPTH} levels")]
    TooDeep,
}

struct Builder<'a> {
    slot: &'a mut Value,
    /// Set once the value built lost a kind the document would keep (text, counter,
    /// timestamp).
    lossy: &'a Cell<bool>,
}

type NoEntries<'a> = std::iter::Empty<(std::borrow::Cow<'a, str>, automerge::ValueRef<'a>)>;

fn build_into<R: Reconcile>(
    slot: &mut Value,
    lossy: &Cell<bool>,
    value: R,
) -> Result<(), BuildError> {
    let _guard = DepthGuard::enter().map_err(|_| BuildError::TooDeep)?;
    value.reconcile(Builder { slot, lossy })
}

impl Reconciler for Builder<'_> {
    type Error = BuildError;
    type Map<'b>
        = MapBuilder<'b>
    where
        Self: 'b;
    type Seq<'b>
        = SeqBuilder<'b>
    where
        Self: 'b;
    type Text<'b>
        = TextBuilder<'b>
    where
        Self: 'b;
    type Counter<'b>
        = CounterBuilder<'b>
    where
        Self: 'b;

    fn none(&mut self) -> Result<(), Self::Error> {
        *self.slot = Value::Null;
        Ok(())
    }
    fn bytes<B: AsRef<[u8]>>(&mut self, value: B) -> Result<(), Self::Error> {
        *self.slot = Value::Bytes(value.as_ref().to_vec());
        Ok(())
    }
    fn timestamp(&mut self, value: i64) -> Result<(), Self::Error> {
        self.lossy.set(true);
        *self.slot = Value::Int(value);
        Ok(())
    }
    fn boolean(&mut self, value: bool) -> Result<(), Self::Error> {
        *self.slot = Value::Bool(value);
        Ok(())
    }
    fn str<S: AsRef<str>>(&mut self, value: S) -> Result<(), Self::Error> {
        *self.slot = Value::Str(value.as_ref().to_owned());
        Ok(())
    }
    fn u64(&mut self, value: u64) -> Result<(), Self::Error> {
        *self.slot = Value::Uint(value);
        Ok(())
    }
    fn i64(&mut self, value: i64) -> Result<(), Self::Error> {
        *self.slot = Value::Int(value);
        Ok(())
    }
    fn f64(&mut self, value: f64) -> Result<(), Self::Error> {
        *self.slot = Value::F64(value);
        Ok(())
    }
    fn map(&mut self) -> Result<Self::Map<'_>, Self::Error> {
        if !matches!(self.slot, Value::Map(_)) {
            *self.slot = Value::Map(BTreeMap::new());
        }
        match self.slot {
            Value::Map(map) => Ok(MapBuilder {
                map,
                lossy: self.lossy,
            }),
            _ => unreachable!("just made a map"),
        }
    }
    fn seq(&mut self) -> Result<Self::Seq<'_>, Self::Error> {
        if !matches!(self.slot, Value::List(_)) {
            *self.slot = Value::List(Vec::new());
        }
        match self.slot {
            Value::List(items) => Ok(SeqBuilder {
                items,
                lossy: self.lossy,
            }),
            _ => unreachable!("just made a list"),
        }
    }
    fn text(&mut self) -> Result<Self::Text<'_>, Self::Error> {
        self.lossy.set(true);
        if !matches!(self.slot, Value::Str(_)) {
            *self.slot = Value::Str(String::new());
        }
        match self.slot {
            Value::Str(text) => Ok(TextBuilder { text }),
            _ => unreachable!("just made a string"),
        }
    }
    fn counter(&mut self) -> Result<Self::Counter<'_>, Self::Error> {
        self.lossy.set(true);
        if !matches!(self.slot, Value::Int(_)) {
            *self.slot = Value::Int(0);
        }
        match self.slot {
            Value::Int(n) => Ok(CounterBuilder { n }),
            _ => unreachable!("just made an integer"),
        }
    }
    fn heads(&self) -> &[automerge::ChangeHash] {
        &[]
    }
}

struct MapBuilder<'a> {
    map: &'a mut BTreeMap<String, Value>,
    lossy: &'a Cell<bool>,
}

impl MapReconciler for MapBuilder<'_> {
    type Error = BuildError;
    type EntriesIter<'b>
        = NoEntries<'b>
    where
        Self: 'b;

    fn entries(&self) -> Self::EntriesIter<'_> {
        std::iter::empty()
    }
    fn entry<P: AsRef<str>>(&self, _prop: P) -> Option<automerge::Value<'_>> {
        None
    }
    fn put<R: Reconcile, P: AsRef<str>>(&mut self, prop: P, value: R) -> Result<(), Self::Error> {
        let slot = self
            .map
            .entry(prop.as_ref().to_owned())
            .or_insert(Value::Null);
        build_into(slot, self.lossy, value)
    }
    fn delete<P: AsRef<str>>(&mut self, prop: P) -> Result<(), Self::Error> {
        self.map.remove(prop.as_ref());
        Ok(())
    }
    fn hydrate_entry_key<'b, R: Reconcile, P: AsRef<str>>(
        &self,
        _prop: P,
    ) -> Result<autosurgeon::reconcile::LoadKey<R::Key<'b>>, Self::Error> {
        Ok(autosurgeon::reconcile::LoadKey::KeyNotFound)
    }
}

struct SeqBuilder<'a> {
    items: &'a mut Vec<Value>,
    lossy: &'a Cell<bool>,
}

impl SeqReconciler for SeqBuilder<'_> {
    type Error = BuildError;
    type ItemIter<'b>
        = std::iter::Empty<automerge::ValueRef<'b>>
    where
        Self: 'b;

    fn items(&self) -> Self::ItemIter<'_> {
        std::iter::empty()
    }
    fn get(&self, _index: usize) -> Result<Option<automerge::Value<'_>>, Self::Error> {
        Ok(None)
    }
    fn hydrate_item_key<'b, R: Reconcile>(
        &self,
        _index: usize,
    ) -> Result<autosurgeon::reconcile::LoadKey<R::Key<'b>>, Self::Error> {
        Ok(autosurgeon::reconcile::LoadKey::KeyNotFound)
    }
    fn insert<R: Reconcile>(&mut self, index: usize, value: R) -> Result<(), Self::Error> {
        if index > self.items.len() {
            return Err(BuildError::Index(index));
        }
        let mut v = Value::Null;
        build_into(&mut v, self.lossy, value)?;
        self.items.insert(index, v);
        Ok(())
    }
    fn set<R: Reconcile>(&mut self, index: usize, value: R) -> Result<(), Self::Error> {
        let slot = self.items.get_mut(index).ok_or(BuildError::Index(index))?;
        build_into(slot, self.lossy, value)
    }
    fn delete(&mut self, index: usize) -> Result<(), Self::Error> {
        if index >= self.items.len() {
            return Err(BuildError::Index(index));
        }
        self.items.remove(index);
        Ok(())
    }
    fn len(&self) -> Result<usize, Self::Error> {
        Ok(self.items.len())
    }
}

struct TextBuilder<'a> {
    text: &'a mut String,
}

impl autosurgeon::reconcile::TextReconciler for TextBuilder<'_> {
    type Error = BuildError;

    fn splice<S: AsRef<str>>(
        &mut self,
        pos: usize,
        delete: isize,
        insert: S,
    ) -> Result<(), Self::Error> {
        let chars: Vec<char> = self.text.chars().collect();
        let pos = pos.min(chars.len());
        let end = (pos + delete.max(0) as usize).min(chars.len());
        let mut out: String = chars[..pos].iter().collect();
        out.push_str(insert.as_ref());
        out.extend(&chars[end..]);
        *self.text = out;
        Ok(())
    }
    fn heads(&self) -> &[automerge::ChangeHash] {
        &[]
    }
    fn update<S: AsRef<str>>(&mut self, new_text: S) -> Result<(), Self::Error> {
        *self.text = new_text.as_ref().to_owned();
        Ok(())
    }
}

struct CounterBuilder<'a> {
    n: &'a mut i64,
}

impl autosurgeon::reconcile::CounterReconciler for CounterBuilder<'_> {
    type Error = BuildError;

    fn increment(&mut self, by: i64) -> Result<(), Self::Error> {
        *self.n = self.n.saturating_add(by);
        Ok(())
    }
    fn set(&mut self, value: i64) -> Result<(), Self::Error> {
        *self.n = value;
        Ok(())
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;

    #[derive(Reconcile, Hydrate, Debug, PartialEq, Clone)]
    struct Probe {
        status: String,
        latency_ms: Option<f64>,
        checked_at: i64,
        tags: Vec<String>,
    }

    #[test]
    fn direct_build_matches_a_document_round_trip() {
        let p = Probe {
            status: "up".into(),
            latency_ms: Some(1.5),
            checked_at: 7,
            tags: vec!["a".into(), "b".into()],
        };
        let direct = reconcile_to_value(&p).expect("builds");
        let mut doc = automerge::AutoCommit::new();
        autosurgeon::reconcile_prop(&mut doc, automerge::ROOT, "v", &p).expect("reconciles");
        let via_doc: Value =
            autosurgeon::hydrate_prop(&doc, automerge::ROOT, "v").expect("hydrates");
        assert_eq!(direct, via_doc);
        let mut doc = automerge::AutoCommit::new();
        autosurgeon::reconcile_prop(&mut doc, automerge::ROOT, "v", &direct).expect("reconciles");
        let back: Probe = autosurgeon::hydrate_prop(&doc, automerge::ROOT, "v").expect("hydrates");
        assert_eq!(back, p);
    }
}
