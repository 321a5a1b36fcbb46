//! The files in `schemas/` against the wire types, with no NATS: every
//! message the Rust types serialize matches its schema, the schemas refuse
//! what the request decoders refuse, and they refuse what allot never
//! writes.

use crate::common;

use allot::wire::{
    decode_close, decode_open, decode_raise, decode_withdraw, timestamp, AuctionSpec, AuctionState,
    BidReply, CancelReason, CloseEvent, CloseReply, ClosedBy, ErrorCode, HeldEvent, HeldKind,
    LogEvent, OpenEvent, OpenReply, OutcomeEvent, OutcomeKind, Policy, RaiseEvent, RaiseReply,
    RaiseRequest, RefuseReason, RequestError, ResultReply, StatusReply, WithdrawEvent,
    WithdrawReply, WithdrawRequest,
};
use chrono::{DateTime, Utc};
use common::assert_matches;
use serde_json::{json, Value};

fn at(s: &str) -> DateTime<Utc> {
    timestamp::parse(s).unwrap()
}

fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn assert_rejects(name: &str, instance: &Value) {
    assert!(
        !common::schema(name).is_valid(instance),
        "{name} accepted {instance}"
    );
}

// Each list below is checked by an exhaustive match, so that a new variant
// fails to compile here until it is listed, and so tested against the
// schemas.

fn every_error_code() -> Vec<ErrorCode> {
    use ErrorCode::*;
    // A new code stops this from compiling: it is in `ErrorCode::ALL`.
    let _exhaustive = |code| match code {
        InvalidJson | TooLarge | UnknownField | MissingField | InvalidField | InvalidSubject
        | Conflict | UnknownAuction | Unauthenticated | Forbidden | RateLimited | Unavailable
        | Internal => {}
    };
    ErrorCode::ALL.to_vec()
}

/// Errors only the identity gate answers, on bids, withdraws and raises.
fn identity_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::RateLimited
    )
}

fn every_refuse_reason() -> Vec<RefuseReason> {
    use RefuseReason::*;
    let _exhaustive = |reason| match reason {
        AlreadyConfirmed | AlreadyCancelled | NotOwner | Conflict | NotHigher | UnknownBid
        | NotRanked | AuctionClosed | UnknownAuction => {}
    };
    vec![
        AlreadyConfirmed,
        AlreadyCancelled,
        NotOwner,
        Conflict,
        NotHigher,
        UnknownBid,
        NotRanked,
        AuctionClosed,
        UnknownAuction,
    ]
}

/// The reasons the core can refuse a withdraw with; the others are about
/// raises only, and the withdraw-reply schema refuses them. (An unknown
/// auction is answered with the `unknown_auction` error, never a refusal.)
fn withdraw_refusal(reason: RefuseReason) -> bool {
    use RefuseReason::*;
    matches!(
        reason,
        AlreadyConfirmed | AlreadyCancelled | NotOwner | AuctionClosed
    )
}

fn every_cancel_reason() -> Vec<CancelReason> {
    use CancelReason::*;
    // A new reason stops this from compiling: list it in
    // `CancelReason::ALL` too.
    let _exhaustive = |reason| match reason {
        CapacityFull | AuctionClosed | BelowMinimum | BidderLimit | UnknownAuction
        | InvalidEvent | Withdrawn | Outbid => {}
    };
    CancelReason::ALL.to_vec()
}

fn error_replies<R: From<RequestError>>() -> Vec<R> {
    every_error_code()
        .into_iter()
        .map(|code| {
            let e = RequestError::new(code, "field \"bid_id\" is missing");
            match code {
                ErrorCode::RateLimited => e.retry_after(250).into(),
                ErrorCode::Unavailable => e.retry_after(100).into(),
                _ => e.into(),
            }
        })
        .collect()
}

