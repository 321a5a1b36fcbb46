//! Decoding of requests from the outside world. Every failure is a
//! [`RequestError`] whose message names the field or subject at fault;
//! nothing here panics, whatever the bytes.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::{
    timestamp, valid_id, AuctionSpec, BidRequest, Policy, RaiseRequest, ResultRequest,
    WithdrawRequest, MAX_AMOUNT, MAX_ID_LEN, MAX_REQUEST_BYTES,
};

crate::closed::closed_enum! {
    /// What kind of request error this is; part of the public error reply,
    /// and the label its count has in the metrics.
    pub enum ErrorCode {
        /// The body is not a JSON object.
        InvalidJson = "invalid_json",
        /// The body is larger than the request limit.
        TooLarge = "too_large",
        /// A field the request does not define.
        UnknownField = "unknown_field",
        /// A required field is absent.
        MissingField = "missing_field",
        /// A field has the wrong type or an out-of-range value.
        InvalidField = "invalid_field",
        /// The subject is not `<prefix>.<kind>.<auction_id>`.
        InvalidSubject = "invalid_subject",
        /// The id was used before with a different body or settings.
        Conflict = "conflict",
        /// The auction does not exist (status requests).
        UnknownAuction = "unknown_auction",
        /// Bound identity mode: the request carries no identity stamped by
        /// the server.
        Unauthenticated = "unauthenticated",
        /// Bound identity mode: the identity may not act as the bidder named.
        Forbidden = "forbidden",
        /// Bound identity mode: too many requests from one bidder; the reply
        /// says when to send again.
        RateLimited = "rate_limited",
        /// Not now, and expected: the answer cannot be told yet (a verifier
        /// catching up, a withdraw not decided yet) or JetStream is briefly
        /// away (an election, a timeout). The reply says when to send the
        /// same request again, which is safe: the ids make it one request.
        Unavailable = "unavailable",
        /// A fault: NATS or the store failed in a way that does not pass by
        /// itself, or the service met something it cannot explain.
        Internal = "internal",
    }
}

impl ErrorCode {
    /// The `Nats-Service-Error-Code` for this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::TooLarge
            | ErrorCode::UnknownField
            | ErrorCode::MissingField
            | ErrorCode::InvalidField
            | ErrorCode::InvalidSubject => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::UnknownAuction => 404,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A request that cannot be served, with the reason in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The error code of the reply.
    pub code: ErrorCode,
    /// What is wrong, naming the field or subject.
    pub message: String,
    /// For an error that passes: when to send the request again.
    pub retry_after_ms: Option<u64>,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The same error, with a hint of when to send the request again.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        RequestError::new(
            ErrorCode::InvalidField,
            format!("field {field:?} {problem}"),
        )
    }
}

/// Decodes a bid request body for the auction named by the subject.
pub fn decode_bid(payload: &[u8], auction_id: &str) -> Result<BidRequest, RequestError> {
    // Nearly every bid is well formed: read it straight into its fields,
    // and only for one that is not, take the way that names what is wrong.
    if let Some(bid) = well_formed_bid(payload, auction_id) {
        return Ok(bid);
    }
    decode_bid_field_by_field(payload, auction_id)
}

/// A bid that is valid in every respect, read without building a JSON
/// tree; `None` for anything else (unknown fields, nulls, bad ids, ...),
/// which [`decode_bid_field_by_field`] then explains.
fn well_formed_bid(payload: &[u8], auction_id: &str) -> Option<BidRequest> {
    use std::borrow::Cow;

    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
        Cow::<'de, str>::deserialize(d).map(Some)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Bid<'a> {
        #[serde(borrow)]
        bid_id: Cow<'a, str>,
        #[serde(borrow)]
        bidder_id: Cow<'a, str>,
        amount: u64,
        #[serde(default, borrow, deserialize_with = "present")]
        auction_id: Option<Cow<'a, str>>,
        #[serde(default)]
        wait: bool,
    }

    if payload.len() > MAX_REQUEST_BYTES {
        return None;
    }
    let bid: Bid = serde_json::from_slice(payload).ok()?;
    let valid = valid_id(&bid.bid_id)
        && valid_id(&bid.bidder_id)
        && bid.amount <= MAX_AMOUNT
        && bid.auction_id.as_deref().is_none_or(|a| a == auction_id);
    valid.then(|| BidRequest {
        bid_id: bid.bid_id.into_owned(),
        bidder_id: bid.bidder_id.into_owned(),
        amount: bid.amount,
        wait: bid.wait,
    })
}

