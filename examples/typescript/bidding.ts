// Bidding on allot from Node.js, with nats.js (the npm package `nats`).
//
// Against a running `allot serve` (NATS_URL, default nats://127.0.0.1:4222):
// opens an auction with 2 slots, follows its outcomes live, bids, resends a
// bid, waits for decisions and withdraws. The wire contract is in
// docs/integrating.md; its messages are typed in allot.d.ts. Each reply is
// printed as it comes; the last line is a JSON summary. A reply the contract
// does not allow exits with status 1.
//
//     npm run build        # tsc: bidding.ts -> dist/bidding.js
//     node dist/bidding.js

import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "nats";

// The wire types (allot.d.ts declares types only: nothing is imported at run time).
import type {
  AuctionSpec,
  BidReply,
  BidRequest,
  OpenReply,
  Outcome,
  Reply,
  Try,
  WithdrawReply,
  WithdrawRequest,
} from "./allot.js";

const NATS_URL = process.env.NATS_URL || "nats://127.0.0.1:4222";
const PREFIX = process.env.ALLOT_PREFIX || "allot"; // as `allot serve --prefix`
const AUCTION = process.env.AUCTION_ID || `js-${randomBytes(4).toString("hex")}`;

// How many times a request answered `unavailable` is sent in all.
const ATTEMPTS = 20;
// A bid with "wait": true is answered within about 2 s, a withdraw within 5 s.
const REQUEST_TIMEOUT_MS = 10_000;

/** A reply the contract does not allow at this point. */
class Unexpected extends Error {}

/** allot's requests, each sent again while it is answered `unavailable`. */
class Allot {
  /** Requests sent again after an `unavailable` reply. */
  retries = 0;

  constructor(
    readonly nc: NatsConnection,
    readonly prefix = PREFIX,
  ) {}

  /**
   * Sends `body` on `<prefix>.<subject>` and returns the JSON reply.
   *
   * `unavailable` means "not now": wait `retry_after_ms` and send the same
   * request again. That is safe even when the first one was carried out: a
   * bid id never gets a second outcome. (So is resending after a timeout.)
   */
  async request<R extends Reply>(subject: string, body: object): Promise<R> {
    const data = JSON.stringify(body);
    for (let attempt = 1; ; attempt++) {
      const msg = await this.nc.request(`${this.prefix}.${subject}`, data, {
        timeout: REQUEST_TIMEOUT_MS,
      });
      const reply = msg.json<R>();
      if (reply.status !== "error" || reply.error !== "unavailable") {
        return reply;
      }
      if (attempt === ATTEMPTS) {
        throw new Unexpected(`${subject}: still unavailable after ${ATTEMPTS} attempts: ${JSON.stringify(reply)}`);
      }
      this.retries++;
      await sleep(reply.retry_after_ms ?? 100);
    }
  }

  open(auctionId: string, spec: AuctionSpec): Promise<OpenReply> {
    return this.request(`admin.open.${auctionId}`, spec);
  }

  bid(auctionId: string, bid: BidRequest): Promise<BidReply> {
    return this.request(`bid.${auctionId}`, bid);
  }

  withdraw(auctionId: string, withdraw: WithdrawRequest): Promise<WithdrawReply> {
    return this.request(`withdraw.${auctionId}`, withdraw);
  }
}

/** Prints the reply; throws Unexpected unless its status is one of these. */
function expect<R extends Reply, S extends R["status"]>(
  what: string,
  reply: R,
  ...statuses: S[]
): Extract<R, { status: S }> {
  console.log(`${what}: ${JSON.stringify(reply)}`);
  if (!statuses.includes(reply.status as S)) {
    throw new Unexpected(`${what}: expected ${statuses.join(" or ")}, got ${JSON.stringify(reply)}`);
  }
  return reply as Extract<R, { status: S }>;
}

/** A try's identity: its log entry's sequence and its index in the entry. */
const tryOf = (message: Try) => `${message.try_seq}/${message.try_index}`;

/**
 * A reply's or an outcome's decision: `confirmed #2`, `cancelled: outbid`;
 * undefined for a reply without one.
 */
function decision(message: BidReply | Outcome): string | undefined {
  const status = "type" in message ? message.type : message.status;
  if (status === "confirmed" && "rank" in message) return `confirmed #${message.rank}`;
  if (status === "cancelled" && "reason" in message) return `cancelled: ${message.reason}`;
  return undefined;
}