#[test]
fn withdraw_messages_match_their_schemas() {
    let request = WithdrawRequest {
        bid_id: "b-1".into(),
        bidder_id: "alice".into(),
    };
    assert_matches("withdraw-request.schema.json", &bytes(&request));

    let mut replies = vec![
        WithdrawReply::Withdrawn {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            withdraw_seq: 7,
            empty_rollback: false,
        },
        WithdrawReply::Withdrawn {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            withdraw_seq: 7,
            empty_rollback: true,
        },
    ];
    for reason in every_refuse_reason()
        .into_iter()
        .filter(|r| withdraw_refusal(*r))
    {
        replies.push(WithdrawReply::Refused {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            withdraw_seq: 7,
            reason,
        });
    }
    replies.extend(error_replies());
    for reply in &replies {
        assert_matches("withdraw-reply.schema.json", &bytes(reply));
    }

    let event = LogEvent::Withdraw(WithdrawEvent {
        bid_id: "b-1".into(),
        auction_id: "a1".into(),
        bidder_id: "alice".into(),
        withdrawn_at: at("2026-11-26T23:28:13.125815Z"),
    });
    assert_matches("withdraw-event.schema.json", &bytes(&event));
}

#[test]
fn raise_messages_match_their_schemas() {
    let request = RaiseRequest {
        bid_id: "b-1".into(),
        bidder_id: "alice".into(),
        amount: 200,
        expected_amount: 150,
    };
    assert_matches("raise-request.schema.json", &bytes(&request));

    let mut replies = vec![RaiseReply::Raised {
        bid_id: "b-1".into(),
        auction_id: "a1".into(),
        raise_seq: 9,
        amount: 200,
    }];
    for reason in every_refuse_reason()
        .into_iter()
        .filter(|r| *r != RefuseReason::UnknownAuction)
    {
        // As the core refuses: the current amount only where a retry needs it.
        let current_amount =
            matches!(reason, RefuseReason::Conflict | RefuseReason::NotHigher).then_some(180);
        replies.push(RaiseReply::Refused {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            raise_seq: 9,
            reason,
            current_amount,
        });
    }
    replies.extend(error_replies());
    for reply in &replies {
        assert_matches("raise-reply.schema.json", &bytes(reply));
    }

    let event = LogEvent::Raise(RaiseEvent {
        bid_id: "b-1".into(),
        auction_id: "a1".into(),
        bidder_id: "alice".into(),
        amount: 200,
        expected_amount: 150,
        raised_at: at("2026-11-26T23:28:14.000001Z"),
    });
    assert_matches("raise-event.schema.json", &bytes(&event));
}

#[test]
fn close_messages_and_held_notices_match_their_schemas() {
    let mut replies = vec![
        CloseReply::Closing {
            auction_id: "a1".into(),
            close_seq: 12,
            duplicate: false,
        },
        CloseReply::Closing {
            auction_id: "a1".into(),
            close_seq: 12,
            duplicate: true,
        },
    ];
    replies.extend(
        error_replies::<CloseReply>()
            .into_iter()
            .filter(|r| !matches!(r, CloseReply::Error { error, .. } if identity_error(*error))),
    );
    for reply in &replies {
        assert_matches("close-reply.schema.json", &bytes(reply));
    }

    for by in [ClosedBy::Request, ClosedBy::Deadline] {
        let event = LogEvent::Close(CloseEvent {
            auction_id: "a1".into(),
            closed_at: at("2030-01-01T00:00:00.000000Z"),
            by,
        });
        assert_matches("close-event.schema.json", &bytes(&event));
    }

    let held = HeldEvent {
        kind: HeldKind::Held,
        bid_id: "b-1".into(),
        auction_id: "a1".into(),
        bidder_id: "alice".into(),
        amount: 200,
        try_seq: 2,
        try_index: 1,
        held_seq: 9,
    };
    assert_matches("held-event.schema.json", &bytes(&held));
}

