-- The outcome of attempt A.attempt of delivery A.did: `delivered` or `failed` (it leaves
-- the outbox) or `retry` (due again in A.delay_ms). Fenced by the attempt: a dispatcher
-- whose lease lapsed (another one has the delivery now) records nothing. The job's
-- document gets A.state as its webhook's state, unless a later delivery of the same event
-- (progress) holds it; the counters count the outcome.
if redis.call('HGET', K.entry, 'attempts') ~= A.attempt or not redis.call('ZSCORE', K.due, A.did) then
  return {'stale'}
end
local f = redis.call('HMGET', K.entry, 'job', 'event', 'queued_ms')
local now = now_ms()
if A.outcome == 'retry' then
  redis.call('ZADD', K.due, now + A.delay_ms, A.did)
else
  redis.call('ZREM', K.due, A.did)
  redis.call('DEL', K.entry)
end
local jobkey = A.prefix .. 'job:' .. f[1]
local raw = redis.call('HGET', jobkey, 'webhooks')
if raw then
  local current = cjson.decode(raw)[f[2]]
  if current and current.id == A.did then webhook_state(jobkey, f[2], cjson.decode(A.state)) end
end
redis.call('HINCRBYFLOAT', K.stats, 'webhook_deliveries:' .. A.outcome, 1)
return {'recorded', now - tonumber(f[3])}
