//! A JSON Schema (2020-12) compiled into a small tree of checks, once, that says whether a document
//! is valid without building it: the document is read through [`View`], which a `serde_json::Value`
//! implements and so does a record seen as its document ([`RecordDocument`]: envelope, body and the
//! typed readings as `measurements`, exactly what [`crate::document::Document`] writes).
//!
//! Only the verdict comes from here. A record this validator rejects is checked again by
//! `jsonschema` on the built document, which gives the errors (and is trusted over this one); a
//! record it accepts is never built. So this validator must never accept what `jsonschema`
//! rejects, and it gives up (no fast validator) on any schema it does not understand completely.
//!
//! Supported, with the semantics of the `jsonschema` crate as the stage configures it (2020-12,
//! `format` an annotation, patterns matched by `regex`): `type` (`integer`: a number with a zero
//! fraction), `const`, `enum` (numbers compare by value: 1 == 1.0), `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength` (code points), `pattern`,
//! `properties`, `required`, `additionalProperties`, `patternProperties`, `dependentRequired`,
//! `dependentSchemas`, `items`, `prefixItems`, `minItems`, `maxItems`, `allOf`, `anyOf`, `oneOf`,
//! `not`, `if`/`then`/`else`, `$ref` to `#` or a JSON pointer in the same document (`#/$defs/...`),
//! boolean schemas, and the annotations `$schema`, `$id` (top level only), `$comment`, `title`,
//! `description`, `examples`, `default`, `deprecated`, `readOnly`, `writeOnly`, `format`.
//!
//! Anything else anywhere in the schema (`unevaluatedProperties`, `$dynamicRef`, `$anchor`, a remote
//! `$ref`, an unknown keyword, another draft, a pattern with an ECMA escape the crate would
//! translate, such as `\d`) means no fast validator: [`FastValidator::compile`] returns `None`.
//!
//! Of the published schemas (`schemas/`), these get a fast validator: efento-measurements,
//! efento-device-info, enocean-telemetry, enocean-signal, enocean-event, enocean-stats and
//! dead-letter; efento-config does not (it uses `unevaluatedProperties`). The test
//! `published_schemas_that_get_a_fast_validator` in tests/schemas.rs pins this list.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::record::{Reading, ReadingValue, Record, shows_readings};

/// The JSON type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// A JSON number as a check sees it: an integer (any `u64` or `i64`) or a finite float.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(n: &serde_json::Number) -> Option<Num> {
        if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else {
            n.as_f64().map(Num::Float)
        }
    }

    /// A number with no fractional part, as `jsonschema` decides `type: integer` in 2020-12.
    fn is_integer(self) -> bool {
        match self {
            Num::Int(_) => true,
            Num::Float(f) => f.fract() == 0.0,
        }
    }

    /// Exact comparison (no rounding of big integers to floats).
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Num::Int(a), Num::Float(b)) => int_cmp_float(a, b),
            (Num::Float(a), Num::Int(b)) => int_cmp_float(b, a).reverse(),
        }
    }
}

/// `i` against `f` exactly: rounding `i` to a float is monotonic, so a strict order survives it;
/// when they round equal, `f` is a whole number and the integers decide.
fn int_cmp_float(i: i128, f: f64) -> Ordering {
    #[allow(clippy::cast_precision_loss)]
    let rounded = i as f64;
    match rounded.partial_cmp(&f) {
        Some(Ordering::Equal) => {
            #[allow(clippy::cast_possible_truncation)]
            let whole = f as i128;
            i.cmp(&whole)
        }
        Some(order) => order,
        None => Ordering::Equal,
    }
}

/// A read-only view of a JSON value: what a check needs, and nothing that would make a document.
/// Objects may answer `get` by comparing names (no hashing); [`View::entries`] visits every entry
/// in document order and stops when the visitor returns false.
pub trait View: Copy {
    fn json_type(&self) -> JsonType;
    fn as_bool(&self) -> Option<bool>;
    fn as_number(&self) -> Option<Num>;
    fn as_str(&self) -> Option<&str>;
    /// Items of an array or entries of an object; 0 otherwise.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The item at `index` of an array.
    fn item(&self, index: usize) -> Option<Self>;
    /// The value of an object's field.
    fn get(&self, key: &str) -> Option<Self>;
    /// Calls `visit` with every entry of an object until it returns false; returns false then.
    fn entries(&self, visit: impl FnMut(&str, Self) -> bool) -> bool;
}

/// Objects up to this size are searched by comparing names rather than by hashing.
const SCAN_LIMIT: usize = 16;