/// Decodes a bid request field by field, so that an error names the field.
fn decode_bid_field_by_field(payload: &[u8], auction_id: &str) -> Result<BidRequest, RequestError> {
    let mut body = object(
        payload,
        &["bid_id", "bidder_id", "amount", "auction_id", "wait"],
    )?;
    check_auction_field(&mut body, auction_id)?;
    Ok(BidRequest {
        bid_id: required(id(&mut body, "bid_id")?, "bid_id")?,
        bidder_id: required(id(&mut body, "bidder_id")?, "bidder_id")?,
        amount: required(amount(&mut body, "amount")?, "amount")?,
        wait: boolean(&mut body, "wait")?.unwrap_or(false),
    })
}

/// Decodes a withdraw request body for the auction named by the subject.
pub fn decode_withdraw(payload: &[u8], auction_id: &str) -> Result<WithdrawRequest, RequestError> {
    let mut body = object(payload, &["bid_id", "bidder_id", "auction_id"])?;
    check_auction_field(&mut body, auction_id)?;
    Ok(WithdrawRequest {
        bid_id: required(id(&mut body, "bid_id")?, "bid_id")?,
        bidder_id: required(id(&mut body, "bidder_id")?, "bidder_id")?,
    })
}

/// Decodes a result request body for the auction named by the subject.
pub fn decode_result(payload: &[u8], auction_id: &str) -> Result<ResultRequest, RequestError> {
    let mut body = object(payload, &["bid_id", "auction_id"])?;
    check_auction_field(&mut body, auction_id)?;
    Ok(ResultRequest {
        bid_id: required(id(&mut body, "bid_id")?, "bid_id")?,
    })
}

/// Decodes a raise request body for the auction named by the subject.
pub fn decode_raise(payload: &[u8], auction_id: &str) -> Result<RaiseRequest, RequestError> {
    let mut body = object(
        payload,
        &[
            "bid_id",
            "bidder_id",
            "amount",
            "expected_amount",
            "auction_id",
        ],
    )?;
    check_auction_field(&mut body, auction_id)?;
    // A raise to no more than the bid's amount is the verifier's to
    // refuse (`not_higher`, with the amount), in log order like any raise.
    Ok(RaiseRequest {
        bid_id: required(id(&mut body, "bid_id")?, "bid_id")?,
        bidder_id: required(id(&mut body, "bidder_id")?, "bidder_id")?,
        amount: required(amount(&mut body, "amount")?, "amount")?,
        expected_amount: required(amount(&mut body, "expected_amount")?, "expected_amount")?,
    })
}

/// Checks an auction-close request body: empty, or an object with at
/// most the subject's `auction_id`.
pub fn decode_close(payload: &[u8], auction_id: &str) -> Result<(), RequestError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut body = object(payload, &["auction_id"])?;
    check_auction_field(&mut body, auction_id)
}

