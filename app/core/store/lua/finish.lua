-- A job in one of the A.allowed states (comma list) -> A.to, fenced by A.attempt ('' =
-- any), with its counters, fields and last progress ('' = none; an event unless the
-- document already says so).
local st = redis.call('HGET', K.job, 'status')
if not st then return {'gone'} end
local ok = false
for s in string.gmatch(A.allowed, '[^,]+') do if '"' .. s .. '"' == st then ok = true end end
if not ok then
  if st == '"' .. A.to .. '"' and A.attempt ~= '' and redis.call('HGET', K.job, 'attempts') == A.attempt then
    -- This attempt recorded this outcome already (a retry whose first try reached the
    -- master but no replica in time): one write, so that a WAIT after it covers the first.
    redis.call('HINCRBY', K.stats, 'finish_retries', 1)
    return {'done_before', st}
  end
  return {'refused', st}
end
if A.attempt ~= '' and redis.call('HGET', K.job, 'attempts') ~= A.attempt then
  return {'stale', st}
end
if A.progress ~= '' and redis.call('HGET', K.job, 'progress') ~= A.progress then
  event(K.events, A.maxlen, A.events_ttl, 'progress', A.progress)
end
for i = 1, #A.counters, 2 do
  redis.call('HINCRBYFLOAT', K.stats, A.counters[i], A.counters[i + 1])
end
hset_pairs(K.job, A.fields)
local done = A.done
if A.to == 'canceled' and redis.call('HGET', K.job, 'deadline_passed') then
  -- Stopped by its deadline (deadlines.lua raised the flag): that is the reason.
  redis.call('HSET', K.job, 'error', A.deadline_error)
  done = A.deadline_done
end
finish_job(K, A, A.to, done, now_ms())
return {'done', st}
