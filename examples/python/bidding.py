"""Bidding on allot from Python, with nats-py.

Against a running `allot serve` (NATS_URL, default nats://127.0.0.1:4222):
opens an auction with 2 slots, follows its outcomes live, bids, resends a
bid, waits for decisions and withdraws. The wire contract is in
docs/integrating.md. Each reply is printed as it comes; the last line is a
JSON summary. A reply the contract does not allow exits with status 1.

    python3 bidding.py
"""

import asyncio
import json
import os
import secrets
import sys

import nats

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
PREFIX = os.environ.get("ALLOT_PREFIX", "allot")  # as `allot serve --prefix`
AUCTION = os.environ.get("AUCTION_ID") or f"py-{secrets.token_hex(4)}"

# How many times a request answered `unavailable` is sent in all.
ATTEMPTS = 20
# A bid with "wait": true is answered within about 2 s, a withdraw within 5 s.
REQUEST_TIMEOUT = 10.0


class Unexpected(Exception):
    """A reply the contract does not allow at this point."""


class Allot:
    """allot's requests, each sent again while it is answered `unavailable`."""

    def __init__(self, nc, prefix=PREFIX):
        self.nc = nc
        self.prefix = prefix
        self.retries = 0

    async def request(self, subject, body):
        """Sends `body` on `<prefix>.<subject>` and returns the JSON reply.

        `unavailable` means "not now": wait `retry_after_ms` and send the
        same request again. That is safe even when the first one was carried
        out: a bid id never gets a second outcome. (So is resending after a
        timeout.)
        """
        data = json.dumps(body).encode()
        for attempt in range(1, ATTEMPTS + 1):
            msg = await self.nc.request(f"{self.prefix}.{subject}", data, timeout=REQUEST_TIMEOUT)
            reply = json.loads(msg.data)
            if reply.get("error") != "unavailable":
                return reply
            if attempt == ATTEMPTS:
                raise Unexpected(f"{subject}: still unavailable after {ATTEMPTS} attempts: {reply}")
            self.retries += 1
            await asyncio.sleep(reply["retry_after_ms"] / 1000)

    async def open(self, auction_id, **spec):
        return await self.request(f"admin.open.{auction_id}", spec)

    async def bid(self, auction_id, bid_id, bidder_id, amount, wait=False):
        body = {"bid_id": bid_id, "bidder_id": bidder_id, "amount": amount}
        if wait:
            body["wait"] = True  # an optional field is left out, never null
        return await self.request(f"bid.{auction_id}", body)

    async def withdraw(self, auction_id, bid_id, bidder_id):
        body = {"bid_id": bid_id, "bidder_id": bidder_id}
        return await self.request(f"withdraw.{auction_id}", body)


def expect(what, reply, *statuses):
    """Prints the reply; raises Unexpected unless its status is one of these."""
    print(f"{what}: {json.dumps(reply)}")
    if reply.get("status") not in statuses:
        raise Unexpected(f"{what}: expected {' or '.join(statuses)}, got {reply}")
    return reply


def try_of(message):
    """A try's identity: its log entry's sequence and its index in the entry."""
    return (message["try_seq"], message["try_index"])


def decision(message):
    """A reply's or an outcome's decision: ("confirmed", rank) or
    ("cancelled", reason); None for a reply without one."""
    status = message.get("type", message.get("status"))
    if status == "confirmed":
        return (status, message["rank"])
    if status == "cancelled":
        return (status, message["reason"])
    return None


