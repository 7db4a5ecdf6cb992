-- progress.lua — a progress bar for long work (training, encoding, sampling, FID).
--
--   local bar = knnd.progress{total = steps, desc = "train"}
--   for step = 1, steps do ...; bar:update(1, {loss = l}) end
--   bar:close()
--
-- On a terminal it redraws one line (rate, elapsed, ETA, the latest metrics); otherwise (a log
-- file, CI) it prints a plain line every `every_s` seconds and at the end, so logs stay short.
local M = {}
M.__index = M

local clock = os.clock
do -- wall-clock time: os.time has 1 s resolution; prefer a monotonic clock when the C side has one
  local ok, knnd = pcall(require, "knnd")
  if ok and knnd.wall_time then clock = knnd.wall_time end
end

local function is_tty(f)
  if os.getenv("KNND_PROGRESS") == "plain" then return false end
  if os.getenv("KNND_PROGRESS") == "tty" then return true end
  -- `test -t 2` tells whether stderr is a terminal; io.popen would cost a process per bar,
  -- so the answer is cached for the process
  if M._tty == nil then
    local ok = os.execute("test -t 2")
    M._tty = ok == true or ok == 0
  end
  return M._tty and f == io.stderr
end

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s // 3600, s % 3600 // 60, s % 60) end
  return ("%02d:%02d"):format(s // 60, s % 60)
end

local function fmt_metrics(m)
  if not m then return "" end
  local keys = {}
  for k in pairs(m) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = m[k]
    if type(v) == "number" then
      v = (math.abs(v) >= 1e4 or (math.abs(v) < 1e-3 and v ~= 0)) and ("%.3e"):format(v) or ("%.4g"):format(v)
    end
    parts[#parts + 1] = ("%s=%s"):format(k, tostring(v))
  end
  return table.concat(parts, " ")
end

--- Create a bar: {total=N, desc="train", unit="it", file=io.stderr, every_s=10, width=30}
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("knnd.progress: expected an options table", 2) end
  for k in pairs(opts) do
    if not ({ total = 1, desc = 1, unit = 1, file = 1, every_s = 1, width = 1 })[k] then
      error(("knnd.progress: unknown option '%s' (expected total, desc, unit, file, every_s, width)"):format(k), 2)
    end
  end
  if opts.total ~= nil and (type(opts.total) ~= "number" or opts.total < 0) then
    error("knnd.progress: option 'total' expected a non-negative number", 2)
  end
  local self = setmetatable({
    total = opts.total, desc = opts.desc or "", unit = opts.unit or "it", n = 0,
    file = opts.file or io.stderr, every_s = opts.every_s or 10, width = opts.width or 30,
    start = clock(), last_print = -math.huge, closed = false,
  }, M)
  self.tty = is_tty(self.file)
  return self
end

function M:line()
  local elapsed = clock() - self.start
  local rate = elapsed > 0 and self.n / elapsed or 0
  local s
  if self.total and self.total > 0 then
    local frac = math.min(self.n / self.total, 1)
    local filled = math.floor(frac * self.width + 0.5)
    local eta = rate > 0 and (self.total - self.n) / rate or math.huge
    s = ("%s %3d%%|%s%s| %d/%d [%s<%s, %.2f %s/s]"):format(self.desc, math.floor(frac * 100),
      ("#"):rep(filled), (" "):rep(self.width - filled), self.n, self.total, fmt_time(elapsed), fmt_time(eta), rate, self.unit)
  else
    s = ("%s %d %s [%s, %.2f %s/s]"):format(self.desc, self.n, self.unit, fmt_time(elapsed), rate, self.unit)
  end
  local m = fmt_metrics(self.metrics)
  if m ~= "" then s = s .. " " .. m end
  return s
end

--- Advance by n (default 1) and remember the latest metrics table.
function M:update(n, metrics)
  if self.closed then return end
  self.n = self.n + (n or 1)
  if metrics then self.metrics = metrics end
  local now = clock()
  if self.tty then
    if now - self.last_print >= 0.1 or (self.total and self.n >= self.total) then
      self.file:write("\r\27[K", self:line())
      self.file:flush()
      self.last_print = now
    end
  elseif now - self.last_print >= self.every_s then
    self.file:write(self:line(), "\n")
    self.file:flush()
    self.last_print = now
  end
end

function M:close()
  if self.closed then return end
  self.closed = true
  if self.tty then self.file:write("\r\27[K", self:line(), "\n")
  else self.file:write(self:line(), "\n") end
  self.file:flush()
end
M.__close = M.close

setmetatable(M, { __call = function(_, opts) return M.new(opts) end })
return M
