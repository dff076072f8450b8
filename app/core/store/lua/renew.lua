-- Renews the lease of the running attempt A.attempt, with its progress and preview events
-- ('' = none) and a coalesced `progress` webhook. Returns -1 when the lease is lost
-- (another attempt owns the job, or it finished), else bit 0: a cancel was requested,
-- bit 1: someone watches the job's preview.
local st = redis.call('HGET', K.job, 'status')
if st ~= '"running"' or redis.call('HGET', K.job, 'attempts') ~= A.attempt then return -1 end
redis.call('ZADD', K.leases, now_ms() + A.lease_ms, A.id)
if A.progress ~= '' then
  redis.call('HSET', K.job, 'progress', A.progress)
  event(K.events, A.maxlen, A.ttl, 'progress', A.progress_event)
  -- A `progress` webhook, coalesced: at most one per A.webhook_every_ms per job.
  local now = now_ms()
  local last = tonumber(redis.call('HGET', K.job, 'webhook_progress_ms') or '0')
  if now - last >= A.webhook_every_ms and webhook_wants(K.job, 'progress') then
    local n = redis.call('HINCRBY', K.job, 'webhook_progress_n', 1)
    redis.call('HSET', K.job, 'webhook_progress_ms', now)
    webhook_enqueue(A.prefix, K.job, A.id, 'progress', A.id .. '.progress.' .. n, A.ttl, now)
  end
end
if A.preview_event ~= '' then event(K.events, A.maxlen, A.ttl, 'preview', A.preview_event) end
return redis.call('EXISTS', K.cancel) + 2 * redis.call('EXISTS', K.preview)
