-- gpu_index_spec.lua — knnd.index.gpu (exact search on a CUDA device) from Lua: the argument
-- checks and the clear error of a build or machine without CUDA run everywhere; search against
-- the FAISS Flat index is pending without a device. (Recall, ties and block/batch edges are the
-- C test's, tests/core/test_gpu_search.c.)
local knnd = require "knnd"

local h = require "spec_helpers"
local errors_with = h.errors_with

local has_gpu = knnd.cuda.available()
local D = 16

describe("knnd.index.gpu", function()
  it("checks its options before anything else", function()
    errors_with(function() knnd.index.gpu() end, "table expected")
    errors_with(function() knnd.index.gpu {} end, "knnd.index.gpu: option 'dim' is required")
    errors_with(function() knnd.index.gpu { dim = 0 } end, "option 'dim' is required")
    errors_with(function() knnd.index.gpu { dim = D, dtype = "f32" } end,
      "knnd.index.gpu: option 'dtype' is f32 (expected \"f16\" or \"bf16\")")
    errors_with(function() knnd.index.gpu { dim = D, dtype = "nope" } end, "knnd.index.gpu")
    errors_with(function() knnd.index.gpu { dim = D, device = -1 } end, "option 'device' is -1")
    errors_with(function() knnd.index.gpu { dim = D, block_rows = -1 } end, "block_rows")
    errors_with(function() knnd.index.gpu { dim = D, factory = "Flat" } end, "factory")
  end)

  it("says clearly when there is no CUDA", function()
    if has_gpu then pending("a CUDA device is present") return end
    local ok, msg = pcall(knnd.index.gpu, { dim = D })
    assert.is_false(ok)
    assert.matches("knnd.index.gpu: ", tostring(msg), 1, true)
    assert.matches("CUDA", tostring(msg), 1, true)
    ok = pcall(knnd.index.gpu, { dim = D, dtype = "bf16", device = 0 })
    assert.is_false(ok)
  end)

  it("finds what the Flat index finds", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local gen = knnd.Generator(3)
    local x, q = knnd.randn(3000, D, { gen = gen }), knnd.randn(37, D, { gen = gen })
    for _, dtype in ipairs { "f16", "bf16" } do
      local g = knnd.index.gpu { dim = D, dtype = dtype, device = 0, block_rows = 1000, query_rows = 16 }
      assert.equals(0, g:ntotal())
      g:add(x:narrow(1, 1, 1200))
      g:add(x:narrow(1, 1201, 1800))
      assert.equals(3000, g:ntotal())
      local flat = knnd.index.new { factory = "Flat", dim = D }
      flat:add(x)
      local es, el = flat:search(q, 10)
      local s, l = g:search(q, 10)
      assert.are.same({ 37, 10 }, s:shape())
      assert.equals("i64", l:dtype())
      h.assert_close(s, es:totable(), dtype == "f16" and 3e-3 or 2e-2)
      -- the best neighbour agrees except for near-ties under the f16/bf16 rounding
      local lt, et, agree = l:totable(), el:totable(), 0
      for i = 1, 37 do if lt[i][1] == et[i][1] then agree = agree + 1 end end
      assert.is_true(agree >= 33)
      -- a database row finds itself (0-based labels); a single query gives [k]
      local s1, l1 = g:search(x:select(1, 6), 3)
      assert.are.same({ 3 }, l1:shape())
      assert.equals(5, l1:totable()[1])
      assert.is_true(math.abs(s1:totable()[1] - 1) < 2e-2)
      errors_with(function() g:search(q, 0) end, "knnd.GpuIndex:search: argument 'k' is 0")
      errors_with(function() g:search(q, 1025) end, "argument 'k' is 1025")
      errors_with(function() g:add(knnd.randn(2, D + 1)) end, "knnd.GpuIndex:add: argument 'x'")
      errors_with(function() g.search(nil, q, 1) end, "expected a GPU index")
      assert.matches("knnd.GpuIndex(ntotal=3000)", tostring(g), 1, true)
    end
    -- fewer vectors than k: -1 labels
    local g = knnd.index.gpu { dim = D }
    g:add(x:narrow(1, 1, 3))
    local _, l = g:search(q:narrow(1, 1, 2), 5)
    assert.are.same({ -1, -1 }, { l:totable()[1][4], l:totable()[2][5] })
  end)
end)
