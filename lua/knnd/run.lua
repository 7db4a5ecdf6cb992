-- run.lua — one experiment run and its folder: what ran (config, seed, knnd version and build,
-- source revision, host, times, status), a structured log, metrics as time series and the final
-- metrics. A crash inside the run marks it failed with its error and traceback.
--
--   local r = knnd.run{name = "baseline", config = cfg, dir = "runs", fn = function(run)
--     for step = 1, 100 do ...; run:metric("loss", step, loss) end
--     run:log("trained", {steps = 100})
--     return {loss = loss}                    -- the final metrics (also run:summary{...})
--   end}
--
-- <dir>/<name>/ then holds run.json (status running|finished|failed), log.jsonl (one JSON line per
-- run:log: time, level, message, fields), metrics.csv (step,name,value,time; appended and
-- flushed as the run goes) and summary.json (the final metrics). JSON files are written
-- atomically. A killed process (SIGKILL) leaves status "running" with its pid, host and process
-- start time: knnd.run.is_stale(info) tells such a run from a live one.
local files = require "knnd.files"
local config = require "knnd.config"

local M = {}
local Run = {}
Run.__index = Run
M.Run = Run

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local ALLOWED = { name = true, config = true, dir = true, fn = true, seed = true, on_error = true, echo = true,
  meta = true }

local function knnd_module()
  local ok, knnd = pcall(require, "knnd")
  return ok and type(knnd) == "table" and knnd or nil
end

local clock = os.clock
do
  local knnd = knnd_module()
  if knnd and knnd.wall_time then clock = knnd.wall_time end
end

local function now_iso() return os.date("!%Y-%m-%dT%H:%M:%SZ") end

-- ---- where the code came from ---------------------------------------------------------------
local git_cache = {}

local function popen_lines(cmd)
  local p = io.popen(cmd)
  if not p then return {} end
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

