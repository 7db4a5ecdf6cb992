-- files.lua — file helpers the Lua layers share: atomic writes (a crash leaves the previous good
-- file), mkdir -p, JSON files, directory listings, and who this process is (pid, host) so that a
-- run left "running" by a killed process can be told from a live one.
local M = {}

local function quote(path) return "'" .. tostring(path):gsub("'", "'\\''") .. "'" end
M.shell_quote = quote

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

function M.is_dir(path)
  local ok = os.execute(("test -d %s"):format(quote(path)))
  return ok == true or ok == 0
end

function M.mkdir_p(dir)
  local ok = os.execute(("mkdir -p %s"):format(quote(dir)))
  if not (ok == true or ok == 0) then error(("cannot create the directory '%s'"):format(dir), 0) end
end

function M.read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function self_stat()
  -- /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so the
  -- fields are counted after the last ')' (state is field 3, starttime field 22: proc(5))
  local s = M.read_all("/proc/self/stat")
  if not s then return nil end
  local pid = math.tointeger(tonumber(s:match("^(%d+)")))
  local rest = s:match(".*%)%s+(.*)$") or ""
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return pid, fields[20]
end

local process -- cached: {pid, start, host, boot_id}

--- this process: {pid =, start = (clock ticks after boot, tells a reused pid apart), host =, boot_id =}
function M.process()
  if process then return process end
  local pid, start = self_stat()
  local host = (M.read_all("/proc/sys/kernel/hostname") or M.read_all("/etc/hostname") or os.getenv("HOSTNAME") or "")
    :gsub("%s+$", "")
  if host == "" then
    local p = io.popen("hostname 2>/dev/null")
    if p then host = (p:read("a") or ""):gsub("%s+$", ""); p:close() end
  end
  local boot = (M.read_all("/proc/sys/kernel/random/boot_id") or ""):gsub("%s+$", "")
  process = { pid = pid, start = start, host = host ~= "" and host or "unknown", boot_id = boot ~= "" and boot or nil }
  return process
end

--- is the process recorded as {pid, start, host, boot_id} alive? true / false, or nil when this
--- host cannot tell (another host, no /proc)
function M.process_alive(rec)
  local me = M.process()
  if type(rec) ~= "table" or not rec.pid or rec.host ~= me.host then return nil end
  if rec.boot_id and me.boot_id and rec.boot_id ~= me.boot_id then return false end -- rebooted since
  if not me.pid then return nil end
  local s = M.read_all(("/proc/%d/stat"):format(math.tointeger(rec.pid) or -1))
  if not s then return false end
  if rec.start then
    local rest = s:match(".*%)%s+(.*)$") or ""
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    if fields[20] ~= tostring(rec.start) then return false end -- the pid was reused
  end
  return true
end

local counter = 0

--- text written to path through a temporary file and a rename (a crash leaves the old file); the
--- temporary name holds the pid so that processes writing the same file never share one
function M.write_atomic(path, text)
  counter = counter + 1
  local tmp = ("%s.tmp.%s.%d.%d"):format(path, tostring(M.process().pid or 0), counter, math.random(1 << 30))
  local f, err = io.open(tmp, "wb")
  if not f then error(("cannot write '%s': %s"):format(tmp, err), 0) end
  local ok, werr = f:write(text)
  local cok, cerr = f:close()
  if not ok or not cok then
    os.remove(tmp)
    error(("cannot write '%s': %s"):format(tmp, tostring(werr or cerr)), 0)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    error(("cannot rename '%s' to '%s': %s"):format(tmp, path, tostring(rerr)), 0)
  end
end

-- JSON writing is ours rather than dkjson's: keys sorted (the same table always gives the same
-- text), floats exact (dkjson writes 14 significant digits), and a table {n = 3} stays an object
-- (dkjson takes it for an array of 3 nulls, table.pack's convention)
local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or ("\\u%04x"):format(c:byte()) end) .. '"'
end

local function json_number(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  local s = ("%.14g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end

local function is_array(t)
  local n = #t
  if n == 0 then return next(t) == nil end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function encode(v, indent, depth, out, seen)
  local t = type(v)
  if v == nil then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "number" then out[#out + 1] = json_number(v)
  elseif t == "string" then out[#out + 1] = json_string(v)
  elseif t == "table" then
    -- dkjson's conventions: __tojson writes the value itself (dkjson.null), __jsontype tells an
    -- empty object from an empty array
    local mt = getmetatable(v)
    mt = type(mt) == "table" and mt or nil
    if mt and mt.__tojson then
      out[#out + 1] = assert(mt.__tojson(v, {}))
      return
    end
    if seen[v] then error("cannot encode JSON: a table holds itself", 0) end
    seen[v] = true
    local nl = indent and "\n" .. ("  "):rep(depth + 1) or ""
    local close = indent and "\n" .. ("  "):rep(depth) or ""
    local as_array
    if mt and mt.__jsontype == "object" then as_array = false
    elseif mt and mt.__jsontype == "array" then as_array = true
    else as_array = is_array(v) end
    if as_array then
      if #v == 0 then out[#out + 1] = "[]" else
        out[#out + 1] = "["
        for i = 1, #v do
          out[#out + 1] = (i > 1 and "," or "") .. nl
          encode(v[i], indent, depth + 1, out, seen)
        end
        out[#out + 1] = close .. "]"
      end
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      local by_name = {}
      for k, x in pairs(v) do by_name[tostring(k)] = x end
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        out[#out + 1] = (i > 1 and "," or "") .. nl .. json_string(k) .. (indent and ": " or ":")
        encode(by_name[k], indent, depth + 1, out, seen)
      end
      out[#out + 1] = close .. "}"
    end
    seen[v] = nil
  else
    error(("cannot encode JSON: a %s value"):format(t), 0)
  end
end

--- JSON text of v: keys sorted, floats exact; indented unless compact
function M.json_encode(v, compact)
  local out = {}
  encode(v, not compact, 0, out, {})
  return table.concat(out)
end

function M.write_json(path, v)
  M.write_atomic(path, M.json_encode(v) .. "\n")
end

--- the decoded JSON file, or nil and a message (missing, unreadable, malformed)
function M.read_json(path)
  local s = M.read_all(path)
  if not s then return nil, ("cannot read '%s'"):format(path) end
  -- nil, nil: plain tables, without dkjson's __jsontype metatables
  local v, _, err = require("dkjson").decode(s, 1, nil, nil, nil)
  if err or v == nil then return nil, ("'%s' is not valid JSON: %s"):format(path, tostring(err)) end
  return v
end

--- the entries of a directory (names, sorted; no . and ..), or an empty list
function M.list_dir(dir)
  local p = io.popen(("ls -1A %s 2>/dev/null"):format(quote(dir)))
  local out = {}
  if not p then return out end
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

return M
