-- Undoes create (the job was never handed to anyone). K.idem is '' when there is none.
redis.call('DEL', K.job, K.events)
redis.call('ZREM', K.queue, A.id)
redis.call('ZREM', K.inflight, A.id)
if K.idem ~= '' then redis.call('DEL', K.idem) end
redis.call('HINCRBYFLOAT', K.stats, 'jobs_submitted:' .. A.kind, -1)
return 1
