-- A job whose deadline (Cancel-After, deadline_seconds) has passed leaves the deadlines
-- set: queued, it is canceled now (reason deadline); running, it gets its cancel flag, so
-- it stops at its next step and finish records the deadline as the reason.
local now = now_ms()
if not past_deadline(K.job, now) then
  if redis.call('EXISTS', K.job) == 0 then redis.call('ZREM', K.deadlines, A.id) end
  return {'not_yet'}
end
redis.call('ZREM', K.deadlines, A.id)
local st = redis.call('HGET', K.job, 'status')
if st == '"queued"' then
  redis.call('HSET', K.job, 'error', A.deadline_error, 'finished_at', A.finished_at,
             'finished_ts', A.finished_ts)
  finish_job(K, A, 'canceled', A.deadline_done, now)
  return {'canceled'}
end
if st == '"running"' then
  redis.call('SET', K.cancel, 'deadline', 'EX', A.ttl)
  redis.call('HSET', K.job, 'deadline_passed', 'true')
  return {'stopping'}
end
return {'finished'}
