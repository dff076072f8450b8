-- queued -> running with a fresh lease and the next attempt (the fencing token); a job
-- whose cancel flag is set, or whose deadline passed, is canceled instead.
local st = redis.call('HGET', K.job, 'status')
if not st then return {'gone'} end
if st ~= '"queued"' then return {'busy', st} end
if redis.call('HGET', K.job, 'kind') ~= '"' .. A.kind .. '"' then return {'wrong_kind'} end
local now = now_ms()
if past_deadline(K.job, now) then  -- it never runs, whoever else enforces the deadline
  redis.call('HSET', K.job, 'error', A.deadline_error)
  finish_job(K, A, 'canceled', A.deadline_done, now)
  return {'deadline'}
end
if redis.call('EXISTS', K.cancel) == 1 then
  finish_job(K, A, 'canceled', A.cancel_done, now)
  return {'canceled'}
end
local attempt = redis.call('HINCRBY', K.job, 'attempts', 1)
redis.call('HSET', K.job, 'status', '"running"', 'worker', A.worker,
           'started_at', A.started_at, 'started_ts', A.started_ts)
redis.call('EXPIRE', K.job, A.ttl)
redis.call('ZREM', K.queue, A.id)
redis.call('ZADD', K.leases, now + A.lease_ms, A.id)
event(K.events, A.maxlen, A.ttl, 'status', '{"status": "running", "attempt": ' .. attempt .. '}')
webhook_enqueue(A.prefix, K.job, A.id, 'start', A.id .. '.start.' .. attempt, A.ttl, now)
return {'claimed', attempt, redis.call('HGETALL', K.job)}
