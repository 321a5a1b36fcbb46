//! What a failed call to NATS or JetStream tells the requester: 503
//! `unavailable` with a hint of when to resend, for a failure that passes
//! by itself (the log's stream electing a leader, no responders, a
//! timeout, a lost connection); 500 `internal` for a real fault. The
//! answers that cannot be told yet (a verifier catching up) are
//! `unavailable` too, with the hints below.

use async_nats::jetstream::context::{
    PublishError, PublishErrorKind, RequestError as ApiRequestError,
    RequestErrorKind as ApiRequestErrorKind,
};
use async_nats::jetstream::stream::{
    ConsumerError, ConsumerErrorKind, DirectGetError, DirectGetErrorKind, LastRawMessageError,
    LastRawMessageErrorKind,
};
use async_nats::jetstream::ErrorCode as ApiCode;
use async_nats::{RequestErrorKind, StatusCode};

use crate::error::ErrorKind;
use crate::wire::{ErrorCode, RequestError};

/// When to resend after JetStream was away: about a stream's leader
/// election, which takes a few hundred ms.
pub(super) const ELECTION_RETRY_MS: u64 = 500;

/// When to resend while a verifier catches up on an auction's tries: it
/// decides thousands a second, so a moment is enough.
pub(super) const CATCH_UP_RETRY_MS: u64 = 100;

/// When to resend a withdraw, raise or result request the verifier did
/// not answer in time: it is restarting, rebuilding, or busy.
pub(super) const VERIFIER_RETRY_MS: u64 = 250;

/// A failed call as the reply's error: `unavailable` if the failure
/// passes by itself, else `internal`. (Named for the default: anything
/// not known to pass is a fault.) A call that timed out may have been
/// carried out all the same, an append stored and only its ack lost; the
/// same request sent again is safe, since its ids make it one request
/// (JetStream's de-duplication, or a resend's original reply).
pub(super) fn internal(e: impl Into<async_nats::Error>) -> RequestError {
    let e = e.into();
    if passes(&*e) {
        tracing::debug!(error = %e, "request failed for now");
        return unavailable(
            format!(
                "the log is briefly unavailable ({e}); send the same request again in {ELECTION_RETRY_MS} ms"
            ),
            ELECTION_RETRY_MS,
        );
    }
    tracing::error!(error = %e, "request failed");
    RequestError::new(ErrorCode::Internal, format!("internal error: {e}"))
}

/// An `unavailable` error: `message` says what to send again, and when,
/// as the hint does.
pub(super) fn unavailable(message: String, retry_after_ms: u64) -> RequestError {
    RequestError::new(ErrorCode::Unavailable, message).retry_after(retry_after_ms)
}

/// Whether `e` or one of its causes is a failure that passes by itself.
fn passes(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        match verdict(e) {
            Verdict::Passes => return true,
            Verdict::Fault => return false,
            Verdict::SeeCause => cause = e.source(),
        }
    }
    false
}

/// What one error in a chain says.
enum Verdict {
    /// Not now: the same request may well succeed in a moment.
    Passes,
    /// Sending it again will not help.
    Fault,
    /// This error does not say; its cause may.
    SeeCause,
}