/// Decodes an auction-open request body for the auction named by the subject.
pub fn decode_open(payload: &[u8], auction_id: &str) -> Result<AuctionSpec, RequestError> {
    let mut body = object(
        payload,
        &[
            "capacity",
            "min_amount",
            "closes_at",
            "max_wins_per_bidder",
            "policy",
            "auction_id",
        ],
    )?;
    check_auction_field(&mut body, auction_id)?;
    // `count` refuses 0 (and says so): `NonZeroU32::new` never gives `None` here.
    let capacity = required(
        count(&mut body, "capacity")?.and_then(NonZeroU32::new),
        "capacity",
    )?;
    let min_amount = amount(&mut body, "min_amount")?.unwrap_or(0);
    let max_wins_per_bidder = count(&mut body, "max_wins_per_bidder")?.unwrap_or(1);
    let closes_at = time(&mut body, "closes_at")?;
    // An optional field is left out for its default: null is a wrong type
    // here as in every request, as the schemas say.
    let policies = || {
        let names: Vec<String> = Policy::ALL
            .iter()
            .map(|p| format!("{:?}", p.name()))
            .collect();
        names.join(" or ")
    };
    let policy = match body.remove("policy") {
        None => Policy::default(),
        Some(Value::String(s)) => Policy::from_name(&s).ok_or_else(|| {
            RequestError::field(
                "policy",
                format!("must be {}, got {:?}", policies(), truncate(&s)),
            )
        })?,
        Some(other) => {
            return Err(RequestError::field(
                "policy",
                format!("must be {}, not {}", policies(), kind(&other)),
            ))
        }
    };
    Ok(AuctionSpec {
        capacity,
        min_amount,
        closes_at,
        max_wins_per_bidder,
        policy,
    })
}

