-- A running job whose lease expired: queued again (front of its queue, by submit time),
-- or failed after A.max_attempts, or canceled when a cancel was requested meanwhile. With
-- A.attempt ('' = by lease expiry): its own worker gives it back (shutting down), whatever
-- the lease says.
local now = now_ms()
local given_back = A.attempt ~= ''
local expiry = redis.call('ZSCORE', K.leases, A.id)
if not given_back and expiry and tonumber(expiry) > now then return {'alive'} end
local st = redis.call('HGET', K.job, 'status')
if st ~= '"running"' then
  if not given_back then redis.call('ZREM', K.leases, A.id) end
  return {'gone'}
end
if given_back and redis.call('HGET', K.job, 'attempts') ~= A.attempt then return {'stale'} end
local attempts = tonumber(redis.call('HGET', K.job, 'attempts'))
if redis.call('EXISTS', K.cancel) == 1 then
  redis.call('HSET', K.job, 'error', A.cancel_error)
  finish_job(K, A, 'canceled', A.cancel_done, now)
  return {'canceled', attempts}
end
if not given_back and attempts >= A.max_attempts then
  redis.call('HSET', K.job, 'error', A.fail_error)
  finish_job(K, A, 'failed', A.fail_done, now)
  return {'failed', attempts}
end
redis.call('HSET', K.job, 'status', '"queued"')
redis.call('HDEL', K.job, 'worker')
redis.call('EXPIRE', K.job, A.ttl)
redis.call('ZREM', K.leases, A.id)
redis.call('ZADD', K.queue, tonumber(redis.call('HGET', K.job, 'created_ts')), A.id)
redis.call('HINCRBYFLOAT', K.stats, 'jobs_requeued:' .. A.kind, 1)
event(K.events, A.maxlen, A.ttl, 'status',
      '{"status": "queued", "reason": "lease expired", "attempt": ' .. attempts .. '}')
return {'requeued', attempts}
