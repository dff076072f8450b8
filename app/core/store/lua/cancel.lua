-- Queued: canceled at once. Running: the flag tells its worker to stop at the next step.
local st = redis.call('HGET', K.job, 'status')
if not st then return {'gone'} end
if st == '"queued"' then
  finish_job(K, A, 'canceled', A.cancel_done, now_ms())
  return {'canceled'}
end
if st == '"running"' then
  redis.call('SET', K.cancel, '1', 'EX', A.ttl)
  return {'requested'}
end
return {'finished', st}
