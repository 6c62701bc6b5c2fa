-- Decide a batch of requests, each against all of its route's limits for its client,
-- atomically, on Redis time. Mirrors plugins/ratelimit/algorithms.py operation for
-- operation (see there). A node sends every check of one event-loop tick as one batch.
-- KEYS: each request's limit states in order (a hash {w, c, p} for windows, {t, f} for the
-- bucket); one request's keys share a {hash tag}, and on Redis Cluster a batch is one request.
-- ARGV: the number of requests, then for each: its number of limits n, algorithm
--       ("sliding_window" | "fixed_window" | "token_bucket"), cost, then n x (limit,
--       window_us, burst).
-- Returns, for each request: allowed (0/1), then remaining, reset_us, retry_us per limit;
-- remaining as its decimal digits (a string), which the node splices into its RateLimit-
-- Remaining header line as they are (no formatting per request there).

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function sliding(key, limit, win, c)
  local idx = math.floor(now / win)
  local cur, prev = 0, 0
  local st = redis.call("HMGET", key, "w", "c", "p")
  if st[1] then
    local w = tonumber(st[1])
    if w == idx then
      cur, prev = tonumber(st[2]), tonumber(st[3])
    elseif w == idx - 1 then
      prev = tonumber(st[2])
    end
  end
  local elapsed = now - idx * win
  local weight = (win - elapsed) / win
  local allowed = math.floor(prev * weight + cur) + c <= limit
  if allowed then cur = cur + c end
  local remaining = math.max(0, limit - math.floor(prev * weight + cur))
  local reset = win - elapsed
  local retry = 0
  if not allowed then
    local room = limit - c + 1
    if c > limit then
      retry = reset + win
    elseif cur + c > limit then
      retry = reset + math.floor(win * (1 - room / cur)) + 1
    else
      retry = math.floor(win * (1 - (room - cur) / prev)) + 1 - elapsed
    end
  end
  return remaining, reset, retry, {idx, cur, prev}, 2 * win - elapsed
end

local function fixed(key, limit, win, c)
  local idx = math.floor(now / win)
  local cur = 0
  local st = redis.call("HMGET", key, "w", "c")
  if st[1] and tonumber(st[1]) == idx then cur = tonumber(st[2]) end
  local allowed = cur + c <= limit
  if allowed then cur = cur + c end
  local reset = win - (now - idx * win)
  local retry = 0
  if not allowed then retry = reset end
  return math.max(0, limit - cur), reset, retry, {idx, cur, 0}, 2 * win - (now - idx * win)
end

-- Exact integer division for operands below 2^53: the float quotient, corrected.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function bucket(key, limit, win, burst, c)
  local capacity = burst * win
  local backlog = 0
  local st = redis.call("HMGET", key, "t", "f")
  if st[1] then
    local tat, frac = tonumber(st[1]), tonumber(st[2])
    if tat > now or (tat == now and frac > 0) then backlog = (tat - now) * limit + frac end
  end
  local wanted = backlog + c * win
  local allowed = wanted <= capacity
  if allowed then backlog = wanted end
  local remaining = idiv(capacity - backlog, win)
  local reset = -idiv(-backlog, limit)
  local retry = 0
  if not allowed then retry = -idiv(-(wanted - capacity), limit) end
  local q = idiv(backlog, limit)
  local state = {now + q, backlog - q * limit}
  return remaining, reset, retry, state, math.max(1, q + 1)
end

local function step(algorithm, key, base, c)
  local limit, win, burst = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if algorithm == "token_bucket" then return bucket(key, limit, win, burst, c) end
  if algorithm == "fixed_window" then return fixed(key, limit, win, c) end
  return sliding(key, limit, win, c)
end

local function store(algorithm, key, state, ttl_us)
  local ttl_ms = math.ceil(ttl_us / 1000)
  if algorithm == "token_bucket" then
    redis.call("HSET", key, "t", string.format("%.0f", state[1]), "f", string.format("%.0f", state[2]))
  else
    redis.call("HSET", key, "w", string.format("%.0f", state[1]), "c", state[2], "p", state[3])
  end
  redis.call("PEXPIRE", key, ttl_ms)
end

local out = {}
local key_at, arg_at = 0, 2
for _ = 1, tonumber(ARGV[1]) do
  local n, algorithm, cost = tonumber(ARGV[arg_at]), ARGV[arg_at + 1], tonumber(ARGV[arg_at + 2])
  local first = arg_at + 3
  local trial, allowed = {}, true
  for i = 1, n do
    local remaining, reset, retry, state, ttl = step(algorithm, KEYS[key_at + i], first + (i - 1) * 3, cost)
    trial[i] = {remaining, reset, retry, state, ttl}
    if retry > 0 then allowed = false end
  end
  out[#out + 1] = allowed and 1 or 0
  for i = 1, n do
    local r = trial[i]
    if not allowed then
      -- Rejected: report (and keep) each limit's state without this request's cost.
      local remaining, reset, _, state, ttl = step(algorithm, KEYS[key_at + i], first + (i - 1) * 3, 0)
      r = {remaining, reset, r[3], state, ttl}
    end
    store(algorithm, KEYS[key_at + i], r[4], r[5])
    out[#out + 1] = string.format("%d", r[1])
    out[#out + 1] = r[2]
    out[#out + 1] = r[3]
  end
  key_at = key_at + n
  arg_at = first + n * 3
end
return out
