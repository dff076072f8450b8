-- Up to A.limit due deliveries of the webhook outbox, each leased for A.lease_ms: its
-- score moves to the lease's end, so a delivery whose dispatcher dies is due again then,
-- and no other dispatcher takes it meanwhile. Each gets its next attempt number, the
-- fencing token webhook_record checks. An entry that expired with its job is dropped.
local now = now_ms()
local out = {}
for _, did in ipairs(redis.call('ZRANGEBYSCORE', K.due, '-inf', now, 'LIMIT', 0, A.limit)) do
  local entry = A.prefix .. 'webhook:' .. did
  if redis.call('EXISTS', entry) == 0 then
    redis.call('ZREM', K.due, did)
  else
    local attempt = redis.call('HINCRBY', entry, 'attempts', 1)
    redis.call('ZADD', K.due, now + A.lease_ms, did)
    local f = redis.call('HMGET', entry, 'job', 'event', 'doc', 'queued_ms')
    table.insert(out, {did, attempt, f[1], f[2], f[3], f[4], now})
  end
end
return out
