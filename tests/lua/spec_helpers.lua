-- spec_helpers.lua — what the Lua specs share: tensor values as Lua lists, closeness with a
-- readable failure, pinned error messages, scratch files.
local knnd = require "knnd"
-- busted gives each spec its own `assert`; a module required by the specs takes luassert itself
local assert = require "luassert"

local M = {}

--- the values of a tensor as a flat Lua list
function M.flat(t)
  local out = {}
  local function walk(v)
    if type(v) == "table" then for _, x in ipairs(v) do walk(x) end else out[#out + 1] = v end
  end
  walk(t:totable())
  return out
end

--- numbers, or equally nested tables of numbers, within tol (relative, plus tol absolute)
function M.close(a, b, tol)
  tol = tol or 1e-5
  if type(a) == "number" and type(b) == "number" then return math.abs(a - b) <= tol * (1 + math.abs(b)) end
  if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then return false end
  for i = 1, #a do
    if not M.close(a[i], b[i], tol) then return false end
  end
  return true
end

--- got (a tensor, a number or nested tables) holds `expected` within tol
function M.assert_close(got, expected, tol)
  local values = knnd.is_tensor(got) and got:totable() or got
  assert(M.close(values, expected, tol), ("expected %s, got %s"):format(require("pl.pretty").write(expected, ""),
    knnd.is_tensor(got) and tostring(got) or require("pl.pretty").write(values, "")))
end

--- fn raises an error whose message contains `text` (plain, not a pattern)
function M.errors_with(fn, text)
  assert.error_matches(fn, text, 1, true)
end

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

function M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- a fresh scratch file name for a spec (specs run in parallel in one folder)
function M.tmp(spec, name)
  local path = spec .. "_" .. name
  os.remove(path)
  return path
end

return M
