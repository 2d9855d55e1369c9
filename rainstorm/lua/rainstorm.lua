#!lua name=rainstorm
--
-- rainstorm function library.  Loaded with FUNCTION LOAD REPLACE by
-- rainstorm.lua.Library; called only through its typed wrappers.
--
-- Rules every function here follows:
--   * it touches only keys passed in KEYS (never builds key names);
--   * it validates every argument and every check BEFORE its first write,
--     because a Lua error does not roll back earlier writes;
--   * it deletes only stream entries that the same call acknowledged
--     (never MAXLEN), so pending entries are never lost.

local LIB_VERSION = '5'

local function to_int(value, what)
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) or n < 0 then
    error('rainstorm: ' .. what .. ' must be a non-negative integer, got ' .. tostring(value))
  end
  return n
end

-- '' -> nil, else an integer (may be negative; |n| < 2^53, so exact in a double)
local function to_time(value, what)
  if value == '' then return nil end
  local n = string.match(value, '^%-?%d+$') and tonumber(value)
  if not n or #value > 17 or math.abs(n) >= 2 ^ 53 then
    error('rainstorm: ' .. what .. ' must be an integer below 2^53 or empty, got ' .. value)
  end
  return n
end

local function field_of(entry_fields, name)
  for i = 1, #entry_fields, 2 do
    if entry_fields[i] == name then return entry_fields[i + 1] end
  end
  return nil
end

-- Is stream entry `id` still pending in `group`, and does it carry `uid`?
-- Returns nil when it may be committed, else a reason string.
local function check_pending(stream, group, id, uid)
  local pend = redis.call('XPENDING', stream, group, id, id, 1)
  if #pend == 0 then return 'acked' end
  local rows = redis.call('XRANGE', stream, id, id)
  if #rows == 0 then return 'missing' end
  if field_of(rows[1][2], 'u') ~= uid then return 'stale' end
  return nil
end

-- Streams (deduplicated) whose length exceeds max_backlog, or nil.
local function over_backlog(streams, max_backlog)
  if max_backlog <= 0 then return nil end
  local seen = {}
  for _, s in ipairs(streams) do
    if not seen[s] then
      seen[s] = true
      if redis.call('XLEN', s) >= max_backlog then return s end
    end
  end
  return nil
end