fn find<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_LIMIT {
        map.iter().find(|(k, _)| same(k, key)).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

impl View for &Value {
    fn json_type(&self) -> JsonType {
        match self {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Bool,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        Value::as_bool(self)
    }
    fn as_number(&self) -> Option<Num> {
        match self {
            Value::Number(n) => Num::of(n),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn len(&self) -> usize {
        match self {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        }
    }
    fn item(&self, index: usize) -> Option<Self> {
        match self {
            Value::Array(items) => items.get(index),
            _ => None,
        }
    }
    fn get(&self, key: &str) -> Option<Self> {
        match self {
            Value::Object(map) => find(map, key),
            _ => None,
        }
    }
    fn entries(&self, mut visit: impl FnMut(&str, Self) -> bool) -> bool {
        match self {
            Value::Object(map) => map.iter().all(|(k, v)| visit(k, v)),
            _ => true,
        }
    }
}

/// A record seen as its document, without building it: see [`crate::document`] for the shape and
/// the rule that a body field wins over an envelope field of the same name.
pub struct RecordDocument<'a> {
    record: &'a Record,
    received_at: &'a str,
    source: bool,
    kind: bool,
    device: bool,
    time: bool,
    readings: bool,
}

impl<'a> RecordDocument<'a> {
    /// `received_at` is the record's time as [`crate::record::write_rfc3339`] writes it (the
    /// caller keeps the buffer, so a check allocates nothing).
    pub fn new(record: &'a Record, received_at: &'a str) -> Self {
        let body = &record.body;
        let (mut source, mut kind, mut device, mut time) = (true, true, true, true);
        let mut readings = true;
        if body.len() <= SCAN_LIMIT {
            for name in body.keys() {
                match name.as_str() {
                    "source" => source = false,
                    "kind" => kind = false,
                    "device" => device = false,
                    "received_at" => time = false,
                    crate::record::READINGS_FIELD => readings = false,
                    _ => {}
                }
            }
            // As `shows_readings` decides, without hashing the name.
            readings &=
                !record.readings.is_empty() || record.kind == crate::record::Kind::Measurements;
        } else {
            source = !body.contains_key("source");
            kind = !body.contains_key("kind");
            device = !body.contains_key("device");
            time = !body.contains_key("received_at");
            readings = shows_readings(record.kind, body, &record.readings);
        }
        RecordDocument {
            record,
            received_at,
            source,
            kind,
            device: device && record.device.is_some(),
            time,
            readings,
        }
    }

    /// The document's root.
    pub fn view(&self) -> RecordView<'_> {
        RecordView::Document(self)
    }
}

/// A node of a record's document: see [`RecordDocument`].
#[derive(Clone, Copy)]
pub enum RecordView<'a> {
    Document(&'a RecordDocument<'a>),
    Json(&'a Value),
    Text(&'a str),
    Int(i64),
    /// A finite float (a float JSON cannot hold is written as null, as `serde_json` does).
    Float(f64),
    Null,
    Readings(&'a [Reading]),
    Reading(&'a Reading),
}

impl<'a> RecordView<'a> {
    fn of_value(value: &'a ReadingValue) -> Self {
        match value {
            ReadingValue::Null => RecordView::Null,
            ReadingValue::Int(v) => RecordView::Int(*v),
            ReadingValue::Float(v) if v.is_finite() => RecordView::Float(*v),
            ReadingValue::Float(_) => RecordView::Null,
            ReadingValue::Text(t) => RecordView::Text(t),
        }
    }

    /// A reading's field, as [`Reading::to_json`] writes it.
    fn reading_field(r: &'a Reading, key: &str) -> Option<Self> {
        let int = |v: Option<i64>| v.map(RecordView::Int);
        match key {
            "channel" => r.channel.map(|c| RecordView::Int(i64::from(c))),
            "type" => Some(RecordView::Text(&r.key)),
            "ts" => Some(RecordView::Int(r.ts)),
            "value" => Some(RecordView::of_value(&r.value)),
            "unit" => Some(r.unit.as_deref().map_or(RecordView::Null, RecordView::Text)),
            "raw" => int(r.raw),
            "meta" => int(r.meta),
            "error_code" => int(r.error_code),
            "type_code" => int(r.type_code),
            _ => None,
        }
    }
}

/// The fields of a reading in the order [`Reading::to_json`] writes them.
const READING_FIELDS: [&str; 9] = [
    "channel",
    "type",
    "ts",
    "value",
    "unit",
    "raw",
    "meta",
    "error_code",
    "type_code",
];

impl<'a> View for RecordView<'a> {
    fn json_type(&self) -> JsonType {
        match self {
            RecordView::Document(_) | RecordView::Reading(_) => JsonType::Object,
            RecordView::Json(v) => v.json_type(),
            RecordView::Text(_) => JsonType::String,
            RecordView::Int(_) | RecordView::Float(_) => JsonType::Number,
            RecordView::Null => JsonType::Null,
            RecordView::Readings(_) => JsonType::Array,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            RecordView::Json(v) => v.as_bool(),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<Num> {
        match self {
            RecordView::Json(v) => View::as_number(v),
            RecordView::Int(i) => Some(Num::Int(i128::from(*i))),
            RecordView::Float(f) => Some(Num::Float(*f)),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            RecordView::Json(v) => v.as_str(),
            RecordView::Text(t) => Some(t),
            _ => None,
        }
    }
    fn len(&self) -> usize {
        match self {
            RecordView::Document(d) => {
                d.record.body.len()
                    + [d.source, d.kind, d.device, d.time, d.readings]
                        .into_iter()
                        .filter(|&on| on)
                        .count()
            }
            RecordView::Json(v) => View::len(v),
            RecordView::Readings(r) => r.len(),
            RecordView::Reading(r) => {
                4 + usize::from(r.channel.is_some())
                    + [r.raw, r.meta, r.error_code, r.type_code]
                        .iter()
                        .flatten()
                        .count()
            }
            _ => 0,
        }
    }
    fn item(&self, index: usize) -> Option<Self> {
        match self {
            RecordView::Json(v) => View::item(v, index).map(RecordView::Json),
            RecordView::Readings(r) => r.get(index).map(RecordView::Reading),
            _ => None,
        }
    }
    fn get(&self, key: &str) -> Option<Self> {
        match self {
            RecordView::Document(d) => {
                if let Some(v) = find(&d.record.body, key) {
                    return Some(RecordView::Json(v));
                }
                let record = d.record;
                match key {
                    "source" if d.source => Some(RecordView::Text(&record.source)),
                    "kind" if d.kind => Some(RecordView::Text(record.kind.as_str())),
                    "device" if d.device => record.device.as_deref().map(RecordView::Text),
                    "received_at" if d.time => Some(RecordView::Text(d.received_at)),
                    crate::record::READINGS_FIELD if d.readings => {
                        Some(RecordView::Readings(&record.readings))
                    }
                    _ => None,
                }
            }
            RecordView::Json(v) => View::get(v, key).map(RecordView::Json),
            RecordView::Reading(r) => RecordView::reading_field(r, key),
            _ => None,
        }
    }
    fn entries(&self, mut visit: impl FnMut(&str, Self) -> bool) -> bool {
        match self {
            RecordView::Document(d) => {
                let record = d.record;
                if d.source && !visit("source", RecordView::Text(&record.source)) {
                    return false;
                }
                if d.kind && !visit("kind", RecordView::Text(record.kind.as_str())) {
                    return false;
                }
                if d.device
                    && let Some(device) = &record.device
                    && !visit("device", RecordView::Text(device))
                {
                    return false;
                }
                if d.time && !visit("received_at", RecordView::Text(d.received_at)) {
                    return false;
                }
                if !record
                    .body
                    .iter()
                    .all(|(k, v)| visit(k, RecordView::Json(v)))
                {
                    return false;
                }
                !d.readings
                    || visit(
                        crate::record::READINGS_FIELD,
                        RecordView::Readings(&record.readings),
                    )
            }
            RecordView::Json(v) => v.entries(|k, v| visit(k, RecordView::Json(v))),
            RecordView::Reading(r) => {
                let int = |v: Option<i64>| v.map(RecordView::Int);
                let fields = [
                    r.channel.map(|c| RecordView::Int(i64::from(c))),
                    Some(RecordView::Text(&r.key)),
                    Some(RecordView::Int(r.ts)),
                    Some(RecordView::of_value(&r.value)),
                    Some(r.unit.as_deref().map_or(RecordView::Null, RecordView::Text)),
                    int(r.raw),
                    int(r.meta),
                    int(r.error_code),
                    int(r.type_code),
                ];
                READING_FIELDS
                    .iter()
                    .zip(fields)
                    .all(|(name, field)| field.is_none_or(|v| visit(name, v)))
            }
            _ => true,
        }
    }
}

/// Walks a view into the `serde_json::Value` it shows (tests compare it with the real document).
pub fn to_value<V: View>(v: V) -> Value {
    match v.json_type() {
        JsonType::Null => Value::Null,
        JsonType::Bool => Value::Bool(v.as_bool().unwrap_or_default()),
        JsonType::Number => match v.as_number() {
            Some(Num::Int(i)) => u64::try_from(i)
                .map(Value::from)
                .or_else(|_| i64::try_from(i).map(Value::from))
                .unwrap_or(Value::Null),
            Some(Num::Float(f)) => Value::from(f),
            None => Value::Null,
        },
        JsonType::String => Value::String(v.as_str().unwrap_or_default().to_string()),
        JsonType::Array => Value::Array(
            (0..v.len())
                .filter_map(|i| v.item(i))
                .map(to_value)
                .collect(),
        ),
        JsonType::Object => {
            let mut map = Map::new();
            v.entries(|k, item| {
                map.insert(k.to_string(), to_value(item));
                true
            });
            Value::Object(map)
        }
    }
}

/// JSON equality as `jsonschema` has it for `const` and `enum`: numbers by value, objects in any
/// order.
fn equals<V: View>(v: V, expected: &Value) -> bool {
    match expected {
        Value::Null => v.json_type() == JsonType::Null,
        Value::Bool(b) => v.as_bool() == Some(*b),
        Value::Number(n) => match (v.as_number(), Num::of(n)) {
            (Some(a), Some(b)) => a.cmp(b) == Ordering::Equal,
            _ => false,
        },
        Value::String(s) => v.as_str().is_some_and(|t| same(t, s)),
        Value::Array(items) => {
            v.json_type() == JsonType::Array
                && v.len() == items.len()
                && items
                    .iter()
                    .enumerate()
                    .all(|(i, e)| v.item(i).is_some_and(|item| equals(item, e)))
        }
        Value::Object(map) => {
            v.json_type() == JsonType::Object
                && v.len() == map.len()
                && map
                    .iter()
                    .all(|(k, e)| v.get(k).is_some_and(|item| equals(item, e)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled schema.

/// Bits of a `type` keyword.
const NULL: u8 = 1;
const BOOL: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const ARRAY: u8 = 32;
const OBJECT: u8 = 64;

/// Every `type` bit: a schema without `type`.
const ANY: u8 = 127;

enum Node {
    /// `true` or `false`.
    Bool(bool),
    /// A schema: the types it allows (its `type`), and the other checks, which all must hold.
    Checks { types: u8, checks: Vec<Check> },
}

enum Check {
    Const(Value),
    Enum(Vec<Value>),
    /// An `enum` of strings only, sorted: a value that is not a string matches none.
    EnumText(Vec<Box<str>>),
    /// (limit, the orderings that pass): minimum = [Greater, Equal], exclusiveMaximum = [Less].
    Bound(Num, [Option<Ordering>; 2]),
    MinLength(u64),
    MaxLength(u64),
    Pattern(regex::Regex),
    MinItems(u64),
    MaxItems(u64),
    Items {
        prefix: Vec<usize>,
        rest: Option<usize>,
    },
    Object(Box<ObjectCheck>),
    AllOf(Vec<usize>),
    AnyOf(Vec<usize>),
    OneOf(Vec<usize>),
    Not(usize),
    If {
        condition: usize,
        then: Option<usize>,
        otherwise: Option<usize>,
    },
    Ref(usize),
}

/// `properties`, `required`, `patternProperties`, `additionalProperties`, `dependentRequired`
/// and `dependentSchemas` of one schema, checked in one pass over the object's entries.
#[derive(Default)]
struct ObjectCheck {
    /// Every name `properties` or `required` mentions (at most 64), its schema if `properties`
    /// gives one, and whether `properties` names it (`additionalProperties` skips those).
    names: Vec<(Box<str>, Option<usize>, bool)>,
    /// Bits of `names` that `required` lists.
    required: u64,
    patterns: Vec<(regex::Regex, usize)>,
    additional: Option<usize>,
    dependent_required: Vec<(Box<str>, Vec<Box<str>>)>,
    dependent_schemas: Vec<(Box<str>, usize)>,
    /// Visit every entry (needed for patterns and additionalProperties, or when there are many
    /// names); otherwise look up each name.
    walk: bool,
}

/// A schema compiled for verdicts only (see the module docs).
pub struct FastValidator {
    nodes: Vec<Node>,
}

const KEYWORDS: &[&str] = &[
    "type",
    "const",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "dependentRequired",
    "dependentSchemas",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "$ref",
    "$defs",
    // Annotations.
    "$schema",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "format",
];

const DRAFT_2020_12: [&str; 4] = [
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2020-12/schema#",
    "http://json-schema.org/draft/2020-12/schema",
    "http://json-schema.org/draft/2020-12/schema#",
];

/// Whether every keyword of `schema` and of its subschemas is one this module implements.
fn understood(schema: &Value, top: bool) -> bool {
    let map = match schema {
        Value::Bool(_) => return true,
        Value::Object(map) => map,
        _ => return false,
    };
    let sub_map = |v: &Value| match v {
        Value::Object(m) => m.values().all(|s| understood(s, false)),
        _ => false,
    };
    let sub_list = |v: &Value| match v {
        Value::Array(items) => items.iter().all(|s| understood(s, false)),
        _ => false,
    };
    map.iter().all(|(keyword, value)| match keyword.as_str() {
        "$id" => top,
        "$schema" => value.as_str().is_some_and(|s| DRAFT_2020_12.contains(&s)),
        "properties" | "patternProperties" | "dependentSchemas" | "$defs" => sub_map(value),
        "allOf" | "anyOf" | "oneOf" | "prefixItems" => sub_list(value),
        "additionalProperties" | "items" | "not" | "if" | "then" | "else" => {
            understood(value, false)
        }
        other => KEYWORDS.contains(&other),
    })
}

/// Whether `regex` gives the same matches as `jsonschema` would after its translation of ECMA 262
/// syntax: no escape other than an escaped punctuation character (`\d`, `\w`, `\s`, `\b`, `\p`,
/// `\u`, `\c`, back-references ... are translated or differ), no class set operators (`&&`, `--`,
/// `~~`) and no `[` inside a class.
fn plain_pattern(pattern: &str) -> bool {
    if pattern.contains("&&") || pattern.contains("--") || pattern.contains("~~") {
        return false;
    }
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => {}
                _ => return false,
            },
            '[' if in_class => return false,
            '[' => in_class = true,
            ']' => in_class = false,
            _ => {}
        }
    }
    true
}

fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Num::of(n),
        _ => None,
    }
}

/// A size keyword (`minLength`, ...): a non-negative integer, possibly written as a float.
fn size(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = f as u64;
                n
            })
    })
}

struct Compiler<'s> {
    root: &'s Value,
    nodes: Vec<Node>,
    refs: HashMap<&'s str, usize>,
}

impl<'s> Compiler<'s> {
    fn subschema(&mut self, schema: &'s Value) -> Option<usize> {
        let index = self.nodes.len();
        self.nodes.push(Node::Bool(true));
        let node = self.node(schema)?;
        // A schema that is only a `$ref` is its target: one call less per check.
        let alias = match &node {
            Node::Checks { types: ANY, checks } => match checks.as_slice() {
                [Check::Ref(target)] => Some(*target),
                _ => None,
            },
            _ => None,
        };
        self.nodes[index] = node;
        Some(alias.unwrap_or(index))
    }

    fn subschemas(&mut self, list: &'s Value) -> Option<Vec<usize>> {
        list.as_array()?.iter().map(|s| self.subschema(s)).collect()
    }

    fn reference(&mut self, target: &'s str) -> Option<usize> {
        if let Some(&index) = self.refs.get(target) {
            return Some(index);
        }
        let pointer = target.strip_prefix('#')?;
        if pointer.contains('%') {
            return None;
        }
        let schema = self.root.pointer(pointer)?;
        let index = self.nodes.len();
        self.nodes.push(Node::Bool(true));
        // Registered before compiling, so that a schema that refers to itself ends.
        self.refs.insert(target, index);
        let node = self.node(schema)?;
        self.nodes[index] = node;
        Some(index)
    }

    fn node(&mut self, schema: &'s Value) -> Option<Node> {
        let map = match schema {
            Value::Bool(b) => return Some(Node::Bool(*b)),
            Value::Object(map) => map,
            _ => return None,
        };
        let mut checks = Vec::new();
        let mut types = ANY;
        let mut object = ObjectCheck::default();
        let mut has_object = false;
        let mut prefix = None;
        let mut rest = None;
        for (keyword, value) in map {
            match keyword.as_str() {
                "type" => {
                    let bit = |name: &str| match name {
                        "null" => Some(NULL),
                        "boolean" => Some(BOOL),
                        "integer" => Some(INTEGER),
                        "number" => Some(NUMBER),
                        "string" => Some(STRING),
                        "array" => Some(ARRAY),
                        "object" => Some(OBJECT),
                        _ => None,
                    };
                    let bits = match value {
                        Value::String(s) => bit(s)?,
                        Value::Array(names) => names
                            .iter()
                            .try_fold(0, |acc, n| Some(acc | bit(n.as_str()?)?))?,
                        _ => return None,
                    };
                    types = bits;
                }
                "const" => checks.push(Check::Const(value.clone())),
                "enum" => {
                    let options = value.as_array()?;
                    match options
                        .iter()
                        .map(|o| o.as_str().map(Box::<str>::from))
                        .collect::<Option<Vec<_>>>()
                    {
                        Some(mut texts) => {
                            texts.sort_unstable();
                            checks.push(Check::EnumText(texts));
                        }
                        None => checks.push(Check::Enum(options.clone())),
                    }
                }
                "minimum" => checks.push(Check::Bound(
                    number(value)?,
                    [Some(Ordering::Greater), Some(Ordering::Equal)],
                )),
                "maximum" => checks.push(Check::Bound(
                    number(value)?,
                    [Some(Ordering::Less), Some(Ordering::Equal)],
                )),
                "exclusiveMinimum" => checks.push(Check::Bound(
                    number(value)?,
                    [Some(Ordering::Greater), None],
                )),
                "exclusiveMaximum" => {
                    checks.push(Check::Bound(number(value)?, [Some(Ordering::Less), None]))
                }
                "minLength" => checks.push(Check::MinLength(size(value)?)),
                "maxLength" => checks.push(Check::MaxLength(size(value)?)),
                "pattern" => {
                    let pattern = value.as_str().filter(|p| plain_pattern(p))?;
                    checks.push(Check::Pattern(regex::Regex::new(pattern).ok()?));
                }
                "minItems" => checks.push(Check::MinItems(size(value)?)),
                "maxItems" => checks.push(Check::MaxItems(size(value)?)),
                "prefixItems" => prefix = Some(self.subschemas(value)?),
                "items" => rest = Some(self.subschema(value)?),
                "properties" => {
                    has_object = true;
                    for (name, sub) in value.as_object()? {
                        let sub = self.subschema(sub)?;
                        object.names.push((name.as_str().into(), Some(sub), true));
                    }
                }
                "required" => {
                    has_object = true;
                    for name in value.as_array()? {
                        let name = name.as_str()?;
                        object.names.push((name.into(), None, false));
                    }
                }
                "patternProperties" => {
                    has_object = true;
                    for (pattern, sub) in value.as_object()? {
                        if !plain_pattern(pattern) {
                            return None;
                        }
                        let regex = regex::Regex::new(pattern).ok()?;
                        let sub = self.subschema(sub)?;
                        object.patterns.push((regex, sub));
                    }
                }
                "additionalProperties" => {
                    has_object = true;
                    object.additional = Some(self.subschema(value)?);
                }
                "dependentRequired" => {
                    has_object = true;
                    for (name, names) in value.as_object()? {
                        let names = names
                            .as_array()?
                            .iter()
                            .map(|n| n.as_str().map(Box::from))
                            .collect::<Option<Vec<_>>>()?;
                        object
                            .dependent_required
                            .push((name.as_str().into(), names));
                    }
                }
                "dependentSchemas" => {
                    has_object = true;
                    for (name, sub) in value.as_object()? {
                        let sub = self.subschema(sub)?;
                        object.dependent_schemas.push((name.as_str().into(), sub));
                    }
                }
                "allOf" => checks.push(Check::AllOf(self.subschemas(value)?)),
                "anyOf" => checks.push(Check::AnyOf(self.subschemas(value)?)),
                "oneOf" => checks.push(Check::OneOf(self.subschemas(value)?)),
                "not" => checks.push(Check::Not(self.subschema(value)?)),
                "if" => {
                    let condition = self.subschema(value)?;
                    let then = match map.get("then") {
                        Some(s) => Some(self.subschema(s)?),
                        None => None,
                    };
                    let otherwise = match map.get("else") {
                        Some(s) => Some(self.subschema(s)?),
                        None => None,
                    };
                    checks.push(Check::If {
                        condition,
                        then,
                        otherwise,
                    });
                }
                "$ref" => {
                    let target = value.as_str()?;
                    checks.push(Check::Ref(self.reference(target)?));
                }
                // `then`/`else` without `if` do nothing; `$defs` are compiled when referred to.
                "then" | "else" | "$defs" => {}
                other if KEYWORDS.contains(&other) || other == "$id" => {}
                _ => return None,
            }
        }
        if prefix.is_some() || rest.is_some() {
            checks.push(Check::Items {
                prefix: prefix.unwrap_or_default(),
                rest,
            });
        }
        if has_object {
            // Merge the names: one entry per name, with its schema and both roles.
            let mut names: Vec<(Box<str>, Option<usize>, bool)> = Vec::new();
            let mut required = 0u64;
            let listed: Vec<Box<str>> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(|n| n.as_str().map(Box::from)).collect())
                .unwrap_or_default();
            for (name, sub, in_properties) in object.names.drain(..) {
                match names.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.1 = entry.1.or(sub);
                        entry.2 |= in_properties;
                    }
                    None => names.push((name, sub, in_properties)),
                }
            }
            if names.len() > 64 {
                return None;
            }
            for (i, (name, _, _)) in names.iter().enumerate() {
                if listed.contains(name) {
                    required |= 1 << i;
                }
            }
            object.names = names;
            object.required = required;
            object.walk = object.additional.is_some()
                || !object.patterns.is_empty()
                || object.names.len() > 4;
            checks.push(Check::Object(Box::new(object)));
        }
        Some(Node::Checks { types, checks })
    }
}

