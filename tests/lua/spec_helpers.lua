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

--- a fresh, empty run directory name for a spec (a stale checkpoint there would be resumed from)
function M.rundir(spec, name)
  local path = M.tmp(spec, name)
  os.execute(("rm -rf '%s'"):format(path))
  return path
end

--- M.fmnist_retrieval(spec, {n=, size=, dim=, k=, seed=7}) -> {ds_path=, ds=, emb=, emb_path=, store=, index=,
--- cache_path=}: n real Fashion-MNIST training images at size x size, stand-in embeddings (a fixed random
--- projection of the pixels, L2-normalised: CLIP's role, cheaply), an exact index over them and the k
--- nearest other images of each (a neighbour cache), as the knn_diffusion specs need
function M.fmnist_retrieval(spec, o)
  local knnd = require "knnd"
  local n, size, dim = o.n, o.size, o.dim
  local r = { ds_path = M.tmp(spec, "fm.h5"), emb_path = M.tmp(spec, "emb.h5"), cache_path = M.tmp(spec, "nn.h5") }
  knnd.dataset.prepare_fashion_mnist { out = r.ds_path, split = "train", size = size, limit = n, progress = false }
  r.ds = knnd.dataset.open(r.ds_path)
  local pixels = r.ds:images(knnd.arange(0, n, { dtype = "i64" })):to("f32"):view(n, -1) / 255
  local emb = knnd.matmul(pixels, knnd.randn(size * size, dim, { gen = knnd.Generator(o.seed or 7) }))
  r.emb = emb / emb:square():sum { dim = 2, keepdim = true }:sqrt()
  knnd.embeddings.save(r.emb_path, r.emb, { encoder = "random-projection", encoder_hash = "spec" })
  r.store = knnd.embeddings.open(r.emb_path)
  r.index = knnd.index.build { store = r.store, factory = "Flat" }
  knnd.cache.build(r.cache_path, r.index, r.store, { k = o.k, exclude_self = true })
  return r
end

return M
