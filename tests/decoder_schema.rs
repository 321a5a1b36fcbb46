//! The request decoders against the request schemas, as a property: for
//! generated bodies of every request kind, valid and nearly valid, the
//! service's decoder accepts exactly what the kind's schema in `schemas/`
//! accepts. The only way around that is a check JSON Schema cannot state
//! ([`Exception`]): a body that falls under one must be one the decoder
//! refuses.
//!
//! (A close also takes an empty body, which is not JSON and so no schema's
//! business; `schemas.rs` tests it. Nothing here generates one.)

use std::sync::LazyLock;

use allot::wire::{
    decode_bid, decode_close, decode_open, decode_raise, decode_result, decode_withdraw, ErrorCode,
    RequestError, MAX_AMOUNT, MAX_REQUEST_BYTES,
};
use chrono::NaiveDate;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;

use crate::common;

/// The auction every generated request's subject names.
const SUBJECT_AUCTION: &str = "a1";

/// A check the decoder makes that JSON Schema cannot state; each request
/// schema's description names the ones that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exception {
    /// A key given twice: a schema sees the parsed object, where one of
    /// the two is already gone.
    DuplicateKey,
    /// An integer written with a fraction or an exponent, or as `-0`
    /// (`1.0`, `1e2`, `-0`): to JSON Schema's `integer` these are `1`,
    /// `100` and `0`.
    IntegerSpelling,
    /// An `auction_id` in the body that is not the subject's: a schema
    /// does not see the subject.
    AuctionIdMustMatchSubject,
    /// A body over [`MAX_REQUEST_BYTES`]: a schema sees a value, not its
    /// size.
    RequestTooLarge,
    /// A `closes_at` that fits the pattern on a day its month does not
    /// have (2026-02-30): a pattern cannot know the calendar.
    DayMustExist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bid,
    Open,
    Withdraw,
    Raise,
    Close,
    Result,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Bid,
        Kind::Open,
        Kind::Withdraw,
        Kind::Raise,
        Kind::Close,
        Kind::Result,
    ];

    fn schema(self) -> &'static str {
        match self {
            Kind::Bid => "bid-request.schema.json",
            Kind::Open => "auction-open-request.schema.json",
            Kind::Withdraw => "withdraw-request.schema.json",
            Kind::Raise => "raise-request.schema.json",
            Kind::Close => "close-request.schema.json",
            Kind::Result => "result-request.schema.json",
        }
    }

    fn decode(self, body: &[u8]) -> Result<(), RequestError> {
        match self {
            Kind::Bid => decode_bid(body, SUBJECT_AUCTION).map(drop),
            Kind::Open => decode_open(body, SUBJECT_AUCTION).map(drop),
            Kind::Withdraw => decode_withdraw(body, SUBJECT_AUCTION).map(drop),
            Kind::Raise => decode_raise(body, SUBJECT_AUCTION).map(drop),
            Kind::Close => decode_close(body, SUBJECT_AUCTION),
            Kind::Result => decode_result(body, SUBJECT_AUCTION).map(drop),
        }
    }

    /// The kind's fields, each with the values to try for it.
    fn fields(self) -> Vec<(&'static str, Field)> {
        use Field::*;
        let mut fields = match self {
            Kind::Bid => vec![("bid_id", Id), ("bidder_id", Id), ("amount", Amount)],
            Kind::Open => vec![
                ("capacity", Count),
                ("min_amount", Amount),
                ("closes_at", Time),
                ("max_wins_per_bidder", Count),
                ("policy", Policy),
            ],
            Kind::Withdraw => vec![("bid_id", Id), ("bidder_id", Id)],
            Kind::Raise => vec![
                ("bid_id", Id),
                ("bidder_id", Id),
                ("amount", Amount),
                ("expected_amount", Amount),
            ],
            Kind::Close => vec![],
            Kind::Result => vec![("bid_id", Id)],
        };
        fields.push(("auction_id", AuctionId));
        fields
    }
}

/// What a field holds, for generating values near it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Id,
    AuctionId,
    /// 0 to 2^53-1.
    Amount,
    /// 1 to 2^32-1.
    Count,
    Time,
    Policy,
}

/// JSON as written: numbers keep their spelling and strings may be written
/// with `\u` escapes, which the schema side never sees.
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    String { text: String, escaped: bool },
    Array(Vec<Json>),
    Object(Vec<(Json, Json)>),
}