/** The steps, each checked against the contract; returns the summary. */
async function walkThrough(allot: Allot) {
  const nc = allot.nc;

  // Follow the outcomes live, one per bid whose try is in the log, matched
  // to bids by bid_id. A core subscription sees only what is published
  // while it exists, so it is in place (flushed) before the first bid.
  const outcomes = new Map<string, Outcome>();
  const twice: Outcome[] = [];
  let arrived = () => {};
  nc.subscribe(`${PREFIX}.outcome.${AUCTION}.>`, {
    callback: (err, msg) => {
      if (err) throw err;
      const outcome = msg.json<Outcome>();
      if (outcomes.has(outcome.bid_id)) twice.push(outcome);
      outcomes.set(outcome.bid_id, outcome);
      arrived();
    },
  });
  await nc.flush();

  expect("open", await allot.open(AUCTION, { capacity: 2, max_wins_per_bidder: 1 }), "opened");

  // `accepted`: the try is in the log. Its outcome follows on the feed.
  const alice = expect(
    "bid",
    await allot.bid(AUCTION, { bid_id: "b-alice", bidder_id: "alice", amount: 150 }),
    "accepted",
  );

  // Resending the same bid_id is safe. The gateway that took the bid
  // answers with the original try, marked duplicate.
  const again = expect(
    "resend",
    await allot.bid(AUCTION, { bid_id: "b-alice", bidder_id: "alice", amount: 150 }),
    "accepted",
  );
  const resendDuplicate = again.duplicate === true;
  if (resendDuplicate && tryOf(again) !== tryOf(alice)) {
    throw new Unexpected(`a duplicate of another try: ${JSON.stringify(again)} after ${JSON.stringify(alice)}`);
  }

  // A withdraw that comes before its bid (whose request timed out, say)
  // leaves a tombstone: the bid, if it arrives after all, is cancelled.
  const withdrawn = expect(
    "early withdraw",
    await allot.withdraw(AUCTION, { bid_id: "b-dave", bidder_id: "dave" }),
    "withdrawn",
  );

  // With "wait": true the reply carries the decision: confirmed (with its
  // rank) or cancelled (with its reason). `accepted` means the decision
  // comes later, on the feed; `rejected` means nothing was written (the
  // auction is sold out, say), and the bid gets no outcome.
  const waited = new Map<string, BidReply>();
  for (const [bid_id, bidder_id, amount] of [
    ["b-dave", "dave", 130],
    ["b-bob", "bob", 120],
    ["b-carol", "carol", 300],
  ] as const) {
    const reply = await allot.bid(AUCTION, { bid_id, bidder_id, amount, wait: true });
    waited.set(bid_id, expect("bid, wait", reply, "confirmed", "cancelled", "accepted", "rejected"));
  }

  // A resend that waits always gets the original try and its decision.
  const bob = waited.get("b-bob") as Extract<BidReply, Try>;
  const bobAgain = expect(
    "resend, wait",
    await allot.bid(AUCTION, { bid_id: "b-bob", bidder_id: "bob", amount: 120, wait: true }),
    "confirmed",
    "cancelled",
    "accepted",
  );
  if (decision(bob) && (decision(bobAgain) !== decision(bob) || tryOf(bobAgain) !== tryOf(bob))) {
    throw new Unexpected(`a resend that waited: ${JSON.stringify(bobAgain)} after ${JSON.stringify(bob)}`);
  }

  // In a first_n auction a try is decided when it arrives: a bid that won
  // cannot be withdrawn.
  const refused = expect(
    "withdraw",
    await allot.withdraw(AUCTION, { bid_id: "b-alice", bidder_id: "alice" }),
    "refused",
  );

  // Every bid whose try is in the log gets exactly one outcome.
  const tries = new Map([["b-alice", tryOf(alice)]]);
  for (const [bidId, reply] of waited) {
    if (reply.status !== "rejected" && reply.status !== "error") tries.set(bidId, tryOf(reply));
  }
  const bids = () =>
    `outcomes of ${JSON.stringify([...outcomes.keys()])}, tries of ${JSON.stringify([...tries.keys()])}`;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Unexpected(`after 10 s: ${bids()}`)), 10_000);
    arrived = () => {
      if ([...tries.keys()].every((b) => outcomes.has(b))) {
        clearTimeout(timer);
        resolve();
      }
    };
    arrived();
  });
  if (twice.length > 0 || outcomes.size !== tries.size) {
    throw new Unexpected(`${bids()}; twice: ${JSON.stringify(twice)}`);
  }
  for (const [bidId, outcome] of outcomes) {
    if (tryOf(outcome) !== tries.get(bidId)) {
      throw new Unexpected(`${JSON.stringify(outcome)} is not the outcome of try ${tries.get(bidId)}`);
    }
    const reply = waited.get(bidId);
    if (reply && decision(reply) && decision(reply) !== decision(outcome)) {
      throw new Unexpected(`reply ${JSON.stringify(reply)} disagrees with outcome ${JSON.stringify(outcome)}`);
    }
  }

  const decided = [...outcomes.values()].sort((a, b) => a.try_seq - b.try_seq || a.try_index - b.try_index);
  return {
    auction_id: AUCTION,
    confirmed: decided
      .filter((o) => o.type === "confirmed")
      .map((o) => ({ bid_id: o.bid_id, rank: o.rank, try_seq: o.try_seq, try_index: o.try_index })),
    cancelled: decided
      .filter((o) => o.type === "cancelled")
      .map((o) => ({ bid_id: o.bid_id, reason: o.reason, try_seq: o.try_seq, try_index: o.try_index })),
    rejected: [...waited.values()].flatMap((r) =>
      r.status === "rejected" ? [{ bid_id: r.bid_id, reason: r.reason }] : [],
    ),
    resend_duplicate: resendDuplicate,
    withdrawn: { bid_id: withdrawn.bid_id, empty_rollback: withdrawn.empty_rollback },
    withdraw_refused: { bid_id: refused.bid_id, reason: refused.reason },
    unavailable_retries: allot.retries,
  };
}

async function main() {
  const nc = await connect({ servers: NATS_URL });
  try {
    const summary = await walkThrough(new Allot(nc));
    await nc.drain();
    console.log(JSON.stringify(summary));
  } finally {
    if (!nc.isClosed()) await nc.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Unexpected ? `unexpected reply: ${e.message}` : e);
  process.exitCode = 1;
});
