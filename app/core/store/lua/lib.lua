-- Shared by every script of the job store; it comes first, before the generated bindings
-- of the script's names (scripts.py), so its functions see only what they are passed.
-- Field values are JSON, so a status is stored as '"running"'.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function event(key, maxlen, ttl, name, data)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'event', name, 'data', data)
  redis.call('EXPIRE', key, ttl)
end
local function hset_pairs(key, pairs)
  if #pairs > 0 then redis.call('HSET', key, unpack(pairs)) end
end
-- Whether job `jobkey` (queued) is past its deadline (`deadline_ms`, Redis time).
local function past_deadline(jobkey, now)
  local dl = redis.call('HGET', jobkey, 'deadline_ms')
  return dl and now >= tonumber(dl)
end
-- Webhooks (app/core/webhooks): the delivery of event `name` of job `id`, as outbox
-- entry `did`, when the job's webhook asks for that event. The entry holds a snapshot of
-- the document (the payload is the job as it is at this event) and is due at once in the
-- sorted set `webhooks` (score: due time, ms); the document's `webhooks` field records
-- its state. Returns whether it was queued (webhook_wants).
local function webhook_state(jobkey, name, state)
  local raw = redis.call('HGET', jobkey, 'webhooks')
  local all = raw and cjson.decode(raw) or {}
  all[name] = state
  redis.call('HSET', jobkey, 'webhooks', cjson.encode(all))
end
local function webhook_wants(jobkey, name)
  local raw = redis.call('HGET', jobkey, 'webhook')
  if not raw then return false end
  for _, e in ipairs(cjson.decode(raw).events) do if e == name then return true end end
  return false
end
local function webhook_enqueue(prefix, jobkey, id, name, did, ttl, now)
  if not webhook_wants(jobkey, name) then return false end
  webhook_state(jobkey, name, {id = did, state = 'pending', attempts = 0})
  local flat = redis.call('HGETALL', jobkey)
  local snap = {}
  for i = 1, #flat, 2 do snap[flat[i]] = flat[i + 1] end
  local entry = prefix .. 'webhook:' .. did
  redis.call('HSET', entry, 'job', id, 'event', name, 'doc', cjson.encode(snap),
             'attempts', 0, 'queued_ms', now)
  redis.call('EXPIRE', entry, ttl)
  redis.call('ZADD', prefix .. 'webhooks', now, did)
  return true
end
-- The terminal transition shared by finish, cancel, claim and requeue. K: the job keys,
-- A: the common arguments (JOB_KEYS and COMMON in scripts.py).
local function finish_job(K, A, to, done, now)
  redis.call('HSET', K.job, 'status', '"' .. to .. '"')
  redis.call('ZREM', K.queue, A.id)
  redis.call('ZREM', K.leases, A.id)
  local client = redis.call('HGET', K.job, 'client')
  if client then redis.call('ZREM', A.prefix .. 'inflight:' .. cjson.decode(client), A.id) end
  redis.call('DEL', K.cancel)
  redis.call('EXPIRE', K.job, A.ttl)
  local idem = redis.call('HGET', K.job, 'idem')  -- the key lives as long as the job
  if idem then redis.call('EXPIRE', cjson.decode(idem), A.ttl) end
  event(K.events, A.maxlen, A.events_ttl, 'status', '{"status": "' .. to .. '"}')
  event(K.events, A.maxlen, A.events_ttl, 'done', done)
  redis.call('HINCRBYFLOAT', K.stats, 'jobs_finished:' .. A.kind .. ':' .. to, 1)
  redis.call('ZADD', K.expiry, math.floor(now / 1000) + A.ttl, A.id)
  redis.call('ZREM', A.prefix .. 'deadlines', A.id)
  -- The `completed` webhook in the same step: a finished job never lacks its delivery.
  webhook_enqueue(A.prefix, K.job, A.id, 'completed', A.id .. '.completed', A.ttl, now)
  -- Wakes the API's long polls (GET /jobs/{id}?wait=): one channel, one subscriber each.
  redis.call('PUBLISH', A.prefix .. 'finished', A.id)
end