impl Json {
    fn str(text: impl Into<String>) -> Json {
        Json::String {
            text: text.into(),
            escaped: false,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String {
                text,
                escaped: false,
            } => out.push_str(&serde_json::to_string(text).unwrap()),
            Json::String {
                text,
                escaped: true,
            } => {
                out.push('"');
                for unit in text.encode_utf16() {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
                out.push('"');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    key.write(out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Json::String { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// One generated request: its kind, its body, and trailing white space
/// that brings the body to a given length (to cross the size limit).
#[derive(Clone, Debug)]
struct Case {
    kind: Kind,
    body: Json,
    pad_to: Option<usize>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut text = String::new();
        self.body.write(&mut text);
        if let Some(len) = self.pad_to {
            while text.len() < len {
                text.push(' ');
            }
        }
        text.into_bytes()
    }

    /// The top-level fields as written, keys unescaped, in order.
    fn entries(&self) -> Vec<(&str, &Json)> {
        match &self.body {
            Json::Object(entries) => entries
                .iter()
                .filter_map(|(k, v)| Some((k.text()?, v)))
                .collect(),
            _ => vec![],
        }
    }

    /// The checks JSON Schema cannot state that this case falls under.
    fn exceptions(&self, len: usize) -> Vec<Exception> {
        let mut found = vec![];
        let entries = self.entries();
        if len > MAX_REQUEST_BYTES {
            found.push(Exception::RequestTooLarge);
        }
        if entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(seen, _)| seen == k))
        {
            found.push(Exception::DuplicateKey);
        }
        // Where a key is given twice, a schema sees the last.
        let last = |name: &str| entries.iter().rev().find(|(k, _)| *k == name).map(|e| e.1);
        let fields = self.kind.fields();
        if fields.iter().any(|(name, field)| {
            matches!(field, Field::Amount | Field::Count)
                && matches!(last(name), Some(Json::Number(n)) if spelled_integer(n))
        }) {
            found.push(Exception::IntegerSpelling);
        }
        if last("auction_id")
            .and_then(Json::text)
            .is_some_and(|id| is_id(id) && id != SUBJECT_AUCTION)
        {
            found.push(Exception::AuctionIdMustMatchSubject);
        }
        if self.kind == Kind::Open
            && last("closes_at")
                .and_then(Json::text)
                .is_some_and(day_does_not_exist)
        {
            found.push(Exception::DayMustExist);
        }
        found
    }
}

/// True for a number written with a fraction, an exponent or as `-0` that
/// is a whole number all the same, as JSON Schema reads it.
fn spelled_integer(n: &str) -> bool {
    let spelled = n.contains(['.', 'e', 'E']) || n.starts_with("-0");
    spelled && n.parse::<f64>().is_ok_and(|f| f.fract() == 0.0)
}

/// True for an id as the schemas' pattern has it, `^[A-Za-z0-9_-]{1,64}$`.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for a time whose date has a month from 01 to 12 and a day from 01
/// to 31, as the pattern allows, that the calendar does not have.
fn day_does_not_exist(time: &str) -> bool {
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = time.get(range)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && NaiveDate::from_ymd_opt(year as i32, month, day).is_none()
}

static SCHEMAS: LazyLock<Vec<jsonschema::Validator>> = LazyLock::new(|| {
    Kind::ALL
        .iter()
        .map(|k| common::schema(k.schema()))
        .collect()
});

fn schema(kind: Kind) -> &'static jsonschema::Validator {
    &SCHEMAS[Kind::ALL.iter().position(|k| *k == kind).unwrap()]
}

/// The schema's errors for `bytes`, or one saying it is not JSON.
fn schema_errors(kind: Kind, bytes: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => schema(kind)
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect(),
        Err(e) => vec![format!("not JSON: {e}")],
    }
}

// Generators.

fn valid_id() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[A-Za-z0-9_-]{1,12}",
        1 => "[A-Za-z0-9_-]{60,64}",
    ]
    .boxed()
}

/// Strings near ids: empty, too long, unicode, a stray character.
fn near_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{65,70}",
        "[A-Za-z0-9_-]{1,8}[ .*>/\n\u{e9}\u{1F600}\u{0}][A-Za-z0-9_-]{0,4}",
        "\\PC{1,6}",
        "[a-z]{1,4}\n",
        Just("x".repeat(300)),
    ]
    .boxed()
}