------------------------------------------------------------------------------
-- rainstorm_load: append source batches to stage-0 streams and move the
-- source cursor in the same atomic step.
--
-- KEYS[1]        = counters hash        rs:{job}:counters
-- KEYS[2]        = cursor hash          rs:{job}:cursor
-- KEYS[3]        = job meta hash        rs:{job}:meta (must exist)
-- KEYS[4..3+n]   = stage-0 stream of each entry  rs:{job}:s0:p<k>
-- ARGV[1]        = expected cursor position ('' = nothing loaded yet)
-- ARGV[2]        = new cursor position (e.g. '3:1048576' or 'done')
-- ARGV[3]        = max_backlog (entries per stream, 0 = unbounded)
-- ARGV[4]        = n, number of entries
-- ARGV[5]        = bytes carried by the entries (for progress)
-- ARGV[6..]      = n pairs: uid, payload
-- Returns {'ok'} | {'cursor', current} | {'backlog', stream} | {'gone'} |
--         {'stopped', state}
-- ('gone': the job's keys are missing, e.g. Redis restarted without data;
--  'stopped': the job is no longer running, e.g. cancelled.)
------------------------------------------------------------------------------
local function load(keys, args)
  local counters, cursor, meta = keys[1], keys[2], keys[3]
  local expected, new_pos = args[1], args[2]
  local max_backlog = to_int(args[3], 'max_backlog')
  local n = to_int(args[4], 'n')
  local nbytes = to_int(args[5], 'bytes')
  if #keys ~= 3 + n then error('rainstorm_load: expected ' .. (3 + n) .. ' keys, got ' .. #keys) end
  if #args ~= 5 + 2 * n then error('rainstorm_load: expected ' .. (5 + 2 * n) .. ' args') end
  if new_pos == nil or new_pos == '' then error('rainstorm_load: empty new cursor') end
  local state = redis.call('HGET', meta, 'state')
  if not state then return {'gone'} end
  if state ~= 'running' then return {'stopped', state} end

  local current = redis.call('HGET', cursor, 'pos')
  if not current then current = '' end
  if current ~= expected then return {'cursor', current} end
  local streams = {}
  for i = 1, n do streams[i] = keys[3 + i] end
  local full = over_backlog(streams, max_backlog)
  if full then return {'backlog', full} end

  for i = 1, n do
    redis.call('XADD', keys[3 + i], '*', 'u', args[4 + 2 * i], 'd', args[5 + 2 * i])
  end
  redis.call('HSET', cursor, 'pos', new_pos)
  if n > 0 then
    redis.call('HINCRBY', counters, 's0:emitted', n)
    redis.call('HINCRBY', counters, 's0:loaded_bytes', nbytes)
  end
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_commit: acknowledge a batch of input entries and emit what was
-- computed from them, atomically.  First commit wins.
--
-- KEYS[1]                = counters hash   rs:{job}:counters
-- KEYS[2]                = dead letters    rs:{job}:dlq
-- KEYS[3]                = delta log       rs:{job}:state:s<i>:log
-- KEYS[4..3+n_in]        = input stream of each input entry
-- KEYS[4+n_in..]         = output stream of each output entry
-- ARGV[1]  = consumer group of the input stage (g<i>)
-- ARGV[2]  = input stage index i
-- ARGV[3]  = n_in      ARGV[4] = n_out     ARGV[5] = n_dead
-- ARGV[6]  = max_backlog of output streams (0 = unbounded)
-- ARGV[7]  = aggregate delta (msgpack) or '' for none
-- ARGV[8]  = counter field that outputs are emitted into ('' if n_out = 0)
-- ARGV[9]  = records in     ARGV[10] = records out     ARGV[11] = input bytes
-- ARGV[12] = n_extra, extra counters (e.g. malformed rows skipped)
-- ARGV[13..]  n_in pairs (id, uid), n_out pairs (uid, payload),
--             n_dead dead-letter payloads (msgpack maps),
--             n_extra pairs (counter field, integer increment)
-- then, only for a stage with event-time windows, 2 more (integers, in µs):
--   batch max = the largest event time in the batch ('' if none)
--   guard     = the smallest stage max event time at which a window the batch
--               counts into is closed (window end + allowed lateness + max
--               delay; '' if it counts into none)
--   Refused ({'closed', current}, nothing written) when the stage's max event
--   time (counters field s<i>:max_event_us) is already >= guard; on success
--   s<i>:max_event_us = max(itself, batch max).
-- Returns {'ok'} | {'rejected', id, reason, id, reason, ...} | {'backlog', stream} |
--         {'closed', current max event time}
------------------------------------------------------------------------------
local function commit(keys, args)
  local counters, dlq, log = keys[1], keys[2], keys[3]
  local group, stage = args[1], args[2]
  local n_in = to_int(args[3], 'n_in')
  local n_out = to_int(args[4], 'n_out')
  local n_dead = to_int(args[5], 'n_dead')
  local max_backlog = to_int(args[6], 'max_backlog')
  local delta, emit_field = args[7], args[8]
  local rec_in = to_int(args[9], 'records_in')
  local rec_out = to_int(args[10], 'records_out')
  local bytes_in = to_int(args[11], 'bytes_in')
  local n_extra = to_int(args[12], 'n_extra')
  if n_in < 1 then error('rainstorm_commit: no input entries') end
  if #keys ~= 3 + n_in + n_out then error('rainstorm_commit: wrong number of keys') end
  local n_fixed = 12 + 2 * n_in + 2 * n_out + n_dead + 2 * n_extra
  local windowed = #args == n_fixed + 2
  if #args ~= n_fixed and not windowed then
    error('rainstorm_commit: wrong number of args')
  end
  local batch_max, guard
  if windowed then
    batch_max = to_time(args[n_fixed + 1], 'batch max event time')
    guard = to_time(args[n_fixed + 2], 'window guard')
  end
  if n_out > 0 and emit_field == '' then error('rainstorm_commit: outputs without emit field') end
  local ebase = 12 + 2 * n_in + 2 * n_out + n_dead
  for x = 1, n_extra do
    local incr = tonumber(args[ebase + 2 * x])
    if incr == nil or incr ~= math.floor(incr) then
      error('rainstorm_commit: extra counter increment must be an integer')
    end
  end

  local base = 12
  local rejected = {}
  for i = 1, n_in do
    local why = check_pending(keys[3 + i], group, args[base + 2 * i - 1], args[base + 2 * i])
    if why then
      rejected[#rejected + 1] = args[base + 2 * i - 1]
      rejected[#rejected + 1] = why
    end
  end
  if #rejected > 0 then
    redis.call('HINCRBY', counters, 's' .. stage .. ':rejected', #rejected / 2)
    table.insert(rejected, 1, 'rejected')
    return rejected
  end
  local max_field = 's' .. stage .. ':max_event_us'
  local current
  if windowed then
    local raw = redis.call('HGET', counters, max_field)
    if raw then current = tonumber(raw) end
    if guard and current and current >= guard then return {'closed', raw} end
  end
  local outs = {}
  for j = 1, n_out do outs[j] = keys[3 + n_in + j] end
  local full = over_backlog(outs, max_backlog)
  if full then return {'backlog', full} end

  -- all checks passed: write
  for i = 1, n_in do
    local stream, id = keys[3 + i], args[base + 2 * i - 1]
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  end
  local obase = base + 2 * n_in
  for j = 1, n_out do
    redis.call('XADD', keys[3 + n_in + j], '*', 'u', args[obase + 2 * j - 1], 'd', args[obase + 2 * j])
  end
  local dbase = obase + 2 * n_out
  for k = 1, n_dead do
    redis.call('XADD', dlq, '*', 'stage', stage, 'kind', 'record', 'd', args[dbase + k])
  end
  if delta ~= '' then redis.call('XADD', log, '*', 'd', delta) end
  local p = 's' .. stage .. ':'
  redis.call('HINCRBY', counters, p .. 'committed', n_in)
  redis.call('HINCRBY', counters, p .. 'commits', 1)
  redis.call('HINCRBY', counters, p .. 'records_in', rec_in)
  redis.call('HINCRBY', counters, p .. 'records_out', rec_out)
  if bytes_in > 0 then redis.call('HINCRBY', counters, p .. 'bytes_in', bytes_in) end
  if n_dead > 0 then redis.call('HINCRBY', counters, p .. 'dead_records', n_dead) end
  if n_out > 0 then redis.call('HINCRBY', counters, emit_field, n_out) end
  for x = 1, n_extra do
    redis.call('HINCRBY', counters, args[ebase + 2 * x - 1], args[ebase + 2 * x])
  end
  if batch_max and (current == nil or batch_max > current) then
    redis.call('HSET', counters, max_field, args[n_fixed + 1])
  end
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_deadletter: move one whole input entry to the dead-letter stream.
--
-- KEYS[1] = counters hash  KEYS[2] = dead letters  KEYS[3] = input stream
-- ARGV[1] = group  ARGV[2] = stage index  ARGV[3] = entry id  ARGV[4] = uid
-- ARGV[5] = error text   ARGV[6] = delivery count
-- Returns {'ok'} | {'rejected', id, reason}
------------------------------------------------------------------------------
local function deadletter(keys, args)
  local counters, dlq, stream = keys[1], keys[2], keys[3]
  if #keys ~= 3 or #args ~= 6 then error('rainstorm_deadletter: wrong arity') end
  local group, stage, id, uid, err = args[1], args[2], args[3], args[4], args[5]
  local deliveries = to_int(args[6], 'deliveries')
  local why = check_pending(stream, group, id, uid)
  if why then return {'rejected', id, why} end
  local rows = redis.call('XRANGE', stream, id, id)
  local data = field_of(rows[1][2], 'd') or ''
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('XADD', dlq, '*', 'stage', stage, 'kind', 'entry', 'uid', uid, 'stream', stream,
    'error', err, 'deliveries', deliveries, 'd', data)
  redis.call('HINCRBY', counters, 's' .. stage .. ':dead', 1)
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_requeue: move one dead letter back into a stage stream, once.
--
-- KEYS[1] = counters hash  KEYS[2] = dead letters  KEYS[3] = target stream
-- ARGV[1] = dead-letter entry id   ARGV[2] = stage index
-- ARGV[3] = kind: 'entry' (a whole input entry: it was counted dead, never
--           committed) or 'record' (one record of a committed entry: it goes
--           back as a new one-record entry, so the stage gains an emitted entry)
-- ARGV[4] = uid of the new entry   ARGV[5] = its payload
-- ARGV[6] = bytes to take back from s<i>:bytes_in (a stage-0 record that
--           was counted when its entry was committed)
-- Returns {'ok'} | {'gone'} (already requeued or removed)
------------------------------------------------------------------------------
local function requeue(keys, args)
  local counters, dlq, stream = keys[1], keys[2], keys[3]
  if #keys ~= 3 or #args ~= 6 then error('rainstorm_requeue: wrong arity') end
  local id, stage, kind, uid, payload = args[1], args[2], args[3], args[4], args[5]
  local unbytes = to_int(args[6], 'bytes')
  to_int(stage, 'stage')
  if kind ~= 'entry' and kind ~= 'record' then error('rainstorm_requeue: bad kind ' .. kind) end
  if #redis.call('XRANGE', dlq, id, id) == 0 then return {'gone'} end
  redis.call('XADD', stream, '*', 'u', uid, 'd', payload)
  redis.call('XDEL', dlq, id)
  local p = 's' .. stage .. ':'
  if kind == 'entry' then
    redis.call('HINCRBY', counters, p .. 'dead', -1)
  else
    redis.call('HINCRBY', counters, p .. 'dead_records', -1)
    redis.call('HINCRBY', counters, p .. 'emitted', 1)
  end
  if unbytes > 0 then redis.call('HINCRBY', counters, p .. 'bytes_in', -unbytes) end
  redis.call('HINCRBY', counters, p .. 'requeued', 1)
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_compact: replace delta-log entries by their fold into the base.
--
-- KEYS[1] = base hash rs:{job}:state:s<i>   KEYS[2] = delta log stream
-- ARGV[1] = expected base version   ARGV[2] = new folded state (msgpack)
-- ARGV[3..] = ids of the log entries folded into ARGV[2]
-- Returns {'ok', new_version} | {'conflict', reason}
------------------------------------------------------------------------------
local function compact(keys, args)
  local base, log = keys[1], keys[2]
  if #keys ~= 2 or #args < 3 then error('rainstorm_compact: wrong arity') end
  local expected = to_int(args[1], 'version')
  local version = tonumber(redis.call('HGET', base, 'v') or '0')
  if version ~= expected then return {'conflict', 'version'} end
  for i = 3, #args do
    if #redis.call('XRANGE', log, args[i], args[i]) == 0 then return {'conflict', 'missing'} end
  end
  for i = 3, #args do redis.call('XDEL', log, args[i]) end
  redis.call('HSET', base, 'v', version + 1, 'd', args[2])
  return {'ok', version + 1}
end

------------------------------------------------------------------------------
-- rainstorm_snapshot (read-only): the folded base and every delta not yet
-- folded, read atomically.
-- KEYS[1] = base hash   KEYS[2] = delta log stream
-- Returns {version, base_blob_or_empty, id1, delta1, id2, delta2, ...}
------------------------------------------------------------------------------
local function snapshot(keys, _args)
  local base, log = keys[1], keys[2]
  local v = redis.call('HGET', base, 'v') or '0'
  local out = {v, redis.call('HGET', base, 'd') or ''}
  for _, row in ipairs(redis.call('XRANGE', log, '-', '+')) do
    out[#out + 1] = row[1]
    out[#out + 1] = field_of(row[2], 'd') or ''
  end
  return out
end

local function version(_keys, _args)
  return LIB_VERSION
end

redis.register_function('rainstorm_load', load)
redis.register_function('rainstorm_commit', commit)
redis.register_function('rainstorm_deadletter', deadletter)
redis.register_function('rainstorm_requeue', requeue)
redis.register_function('rainstorm_compact', compact)
redis.register_function{function_name = 'rainstorm_snapshot', callback = snapshot,
  flags = {'no-writes'}}
redis.register_function{function_name = 'rainstorm_version', callback = version,
  flags = {'no-writes'}}
