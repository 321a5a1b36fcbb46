//! The rest of a bid's lifecycle in a load test: its withdraw (early,
//! racing the bid, or once the bid is accepted), its raise, the close of
//! ranked auctions, and the `held` notices. Every answer goes into the
//! bid's facts, for the invariant check.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use tokio::task::JoinHandle;

use super::check::{Answer, BidFacts, Raise};
use super::engine::{retrying, Engine};
use super::report::Lifecycle;
use super::run::Shared;
use super::workload::{bid_index, Planned, WithdrawWhen, Workload};
use crate::client::AllotClient;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{label, CommandResult, HeldEvent, RaiseReply, RefuseReason, WithdrawReply};

/// What a bidder does once its bid is accepted: raise it, then withdraw it,
/// as the plan says.
pub(super) async fn follow_up(engine: &Engine, shared: &Shared, p: &Planned, attempts: u32) {
    if p.raise {
        raise(engine, shared, p, attempts).await;
    }
    if p.withdraw == Some(WithdrawWhen::Late) {
        withdraw(engine, shared, p, attempts).await;
    }
}

/// Withdraws the planned bid and records the answer.
pub(super) async fn withdraw(engine: &Engine, shared: &Shared, p: &Planned, attempts: u32) {
    let w = &shared.workload;
    let auction_id = w.auction_id(p.auction);
    let request = w.withdraw_request(p);
    let answer = match retrying(attempts, || engine.withdraw(&auction_id, &request)).await {
        Ok(WithdrawReply::Withdrawn {
            withdraw_seq,
            empty_rollback,
            ..
        }) => Some(Answer {
            seq: withdraw_seq,
            result: CommandResult::Withdrawn { empty_rollback },
        }),
        Ok(WithdrawReply::Refused {
            withdraw_seq,
            reason,
            ..
        }) => Some(Answer {
            seq: withdraw_seq,
            result: CommandResult::Refused {
                reason,
                current_amount: None,
            },
        }),
        Ok(WithdrawReply::Error { .. }) | Err(_) => None,
    };
    shared.facts(p.bid, |f| f.withdraws.push(answer));
}

/// Raises the planned bid from the amount its bidder knows; after a
/// `conflict` (another raise of the same bid came first), once more from
/// the amount the refusal names.
async fn raise(engine: &Engine, shared: &Shared, p: &Planned, attempts: u32) {
    let w = &shared.workload;
    let auction_id = w.auction_id(p.auction);
    let mut expected = p.amount;
    for _ in 0..2 {
        let request = w.raise_request(p, expected);
        let (answer, current) =
            match retrying(attempts, || engine.raise(&auction_id, &request)).await {
                Ok(RaiseReply::Raised {
                    raise_seq, amount, ..
                }) => (
                    Some(Answer {
                        seq: raise_seq,
                        result: CommandResult::Raised { amount },
                    }),
                    None,
                ),
                Ok(RaiseReply::Refused {
                    raise_seq,
                    reason,
                    current_amount,
                    ..
                }) => (
                    Some(Answer {
                        seq: raise_seq,
                        result: CommandResult::Refused {
                            reason,
                            current_amount,
                        },
                    }),
                    current_amount.filter(|_| reason == RefuseReason::Conflict),
                ),
                Ok(RaiseReply::Error { .. }) | Err(_) => (None, None),
            };
        shared.facts(p.bid, |f| {
            f.raises.push(Raise {
                amount: request.amount,
                answer,
            })
        });
        match current {
            Some(current) => expected = current,
            None => break,
        }
    }
}

/// Closes every auction of the run, so that the bids they hold are
/// decided.
pub(super) async fn close_all(engine: &Engine, w: &Workload, attempts: u32) -> Result<()> {
    futures::stream::iter(0..w.auctions)
        .map(|i| async move {
            let id = w.auction_id(i);
            retrying(attempts, || engine.close(&id))
                .await
                .map(drop)
                .map_err(|e| Error::new(ErrorKind::Nats, format!("cannot close auction {id}: {e}")))
        })
        .buffer_unordered(64)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect()
}

/// Subscribes to the `held` notices and records each with its bid, until
/// aborted.
pub(super) async fn read_holds(
    client: &AllotClient,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>> {
    let subject = client.subjects.hold("*");
    let mut notices = client
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
    // At the server before the first bid, so that no notice goes by unseen.
    crate::client::flush(&client.client).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = notices.next().await {
            let Ok(notice) = serde_json::from_slice::<HeldEvent>(&message.payload) else {
                continue;
            };
            let Some(auction) = shared.workload.auction_index(&notice.auction_id) else {
                continue; // another run's
            };
            let Some(bid) = bid_index(&notice.bid_id) else {
                continue;
            };
            shared.held_notices.fetch_add(1, Ordering::Relaxed);
            // A bid is its auction and its id together.
            shared.facts(bid, |f| {
                if f.auction == auction {
                    f.held.push(notice.amount)
                }
            });
        }
    }))
}

/// The counts of withdraws and raises, from what each bid was told.
pub(super) fn tally<'a>(bids: impl Iterator<Item = &'a BidFacts>, held_notices: u64) -> Lifecycle {
    let mut t = Lifecycle {
        held_notices,
        ..Lifecycle::default()
    };
    for b in bids {
        for answer in &b.withdraws {
            t.withdraws_sent += 1;
            match answer.map(|a| a.result) {
                Some(CommandResult::Withdrawn { empty_rollback }) => {
                    t.withdrawn += 1;
                    t.empty_rollbacks += u64::from(empty_rollback);
                }
                Some(CommandResult::Refused { reason, .. }) => {
                    *t.withdraws_refused.entry(label(&reason)).or_default() += 1
                }
                Some(CommandResult::Raised { .. }) => {}
                None => t.unanswered += 1,
            }
        }
        for raise in &b.raises {
            t.raises_sent += 1;
            match raise.answer.map(|a| a.result) {
                Some(CommandResult::Raised { .. }) => t.raised += 1,
                Some(CommandResult::Refused { reason, .. }) => {
                    t.raise_conflicts += u64::from(reason == RefuseReason::Conflict);
                    *t.raises_refused.entry(label(&reason)).or_default() += 1
                }
                Some(CommandResult::Withdrawn { .. }) => {}
                None => t.unanswered += 1,
            }
        }
    }
    t
}
