// The messages of allot's wire contract that bidding.ts sends and reads,
// as TypeScript types: docs/integrating.md says what they mean, and
// schemas/ holds their JSON Schemas. Types only: bidding.ts imports them
// with `import type`, so nothing of this file is left in dist/.

/** Open request on `allot.admin.open.<auction_id>`. */
export interface AuctionSpec {
  capacity: number;
  min_amount?: number;
  /** RFC 3339; default: never. */
  closes_at?: string;
  max_wins_per_bidder?: number;
  policy?: "first_n" | "top_amount";
}

/** Bid request on `allot.bid.<auction_id>`. */
export interface BidRequest {
  bid_id: string;
  bidder_id: string;
  /** Integer minor units, 0 to 2^53-1. */
  amount: number;
  /** Reply once the bid is decided. Left out rather than false. */
  wait?: true;
}

/** Withdraw request on `allot.withdraw.<auction_id>`. */
export interface WithdrawRequest {
  bid_id: string;
  bidder_id: string;
}

/** A try's identity: its log entry's sequence and its index in the entry. */
export interface Try {
  try_seq: number;
  try_index: number;
}

export type ErrorCode =
  | "invalid_json"
  | "too_large"
  | "unknown_field"
  | "missing_field"
  | "invalid_field"
  | "invalid_subject"
  | "conflict"
  | "unavailable"
  | "internal"
  | "unknown_auction"
  | "unauthenticated"
  | "forbidden"
  | "rate_limited";

/** Any request's error reply. `unavailable`: send the same request again. */
export interface ErrorReply {
  status: "error";
  error: ErrorCode;
  message: string;
  /** On `unavailable` and `rate_limited`: when to send it again. */
  retry_after_ms?: number;
}

export type OpenReply =
  | {
      status: "opened";
      auction_id: string;
      capacity: number;
      min_amount: number;
      closes_at?: string;
      max_wins_per_bidder: number;
      policy?: "first_n" | "top_amount";
      open_seq: number;
      duplicate?: true;
    }
  | ErrorReply;

export type CancelReason =
  | "capacity_full"
  | "auction_closed"
  | "below_minimum"
  | "bidder_limit"
  | "unknown_auction"
  | "invalid_event"
  | "withdrawn"
  | "outbid";

export type RejectReason = "unknown_auction" | "auction_closed" | "sold_out" | "below_minimum";

interface Bid {
  bid_id: string;
  auction_id: string;
}

export type BidReply =
  | (Bid & Try & { status: "accepted"; duplicate?: true })
  | (Bid & Try & { status: "confirmed"; duplicate?: true; rank: number })
  | (Bid & Try & { status: "cancelled"; duplicate?: true; reason: CancelReason })
  | (Bid & { status: "rejected"; reason: RejectReason })
  | ErrorReply;

export type WithdrawReply =
  | (Bid & { status: "withdrawn"; withdraw_seq: number; empty_rollback: boolean })
  | (Bid & {
      status: "refused";
      withdraw_seq: number;
      reason: "already_confirmed" | "already_cancelled" | "not_owner" | "auction_closed";
    })
  | ErrorReply;

export type Reply = OpenReply | BidReply | WithdrawReply;

/** Outcome event, live on `allot.outcome.<auction_id>.confirmed|cancelled.live` (or stored alone on `allot.outcome.<auction_id>.confirmed|cancelled` by earlier versions): one per bid whose try is in the log. */
export interface Outcome extends Try {
  type: "confirmed" | "cancelled";
  bid_id: string;
  auction_id: string;
  bidder_id: string;
  amount: number;
  tried_at: string;
  decided_at: string;
  /** On `confirmed`: 1..N. */
  rank?: number;
  /** On `cancelled`. */
  reason?: CancelReason;
}
