-- A new queued job with its queue entry, first event, counters and broker message; or
-- the earlier job of a reused Idempotency-Key; or a limit reached.
-- K.idem and K.broker are '' when there is none.
if K.idem ~= '' then
  local prev = redis.call('GET', K.idem)
  if prev then
    local sep = string.find(prev, ' ', 1, true)
    local pid = string.sub(prev, 1, sep - 1)
    if redis.call('EXISTS', A.prefix .. 'job:' .. pid) == 1 then
      if string.sub(prev, sep + 1) == A.fingerprint then
        -- One write, so that a WAIT after this script also covers the earlier job's
        -- creation (Redis 7 counts a connection's own writes only).
        redis.call('HINCRBY', K.stats, 'idempotent_replays', 1)
        return {'replay', pid}
      end
      return {'conflict', pid}
    end
  end
end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', K.queue, '-inf', A.created_ts - A.ttl)
if A.queue_limit >= 0 and redis.call('ZCARD', K.queue) >= A.queue_limit then
  return {'queue_full'}
end
redis.call('ZREMRANGEBYSCORE', K.inflight, '-inf', now - A.ttl * 1000)
if A.client_limit > 0 and redis.call('ZCARD', K.inflight) >= A.client_limit then
  return {'client_limit'}
end
hset_pairs(K.job, A.fields)
if A.deadline_ms > 0 then  -- by the Redis clock, as the claim and the sweep judge it
  redis.call('HSET', K.job, 'deadline_ms', now + A.deadline_ms)
  redis.call('ZADD', A.prefix .. 'deadlines', now + A.deadline_ms, A.id)
end
redis.call('EXPIRE', K.job, A.ttl)
redis.call('ZADD', K.queue, A.created_ts, A.id)
redis.call('ZADD', K.inflight, now, A.id)
redis.call('EXPIRE', K.inflight, A.ttl)
event(K.events, A.maxlen, A.ttl, 'status', '{"status": "queued"}')
redis.call('HINCRBYFLOAT', K.stats, 'jobs_submitted:' .. A.kind, 1)
if K.idem ~= '' then redis.call('SET', K.idem, A.id .. ' ' .. A.fingerprint, 'EX', A.ttl) end
-- The task's message, in the same step: a stored job always has one on its way.
if K.broker ~= '' then redis.call('LPUSH', K.broker, A.message) end
return {'created', A.id, redis.call('ZRANK', K.queue, A.id)}