impl FastValidator {
    /// The fast validator of `schema`, or `None` when the schema uses anything this module does not
    /// implement exactly (see the module docs).
    pub fn compile(schema: &Value) -> Option<FastValidator> {
        if !understood(schema, true) {
            return None;
        }
        let mut compiler = Compiler {
            root: schema,
            nodes: Vec::new(),
            refs: HashMap::new(),
        };
        compiler.refs.insert("#", 0);
        compiler.subschema(schema)?;
        Some(FastValidator {
            nodes: compiler.nodes,
        })
    }

    /// Whether the document `v` shows is valid.
    /// A validator with an internal bug (it indexes past its nodes), for the stage's tests.
    #[cfg(test)]
    pub(crate) fn broken() -> FastValidator {
        FastValidator { nodes: Vec::new() }
    }

    pub fn is_valid<V: View>(&self, v: V) -> bool {
        self.valid(0, v)
    }

    /// Whether `record`'s document is valid (formats its time into a new string: the stage keeps
    /// a buffer and uses [`RecordDocument`] instead).
    pub fn is_valid_record(&self, record: &Record) -> bool {
        let received_at = crate::record::rfc3339(record.received_at);
        self.is_valid(RecordDocument::new(record, &received_at).view())
    }

    fn valid<V: View>(&self, node: usize, v: V) -> bool {
        match &self.nodes[node] {
            Node::Bool(b) => *b,
            Node::Checks { types, checks } => {
                (*types == ANY || type_allows(*types, v)) && checks.iter().all(|c| self.check(c, v))
            }
        }
    }

