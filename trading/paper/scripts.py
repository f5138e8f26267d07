"""The Lua scripts of the paper exchange: every read-then-write is one of these.

Each script is called with keys of the paper account only (one hash tag, one Redis
Cluster slot; see trading/paper/__init__.py), in the order its KEYS comment gives.
Amounts are integer strings of 1e-8 units and are compared as digit strings by ge(),
never as Lua floats (doubles lose digits above 2^53).
"""

from __future__ import annotations

# ge(a, b): a >= b for canonical signed integer strings of any length (no floats).
_LUA_GE = """
local function ge(a, b)
  local na, nb = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if na ~= nb then return nb end
  if na then a, b = string.sub(b, 2), string.sub(a, 2) end
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return true
end
"""

# Every change of an order is logged: `changes` (zset order id -> sequence number of its
# latest change), `change_seq` (the counter). Every 1000th change drops the entries older
# than the last CHANGES_KEPT changes and records their bound in `changes_floor`: a reader
# whose cursor (the last sequence number it saw) is below it reads the whole open book.
CHANGES_KEPT = 100_000
_LUA_CHANGED = (
    """
local function changed(changes, seq_key, floor_key, id)
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', changes, seq, id)
  if seq % 1000 == 0 and seq > """
    + str(CHANGES_KEPT)
    + """ then
    local floor = seq - """
    + str(CHANGES_KEPT)
    + """
    redis.call('ZREMRANGEBYSCORE', changes, '-inf', floor)
    redis.call('SET', floor_key, floor)
  end
end
"""
)

# The fields of one sell request in PLACE_LUA's ARGV, after ARGV[1] (the timestamp).
PLACE_FIELDS = 10

# Place a batch of limit sells, one after the other, as place_limit_sell would one by one.
# KEYS: orders open_clients clients free locked bids seq changes change_seq changes_floor
# ARGV: ts, then per request: id cid symbol base quote amount units price price_e18 post_only
#   post_only: '1' post-only, '0' not, 'fault' reject as post-only (the PAPER_FAULTS knob)
# Returns a flat list, per request {outcome, detail}: ok <order json> | dup <open order id>
#   | post_only <bid e18, or 'fault'> | funds <free units>. On an order id that exists
#   already (80 random bits: practically never) it returns {'collision', ''} for that
#   request and stops there; the caller sends the rest again with fresh ids.
PLACE_LUA = (
    _LUA_GE
    + _LUA_CHANGED
    + """
local function place(a, ts)
  local id, cid, sym, base = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local units, post_only = ARGV[a + 7], ARGV[a + 10]
  local open_id = redis.call('HGET', KEYS[2], cid)
  if open_id then return 'dup', open_id end
  if post_only == 'fault' then return 'post_only', 'fault' end
  if post_only == '1' then
    local bid = redis.call('HGET', KEYS[6], sym)
    if bid and ge(bid, ARGV[a + 9]) then return 'post_only', bid end
  end
  local free = redis.call('HGET', KEYS[4], base) or '0'
  if not ge(free, units) then return 'funds', free end
  if redis.call('HEXISTS', KEYS[1], id) == 1 then return 'collision', '' end
  redis.call('HINCRBY', KEYS[5], base, units)
  redis.call('HINCRBY', KEYS[4], base, '-' .. units)
  local order = cjson.encode({id = id, cid = cid, sym = sym, side = 'sell', base = base,
    quote = ARGV[a + 5], px = ARGV[a + 8], amt = ARGV[a + 6], fil = '0', rem = units,
    st = 'open', ts = ts, seq = redis.call('INCR', KEYS[7])})
  redis.call('HSET', KEYS[1], id, order)
  redis.call('HSET', KEYS[2], cid, id)
  redis.call('HSET', KEYS[3], cid, id)
  changed(KEYS[8], KEYS[9], KEYS[10], id)
  return 'ok', order
end

local out = {}
for a = 1, #ARGV - 1, """
    + str(PLACE_FIELDS)
    + """ do
  local outcome, detail = place(a, ARGV[1])
  out[#out + 1] = outcome
  out[#out + 1] = detail
  if outcome == 'collision' then break end
end
return out
"""
)

# KEYS: orders open_clients free locked changes change_seq changes_floor   ARGV: id
CANCEL_LUA = (
    _LUA_CHANGED
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', ''} end
local o = cjson.decode(raw)
if o.st ~= 'open' then return {'final', raw} end
if o.rem ~= '0' then
  redis.call('HINCRBY', KEYS[4], o.base, '-' .. o.rem)
  redis.call('HINCRBY', KEYS[3], o.base, o.rem)
end
o.st = 'canceled'
raw = cjson.encode(o)
redis.call('HSET', KEYS[1], ARGV[1], raw)
if redis.call('HGET', KEYS[2], o.cid) == ARGV[1] then redis.call('HDEL', KEYS[2], o.cid) end
changed(KEYS[5], KEYS[6], KEYS[7], ARGV[1])
return {'ok', raw}
"""
)

# Compare-and-set fill computed in Python (prices x quantities need decimals).
# KEYS: orders open_clients free locked changes change_seq changes_floor
# ARGV: id expected_fil fil rem qty net status
FILL_LUA = (
    _LUA_CHANGED
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', ''} end
local o = cjson.decode(raw)
if o.st ~= 'open' or o.fil ~= ARGV[2] then return {'stale', raw} end
redis.call('HINCRBY', KEYS[3], o.quote, ARGV[6])
redis.call('HINCRBY', KEYS[4], o.base, '-' .. ARGV[5])
o.fil, o.rem, o.st = ARGV[3], ARGV[4], ARGV[7]
raw = cjson.encode(o)
redis.call('HSET', KEYS[1], ARGV[1], raw)
if o.st ~= 'open' and redis.call('HGET', KEYS[2], o.cid) == ARGV[1] then
  redis.call('HDEL', KEYS[2], o.cid)
end
changed(KEYS[5], KEYS[6], KEYS[7], ARGV[1])
return {'ok', raw}
"""
)