#[test]
fn auction_settings_carry_the_policy() {
    // Every policy: a new one fails here until the schemas name it.
    for policy in Policy::ALL {
        let spec = AuctionSpec {
            closes_at: Some(at("2030-01-01T00:00:00Z")),
            policy,
            ..AuctionSpec::with_capacity(2)
        };
        assert_matches("auction-open-request.schema.json", &bytes(&spec));
        let event = LogEvent::Open(OpenEvent {
            auction_id: "a1".into(),
            spec: spec.clone(),
            opened_at: at("2026-11-26T23:28:13.101010Z"),
        });
        assert_matches("open-event.schema.json", &bytes(&event));
        let opened = OpenReply::Opened {
            auction_id: "a1".into(),
            spec: spec.clone(),
            open_seq: 1,
            duplicate: false,
        };
        assert_matches("auction-open-reply.schema.json", &bytes(&opened));
        let status = StatusReply::Ok {
            auction_id: "a1".into(),
            spec,
            state: AuctionState::Closed,
            tries: 3,
            confirmed: 2,
            cancelled: 1,
            pending: 0,
        };
        assert_matches("auction-status-reply.schema.json", &bytes(&status));
    }
    // Every policy by name is accepted, as the decoder accepts them.
    for policy in Policy::ALL.map(Policy::name) {
        let body = json!({"capacity": 1, "policy": policy});
        assert!(decode_open(&bytes(&body), "a1").is_ok());
        assert_matches("auction-open-request.schema.json", &bytes(&body));
    }
}

/// Every request can be told "not now": `unavailable`, with when to send
/// it again; and a fault is `internal`, with no such hint.
#[test]
fn every_reply_may_be_unavailable_with_a_retry_hint() {
    fn check<R: From<RequestError> + serde::Serialize>(schema: &str) {
        let later =
            RequestError::new(ErrorCode::Unavailable, "resend it in 100 ms").retry_after(100);
        let reply = bytes(&R::from(later));
        assert_matches(schema, &reply);
        let json: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(json["error"], "unavailable");
        assert_eq!(json["retry_after_ms"], 100);
        let fault = bytes(&R::from(RequestError::new(
            ErrorCode::Internal,
            "internal error: x",
        )));
        assert_matches(schema, &fault);
        assert_rejects(
            schema,
            &json!({"status": "error", "error": "unavailable", "message": "later", "retry_after_ms": 0}),
        );
    }
    check::<BidReply>("bid-reply.schema.json");
    check::<WithdrawReply>("withdraw-reply.schema.json");
    check::<RaiseReply>("raise-reply.schema.json");
    check::<CloseReply>("close-reply.schema.json");
    check::<OpenReply>("auction-open-reply.schema.json");
    check::<StatusReply>("auction-status-reply.schema.json");
    check::<ResultReply>("result-reply.schema.json");
    assert_eq!(ErrorCode::Unavailable.status(), 503);
    assert_eq!(ErrorCode::Internal.status(), 500);
}

#[test]
fn outcomes_carry_every_cancel_reason_and_ranks_by_amount() {
    let outcome = |kind, rank, reason| OutcomeEvent {
        kind,
        bid_id: "b-1".into(),
        auction_id: "a1".into(),
        bidder_id: "alice".into(),
        amount: 200,
        try_seq: 2,
        try_index: 1,
        tried_at: at("2026-11-26T23:28:13.125815Z"),
        decided_at: at("2026-11-26T23:28:20.000000Z"),
        rank,
        reason,
    };
    for reason in every_cancel_reason() {
        let cancelled = outcome(OutcomeKind::Cancelled, None, Some(reason));
        assert_matches("outcome-event.schema.json", &bytes(&cancelled));
    }
    let confirmed = outcome(OutcomeKind::Confirmed, Some(1), None);
    assert_matches("outcome-event.schema.json", &bytes(&confirmed));
}