async def walk_through(allot):
    """The steps, each checked against the contract; returns the summary."""
    nc = allot.nc

    # Follow the outcomes live, one per bid whose try is in the log, matched
    # to bids by bid_id. A core subscription sees only what is published
    # while it exists, so it is in place (flushed) before the first bid.
    outcomes, twice = {}, []
    arrived = asyncio.Event()

    async def on_outcome(msg):
        outcome = json.loads(msg.data)
        if outcome["bid_id"] in outcomes:
            twice.append(outcome)
        outcomes[outcome["bid_id"]] = outcome
        arrived.set()

    await nc.subscribe(f"{PREFIX}.outcome.{AUCTION}.>", cb=on_outcome)
    await nc.flush()

    expect("open", await allot.open(AUCTION, capacity=2, max_wins_per_bidder=1), "opened")

    # `accepted`: the try is in the log. Its outcome follows on the feed.
    alice = expect("bid", await allot.bid(AUCTION, "b-alice", "alice", 150), "accepted")

    # Resending the same bid_id is safe. The gateway that took the bid
    # answers with the original try, marked duplicate.
    again = expect("resend", await allot.bid(AUCTION, "b-alice", "alice", 150), "accepted")
    resend_duplicate = again.get("duplicate", False)
    if resend_duplicate and try_of(again) != try_of(alice):
        raise Unexpected(f"a duplicate of another try: {again} after {alice}")

    # A withdraw that comes before its bid (whose request timed out, say)
    # leaves a tombstone: the bid, if it arrives after all, is cancelled.
    withdrawn = expect("early withdraw", await allot.withdraw(AUCTION, "b-dave", "dave"), "withdrawn")

    # With "wait": true the reply carries the decision: confirmed (with its
    # rank) or cancelled (with its reason). `accepted` means the decision
    # comes later, on the feed; `rejected` means nothing was written (the
    # auction is sold out, say), and the bid gets no outcome.
    waited = {}
    bids = [("b-dave", "dave", 130), ("b-bob", "bob", 120), ("b-carol", "carol", 300)]
    for bid_id, bidder_id, amount in bids:
        reply = await allot.bid(AUCTION, bid_id, bidder_id, amount, wait=True)
        waited[bid_id] = expect("bid, wait", reply, "confirmed", "cancelled", "accepted", "rejected")

    # A resend that waits always gets the original try and its decision.
    bob = waited["b-bob"]
    again = expect(
        "resend, wait",
        await allot.bid(AUCTION, "b-bob", "bob", 120, wait=True),
        "confirmed", "cancelled", "accepted",
    )
    if decision(bob) and (decision(again), try_of(again)) != (decision(bob), try_of(bob)):
        raise Unexpected(f"a resend that waited: {again} after {bob}")

    # In a first_n auction a try is decided when it arrives: a bid that won
    # cannot be withdrawn.
    refused = expect("withdraw", await allot.withdraw(AUCTION, "b-alice", "alice"), "refused")

    # Every bid whose try is in the log gets exactly one outcome.
    tries = {"b-alice": try_of(alice)}
    tries.update({b: try_of(r) for b, r in waited.items() if r["status"] != "rejected"})

    async def all_decided():
        while not tries.keys() <= outcomes.keys():
            arrived.clear()
            await arrived.wait()

    try:
        await asyncio.wait_for(all_decided(), timeout=10)
    except asyncio.TimeoutError:
        raise Unexpected(f"no outcome in 10 s for {sorted(tries.keys() - outcomes.keys())}") from None

    if twice or outcomes.keys() != tries.keys():
        raise Unexpected(f"outcomes {sorted(outcomes)} (twice: {twice}), tries {sorted(tries)}")
    for bid_id, outcome in outcomes.items():
        if try_of(outcome) != tries[bid_id]:
            raise Unexpected(f"{outcome} is not the outcome of try {tries[bid_id]}")
        reply = waited.get(bid_id, {})
        if decision(reply) and decision(reply) != decision(outcome):
            raise Unexpected(f"reply {reply} disagrees with outcome {outcome}")

    def listed(kind, field):
        return [
            {"bid_id": o["bid_id"], field: o[field], "try_seq": o["try_seq"], "try_index": o["try_index"]}
            for o in sorted(outcomes.values(), key=try_of)
            if o["type"] == kind
        ]

    return {
        "auction_id": AUCTION,
        "confirmed": listed("confirmed", "rank"),
        "cancelled": listed("cancelled", "reason"),
        "rejected": [
            {"bid_id": b, "reason": r["reason"]} for b, r in waited.items() if r["status"] == "rejected"
        ],
        "resend_duplicate": resend_duplicate,
        "withdrawn": {"bid_id": withdrawn["bid_id"], "empty_rollback": withdrawn["empty_rollback"]},
        "withdraw_refused": {"bid_id": refused["bid_id"], "reason": refused["reason"]},
        "unavailable_retries": allot.retries,
    }


async def main():
    nc = await nats.connect(NATS_URL)
    try:
        summary = await walk_through(Allot(nc))
        await nc.drain()
    finally:
        await nc.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Unexpected as e:
        sys.exit(f"unexpected reply: {e}")