fn verdict(e: &(dyn std::error::Error + 'static)) -> Verdict {
    if let Some(e) = e.downcast_ref::<PublishError>() {
        return match e.kind() {
            // No responders on the stream's subject: it has no leader now.
            PublishErrorKind::StreamNotFound
            | PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => Verdict::Passes,
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::MaxPayloadExceeded => Verdict::Fault,
            // JetStream's own error, if it answered.
            PublishErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<DirectGetError>() {
        return match e.kind() {
            DirectGetErrorKind::TimedOut => Verdict::Passes,
            DirectGetErrorKind::ErrorResponse(status, _) if status == StatusCode::NO_RESPONDERS => {
                Verdict::Passes
            }
            DirectGetErrorKind::ErrorResponse(..)
            | DirectGetErrorKind::NotFound
            | DirectGetErrorKind::InvalidSubject => Verdict::Fault,
            DirectGetErrorKind::Request | DirectGetErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<LastRawMessageError>() {
        return match e.kind() {
            LastRawMessageErrorKind::JetStream(e) => api(&e),
            LastRawMessageErrorKind::NoMessageFound | LastRawMessageErrorKind::InvalidSubject => {
                Verdict::Fault
            }
            LastRawMessageErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
        return match e.kind() {
            RequestErrorKind::TimedOut | RequestErrorKind::NoResponders => Verdict::Passes,
            RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                Verdict::Fault
            }
            RequestErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<ApiRequestError>() {
        return match e.kind() {
            ApiRequestErrorKind::TimedOut | ApiRequestErrorKind::NoResponders => Verdict::Passes,
            ApiRequestErrorKind::InvalidSubject => Verdict::Fault,
            ApiRequestErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<ConsumerError>() {
        return match e.kind() {
            ConsumerErrorKind::TimedOut => Verdict::Passes,
            ConsumerErrorKind::JetStream(e) => api(&e),
            ConsumerErrorKind::InvalidConsumerType | ConsumerErrorKind::InvalidName => {
                Verdict::Fault
            }
            ConsumerErrorKind::Request | ConsumerErrorKind::Other => Verdict::SeeCause,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::jetstream::Error>() {
        return api(e);
    }
    if let Some(e) = e.downcast_ref::<crate::error::Error>() {
        return match e.kind() {
            ErrorKind::Timeout => Verdict::Passes,
            _ => Verdict::SeeCause,
        };
    }
    Verdict::SeeCause
}

/// JetStream's "duplicate message id is in process" (409): an append with
/// the same message id is still being stored, as when a resend overtakes
/// its first copy while the stream's leader changes. The resend finds the
/// first one stored in a moment.
const DUPLICATE_IN_PROCESS: ApiCode = ApiCode(10158);

/// A JetStream API error: passes when JetStream says it is temporarily
/// unavailable (status 503), its cluster cannot take the request now (no
/// meta leader), or the same message is still being stored.
fn api(e: &async_nats::jetstream::Error) -> Verdict {
    match e.error_code() {
        ApiCode::CLUSTER_NOT_AVAILABLE | ApiCode::CLUSTER_NOT_LEADER | DUPLICATE_IN_PROCESS => {
            Verdict::Passes
        }
        _ if e.code() == 503 => Verdict::Passes,
        _ => Verdict::Fault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jetstream_error(
        code: usize,
        err_code: u64,
        description: &str,
    ) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code,
            "err_code": err_code,
            "description": description,
        }))
        .expect("a JetStream API error")
    }

    fn code_of(e: &RequestError) -> (ErrorCode, Option<u64>) {
        (e.code, e.retry_after_ms)
    }

    const NOW_NOT: (ErrorCode, Option<u64>) = (ErrorCode::Unavailable, Some(ELECTION_RETRY_MS));
    const FAULT: (ErrorCode, Option<u64>) = (ErrorCode::Internal, None);

    #[test]
    fn an_election_or_a_timeout_is_unavailable_with_a_hint() {
        for kind in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
        ] {
            let e = internal(PublishError::new(kind));
            assert_eq!(code_of(&e), NOW_NOT, "{kind}");
            assert_eq!(e.code.status(), 503);
            assert!(
                e.message.contains("send the same request again in 500 ms"),
                "{}",
                e.message
            );
        }
        let in_process = jetstream_error(409, 10158, "duplicate message id is in process");
        assert_eq!(code_of(&internal(in_process)), NOW_NOT);
        let no_leader = jetstream_error(503, 10008, "JetStream system temporarily unavailable");
        let e = internal(PublishError::with_source(
            PublishErrorKind::Other,
            no_leader,
        ));
        assert_eq!(code_of(&e), NOW_NOT);
        let e = internal(DirectGetError::new(DirectGetErrorKind::ErrorResponse(
            StatusCode::NO_RESPONDERS,
            "no responders".into(),
        )));
        assert_eq!(code_of(&e), NOW_NOT);
        assert_eq!(
            code_of(&internal(DirectGetError::new(DirectGetErrorKind::TimedOut))),
            NOW_NOT
        );
        let asked = async_nats::RequestError::new(RequestErrorKind::NoResponders);
        assert_eq!(code_of(&internal(asked)), NOW_NOT);
        // A status count: a consumer that could not be made in time,
        // wrapped in the crate's error, and boxed.
        let counting = crate::error::Error::with_source(
            ErrorKind::Nats,
            ConsumerError::new(ConsumerErrorKind::TimedOut),
        );
        assert_eq!(code_of(&internal(counting)), NOW_NOT);
        let boxed: async_nats::Error = Box::new(ConsumerError::new(ConsumerErrorKind::JetStream(
            jetstream_error(500, 10009, "JetStream cluster can not handle request"),
        )));
        assert_eq!(code_of(&internal(boxed)), NOW_NOT);
    }

    #[test]
    fn anything_else_stays_internal() {
        for kind in [
            PublishErrorKind::WrongLastSequence,
            PublishErrorKind::WrongLastMessageId,
            PublishErrorKind::MaxPayloadExceeded,
            PublishErrorKind::Other,
        ] {
            assert_eq!(code_of(&internal(PublishError::new(kind))), FAULT, "{kind}");
        }
        let store_failed = jetstream_error(500, 10077, "error storing the message");
        let e = internal(PublishError::with_source(
            PublishErrorKind::Other,
            store_failed,
        ));
        assert_eq!(code_of(&e), FAULT);
        assert_eq!(e.code.status(), 500);
        assert!(e.message.starts_with("internal error: "), "{}", e.message);
        for kind in [
            DirectGetErrorKind::NotFound,
            DirectGetErrorKind::ErrorResponse(StatusCode::OK, "odd".into()),
        ] {
            assert_eq!(code_of(&internal(DirectGetError::new(kind))), FAULT);
        }
        let unreadable = serde_json::from_slice::<u64>(b"{").unwrap_err();
        assert_eq!(code_of(&internal(unreadable)), FAULT);
        let setup = crate::error::Error::new(ErrorKind::Protocol, "a reply of the wrong shape");
        assert_eq!(code_of(&internal(setup)), FAULT);
    }
}