fn string_value(text: BoxedStrategy<String>) -> BoxedStrategy<Json> {
    (text, prop::bool::weighted(0.1))
        .prop_map(|(text, escaped)| Json::String { text, escaped })
        .boxed()
}

/// A number written in one of the ways JSON allows, near `lo..=hi`.
fn number(lo: i128, hi: i128) -> BoxedStrategy<Json> {
    let value = prop_oneof![
        8 => lo..=lo + 1000,
        2 => lo - 2..=lo + 2,
        2 => hi - 2..=hi + 2,
        1 => any::<u64>().prop_map(i128::from),
        1 => any::<i64>().prop_map(i128::from),
        1 => Just(i128::from(u64::MAX) + 1),
        1 => Just(10i128.pow(30)),
    ];
    let plain = value.clone().prop_map(|v| v.to_string());
    let spelled = (value, 0..5usize).prop_map(|(v, how)| match how {
        0 => format!("{v}.0"),
        1 => format!("{v}e0"),
        2 => format!("{v}.000E+0"),
        3 if v % 100 == 0 && v != 0 => format!("{}e2", v / 100),
        _ if v == 0 => "0e-1".to_string(),
        _ => format!("{v}0e-1"),
    });
    let odd = prop_oneof![
        Just("-0"),
        Just("-0.0"),
        Just("0e5"),
        Just("1.5"),
        Just("0.5"),
        Just("-1.5"),
        Just("1e300"),
        Just("-1e300"),
        Just("1e-300"),
        Just("1.0000000000000001"),
        Just("9007199254740991.5"),
        Just("4294967295.5"),
    ]
    .prop_map(String::from);
    prop_oneof![12 => plain, 2 => spelled, 1 => odd]
        .prop_map(Json::Number)
        .boxed()
}

/// RFC 3339 times in every spelling the decoder takes; `near`, also times
/// just beside them: parts out of range now and then, other separators,
/// offsets without a colon or with U+2212 for a minus sign.
fn time(near: bool) -> BoxedStrategy<String> {
    // `near` mixes what is beside into what is valid.
    fn or_near<T: std::fmt::Debug + 'static>(
        near: bool,
        valid: impl Strategy<Value = T> + 'static,
        beside: impl Strategy<Value = T> + 'static,
    ) -> BoxedStrategy<T> {
        if near {
            prop_oneof![6 => valid, 1 => beside].boxed()
        } else {
            valid.boxed()
        }
    }
    let two = |valid: std::ops::RangeInclusive<u32>, edge: u32| {
        or_near(near, valid, prop_oneof![Just(edge), 0..100u32])
    };
    let year = prop_oneof![4 => 2026..=2031u32, 1 => 0..=9999u32];
    // Late days are where a pattern and the calendar part.
    let date = (
        year,
        two(1..=12, 13),
        two(1..=28, 0),
        29..=31u32,
        prop::bool::weighted(0.3),
    );
    // Second 60 is a leap second, taken at any time of day.
    let clock = (two(0..=23, 24), two(0..=59, 60), two(0..=59, 60));
    let separator = or_near(
        near,
        prop_oneof![4 => Just("T"), 1 => Just("t"), 1 => Just(" ")],
        Just("_"),
    );
    let fraction = or_near(
        near,
        prop_oneof![3 => Just(String::new()), 2 => "\\.[0-9]{1,12}"],
        Just(".".to_string()),
    );
    let numeric = (
        prop_oneof![Just("+"), Just("-")],
        two(0..=23, 24),
        two(0..=59, 60),
    )
        .prop_map(|(sign, h, m)| format!("{sign}{h:02}:{m:02}"));
    let offset = or_near(
        near,
        prop_oneof![8 => Just("Z".to_string()), 1 => Just("z".to_string()), 2 => numeric],
        prop_oneof![
            Just("+0100".to_string()),
            Just("\u{2212}01:00".to_string()),
            Just(String::new()),
        ],
    );
    (date, clock, separator, fraction, offset)
        .prop_map(
            |((y, mo, d, late_day, late), (h, mi, s), sep, fraction, offset)| {
                let d = if late { late_day } else { d };
                format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{fraction}{offset}")
            },
        )
        .boxed()
}