/// Request bodies that both the decoder and the schema refuse.
#[test]
fn schemas_refuse_what_the_request_decoders_refuse() {
    let withdraws = [
        json!({"bid_id": "b-1"}),
        json!({"bidder_id": "alice"}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 5}),
        json!({"bid_id": "a.b", "bidder_id": "alice"}),
        json!({"bid_id": "b-1", "bidder_id": ""}),
        json!({"bid_id": 1, "bidder_id": "alice"}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "auction_id": "*"}),
        json!(["b-1", "alice"]),
    ];
    for body in &withdraws {
        assert!(decode_withdraw(&bytes(body), "a1").is_err(), "{body}");
        assert_rejects("withdraw-request.schema.json", body);
    }

    let raises = [
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 200}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "expected_amount": 150}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": -1, "expected_amount": 0}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 2.5, "expected_amount": 1}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": "200", "expected_amount": 1}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 9007199254740992u64, "expected_amount": 1}),
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 200, "expected_amount": 150, "x": 1}),
        json!({"bid_id": "b 1", "bidder_id": "alice", "amount": 200, "expected_amount": 150}),
    ];
    for body in &raises {
        assert!(decode_raise(&bytes(body), "a1").is_err(), "{body}");
        assert_rejects("raise-request.schema.json", body);
    }
    // A raise to no more than the expected amount is well formed: the
    // verifier refuses it `not_higher`, with the bid's amount.
    let not_higher =
        json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 150, "expected_amount": 150});
    assert!(decode_raise(&bytes(&not_higher), "a1").is_ok());
    assert_matches("raise-request.schema.json", &bytes(&not_higher));

    let open = json!({"capacity": 1, "policy": "highest"});
    assert!(decode_open(&bytes(&open), "a1").is_err());
    assert_rejects("auction-open-request.schema.json", &open);

    let closes = [
        json!({"by": "request"}),
        json!({"auction_id": "a.1"}),
        json!([]),
        json!(null),
    ];
    for body in &closes {
        assert!(decode_close(&bytes(body), "a1").is_err(), "{body}");
        assert_rejects("close-request.schema.json", body);
    }
}

/// Bodies the decoders accept, which the schemas accept too.
#[test]
fn schemas_accept_what_the_request_decoders_accept() {
    let withdraw = json!({"bid_id": "b-1", "bidder_id": "alice", "auction_id": "a1"});
    assert!(decode_withdraw(&bytes(&withdraw), "a1").is_ok());
    assert_matches("withdraw-request.schema.json", &bytes(&withdraw));

    let raise = json!({"bid_id": "b-1", "bidder_id": "alice", "amount": 9007199254740991u64, "expected_amount": 0, "auction_id": "a1"});
    assert!(decode_raise(&bytes(&raise), "a1").is_ok());
    assert_matches("raise-request.schema.json", &bytes(&raise));

    // A close takes an empty body too, which is not JSON, so no schema's.
    assert!(decode_close(b"", "a1").is_ok());
    for body in [json!({}), json!({"auction_id": "a1"})] {
        assert!(decode_close(&bytes(&body), "a1").is_ok());
        assert_matches("close-request.schema.json", &bytes(&body));
    }
}