    #[inline]
    fn check<V: View>(&self, check: &Check, v: V) -> bool {
        match check {
            Check::AnyOf(list) => list.iter().any(|&s| self.valid(s, v)),
            Check::Ref(s) => self.valid(*s, v),
            Check::Object(object) => self.object(object, v),
            Check::AllOf(list) => list.iter().all(|&s| self.valid(s, v)),
            Check::Not(s) => !self.valid(*s, v),
            _ => self.leaf(check, v),
        }
    }

    /// The checks that do not recurse (and the rare ones), out of line to keep [`Self::valid`]
    /// small: it runs for every schema a document meets.
    #[inline(never)]
    fn leaf<V: View>(&self, check: &Check, v: V) -> bool {
        match check {
            Check::Const(expected) => equals(v, expected),
            Check::Enum(options) => options.iter().any(|o| equals(v, o)),
            Check::EnumText(texts) => v
                .as_str()
                .is_some_and(|s| texts.binary_search_by(|t| (**t).cmp(s)).is_ok()),
            Check::Bound(limit, passing) => match v.as_number() {
                Some(n) => passing.contains(&Some(n.cmp(*limit))),
                None => true,
            },
            Check::MinLength(min) => v.as_str().is_none_or(|s| chars(s) >= *min),
            Check::MaxLength(max) => v.as_str().is_none_or(|s| chars(s) <= *max),
            Check::Pattern(regex) => v.as_str().is_none_or(|s| regex.is_match(s)),
            Check::MinItems(min) => v.json_type() != JsonType::Array || v.len() as u64 >= *min,
            Check::MaxItems(max) => v.json_type() != JsonType::Array || v.len() as u64 <= *max,
            Check::Items { prefix, rest } => self.items(prefix, *rest, v),
            Check::OneOf(list) => {
                let mut passing = list.iter().filter(|&&s| self.valid(s, v));
                passing.next().is_some() && passing.next().is_none()
            }
            Check::If {
                condition,
                then,
                otherwise,
            } => {
                let branch = if self.valid(*condition, v) {
                    then
                } else {
                    otherwise
                };
                branch.is_none_or(|s| self.valid(s, v))
            }
            Check::AnyOf(list) => list.iter().any(|&s| self.valid(s, v)),
            Check::Ref(s) => self.valid(*s, v),
            Check::Object(object) => self.object(object, v),
            Check::AllOf(list) => list.iter().all(|&s| self.valid(s, v)),
            Check::Not(s) => !self.valid(*s, v),
        }
    }