/// Any JSON value, nested a little (objects may repeat keys).
fn any_json() -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number(0, 10),
        string_value("\\PC{0,8}".boxed()),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
            prop::collection::vec(("[a-c]", inner), 0..3).prop_map(|entries| {
                Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (Json::str(k), v))
                        .collect(),
                )
            }),
        ]
    })
    .boxed()
}

/// A valid value for `field`.
fn valid(field: Field) -> BoxedStrategy<Json> {
    match field {
        Field::Id => string_value(valid_id()),
        Field::AuctionId => Just(Json::str(SUBJECT_AUCTION)).boxed(),
        Field::Amount => prop_oneof![0..=1000u64, Just(MAX_AMOUNT)]
            .prop_map(|n| Json::Number(n.to_string()))
            .boxed(),
        Field::Count => prop_oneof![1..=1000u32, Just(u32::MAX)]
            .prop_map(|n| Json::Number(n.to_string()))
            .boxed(),
        Field::Time => string_value(time(false)),
        Field::Policy => prop_oneof![Just("first_n"), Just("top_amount")]
            .prop_map(Json::str)
            .boxed(),
    }
}

/// A value for `field`: mostly one of its own type, near the valid range,
/// sometimes any JSON at all.
fn value(field: Field) -> BoxedStrategy<Json> {
    let own = match field {
        Field::Id => string_value(prop_oneof![6 => valid_id(), 1 => near_id()].boxed()),
        Field::AuctionId => string_value(
            prop_oneof![
                8 => Just(SUBJECT_AUCTION.to_string()),
                1 => Just("a2".to_string()),
                1 => valid_id(),
                2 => near_id(),
            ]
            .boxed(),
        ),
        Field::Amount => number(0, MAX_AMOUNT.into()),
        Field::Count => number(1, u32::MAX.into()),
        Field::Time => string_value(
            prop_oneof![
                8 => time(true),
                1 => Just("soon".to_string()),
                1 => Just(String::new()),
                1 => "\\PC{100,300}",
            ]
            .boxed(),
        ),
        Field::Policy => string_value(
            prop_oneof![
                3 => Just("first_n".to_string()),
                3 => Just("top_amount".to_string()),
                1 => Just("First_N".to_string()),
                1 => Just("highest".to_string()),
                1 => Just(String::new()),
            ]
            .boxed(),
        ),
    };
    prop_oneof![12 => own, 1 => Just(Json::Null), 1 => any_json()].boxed()
}

/// Keys no request kind has, or another kind's.
fn stranger_key() -> BoxedStrategy<String> {
    prop_oneof![
        Just("capacity".to_string()),
        Just("amount".to_string()),
        Just("bid_id".to_string()),
        Just("Amount".to_string()),
        Just("am\u{f6}unt".to_string()),
        Just(String::new()),
        "[a-z_]{1,10}",
        Just("k".repeat(300)),
    ]
    .boxed()
}

/// The fields of a request of `kind`: each required one present, each
/// optional one or not, with valid values; `near`, each required one
/// sometimes missing, and values near their type.
fn fields(kind: Kind, near: bool) -> Vec<BoxedStrategy<Option<(String, Json)>>> {
    kind.fields()
        .into_iter()
        .map(|(name, field)| {
            let required = match (kind, field) {
                (_, Field::AuctionId) => false,
                (Kind::Open, _) => name == "capacity",
                _ => true,
            };
            let value = if near { value(field) } else { valid(field) };
            let entry = value.prop_map(move |v| (name.to_string(), v));
            match (required, near) {
                (false, _) => prop::option::weighted(0.5, entry).boxed(),
                (true, false) => entry.prop_map(Some).boxed(),
                (true, true) => prop::option::weighted(0.95, entry).boxed(),
            }
        })
        .collect()
}

