#!lua name=rainstorm
--
-- The rainstorm FUNCTION library: every change to a job's state is one call
-- of one of these functions, so Redis applies, persists and replicates it as
-- one unit.  Loaded with FUNCTION LOAD REPLACE by
-- rainstorm.lua.library.load_library (never over another version while jobs
-- run, unless forced).  Python calls each function only through its typed
-- wrapper in rainstorm/lua/__init__.py; rainstorm.lua.library reads
-- LIB_VERSION and the MAX_* caps below from this file (one source of truth),
-- and tests/unit/test_lua_contract.py checks the KEYS[i] / ARGV[i] contract
-- lines above each function against the layouts in rainstorm.lua.contract.
--
-- Functions (KEYS, ARGV and replies are documented above each one):
--   rainstorm_load        stage-0 entries + the source cursor, atomically
--   rainstorm_commit      ack a batch's input entries, emit its outputs, its
--                         dead records and its aggregate deltas (one per state
--                         partition); first commit
--                         wins; event-time windows refuse a closed window
--   rainstorm_deadletter  move one whole input entry to the dead letters
--   rainstorm_requeue     move one dead letter back into a stage, once
--   rainstorm_compact     fold a state partition's delta log into its base,
--                         emitting the windows the fold closed
--   rainstorm_version     (read-only) LIB_VERSION
--
-- Rules every function here follows:
--   * it touches only keys passed in KEYS: it builds hash field names
--     (counters 's<i>:<name>', each defined in rainstorm/protocol/counters.py,
--     which tests/unit/test_counter_names.py checks), never key names;
--   * it checks argument counts and sizes against the MAX_* caps FIRST, in
--     O(1) for counts, so no call (even a hostile one) runs for long;
--   * every writing function takes the job's meta hash and writes nothing
--     unless the job is running ({'gone'}: no meta; {'stopped', state});
--   * it validates every argument and every check BEFORE its first write,
--     because a Lua error does not roll back earlier writes;
--   * it deletes only what the same call moves elsewhere: input entries it
--     acknowledges (commit, deadletter), the dead letter it requeues, the
--     delta-log entries and delta keys it folds into the base and the folded
--     part it replaces (compact); never MAXLEN or XTRIM, so pending entries
--     are never lost;
--   * blobs of state (a commit's deltas, a compaction's folded part) are
--     never its arguments: the caller SETs them (XX) after the call in the
--     same MULTI, into keys the call creates empty only when it succeeds.