    #[inline(never)]
    fn items<V: View>(&self, prefix: &[usize], rest: Option<usize>, v: V) -> bool {
        if v.json_type() != JsonType::Array {
            return true;
        }
        (0..v.len()).all(|i| {
            let schema = prefix.get(i).copied().or(rest);
            match (schema, v.item(i)) {
                (Some(s), Some(item)) => self.valid(s, item),
                _ => true,
            }
        })
    }

    #[inline(never)]
    fn object<V: View>(&self, o: &ObjectCheck, v: V) -> bool {
        if v.json_type() != JsonType::Object {
            return true;
        }
        let mut seen = 0u64;
        if o.walk {
            let mut cursor = 0;
            let entries_valid = v.entries(|key, value| {
                let mut named = false;
                if let Some(i) = lookup(&o.names, key, &mut cursor) {
                    seen |= 1 << i;
                    let (_, schema, in_properties) = &o.names[i];
                    named = *in_properties;
                    if let Some(s) = schema
                        && !self.valid(*s, value)
                    {
                        return false;
                    }
                }
                for (regex, s) in &o.patterns {
                    if regex.is_match(key) {
                        named = true;
                        if !self.valid(*s, value) {
                            return false;
                        }
                    }
                }
                match o.additional {
                    Some(s) if !named => self.valid(s, value),
                    _ => true,
                }
            });
            if !entries_valid {
                return false;
            }
        } else {
            for (i, (name, schema, _)) in o.names.iter().enumerate() {
                if let Some(value) = v.get(name) {
                    seen |= 1 << i;
                    if let Some(s) = schema
                        && !self.valid(*s, value)
                    {
                        return false;
                    }
                }
            }
        }
        if o.required & !seen != 0 {
            return false;
        }
        o.dependent_required
            .iter()
            .all(|(name, needs)| v.get(name).is_none() || needs.iter().all(|n| v.get(n).is_some()))
            && o.dependent_schemas
                .iter()
                .all(|(name, s)| v.get(name).is_none() || self.valid(*s, v))
    }
}

