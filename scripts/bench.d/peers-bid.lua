-- One bid on one auction, decided and recorded in one step: what a
-- flash-sale team would build on Redis (scripts/bench peers).
--   KEYS[1] the auction's remaining slots (a counter, set to its capacity)
--   KEYS[2] the auction's wins per bidder (a hash)
--   KEYS[3] the auction's decisions (a stream, one entry per bid)
--   ARGV[1] the bidder, ARGV[2] most wins per bidder, ARGV[3] the capacity
-- Returns {verdict, rank (1 = first slot) or reason, stream id}.
local wins = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local verdict, detail
if wins > tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
  verdict, detail = 'cancelled', 'bidder_limit'
else
  local left = redis.call('DECR', KEYS[1])
  if left < 0 then
    redis.call('INCR', KEYS[1])
    redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
    verdict, detail = 'cancelled', 'sold_out'
  else
    verdict, detail = 'confirmed', tostring(tonumber(ARGV[3]) - left)
  end
end
local id = redis.call('XADD', KEYS[3], '*', 'bidder', ARGV[1], 'verdict', verdict, 'detail', detail)
return {verdict, detail, id}
