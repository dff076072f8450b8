-- Renews the lease of the running attempt A.attempt, with its progress and preview events
-- ('' = none). Returns -1 when the lease is lost (another attempt owns the job, or it
-- finished), else bit 0: a cancel was requested, bit 1: someone watches the job's preview.
local st = redis.call('HGET', K.job, 'status')
if st ~= '"running"' or redis.call('HGET', K.job, 'attempts') ~= A.attempt then return -1 end
redis.call('ZADD', K.leases, now_ms() + A.lease_ms, A.id)
if A.progress ~= '' then
  redis.call('HSET', K.job, 'progress', A.progress)
  event(K.events, A.maxlen, A.ttl, 'progress', A.progress_event)
end
if A.preview_event ~= '' then event(K.events, A.maxlen, A.ttl, 'preview', A.preview_event) end
return redis.call('EXISTS', K.cancel) + 2 * redis.call('EXISTS', K.preview)