/// The index of `key` in `names`, searched from `cursor` on (wrapping around), which then points
/// past the name found: documents mostly list their fields in the order their schema names them,
/// so a walk over an object's entries finds each name at the first or second comparison.
fn lookup(
    names: &[(Box<str>, Option<usize>, bool)],
    key: &str,
    cursor: &mut usize,
) -> Option<usize> {
    if let Some((name, _, _)) = names.get(*cursor)
        && same(name, key)
    {
        *cursor += 1;
        return Some(*cursor - 1);
    }
    let start = (*cursor).min(names.len());
    let (before, after) = names.split_at(start);
    let found = after
        .iter()
        .position(|(n, _, _)| same(n, key))
        .map(|i| start + i)
        .or_else(|| before.iter().position(|(n, _, _)| same(n, key)))?;
    *cursor = found + 1;
    Some(found)
}

/// Whether `type` (as bits) allows what `v` is; `integer` is a number without a fractional part.
fn type_allows<V: View>(bits: u8, v: V) -> bool {
    let bit = match v.json_type() {
        JsonType::Null => NULL,
        JsonType::Bool => BOOL,
        JsonType::Number => {
            return bits & NUMBER != 0
                || bits & INTEGER != 0 && v.as_number().is_some_and(Num::is_integer);
        }
        JsonType::String => STRING,
        JsonType::Array => ARRAY,
        JsonType::Object => OBJECT,
    };
    bits & bit != 0
}