# Shared tail: store the price and, for an unlisted symbol, its tick (first one wins).
_LUA_SET_PRICE = """
local function set_price(prices, bids, ticks, symbol, triple, bid, tick)
  redis.call('HSET', prices, symbol, triple)
  redis.call('HSET', bids, symbol, bid)
  if tick == '' then return '' end
  redis.call('HSETNX', ticks, symbol, tick)
  return redis.call('HGET', ticks, symbol)
end
"""

# KEYS: seen free orders prices bids ticks
# ARGV[1]: JSON list of fills, each [fill_id, order_id, side, base, units, symbol,
#   "LAST BID ASK", bid_e18, generic_tick]; returns each fill's stored tick ('' for none)
OBSERVE_MANY_LUA = (
    _LUA_SET_PRICE
    + """
local out = {}
for i, f in ipairs(cjson.decode(ARGV[1])) do
  out[i] = ''
  if redis.call('SISMEMBER', KEYS[1], f[1]) == 0 then
    if f[5] ~= '0' then
      if f[3] == 'buy' then
        redis.call('HINCRBY', KEYS[2], f[4], f[5])
      elseif redis.call('HEXISTS', KEYS[3], f[2]) == 0 then
        redis.call('HINCRBY', KEYS[2], f[4], '-' .. f[5])
      end
    end
    redis.call('SADD', KEYS[1], f[1])
    out[i] = set_price(KEYS[4], KEYS[5], KEYS[6], f[6], f[7], f[8], f[9])
  end
end
return out
"""
)

# KEYS: seen free orders prices bids ticks
# ARGV: fill_id order_id side base units symbol "LAST BID ASK" bid_e18 generic_tick
OBSERVE_LUA = (
    _LUA_SET_PRICE
    + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {0, ''} end
if ARGV[5] ~= '0' then
  if ARGV[3] == 'buy' then
    redis.call('HINCRBY', KEYS[2], ARGV[4], ARGV[5])
  elseif redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[4], '-' .. ARGV[5])
  end
end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, set_price(KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[8], ARGV[9])}
"""
)

# KEYS: prices bids ticks   ARGV: symbol "LAST BID ASK" bid_e18 generic_tick
SET_PRICE_LUA = (
    _LUA_SET_PRICE
    + """
return set_price(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# KEYS: init free   ARGV: asset units [asset units ...]
INIT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX') then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: clients orders   ARGV: client id
BY_CLIENT_LUA = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""

# KEYS: open_clients orders  (HMGET in chunks: unpack() is limited to ~8000 values)
_LUA_READ = """
local function read(orders, ids, out)
  for i = 1, #ids, 500 do
    local part = redis.call('HMGET', orders, unpack(ids, i, math.min(i + 499, #ids)))
    for _, raw in ipairs(part) do if raw then out[#out + 1] = raw end end
  end
  return out
end
"""
OPEN_LUA = (
    _LUA_READ
    + """
return read(KEYS[2], redis.call('HVALS', KEYS[1]), {})
"""
)

# The orders changed since a cursor, or the whole open book when the cursor is unknown or
# older than the log keeps: one consistent read.
# KEYS: changes change_seq changes_floor open_clients orders   ARGV: cursor ('' for none)
# Returns {seq, 'changes' | 'full', order json...}: seq is the cursor to pass next time.
CHANGES_LUA = (
    _LUA_READ
    + """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
local cursor = tonumber(ARGV[1])
if cursor == nil or cursor < floor or cursor > seq then
  return read(KEYS[5], redis.call('HVALS', KEYS[4]), {seq, 'full'})
end
return read(KEYS[5], redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cursor, '+inf'), {seq, 'changes'})
"""
)

# Forget a session whose state retention removes: its finished orders (never an open one)
# with their client-id entries and change-log entries, and its fill records.
# KEYS: orders clients seen_fills changes   ARGV: n, n order ids, then fill ids
FORGET_LUA = """
local n = tonumber(ARGV[1])
local forgotten = 0
for i = 2, n + 1 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local o = cjson.decode(raw)
    if o.st ~= 'open' then
      if redis.call('HGET', KEYS[2], o.cid) == ARGV[i] then redis.call('HDEL', KEYS[2], o.cid) end
      redis.call('HDEL', KEYS[1], ARGV[i])
      redis.call('ZREM', KEYS[4], ARGV[i])
      forgotten = forgotten + 1
    end
  end
end
for i = n + 2, #ARGV do redis.call('SREM', KEYS[3], ARGV[i]) end
return forgotten
"""