/// A request of `kind`: valid, or with fields near valid; sometimes a
/// stranger, a key given twice, escaped keys, another order, a body that is
/// not an object, or padding past the size limit.
fn case(kind: Kind) -> BoxedStrategy<Case> {
    let fields = prop_oneof![1 => fields(kind, false), 2 => fields(kind, true)];
    let stranger = prop::option::weighted(0.08, (stranger_key(), value(Field::Amount)));
    let twice = prop::option::weighted(0.1, (any::<prop::sample::Index>(), value(Field::Amount)));
    let reuse_value = any::<bool>();
    let escape_keys = prop::bool::weighted(0.05);
    let not_object = prop::option::weighted(0.03, any_json());
    let pad_to = prop::option::weighted(
        0.03,
        prop_oneof![
            Just(MAX_REQUEST_BYTES),
            Just(MAX_REQUEST_BYTES + 1),
            Just(6000)
        ],
    );
    (
        fields,
        stranger,
        twice,
        reuse_value,
        escape_keys,
        not_object,
        pad_to,
    )
        .prop_flat_map(
            move |(fields, stranger, twice, reuse_value, escape_keys, not_object, pad_to)| {
                let mut entries: Vec<(String, Json)> =
                    fields.into_iter().flatten().chain(stranger).collect();
                if let (Some((at, other)), false) = (twice, entries.is_empty()) {
                    let (key, value) = entries[at.index(entries.len())].clone();
                    entries.push((key, if reuse_value { value } else { other }));
                }
                let entries: Vec<(Json, Json)> = entries
                    .into_iter()
                    .map(|(key, value)| {
                        let key = Json::String {
                            text: key,
                            escaped: escape_keys,
                        };
                        (key, value)
                    })
                    .collect();
                let body = match not_object {
                    Some(other) => Just(other).boxed(),
                    None => Just(entries).prop_shuffle().prop_map(Json::Object).boxed(),
                };
                body.prop_map(move |body| Case { kind, body, pad_to })
            },
        )
        .boxed()
}

fn any_case() -> impl Strategy<Value = Case> {
    prop::strategy::Union::new(Kind::ALL.map(case))
}

/// The property, for one case.
fn decoder_and_schema_agree(case: &Case) -> Result<(), TestCaseError> {
    let bytes = case.bytes();
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(600)]).into_owned();
    let decoded = case.kind.decode(&bytes);
    let exceptions = case.exceptions(bytes.len());
    if !exceptions.is_empty() {
        prop_assert!(
            decoded.is_err(),
            "{:?} {shown}: falls under {exceptions:?}, yet the decoder accepts it",
            case.kind
        );
        if exceptions == [Exception::DuplicateKey] {
            let err = decoded.unwrap_err();
            prop_assert_eq!(err.code, ErrorCode::InvalidJson, "{}: {}", shown, err);
            prop_assert!(err.message.contains("duplicate key"), "{shown}: {err}");
        }
        return Ok(());
    }
    let schema_errors = schema_errors(case.kind, &bytes);
    prop_assert_eq!(
        decoded.is_ok(),
        schema_errors.is_empty(),
        "{:?} {}: the decoder says {:?}, the schema {:?}",
        case.kind,
        shown,
        decoded,
        schema_errors
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6_000))]

    #[test]
    fn the_decoders_accept_exactly_what_the_schemas_accept(case in any_case()) {
        decoder_and_schema_agree(&case)?;
    }
}

/// The generator reaches every corner the property is about: for each
/// kind, bodies both take and bodies both refuse, and each exception.
/// (Otherwise the property could pass by generating nothing of interest.)
#[test]
fn the_generator_reaches_each_answer_and_each_exception() {
    let mut runner = TestRunner::deterministic();
    let strategy = any_case();
    let mut answers = vec![];
    let mut exceptions = vec![];
    for _ in 0..3_000 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let bytes = case.bytes();
        let found = case.exceptions(bytes.len());
        if found.is_empty() {
            answers.push((case.kind, case.kind.decode(&bytes).is_ok()));
        }
        exceptions.extend(found);
    }
    for kind in Kind::ALL {
        for ok in [true, false] {
            let seen = answers.iter().filter(|a| **a == (kind, ok)).count();
            assert!(seen >= 40, "{kind:?}: {seen} bodies with is_ok() == {ok}");
        }
    }
    use Exception::*;
    // A new exception stops this from compiling until it is listed.
    let _exhaustive = |exception| match exception {
        DuplicateKey
        | IntegerSpelling
        | AuctionIdMustMatchSubject
        | RequestTooLarge
        | DayMustExist => {}
    };
    for exception in [
        DuplicateKey,
        IntegerSpelling,
        AuctionIdMustMatchSubject,
        RequestTooLarge,
        DayMustExist,
    ] {
        let seen = exceptions.iter().filter(|e| **e == exception).count();
        assert!(seen >= 5, "{exception:?}: generated {seen} times");
    }
}