/// String equality without a call to `memcmp` (the names compared here are short): eight bytes at
/// a time.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut a8 = a.chunks_exact(8);
    let mut b8 = b.chunks_exact(8);
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    for (x, y) in a8.by_ref().zip(b8.by_ref()) {
        if word(x) != word(y) {
            return false;
        }
    }
    a8.remainder()
        .iter()
        .zip(b8.remainder())
        .all(|(x, y)| x == y)
}

/// Length in code points, as `minLength` and `maxLength` count.
fn chars(s: &str) -> u64 {
    if s.is_ascii() {
        s.len() as u64
    } else {
        s.chars().count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The crate's verdict, compiled the way the stage compiles a schema.
    fn crate_verdict(schema: &Value, instance: &Value) -> bool {
        jsonschema::options()
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(schema)
            .unwrap_or_else(|e| panic!("{schema}: {e}"))
            .is_valid(instance)
    }

    #[test]
    fn every_keyword_gives_the_verdict_of_jsonschema() {
        let instances = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(1.0),
            json!(1.5),
            json!(-1),
            json!(-0.0),
            json!(4_294_967_295_u64),
            json!(4_294_967_296_u64),
            json!(4_294_967_295.5),
            json!(9_007_199_254_740_993_u64),
            json!(9_007_199_254_740_992.0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(""),
            json!("a"),
            json!("héllo"),
            json!("\u{1F600}"),
            json!("ab"),
            json!("abc"),
            json!("0x1f"),
            json!("2025-01-15T10:01:02.250Z"),
            json!([]),
            json!([1]),
            json!([1, "a"]),
            json!([1, 2, 3]),
            json!(["a", 1, 1.0]),
            json!({}),
            json!({"a": 1}),
            json!({"a": 1.0, "b": "x"}),
            json!({"b": "x", "a": 1}),
            json!({"a": null, "c": true}),
            json!({"x1": 1, "x2": "s", "y": 2}),
            json!({"a": {"a": {"a": 1}}}),
        ];
        let schemas = [
            json!(true),
            json!(false),
            json!({}),
            json!({"type": "integer"}),
            json!({"type": "number"}),
            json!({"type": ["integer", "null"]}),
            json!({"type": ["string", "boolean"]}),
            json!({"type": "array"}),
            json!({"type": "object"}),
            json!({"const": 1}),
            json!({"const": 1.0}),
            json!({"const": null}),
            json!({"const": {"a": 1, "b": "x"}}),
            json!({"const": [1, "a"]}),
            json!({"enum": [1, "a", null, [1], {"a": 1}]}),
            json!({"enum": [false]}),
            json!({"minimum": 1}),
            json!({"minimum": 1.5}),
            json!({"maximum": 4_294_967_295_u64}),
            json!({"maximum": 9_007_199_254_740_992_u64}),
            // Floats against integers past 2^53, where rounding to a float would tie them.
            json!({"maximum": 9_007_199_254_740_992.0}),
            json!({"exclusiveMinimum": 9_007_199_254_740_992.0}),
            json!({"const": 9_007_199_254_740_992.0}),
            json!({"enum": [18_446_744_073_709_551_615.0]}),
            json!({"exclusiveMinimum": 0}),
            json!({"exclusiveMaximum": 1}),
            json!({"exclusiveMaximum": 1.0}),
            json!({"minimum": -1, "maximum": 0}),
            json!({"minLength": 2}),
            json!({"maxLength": 1}),
            json!({"maxLength": 1.0}),
            json!({"pattern": "^[0-9a-f]{2}$"}),
            json!({"pattern": "b"}),
            json!({"pattern": "^0x[0-9a-f]{1,2}$"}),
            json!({"pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\\.[0-9]{3}Z$"}),
            json!({"minItems": 1}),
            json!({"maxItems": 2}),
            json!({"items": {"type": "integer"}}),
            json!({"prefixItems": [{"type": "integer"}], "items": false}),
            json!({"prefixItems": [{"type": "integer"}, {"type": "string"}]}),
            json!({"properties": {"a": {"type": "integer"}}}),
            json!({"properties": {"a": {"type": "integer"}}, "required": ["a"]}),
            json!({"required": ["a", "b"]}),
            json!({"properties": {"a": true}, "additionalProperties": false}),
            json!({"properties": {"a": true}, "additionalProperties": {"type": "string"}}),
            json!({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": false}),
            json!({"patternProperties": {"^x": {"type": "integer"}}, "properties": {"x2": {"type": "string"}}}),
            json!({"dependentRequired": {"a": ["b"]}}),
            json!({"dependentSchemas": {"a": {"required": ["c"]}}}),
            json!({"allOf": [{"type": "number"}, {"minimum": 1}]}),
            json!({"anyOf": [{"type": "string"}, {"minimum": 1}]}),
            json!({"oneOf": [{"type": "number"}, {"type": "integer"}]}),
            json!({"not": {"type": "object"}}),
            json!({"if": {"type": "integer"}, "then": {"minimum": 1}, "else": {"type": "string"}}),
            json!({"if": {"required": ["a"]}, "then": {"required": ["b"]}}),
            json!({"then": false}),
            json!({"format": "date-time"}),
            json!({"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}),
            json!({"properties": {"a": {"$ref": "#"}}, "type": "object"}),
            json!({"$ref": "#/$defs/t", "$defs": {"t": {"type": ["object", "array"]}}, "minItems": 2}),
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "t", "description": "d", "$comment": "c", "examples": [1], "default": 1, "type": "integer"}),
        ];
        let mut cases = 0;
        for schema in &schemas {
            let fast = FastValidator::compile(schema)
                .unwrap_or_else(|| panic!("{schema}: no fast validator"));
            for instance in &instances {
                assert_eq!(
                    fast.is_valid(instance),
                    crate_verdict(schema, instance),
                    "{schema} on {instance}"
                );
                cases += 1;
            }
        }
        assert!(cases > 2000, "{cases}");
    }

    #[test]
    fn schemas_beyond_the_fast_validator_get_none() {
        for schema in [
            json!({"unevaluatedProperties": false}),
            json!({"properties": {"a": {"unevaluatedItems": false}}}),
            json!({"$defs": {"unused": {"contains": {}}}}),
            json!({"$dynamicRef": "#meta"}),
            json!({"$ref": "other.json#/$defs/a"}),
            json!({"$ref": "#anchor"}),
            json!({"$defs": {"a": {"$anchor": "anchor"}}}),
            json!({"properties": {"a": {"$id": "https://example.com/a"}}}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer"}),
            json!({"x-vendor": 1}),
            json!({"multipleOf": 2}),
            json!({"pattern": "^\\d+$"}),
            json!({"pattern": "^\\w$"}),
            json!({"pattern": "^(?!test-)[a-z-]+$"}),
            json!({"pattern": "^[a-z&&[^b]]$"}),
            json!({"patternProperties": {"^\\S+$": true}}),
            json!({"items": [{"type": "integer"}]}),
            json!({"type": "float"}),
        ] {
            assert!(FastValidator::compile(&schema).is_none(), "{schema}");
        }
    }
}