--- {revision =, dirty =, root =} of the git checkout holding dir, or nil outside git (or without git)
function M.git_info(dir)
  dir = dir or "."
  if git_cache[dir] ~= nil then return git_cache[dir] or nil end
  local q = files.shell_quote(dir)
  -- GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock of a checkout someone works in
  local lines = popen_lines(("GIT_OPTIONAL_LOCKS=0 git -C %s rev-parse --show-toplevel HEAD 2>/dev/null"):format(q))
  local info = false
  if #lines == 2 and lines[2]:match("^%x+$") then
    local status = popen_lines(("GIT_OPTIONAL_LOCKS=0 git -C %s status --porcelain --untracked-files=no 2>/dev/null"):format(q))
    info = { root = lines[1], revision = lines[2], dirty = #status > 0 }
  end
  git_cache[dir] = info
  return info or nil
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function provenance()
  local knnd = knnd_module()
  local out = { knnd = {} }
  if knnd and knnd.version then out.knnd.version = knnd.version() end
  if knnd and knnd.build_info then
    local b = {}
    for _, kv in ipairs(knnd.build_info()) do b[kv[1]] = kv[2] end
    out.knnd.build = b
  end
  local here = package.searchpath("knnd.run", package.path)
  if here then out.knnd.git = M.git_info(dirname(here)) end
  local script = type(arg) == "table" and type(arg[0]) == "string" and arg[0] or nil
  out.source = { script = script, cwd = os.getenv("PWD"), git = M.git_info(script and dirname(script) or ".") }
  out.argv = type(arg) == "table" and { table.unpack(arg, 0) } or nil
  return out
end

-- ---- staleness ------------------------------------------------------------------------------
--- true when a run.json table says "running" but no live process on this host holds it (killed,
--- rebooted); runs recorded by another host are stale too: a run belongs to one sweep shard, so the
--- process that runs it again is its owner
function M.is_stale(info)
  if type(info) ~= "table" or info.status ~= "running" then return false end
  local alive = files.process_alive(info.process)
  return alive ~= true
end

-- ---- the run object -------------------------------------------------------------------------
local function check_name(name)
  if type(name) ~= "string" or name == "" then return false end
  if name:sub(1, 1) == "/" or name:find("%c") then return false end
  for part in name:gmatch("[^/]+") do if part == ".." or part == "." then return false end end
  return true
end

local function fmt_number(v)
  if math.type(v) == "integer" then return tostring(v) end
  local s = ("%.9g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end
M.fmt_number = fmt_number

function Run:path(rel) return self.dir .. "/" .. rel end

function Run:_write_info()
  files.write_json(self:path("run.json"), self.info)
end

--- append a structured log line: run:log(message [, fields [, level]]) (level: debug, info, warn, error)
function Run:log(message, fields, level)
  level = level or "info"
  if not LEVELS[level] then
    error(("run:log: level '%s' unknown (expected debug, info, warn, error)"):format(tostring(level)), 2)
  end
  if fields ~= nil and type(fields) ~= "table" then
    error("run:log: argument 2 (fields) expected a table, got " .. type(fields), 2)
  end
  local line = { time = now_iso(), t = clock() - self.t0, level = level, message = tostring(message),
    fields = fields and config.serialisable(fields) or nil }
  if self.log_file then
    self.log_file:write(files.json_encode(line, true), "\n")
    self.log_file:flush()
  end
  if LEVELS[level] >= LEVELS[self.echo] then
    local parts = {}
    if fields then
      local keys = {}
      for k in pairs(fields) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(fields[k]) end
    end
    io.stderr:write(("[%s] %s%s%s\n"):format(self.name, level == "info" and "" or level .. ": ", tostring(message),
      #parts > 0 and " " .. table.concat(parts, " ") or ""))
  end
end

function Run:debug(message, fields) self:log(message, fields, "debug") end
function Run:info(message, fields) self:log(message, fields, "info") end
function Run:warn(message, fields) self:log(message, fields, "warn") end

--- a point of a time series: run:metric(name, step, value), appended to metrics.csv and flushed
function Run:metric(name, step, value)
  if type(name) ~= "string" or name == "" or name:find("[,\n\r\"]") then
    error(("run:metric: argument 1 (name) expected a non-empty string without commas, quotes or newlines, got %s")
      :format(type(name) == "string" and "'" .. name .. "'" or type(name)), 2)
  end
  if type(step) ~= "number" then error(("run:metric: argument 2 (step) expected a number, got %s"):format(type(step)), 2) end
  if type(value) ~= "number" then error(("run:metric: argument 3 (value) of '%s' expected a number, got %s"):format(name, type(value)), 2) end
  self.metrics_file:write(("%s,%s,%s,%.3f\n"):format(fmt_number(step), name, fmt_number(value), clock() - self.t0))
  self.metrics_file:flush()
  self.last[name] = value
end

--- several series at one step: run:metrics(step, {loss = l, acc = a})
function Run:metrics(step, values)
  if type(values) ~= "table" then error("run:metrics: argument 2 expected a table of name = value", 2) end
  local keys = {}
  for k in pairs(values) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do self:metric(k, step, values[k]) end
end

--- final metrics, merged into summary.json (written atomically at once)
function Run:summary(values)
  if type(values) ~= "table" then error("run:summary: argument 1 expected a table of final metrics, got " .. type(values), 2) end
  for k, v in pairs(values) do self.final[k] = v end
  files.write_json(self:path("summary.json"), config.serialisable(self.final))
end

local function close_files(self)
  if self.metrics_file then self.metrics_file:close(); self.metrics_file = nil end
  if self.log_file then self.log_file:close(); self.log_file = nil end
end

local function finish(self, status, err, traceback)
  local t1 = clock()
  self.status = status
  self.info.status = status
  self.info.end_time = now_iso()
  self.info.duration_s = t1 - self.t0
  self.info.error = err
  self.info.traceback = traceback
  if status == "failed" then
    self:log("failed", { error = err }, "error")
  else
    self:log("finished", { duration_s = self.info.duration_s })
  end
  close_files(self)
  self:_write_info()
end

--- mark a run started with M.start as finished (summary written first when given)
function Run:finish(summary)
  if summary ~= nil then self:summary(summary) end
  finish(self, "finished")
end

--- mark a run started with M.start as failed with its error
function Run:fail(err, traceback) finish(self, "failed", tostring(err), traceback) end

--- Open a run (folder, run.json "running", log and metrics files) without a function to run;
--- end it with run:finish() or run:fail(err). knnd.run{fn = ...} does both for you.
function M.start(opts)
  local fname = "knnd.run"
  if type(opts) ~= "table" then error(fname .. ": argument 1 expected an options table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not ALLOWED[k] then
      error(("%s: unknown option '%s' (expected name, config, dir, fn, seed, on_error, echo, meta)"):format(fname, tostring(k)), 2)
    end
  end
  local name = opts.name or os.date("%Y%m%d-%H%M%S")
  if not check_name(name) then
    error(("%s: option 'name' expected a relative folder name (no '..', no leading '/'), got %s"):format(fname,
      type(name) == "string" and "'" .. name .. "'" or type(name)), 2)
  end
  local cfg = opts.config or {}
  if type(cfg) ~= "table" then error(("%s: option 'config' expected a table, got %s"):format(fname, type(cfg)), 2) end
  local root = opts.dir or "runs"
  if type(root) ~= "string" or root == "" then error(fname .. ": option 'dir' expected a folder name", 2) end
  local echo = opts.echo or "warn"
  if not LEVELS[echo] then error(("%s: option 'echo' expected debug, info, warn or error, got '%s'"):format(fname, tostring(echo)), 2) end
  local seed = opts.seed
  if seed == nil and math.type(cfg.seed) == "integer" then seed = cfg.seed end
  if seed ~= nil and math.type(seed) ~= "integer" then
    error(("%s: option 'seed' expected an integer, got %s"):format(fname, tostring(seed)), 2)
  end

  local dir = root .. "/" .. name
  files.mkdir_p(dir)
  local previous = files.read_json(dir .. "/run.json")
  if previous and previous.status == "running" and not M.is_stale(previous) then
    local p = previous.process or {}
    error(("%s: run '%s' is running in process %s on %s"):format(fname, dir, tostring(p.pid), tostring(p.host)), 2)
  end

  local self = setmetatable({ name = name, dir = dir, config = cfg, seed = seed, status = "running", final = {},
    last = {}, echo = echo, t0 = clock() }, Run)
  local info = provenance()
  info.name = name
  info.status = "running"
  info.config = config.serialisable(cfg)
  info.seed = seed
  info.start_time = now_iso()
  info.start_unix = os.time()
  info.attempt = (previous and math.tointeger(previous.attempt) or 0) + 1
  info.process = files.process()
  info.host = info.process.host
  info.meta = opts.meta and config.serialisable(opts.meta) or nil
  self.info = info
  -- a new attempt starts its series and final metrics afresh; the log keeps every attempt
  os.remove(self:path("summary.json"))
  self.metrics_file = assert(io.open(self:path("metrics.csv"), "wb"))
  self.metrics_file:write("step,name,value,time\n")
  self.metrics_file:flush()
  self.log_file = assert(io.open(self:path("log.jsonl"), "ab"))
  self:_write_info()
  self:log("started", { attempt = info.attempt, seed = seed })
  -- the same seed gives the same run whatever ran before it in this process
  local knnd = knnd_module()
  if seed ~= nil and knnd and knnd.manual_seed then knnd.manual_seed(seed) end
  return self
end

--- Run fn(run) in a run folder; see the top of this file. on_error = "raise" (default: the run is
--- marked failed, then the error is raised again) or "return" (the run is returned, status failed).
function M.run(opts)
  if type(opts) ~= "table" then error("knnd.run: argument 1 expected an options table, got " .. type(opts), 2) end
  if type(opts.fn) ~= "function" then error("knnd.run: option 'fn' expected a function(run), got " .. type(opts.fn), 2) end
  local on_error = opts.on_error or "raise"
  if on_error ~= "raise" and on_error ~= "return" then
    error(("knnd.run: option 'on_error' expected 'raise' or 'return', got '%s'"):format(tostring(on_error)), 2)
  end
  local self = M.start(opts)
  local tb
  local ok, res = xpcall(opts.fn, function(e)
    tb = debug.traceback(tostring(e), 2)
    return e
  end, self)
  if ok then
    local sok, serr = pcall(function()
      if type(res) == "table" then self:summary(res) end
    end)
    if not sok then ok, res, tb = false, serr, debug.traceback(tostring(serr), 1) end
  end
  if ok then
    self.result = res
    finish(self, "finished")
  else
    self.error = tostring(res)
    finish(self, "failed", self.error, tb)
    if on_error == "raise" then error(res, 0) end
  end
  return self
end

--- the run.json of a run folder (nil and a message when there is none)
function M.read_info(dir) return files.read_json(dir .. "/run.json") end

setmetatable(M, { __call = function(_, opts) return M.run(opts) end })
return M