-- LIB_VERSION changes whenever a function's KEYS, ARGV or replies change,
-- or what workers write for each other to read (a state blob's encoding:
-- version 9 also brought ints in their narrowest array type, which version
-- 8 workers would dead-letter as malformed; version 10 keeps deltas and
-- folded parts in keys of their own, written in the caller's MULTI); every
-- client checks it (rainstorm_version) before its first call and refuses
-- another version with one line naming both, so workers of two versions
-- never share a job.
local LIB_VERSION = '10'

-- Caps (plain integers: Python parses them).  Far above what rainstorm sends
-- (batch_entries <= 256, parallelism <= 1024), low enough that a maximal call
-- stays around 50 ms (docs/deployment.md has the measurements).
local FOLD_RATIO = 4           -- a log is due at FOLD_RATIO x its base's bytes
local MAX_INPUTS = 1536       -- input entries per commit
local MAX_OUTPUTS = 2048      -- output entries per commit
local MAX_DEAD = 1024         -- dead-letter records per commit
local MAX_EXTRA = 64          -- extra counters per commit
local MAX_LOAD = 1024         -- entries per load
local MAX_COMPACT_IDS = 4096  -- delta-log ids folded per compaction
local MAX_DELTAS = 1024       -- state partitions one commit writes a delta into
local MAX_BYTES = 20971520    -- 20 MiB: all KEYS and ARGV of one call together

local function to_int(value, what)
  if type(value) ~= 'string' or #value > 15 or not string.match(value, '^%d+$') then
    error('rainstorm: ' .. what .. ' must be a non-negative integer below 10^15, got '
      .. string.sub(tostring(value), 1, 40))
  end
  return tonumber(value)
end

-- a signed integer of at most 15 digits (a counter increment)
local function to_incr(value, what)
  local digits = type(value) == 'string' and string.match(value, '^%-?(%d+)$')
  if not digits or #digits > 15 then
    error('rainstorm: ' .. what .. ' must be an integer below 10^15, got '
      .. string.sub(tostring(value), 1, 40))
  end
  return tonumber(value)
end

-- '' -> nil, else an integer (may be negative; |n| < 2^53, so exact in a double)
local function to_time(value, what)
  if value == '' then return nil end
  local n = string.match(value, '^%-?%d+$') and tonumber(value)
  if not n or #value > 17 or math.abs(n) >= 2 ^ 53 then
    error('rainstorm: ' .. what .. ' must be an integer below 2^53 or empty, got '
      .. string.sub(value, 1, 40))
  end
  return n
end

local function cap(n, max, what, fn)
  if n > max then
    error(fn .. ': ' .. what .. ' is ' .. n .. ', above the cap of ' .. max)
  end
end

-- The bytes of every key and argument together, against MAX_BYTES.  Called
-- after the counts are capped, so the loop is bounded.
local function cap_bytes(keys, args, fn)
  local total = 0
  for i = 1, #keys do total = total + #keys[i] end
  for i = 1, #args do total = total + #args[i] end
  if total > MAX_BYTES then
    error(fn .. ': ' .. total .. ' bytes of arguments, above the cap of ' .. MAX_BYTES)
  end
end

-- nil when the job (its meta hash) is running, else the reply to return
local function not_running(meta)
  local state = redis.call('HGET', meta, 'state')
  if not state then return {'gone'} end
  if state ~= 'running' then return {'stopped', state} end
  return nil
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
  if (field_of(rows[1][2], 'u') or '') ~= uid then return 'stale' end  -- no u: uid ''
  return nil
end

-- A stream entry id as two numbers (ms, seq); nil if it is not one.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if not ms or #ms > 15 or #seq > 15 then return nil end
  return tonumber(ms), tonumber(seq)
end

-- (ms, seq) before (ms, seq)?
local function parts_less(am, as, bm, bs)
  return am < bm or (am == bm and as < bs)
end

local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return parts_less(am, as, bm, bs)
end

-- The input ids of a commit grouped by their stream (ids checked well-formed).
local function inputs_by_stream(keys, args, n_in, base)
  local out = {}
  for i = 1, n_in do
    local stream, id = keys[3 + i], args[base + 2 * i - 1]
    if not id_parts(id) then error('rainstorm_commit: bad entry id ' .. string.sub(id, 1, 40)) end
    local ids = out[stream]
    if not ids then
      ids = {}
      out[stream] = ids
    end
    ids[#ids + 1] = id
  end
  return out
end

-- The set of ``ids`` still pending in ``group``: one XPENDING over their id
-- range (other consumers' entries may interleave: up to 4x as many rows are
-- read), then one call per id the range read could not cover.
local function pending_among(stream, group, ids)
  local lo, hi = ids[1], ids[1]
  for _, id in ipairs(ids) do
    if id_less(id, lo) then lo = id end
    if id_less(hi, id) then hi = id end
  end
  local count = 4 * #ids + 16
  local rows = redis.call('XPENDING', stream, group, lo, hi, count)
  local pending = {}
  for _, row in ipairs(rows) do pending[row[1]] = true end
  if #rows >= count then  -- truncated: look the rest up one by one
    for _, id in ipairs(ids) do
      if not pending[id] and #redis.call('XPENDING', stream, group, id, id, 1) > 0 then
        pending[id] = true
      end
    end
  end
  return pending
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
-- KEYS[1] = counters      rs:{job}:counters
-- KEYS[2] = cursor        rs:{job}:cursor
-- KEYS[3] = meta          rs:{job}:meta
-- KEYS[4..3+n]            the stage-0 stream of each entry  rs:{job}:s0:p<k>
-- ARGV[1] = expected_pos  expected cursor position ('' = nothing loaded yet)
-- ARGV[2] = new_pos       new cursor position (e.g. '3:1048576' or 'done')
-- ARGV[3] = max_backlog   entries per stream, 0 = unbounded
-- ARGV[4] = n             number of entries (<= MAX_LOAD)
-- ARGV[5] = nbytes        bytes carried by the entries (for progress)
-- ARGV[6..]               n pairs: uid, payload
-- Returns {'ok'} | {'cursor', current} | {'backlog', stream} | {'gone'} |
--         {'stopped', state}
------------------------------------------------------------------------------
local function load(keys, args)
  local fn = 'rainstorm_load'
  if #args < 5 then error(fn .. ': expected at least 5 args, got ' .. #args) end
  local n = to_int(args[4], 'n')
  cap(n, MAX_LOAD, 'n', fn)
  if #keys ~= 3 + n then error(fn .. ': expected ' .. (3 + n) .. ' keys, got ' .. #keys) end
  if #args ~= 5 + 2 * n then error(fn .. ': expected ' .. (5 + 2 * n) .. ' args') end
  cap_bytes(keys, args, fn)
  local counters, cursor, meta = keys[1], keys[2], keys[3]
  local expected, new_pos = args[1], args[2]
  local max_backlog = to_int(args[3], 'max_backlog')
  to_int(args[5], 'nbytes')
  if new_pos == '' then error(fn .. ': empty new cursor') end
  local stop = not_running(meta)
  if stop then return stop end

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
    redis.call('HINCRBY', counters, 's0:loaded_bytes', args[5])
  end
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_commit: acknowledge a batch of input entries and emit what was
-- computed from them, atomically.  First commit wins.
--
-- KEYS[1] = counters      rs:{job}:counters
-- KEYS[2] = dlq           rs:{job}:dlq
-- KEYS[3] = meta          rs:{job}:meta
-- KEYS[4..3+n_in]         the input stream of each input entry
-- KEYS[4+n_in..]          the output stream of each output entry
-- then 3 keys per delta:  its state partition's base rs:{job}:state:s<i>:p<k>,
--                         delta log rs:{job}:state:s<i>:p<k>:log and the
--                         delta's own key <base>:d:<token>
-- ARGV[1] = group         consumer group of the input stage (g<i>)
-- ARGV[2] = stage         input stage index i
-- ARGV[3] = n_in          input entries, 1..MAX_INPUTS
-- ARGV[4] = n_out         output entries, 0..MAX_OUTPUTS
-- ARGV[5] = n_dead        dead-letter records, 0..MAX_DEAD
-- ARGV[6] = max_backlog   of output streams (0 = unbounded)
-- ARGV[7] = n_delta       aggregate deltas (one per state partition touched), 0..MAX_DELTAS
-- ARGV[8] = emit_field    counter field outputs are emitted into ('' if n_out = 0)
-- ARGV[9] = records_in
-- ARGV[10] = records_out
-- ARGV[11] = bytes_in     input bytes (stage 0)
-- ARGV[12] = n_extra      extra counters (e.g. malformed rows skipped), 0..MAX_EXTRA
-- ARGV[13] = keep_inputs  '1': acknowledge the inputs without deleting them and
--                         without the uid check (a user's stream read directly)
-- ARGV[14] = fold_entries a partition's log is due for folding at this many deltas
-- ARGV[15] = fold_bytes   ... or once its unfolded bytes reach max(this, FOLD_RATIO x its base's)
-- ARGV[16..]  n_in pairs (id, uid), n_out pairs (uid, payload),
--             n_dead dead-letter payloads (msgpack maps),
--             n_extra pairs (counter field, integer increment),
--             n_delta pairs (token, bytes): each delta's token (its key is
--             <base>:d:<token>) and size, in the order of their keys
-- then, only for a stage with event-time windows, 2 more (integers, in µs):
--   batch max = the largest event time in the batch ('' if none)
--   guard     = the smallest stage max event time at which a window the batch
--               counts into is closed (window end + allowed lateness + max
--               delay; '' if it counts into none)
--   Refused ({'closed', current}, nothing written) when the stage's max event
--   time (counters field s<i>:max_event_us) is already >= guard; on success
--   s<i>:max_event_us = max(itself, batch max).
-- The deltas themselves are not arguments: every argument becomes a Lua
-- string, which Valkey hashes byte by byte and copies twice more on its way
-- into a key (experiments/README.md, "Session 21").  The caller sends this
-- call in MULTI, followed by one 'SET <base>:d:<token> <delta> XX' per delta;
-- on success this function creates each delta's key (empty), so those SETs
-- fill them, and on any refusal or error it creates none, so they write
-- nothing.  Each delta is logged as {t = token, n = bytes} in its
-- partition's log and its size added to the base's 'lb' (bytes logged, not
-- yet folded).
-- Returns {'ok', j, ...} (j: the deltas, 1-based, whose partition is now due
--         for folding: LSM-like, when its log outgrew its base) |
--         {'rejected', id, reason, id, reason, ...} | {'backlog', stream} |
--         {'closed', current max event time} | {'gone'} | {'stopped', state}
------------------------------------------------------------------------------
local N_FIXED = 15

local function commit_counts(keys, args, fn)
  if #args < N_FIXED then error(fn .. ': expected at least ' .. N_FIXED .. ' args, got ' .. #args) end
  local n_in = to_int(args[3], 'n_in')
  local n_out = to_int(args[4], 'n_out')
  local n_dead = to_int(args[5], 'n_dead')
  local n_delta = to_int(args[7], 'n_delta')
  local n_extra = to_int(args[12], 'n_extra')
  if n_in < 1 then error(fn .. ': no input entries') end
  cap(n_in, MAX_INPUTS, 'n_in', fn)
  cap(n_out, MAX_OUTPUTS, 'n_out', fn)
  cap(n_dead, MAX_DEAD, 'n_dead', fn)
  cap(n_delta, MAX_DELTAS, 'n_delta', fn)
  cap(n_extra, MAX_EXTRA, 'n_extra', fn)
  if #keys ~= 3 + n_in + n_out + 3 * n_delta then error(fn .. ': wrong number of keys') end
  local n_fixed = N_FIXED + 2 * n_in + 2 * n_out + n_dead + 2 * n_extra + 2 * n_delta
  if #args ~= n_fixed and #args ~= n_fixed + 2 then
    error(fn .. ': wrong number of args')
  end
  cap_bytes(keys, args, fn)
  return n_in, n_out, n_dead, n_extra, n_delta, n_fixed
end

-- Will a partition's log be due for folding once ``size`` more bytes are logged?
-- LSM-like: when its unfolded bytes reach FOLD_RATIO times its base's size
-- (and at least fold_bytes), or it holds fold_entries deltas, so folding
-- work stays linear in the deltas: each fold rewrites the base, so a ratio
-- r rewrites a key about 1 + 1/r times as often as it is logged (r = 1 was
-- measured to spend half a worker's time folding on 8 M distinct keys).
-- Reads only (called before the commit's first write).
local function fold_due(base, log, size, fold_entries, fold_bytes)
  local got = redis.call('HMGET', base, 'lb', 'bs')
  local logged = (tonumber(got[1] or '0') or 0) + size
  if logged >= fold_bytes and logged >= FOLD_RATIO * (tonumber(got[2] or '0') or 0) then
    return true
  end
  return redis.call('XLEN', log) + 1 >= fold_entries
end

local function commit(keys, args)
  local fn = 'rainstorm_commit'
  local n_in, n_out, n_dead, n_extra, n_delta, n_fixed = commit_counts(keys, args, fn)
  local counters, dlq, meta = keys[1], keys[2], keys[3]
  local group, emit_field = args[1], args[8]
  local stage = to_int(args[2], 'stage')
  local max_backlog = to_int(args[6], 'max_backlog')
  to_int(args[9], 'records_in')
  to_int(args[10], 'records_out')
  local bytes_in = to_int(args[11], 'bytes_in')
  local keep = args[13] == '1'
  if args[13] ~= '0' and not keep then error(fn .. ': keep_inputs must be 0 or 1') end
  local fold_entries = to_int(args[14], 'fold_entries')
  local fold_bytes = to_int(args[15], 'fold_bytes')
  local windowed = #args == n_fixed + 2
  local batch_max, guard
  if windowed then
    batch_max = to_time(args[n_fixed + 1], 'batch max event time')
    guard = to_time(args[n_fixed + 2], 'window guard')
  end
  if n_out > 0 and emit_field == '' then error(fn .. ': outputs without emit field') end
  local base = N_FIXED
  local obase = base + 2 * n_in
  local dbase = obase + 2 * n_out
  local ebase = dbase + n_dead
  local deltas = ebase + 2 * n_extra
  for x = 1, n_extra do
    to_incr(args[ebase + 2 * x], 'extra counter increment')
  end
  local kbase = 3 + n_in + n_out
  for j = 1, n_delta do
    local token = args[deltas + 2 * j - 1]
    if token == '' or keys[kbase + 3 * j] ~= keys[kbase + 3 * j - 2] .. ':d:' .. token then
      error(fn .. ': delta ' .. j .. ' is not <base>:d:<token>')
    end
    to_int(args[deltas + 2 * j], 'delta bytes')
  end
  local stop = not_running(meta)
  if stop then return stop end

  local rejected = {}
  local by_stream
  if keep then
    by_stream = inputs_by_stream(keys, args, n_in, base)
    for stream, ids in pairs(by_stream) do
      local pending = pending_among(stream, group, ids)
      for _, id in ipairs(ids) do
        if not pending[id] then
          rejected[#rejected + 1] = id
          rejected[#rejected + 1] = 'acked'
        end
      end
    end
  else
    for i = 1, n_in do
      local id = args[base + 2 * i - 1]
      local why = check_pending(keys[3 + i], group, id, args[base + 2 * i])
      if why then
        rejected[#rejected + 1] = id
        rejected[#rejected + 1] = why
      end
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
  local reply = {'ok'}
  for j = 1, n_delta do
    if fold_due(keys[kbase + 3 * j - 2], keys[kbase + 3 * j - 1],
        tonumber(args[deltas + 2 * j]), fold_entries, fold_bytes) then
      reply[#reply + 1] = j
    end
  end

  -- all checks passed: write
  if keep then  -- one XACK per stream, nothing deleted (the user's stream)
    for stream, ids in pairs(by_stream) do redis.call('XACK', stream, group, unpack(ids)) end
  else
    for i = 1, n_in do
      local stream, id = keys[3 + i], args[base + 2 * i - 1]
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
    end
  end
  for j = 1, n_out do
    redis.call('XADD', keys[3 + n_in + j], '*', 'u', args[obase + 2 * j - 1], 'd', args[obase + 2 * j])
  end
  for k = 1, n_dead do
    redis.call('XADD', dlq, '*', 'stage', stage, 'kind', 'record', 'd', args[dbase + k])
  end
  for j = 1, n_delta do
    local token, size = args[deltas + 2 * j - 1], args[deltas + 2 * j]
    redis.call('SET', keys[kbase + 3 * j], '')
    redis.call('XADD', keys[kbase + 3 * j - 1], '*', 't', token, 'n', size)
    redis.call('HINCRBY', keys[kbase + 3 * j - 2], 'lb', size)
  end
  local p = 's' .. stage .. ':'
  redis.call('HINCRBY', counters, p .. 'committed', n_in)
  redis.call('HINCRBY', counters, p .. 'commits', 1)
  redis.call('HINCRBY', counters, p .. 'records_in', args[9])
  redis.call('HINCRBY', counters, p .. 'records_out', args[10])
  if bytes_in > 0 then redis.call('HINCRBY', counters, p .. 'bytes_in', args[11]) end
  if n_dead > 0 then redis.call('HINCRBY', counters, p .. 'dead_records', n_dead) end
  if n_out > 0 then redis.call('HINCRBY', counters, emit_field, n_out) end
  for x = 1, n_extra do
    redis.call('HINCRBY', counters, args[ebase + 2 * x - 1], args[ebase + 2 * x])
  end
  if batch_max and (current == nil or batch_max > current) then
    redis.call('HSET', counters, max_field, args[n_fixed + 1])
  end
  return reply
end

------------------------------------------------------------------------------
-- rainstorm_deadletter: move one whole input entry to the dead-letter stream.
--
-- KEYS[1] = counters      rs:{job}:counters
-- KEYS[2] = dlq           rs:{job}:dlq
-- KEYS[3] = meta          rs:{job}:meta
-- KEYS[4] = stream        the input stream holding the entry
-- ARGV[1] = group         consumer group of the input stage (g<i>)
-- ARGV[2] = stage         input stage index i
-- ARGV[3] = entry_id
-- ARGV[4] = uid
-- ARGV[5] = error         the reason (text)
-- ARGV[6] = deliveries    how often the entry was delivered
-- Returns {'ok'} | {'rejected', id, reason} | {'gone'} | {'stopped', state}
------------------------------------------------------------------------------
local function deadletter(keys, args)
  local fn = 'rainstorm_deadletter'
  if #keys ~= 4 or #args ~= 6 then error(fn .. ': wrong arity') end
  cap_bytes(keys, args, fn)
  local counters, dlq, meta, stream = keys[1], keys[2], keys[3], keys[4]
  local group, id, uid, err = args[1], args[3], args[4], args[5]
  local stage = to_int(args[2], 'stage')
  local deliveries = to_int(args[6], 'deliveries')
  local stop = not_running(meta)
  if stop then return stop end
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
-- KEYS[1] = counters      rs:{job}:counters
-- KEYS[2] = dlq           rs:{job}:dlq
-- KEYS[3] = meta          rs:{job}:meta
-- KEYS[4] = stream        the target stage stream
-- ARGV[1] = dead_id       dead-letter entry id
-- ARGV[2] = stage         stage index
-- ARGV[3] = kind          'entry' (a whole input entry: it was counted dead,
--           never committed) or 'record' (one record of a committed entry: it
--           goes back as a new one-record entry, so the stage gains an
--           emitted entry)
-- ARGV[4] = uid           of the new entry
-- ARGV[5] = payload       of the new entry
-- ARGV[6] = unbytes       bytes to take back from s<i>:bytes_in (a stage-0
--           record that was counted when its entry was committed)
-- Returns {'ok'} | {'absent'} (already requeued or removed) | {'gone'} |
--         {'stopped', state}
------------------------------------------------------------------------------
local function requeue(keys, args)
  local fn = 'rainstorm_requeue'
  if #keys ~= 4 or #args ~= 6 then error(fn .. ': wrong arity') end
  cap_bytes(keys, args, fn)
  local counters, dlq, meta, stream = keys[1], keys[2], keys[3], keys[4]
  local id, kind, uid, payload = args[1], args[3], args[4], args[5]
  local stage = to_int(args[2], 'stage')
  local unbytes = to_int(args[6], 'unbytes')
  if kind ~= 'entry' and kind ~= 'record' then
    error(fn .. ': bad kind ' .. string.sub(kind, 1, 40))
  end
  local stop = not_running(meta)
  if stop then return stop end
  if #redis.call('XRANGE', dlq, id, id) == 0 then return {'absent'} end
  redis.call('XADD', stream, '*', 'u', uid, 'd', payload)
  redis.call('XDEL', dlq, id)
  local p = 's' .. stage .. ':'
  if kind == 'entry' then
    redis.call('HINCRBY', counters, p .. 'dead', -1)
  else
    redis.call('HINCRBY', counters, p .. 'dead_records', -1)
    redis.call('HINCRBY', counters, p .. 'emitted', 1)
  end
  if unbytes > 0 then redis.call('HINCRBY', counters, p .. 'bytes_in', '-' .. args[6]) end
  redis.call('HINCRBY', counters, p .. 'requeued', 1)
  return {'ok'}
end

------------------------------------------------------------------------------
-- rainstorm_compact: replace delta-log entries of one state partition by
-- their fold into its base, move the deltas that do not decode to the dead
-- letters, and emit what the fold closed (event-time windows the watermark
-- closed, evicted from the base in the same step).
--
-- KEYS[1] = base          rs:{job}:state:s<i>:p<k>
-- KEYS[2] = log           rs:{job}:state:s<i>:p<k>:log
-- KEYS[3] = meta          rs:{job}:meta
-- KEYS[4] = counters      rs:{job}:counters
-- KEYS[5] = out           the stream closed windows go to (rs:{job}:output)
-- KEYS[6] = dlq           rs:{job}:dlq
-- KEYS[7] = blob          the new folded part's key, <base>:b:<token>
-- KEYS[8] = old           the folded part's key now (<base>:b:<the base's t>),
--                         or KEYS[7] again while the base has none
-- KEYS[9..]               the key of each log entry handled: those of the
--                         ids folded, in their order, then those of the bad ids
-- ARGV[1] = version       expected base version
-- ARGV[2] = token         the new folded part's token
-- ARGV[3] = bytes         its size
-- ARGV[4] = stage         stage index i
-- ARGV[5] = n_out         output entries, 0..MAX_OUTPUTS
-- ARGV[6] = emit_field    counter field they are counted in ('' if n_out = 0)
-- ARGV[7] = n_bad         bad deltas to dead-letter, 0..MAX_DEAD
-- ARGV[8..]               n_out pairs (uid, payload), n_bad pairs (log id,
--                         why it is bad), then the ids of the log entries
--                         folded into the blob, ascending; the ids folded and
--                         the bad ones together are the head of the log
--                         (0..MAX_COMPACT_IDS of them)
-- The folded part is not an argument (see rainstorm_commit): the caller sends
-- this call in MULTI followed by 'SET <base>:b:<token> <blob> XX', which
-- fills the key this function creates on success (and writes nothing
-- otherwise).  The log's head is read here (entries are a token and a size,
-- not the deltas): every id must be in it and every key must be its entry's,
-- so a folder can delete only what it folded; their sizes leave the base's
-- 'lb' (bytes logged, not yet folded).  A bad delta goes to the dlq (kind
-- 'delta', its bytes in 'd') and counts in s<i>:dead_deltas.  A partition
-- written by version 9 (the folded part in the hash's 'd', each entry's
-- delta in its own 'd', so its key here is '<base>:d:') folds the same way
-- and is left in this layout.
-- Returns {'ok', new_version} | {'conflict', reason} | {'gone'} | {'stopped', state}
------------------------------------------------------------------------------
local N_COMPACT_KEYS = 8

local function compact(keys, args)
  local fn = 'rainstorm_compact'
  if #keys < N_COMPACT_KEYS or #args < 7 then error(fn .. ': wrong arity') end
  local size = to_int(args[3], 'bytes')
  local n_out = to_int(args[5], 'n_out')
  local n_bad = to_int(args[7], 'n_bad')
  cap(n_out, MAX_OUTPUTS, 'n_out', fn)
  cap(n_bad, MAX_DEAD, 'n_bad', fn)
  local obase = 7
  local bbase = obase + 2 * n_out
  local ibase = bbase + 2 * n_bad
  if #args < ibase then error(fn .. ': wrong number of args') end
  local n_ids = #args - ibase
  cap(n_ids + n_bad, MAX_COMPACT_IDS, 'the number of ids', fn)
  if #keys ~= N_COMPACT_KEYS + n_ids + n_bad then error(fn .. ': wrong number of keys') end
  cap_bytes(keys, args, fn)
  local base, log, meta, counters, out, dlq = keys[1], keys[2], keys[3], keys[4], keys[5],
    keys[6]
  local blob, old = keys[7], keys[8]
  local expected = to_int(args[1], 'version')
  local token = args[2]
  local stage = to_int(args[4], 'stage')
  local emit_field = args[6]
  if n_out > 0 and emit_field == '' then error(fn .. ': outputs without emit field') end
  if token == '' or blob ~= base .. ':b:' .. token then
    error(fn .. ': the new folded part is not <base>:b:<token>')
  end
  local stop = not_running(meta)
  if stop then return stop end
  local version = tonumber(redis.call('HGET', base, 'v') or '0')
  if version ~= expected then return {'conflict', 'version'} end
  local current = redis.call('HGET', base, 't')
  if old ~= (current and base .. ':b:' .. current or blob) then
    error(fn .. ': KEYS[8] is not the folded part the base names')
  end
  if redis.call('TYPE', blob)['ok'] ~= 'none' then error(fn .. ': ' .. blob .. ' exists') end

  -- the log's head: exactly the ids given (folded and bad), each key its entry's
  local m = n_ids + n_bad
  local folded, bad = 0, {}
  if m > 0 then
    local rows = redis.call('XRANGE', log, '-', '+', 'COUNT', m)
    if #rows < m then return {'conflict', 'missing'} end
    local at = {}
    for i, row in ipairs(rows) do at[row[1]] = i end
    local seen = {}
    for x = 1, m do
      local id
      if x <= n_ids then id = args[ibase + x] else id = args[bbase + 2 * (x - n_ids) - 1] end
      local i = at[id]
      if not i or seen[i] then return {'conflict', 'missing'} end
      seen[i] = true
      local fields = rows[i][2]
      local named = field_of(fields, 't')
      local inline = (not named) and field_of(fields, 'd') or nil  -- a version 9 entry
      if keys[N_COMPACT_KEYS + x] ~= base .. ':d:' .. (named or '') then
        error(fn .. ': the key of ' .. id .. ' is not its log entry\'s')
      end
      folded = folded + (tonumber(field_of(fields, 'n') or '') or (inline and #inline) or 0)
      if x > n_ids then
        bad[x - n_ids] = inline or redis.call('GET', keys[N_COMPACT_KEYS + x]) or ''
      end
    end
  end
  local logged = tonumber(redis.call('HGET', base, 'lb') or '0') - folded
  if logged < 0 then logged = 0 end

  -- all checks passed: write
  local i = ibase + 1
  while i <= #args do  -- one XDEL per 1000 ids
    local j = math.min(i + 999, #args)
    redis.call('XDEL', log, unpack(args, i, j))
    i = j + 1
  end
  i = N_COMPACT_KEYS + 1
  while i <= #keys do  -- one DEL per 1000 keys
    local j = math.min(i + 999, #keys)
    redis.call('DEL', unpack(keys, i, j))
    i = j + 1
  end
  for j = 1, n_bad do
    local id = args[bbase + 2 * j - 1]
    redis.call('XADD', dlq, '*', 'stage', stage, 'kind', 'delta', 'uid', id, 'stream', log,
      'error', 'undecodable aggregate delta: ' .. args[bbase + 2 * j], 'deliveries', 0,
      'd', bad[j])
    redis.call('XDEL', log, id)
  end
  if n_bad > 0 then redis.call('HINCRBY', counters, 's' .. stage .. ':dead_deltas', n_bad) end
  for j = 1, n_out do
    redis.call('XADD', out, '*', 'u', args[obase + 2 * j - 1], 'd', args[obase + 2 * j])
  end
  if n_out > 0 then redis.call('HINCRBY', counters, emit_field, n_out) end
  if current then redis.call('DEL', old) end
  redis.call('SET', blob, '')
  redis.call('HSET', base, 'v', version + 1, 't', token, 'bs', size, 'lb', logged)
  redis.call('HDEL', base, 'd')  -- a version 9 base's folded part, replaced now
  return {'ok', version + 1}
end

------------------------------------------------------------------------------
-- rainstorm_version (read-only): LIB_VERSION, checked by every client before
-- its first call.  No KEYS, no ARGV.
------------------------------------------------------------------------------
local function version(_keys, _args)
  return LIB_VERSION
end

redis.register_function('rainstorm_load', load)
redis.register_function('rainstorm_commit', commit)
redis.register_function('rainstorm_deadletter', deadletter)
redis.register_function('rainstorm_requeue', requeue)
redis.register_function('rainstorm_compact', compact)
redis.register_function{function_name = 'rainstorm_version', callback = version,
  flags = {'no-writes'}}
