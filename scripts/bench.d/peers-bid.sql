-- One bid on the hot auction in one statement (scripts/bench peers,
-- PostgreSQL for reference): take a slot from the auction's row if one is
-- left, and record the decision.
\set bidder random(1, 1000000)
WITH slot AS (
  UPDATE auctions SET remaining = remaining - 1
  WHERE id = 1 AND remaining > 0
  RETURNING capacity - remaining AS rank
)
INSERT INTO decisions (auction, bidder, verdict, rank)
SELECT 1, :bidder, CASE WHEN count(*) = 1 THEN 'confirmed' ELSE 'cancelled' END, max(rank)
FROM slot;