/// Reads a JSON object, refusing oversized bodies, non-objects, a key
/// given twice and fields not in `allowed`.
fn object(payload: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, RequestError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!(
                "request body is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                payload.len()
            ),
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::new(
            ErrorCode::InvalidJson,
            "request body is empty; expected a JSON object",
        ));
    }
    let body: Body = serde_json::from_slice(payload).map_err(|e| {
        RequestError::new(
            ErrorCode::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let map = match body {
        Body::Object(map) => map,
        Body::DuplicateKey(key) => {
            return Err(RequestError::new(
                ErrorCode::InvalidJson,
                format!(
                    "duplicate key {:?}: a request names each field once",
                    truncate(&key)
                ),
            ))
        }
        Body::Not(kind) => {
            return Err(RequestError::new(
                ErrorCode::InvalidJson,
                format!("request body must be a JSON object, not {kind}"),
            ))
        }
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(RequestError::new(
            ErrorCode::UnknownField,
            format!(
                "unknown field {:?}; allowed fields are {}",
                truncate(unknown),
                allowed.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// A request body as read: an object whose keys all differ, or what else
/// it is. (serde_json's own map keeps the last of two equal keys, where a
/// proxy or a logger may read the first: the request must mean one thing
/// to every reader.)
enum Body {
    Object(Map<String, Value>),
    /// The first key given twice.
    DuplicateKey(String),
    /// What the body is instead of an object ("an array", ...).
    Not(&'static str),
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Body, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                // The rest is read all the same, so that a body that is
                // not JSON at all is told so.
                access.next_value::<IgnoredAny>()?;
                while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Body::DuplicateKey(key));
            }
            let value = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Body::Object(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Body, A::Error> {
        while access.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body::Not("an array"))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body::Not("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body::Not("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body::Not("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body::Not("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body::Not("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body::Not("a string"))
    }
}

/// An optional `auction_id` in the body must repeat the subject's.
fn check_auction_field(
    body: &mut Map<String, Value>,
    subject_id: &str,
) -> Result<(), RequestError> {
    match id(body, "auction_id")? {
        Some(given) if given != subject_id => Err(RequestError::field(
            "auction_id",
            format!("is {given:?} but the subject names auction {subject_id:?}"),
        )),
        _ => Ok(()),
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, RequestError> {
    value.ok_or_else(|| {
        RequestError::new(ErrorCode::MissingField, format!("missing field {field:?}"))
    })
}

fn id(body: &mut Map<String, Value>, field: &str) -> Result<Option<String>, RequestError> {
    match body.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) if valid_id(&s) => Ok(Some(s)),
        Some(Value::String(s)) => Err(RequestError::field(
            field,
            format!(
                "must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_-], got {:?}",
                truncate(&s)
            ),
        )),
        Some(other) => Err(RequestError::field(
            field,
            format!("must be a string, not {}", kind(&other)),
        )),
    }
}

fn boolean(body: &mut Map<String, Value>, field: &str) -> Result<Option<bool>, RequestError> {
    match body.remove(field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(RequestError::field(
            field,
            format!("must be true or false, not {}", kind(&other)),
        )),
    }
}

fn amount(body: &mut Map<String, Value>, field: &str) -> Result<Option<u64>, RequestError> {
    let Some(value) = body.remove(field) else {
        return Ok(None);
    };
    let n = integer(&value, field)?;
    if n > MAX_AMOUNT {
        return Err(RequestError::field(
            field,
            format!("is {n}; the largest amount is {MAX_AMOUNT} (2^53-1)"),
        ));
    }
    Ok(Some(n))
}

/// An RFC 3339 time, in ASCII as the schemas' pattern spells it (chrono
/// alone would also take U+2212 as the offset's minus sign).
fn time(body: &mut Map<String, Value>, field: &str) -> Result<Option<DateTime<Utc>>, RequestError> {
    match body.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_ascii() => Err(RequestError::field(
            field,
            "must be an RFC 3339 time, in ASCII characters",
        )),
        Some(Value::String(s)) => timestamp::parse(&s)
            .map(Some)
            .map_err(|e| RequestError::field(field, format!("must be an RFC 3339 time: {e}"))),
        Some(other) => Err(RequestError::field(
            field,
            format!("must be an RFC 3339 time string, not {}", kind(&other)),
        )),
    }
}

/// A count that must be at least 1 and fit in 32 bits.
fn count(body: &mut Map<String, Value>, field: &str) -> Result<Option<u32>, RequestError> {
    let Some(value) = body.remove(field) else {
        return Ok(None);
    };
    match u32::try_from(integer(&value, field)?) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(RequestError::field(
            field,
            format!("must be an integer from 1 to {}", u32::MAX),
        )),
    }
}

fn integer(value: &Value, field: &str) -> Result<u64, RequestError> {
    let Value::Number(n) = value else {
        return Err(RequestError::field(
            field,
            format!("must be a non-negative integer, not {}", kind(value)),
        ));
    };
    if let Some(n) = n.as_u64() {
        return Ok(n);
    }
    Err(RequestError::field(field, number_problem(n)))
}

/// Why a number that is not a `u64` is refused. An integer written with a
/// fraction or an exponent, or as `-0`, is refused too: JSON Schema's
/// `integer` cannot tell `1.0`, `1e2` or `-0` from `1`, `100` or `0`, so
/// the schemas' descriptions say so instead.
fn number_problem(n: &Number) -> String {
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() != 0.0 {
        format!("must be a whole number of minor units, got {n}")
    } else if f < 0.0 {
        format!("must not be negative, got {n}")
    } else if f <= MAX_AMOUNT as f64 {
        format!("must be written as digits alone, without a fraction, an exponent or a minus sign, got {n}")
    } else {
        format!("is out of range: {n}")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps error messages short when the offending value is huge.
fn truncate(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(body: &str) -> Result<BidRequest, RequestError> {
        decode_bid(body.as_bytes(), "a1")
    }

    #[test]
    fn a_valid_bid_takes_the_quick_reading() {
        let body = br#"{"bid_id":"b-1","bidder_id":"alice","amount":150,"auction_id":"a1"}"#;
        assert!(well_formed_bid(body, "a1").is_some());
        assert!(well_formed_bid(body, "a2").is_none());
        assert!(well_formed_bid(
            br#"{"bid_id":"b-1","bidder_id":"alice","amount":150,"auction_id":null}"#,
            "a1"
        )
        .is_none());
    }

    #[test]
    fn a_valid_bid_decodes() {
        let b = bid(r#"{"bid_id":"b1","bidder_id":"u-1","amount":5,"auction_id":"a1"}"#).unwrap();
        assert_eq!(
            b,
            BidRequest {
                bid_id: "b1".into(),
                bidder_id: "u-1".into(),
                amount: 5,
                wait: false,
            }
        );
        let waits = bid(r#"{"bid_id":"b1","bidder_id":"u-1","amount":5,"wait":true}"#).unwrap();
        assert!(waits.wait);
        let e = bid(r#"{"bid_id":"b1","bidder_id":"u-1","amount":5,"wait":1}"#).unwrap_err();
        assert!(
            e.message.contains("\"wait\" must be true or false"),
            "{}",
            e.message
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                r#"{"bidder_id":"u","amount":1}"#,
                ErrorCode::MissingField,
                "bid_id",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":-1}"#,
                ErrorCode::InvalidField,
                "negative",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":1.5}"#,
                ErrorCode::InvalidField,
                "whole number",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":1e300}"#,
                ErrorCode::InvalidField,
                "amount",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":9007199254740992}"#,
                ErrorCode::InvalidField,
                "2^53-1",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":"5"}"#,
                ErrorCode::InvalidField,
                "amount",
            ),
            (
                r#"{"bid_id":"a.b","bidder_id":"u","amount":1}"#,
                ErrorCode::InvalidField,
                "bid_id",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"*","amount":1}"#,
                ErrorCode::InvalidField,
                "bidder_id",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":1,"x":1}"#,
                ErrorCode::UnknownField,
                "\"x\"",
            ),
            (
                r#"{"bid_id":"b","bidder_id":"u","amount":1,"auction_id":"a2"}"#,
                ErrorCode::InvalidField,
                "auction_id",
            ),
            (r#"[1]"#, ErrorCode::InvalidJson, "object"),
            (r#""#, ErrorCode::InvalidJson, "empty"),
            (r#"{"bid_id":"#, ErrorCode::InvalidJson, "JSON"),
        ];
        for (body, code, needle) in cases {
            let err = bid(body).unwrap_err();
            assert_eq!(err.code, code, "{body}: {err}");
            assert!(err.message.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn deep_nesting_and_huge_bodies_are_refused() {
        let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
        assert_eq!(bid(&deep).unwrap_err().code, ErrorCode::TooLarge);
        let nested = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(bid(&nested).unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(
            decode_bid(&[0xff, 0xfe, b'{'], "a1").unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn open_requests_take_defaults() {
        let spec = decode_open(br#"{"capacity":3}"#, "a1").unwrap();
        assert_eq!(spec, AuctionSpec::with_capacity(3));
        let err = decode_open(br#"{"capacity":0}"#, "a1").unwrap_err();
        assert!(err.message.contains("capacity"), "{err}");
        let err = decode_open(br#"{"capacity":1,"closes_at":"soon"}"#, "a1").unwrap_err();
        assert!(err.message.contains("closes_at"), "{err}");
    }

    /// Every request kind, decoded for auction `a1`, with only its result
    /// kept.
    fn decode_any(kind: &str, body: &[u8]) -> Result<(), RequestError> {
        match kind {
            "bid" => decode_bid(body, "a1").map(drop),
            "open" => decode_open(body, "a1").map(drop),
            "withdraw" => decode_withdraw(body, "a1").map(drop),
            "raise" => decode_raise(body, "a1").map(drop),
            "close" => decode_close(body, "a1"),
            "result" => decode_result(body, "a1").map(drop),
            _ => unreachable!("{kind}"),
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_for_every_request_kind() {
        let cases = [
            (
                "bid",
                r#"{"bid_id":"b","bidder_id":"a","amount":5,"amount":500000}"#,
                "amount",
            ),
            (
                "bid",
                r#"{"bid_id":"b","bidder_id":"a","amount":5,"\u0061mount":5}"#,
                "amount",
            ),
            (
                "bid",
                r#"{"auction_id":"a1","bid_id":"b","bidder_id":"a","amount":5,"auction_id":"a1"}"#,
                "auction_id",
            ),
            ("open", r#"{"capacity":1,"capacity":1000}"#, "capacity"),
            (
                "withdraw",
                r#"{"bid_id":"b","bidder_id":"a","bidder_id":"c"}"#,
                "bidder_id",
            ),
            (
                "raise",
                r#"{"bid_id":"b","bidder_id":"a","amount":9,"expected_amount":5,"expected_amount":1}"#,
                "expected_amount",
            ),
            (
                "close",
                r#"{"auction_id":"a1","auction_id":"a1"}"#,
                "auction_id",
            ),
            ("result", r#"{"bid_id":"b","bid_id":"c"}"#, "bid_id"),
            // Two unknown fields: the repeat is what is wrong first.
            ("close", r#"{"x":1,"x":2}"#, "x"),
        ];
        for (kind, body, key) in cases {
            let err = decode_any(kind, body.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidJson, "{kind} {body}: {err}");
            assert!(
                err.message.contains(&format!("duplicate key {key:?}")),
                "{kind} {body}: {err}"
            );
        }
        // The quick reading of a bid refuses it too, rather than keep one.
        let twice = br#"{"bid_id":"b","bidder_id":"a","amount":5,"amount":5}"#;
        assert!(well_formed_bid(twice, "a1").is_none());
        // A body that is not JSON after the repeat says so.
        let err = decode_any("open", br#"{"capacity":1,"capacity":2,"#).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn long_keys_are_not_echoed_whole() {
        let key = "k".repeat(1000);
        let twice = format!(r#"{{"{key}":1,"{key}":2}}"#);
        let unknown = format!(r#"{{"{key}":1}}"#);
        for body in [twice, unknown] {
            let err = decode_any("close", body.as_bytes()).unwrap_err();
            assert!(err.message.len() < 200, "{err}");
        }
        let policy = format!(r#"{{"capacity":1,"policy":"{key}"}}"#);
        let err = decode_any("open", policy.as_bytes()).unwrap_err();
        assert!(err.message.len() < 200, "{err}");
    }

    #[test]
    fn null_is_refused_for_every_field_of_every_request_kind() {
        let cases = [
            (
                "bid",
                r#"{"bid_id":"b","bidder_id":"a","amount":5,"auction_id":null}"#,
            ),
            ("bid", r#"{"bid_id":"b","bidder_id":"a","amount":null}"#),
            ("open", r#"{"capacity":1,"closes_at":null}"#),
            ("open", r#"{"capacity":1,"policy":null}"#),
            ("open", r#"{"capacity":1,"min_amount":null}"#),
            ("open", r#"{"capacity":1,"max_wins_per_bidder":null}"#),
            ("open", r#"{"capacity":1,"auction_id":null}"#),
            (
                "withdraw",
                r#"{"bid_id":"b","bidder_id":"a","auction_id":null}"#,
            ),
            (
                "raise",
                r#"{"bid_id":"b","bidder_id":"a","amount":9,"expected_amount":5,"auction_id":null}"#,
            ),
            ("close", r#"{"auction_id":null}"#),
            ("result", r#"{"bid_id":null}"#),
        ];
        for (kind, body) in cases {
            let err = decode_any(kind, body.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidField, "{kind} {body}: {err}");
            assert!(err.message.contains("null"), "{kind} {body}: {err}");
        }
    }

    #[test]
    fn integers_are_written_as_digits_alone() {
        for amount in ["1.0", "1e2", "1E2", "-0", "0.0", "-0.0", "1.5e1"] {
            let body = format!(r#"{{"bid_id":"b","bidder_id":"a","amount":{amount}}}"#);
            let err = bid(&body).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidField, "{body}: {err}");
            assert!(err.message.contains("digits alone"), "{body}: {err}");
            let open = format!(r#"{{"capacity":{amount}}}"#);
            assert!(decode_open(open.as_bytes(), "a1").is_err(), "{open}");
        }
        // The plain spellings of the same numbers are taken.
        for amount in ["1", "100", "0"] {
            let body = format!(r#"{{"bid_id":"b","bidder_id":"a","amount":{amount}}}"#);
            assert!(bid(&body).is_ok(), "{body}");
        }
    }

    #[test]
    fn closes_at_is_an_ascii_rfc_3339_time() {
        let open = |closes_at: &str| {
            let body = format!(r#"{{"capacity":1,"closes_at":"{closes_at}"}}"#);
            decode_open(body.as_bytes(), "a1")
        };
        for ok in [
            "2030-01-01T00:00:00Z",
            "2030-01-01t00:00:00.5z",
            "2030-01-01 00:00:00-01:30",
            "2030-06-30T23:59:60.123456789+23:59",
        ] {
            assert!(open(ok).is_ok(), "{ok}");
        }
        // U+2212 MINUS SIGN, which chrono alone would take.
        let err = open("2030-01-01T00:00:00\u{2212}01:00").unwrap_err();
        assert!(err.message.contains("closes_at"), "{err}");
        assert!(open("2030-02-30T00:00:00Z").is_err());
    }

    use proptest::prelude::*;

    /// JSON values of every type, with strings that are often valid ids.
    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[A-Za-z0-9_-]{0,70}".prop_map(Value::from),
            ".{0,10}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Request-like objects: mostly the real field names, some strangers.
    fn arb_request() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![
            Just("bid_id".to_string()),
            Just("bidder_id".to_string()),
            Just("amount".to_string()),
            Just("auction_id".to_string()),
            Just("capacity".to_string()),
            Just("closes_at".to_string()),
            "[a-z]{1,6}",
        ];
        prop::collection::btree_map(key, arb_value(), 0..6)
            .prop_map(|m| serde_json::to_vec(&Value::Object(m.into_iter().collect())).unwrap())
    }

    /// Bids that are valid, or nearly: each field may be missing, null,
    /// of the wrong type or out of range, and an unknown field may come.
    fn arb_near_bid() -> impl Strategy<Value = Vec<u8>> {
        let id = || {
            prop_oneof![
                4 => "[A-Za-z0-9_-]{1,8}".prop_map(Value::from),
                1 => Just(Value::from("")),
                1 => Just(Value::from("x".repeat(65))),
                1 => Just(Value::from("a b")),
                1 => Just(Value::Null),
                1 => Just(Value::from(7)),
            ]
        };
        let amount = prop_oneof![
            4 => (0..1000u64).prop_map(Value::from),
            1 => Just(Value::from(MAX_AMOUNT + 1)),
            1 => Just(Value::from(-1)),
            1 => Just(Value::from(1.5)),
            1 => Just(Value::from("10")),
            1 => Just(Value::Null),
        ];
        let auction = prop_oneof![
            Just(None),
            Just(Some(Value::from("a1"))),
            Just(Some(Value::from("a2"))),
            Just(Some(Value::Null)),
        ];
        let field = |v: Value| prop::option::weighted(0.9, Just(v));
        (id(), id(), amount, auction, prop::bool::weighted(0.1))
            .prop_flat_map(move |(b, u, a, au, extra)| {
                (field(b), field(u), field(a), Just(au), Just(extra))
            })
            .prop_map(|(b, u, a, au, extra)| {
                let mut m = serde_json::Map::new();
                for (k, v) in [
                    ("bid_id", b),
                    ("bidder_id", u),
                    ("amount", a),
                    ("auction_id", au),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                if extra {
                    m.insert("capacity".into(), Value::from(1));
                }
                serde_json::to_vec(&Value::Object(m)).unwrap()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_bid(&bytes, "a1");
            let _ = decode_open(&bytes, "a1");
        }

        #[test]
        fn the_quick_reading_agrees_with_the_field_by_field_one(body in arb_near_bid()) {
            prop_assert_eq!(decode_bid(&body, "a1"), decode_bid_field_by_field(&body, "a1"));
        }

        #[test]
        fn any_object_decodes_to_a_valid_bid_or_a_named_error(body in arb_request()) {
            match decode_bid(&body, "a1") {
                Ok(bid) => {
                    prop_assert!(valid_id(&bid.bid_id) && valid_id(&bid.bidder_id));
                    prop_assert!(bid.amount <= MAX_AMOUNT);
                }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
            if let Ok(spec) = decode_open(&body, "a1") {
                prop_assert!(spec.capacity.get() >= 1 && spec.max_wins_per_bidder >= 1);
            }
        }
    }
}