/// Shapes allot never writes.
#[test]
fn schemas_refuse_what_allot_never_writes() {
    let bad = [
        // A withdraw is never refused for a raise's reasons.
        (
            "withdraw-reply.schema.json",
            json!({"status": "refused", "bid_id": "b", "auction_id": "a", "withdraw_seq": 3, "reason": "conflict"}),
        ),
        (
            "withdraw-reply.schema.json",
            json!({"status": "withdrawn", "bid_id": "b", "auction_id": "a", "withdraw_seq": 3}),
        ),
        // A conflict always says what the amount is now, and only the
        // amount refusals do.
        (
            "raise-reply.schema.json",
            json!({"status": "refused", "bid_id": "b", "auction_id": "a", "raise_seq": 3, "reason": "conflict"}),
        ),
        (
            "raise-reply.schema.json",
            json!({"status": "refused", "bid_id": "b", "auction_id": "a", "raise_seq": 3, "reason": "not_owner", "current_amount": 5}),
        ),
        (
            "raise-reply.schema.json",
            json!({"status": "raised", "bid_id": "b", "auction_id": "a", "raise_seq": 0, "amount": 5}),
        ),
        (
            "close-reply.schema.json",
            json!({"status": "closing", "auction_id": "a", "close_seq": 3, "duplicate": false}),
        ),
        (
            "close-reply.schema.json",
            json!({"status": "closed", "auction_id": "a", "close_seq": 3}),
        ),
        (
            "close-reply.schema.json",
            json!({"status": "error", "error": "sold_out", "message": "x"}),
        ),
        (
            "held-event.schema.json",
            json!({"type": "hold", "bid_id": "b", "auction_id": "a", "bidder_id": "u", "amount": 5, "try_seq": 2, "held_seq": 2}),
        ),
        (
            "withdraw-event.schema.json",
            json!({"type": "withdraw", "bid_id": "b", "auction_id": "a.b", "bidder_id": "u", "withdrawn_at": "2026-01-01T00:00:00.000000Z"}),
        ),
        (
            "raise-event.schema.json",
            json!({"type": "raise", "bid_id": "b", "auction_id": "a", "bidder_id": "u", "amount": 5, "expected_amount": 4, "raised_at": "2026-01-01T00:00:00Z"}),
        ),
        (
            "close-event.schema.json",
            json!({"type": "close", "auction_id": "a", "closed_at": "2026-01-01T00:00:00.000000Z", "by": "operator"}),
        ),
        (
            "close-event.schema.json",
            json!({"type": "close", "auction_id": "a", "closed_at": "2026-01-01T00:00:00.000000Z"}),
        ),
        (
            "open-event.schema.json",
            json!({"type": "open", "auction_id": "a", "capacity": 1, "min_amount": 0, "max_wins_per_bidder": 1, "policy": "highest", "opened_at": "2026-01-01T00:00:00.000000Z"}),
        ),
        (
            "outcome-event.schema.json",
            json!({"type": "cancelled", "bid_id": "b", "auction_id": "a", "bidder_id": "u", "amount": 1, "try_seq": 1, "tried_at": "2026-01-01T00:00:00.000000Z", "decided_at": "2026-01-01T00:00:00.000000Z", "reason": "outbid", "rank": 1}),
        ),
        (
            "outcome-event.schema.json",
            json!({"type": "cancelled", "bid_id": "b", "auction_id": "a", "bidder_id": "u", "amount": 1, "try_seq": 1, "tried_at": "2026-01-01T00:00:00.000000Z", "decided_at": "2026-01-01T00:00:00.000000Z", "reason": "withdrawn_early"}),
        ),
    ];
    for (name, instance) in &bad {
        assert_rejects(name, instance);
    }
}

#[test]
fn result_messages_match_their_schemas() {
    let request = allot::wire::ResultRequest {
        bid_id: "b-1".into(),
    };
    assert_matches("result-request.schema.json", &bytes(&request));
    let decided_at = at("2030-01-01T00:00:00.000001Z");
    let mut replies = vec![
        ResultReply::Confirmed {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            try_seq: 2,
            try_index: 1,
            amount: 150,
            rank: 1,
            decided_at,
        },
        ResultReply::Undecided {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
        },
    ];
    for reason in every_cancel_reason() {
        replies.push(ResultReply::Cancelled {
            bid_id: "b-1".into(),
            auction_id: "a1".into(),
            try_seq: 2,
            try_index: 1,
            amount: 150,
            reason,
            decided_at,
        });
    }
    // A result request is never a conflict, and an unknown auction is
    // only a bid never decided.
    replies.extend(
        error_replies::<ResultReply>().into_iter().filter(|r| {
            !matches!(r, ResultReply::Error { error, .. } if matches!(error, ErrorCode::Conflict | ErrorCode::UnknownAuction))
        }),
    );
    for reply in &replies {
        assert_matches("result-reply.schema.json", &bytes(reply));
    }
    assert_rejects(
        "result-reply.schema.json",
        &json!({"status": "confirmed", "bid_id": "b-1", "auction_id": "a1", "try_seq": 2, "amount": 1, "decided_at": "2030-01-01T00:00:00.000001Z"}),
    );
}
