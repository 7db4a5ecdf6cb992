-- cuda_spec.lua — knnd.cuda (devices, memory statistics, TF32), knnd.autocast (plain and
-- scoped), module:to and t:pin_memory. Without a GPU: the queries answer "none", the rest errors
-- clearly; the GPU cases are pending there.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, assert_close = h.flat, h.assert_close

local has_gpu = knnd.cuda.available()

-- the error message of f(...), which must fail
local function err(f, ...)
  local ok, msg = pcall(f, ...)
  assert.is_false(ok)
  return tostring(msg)
end

describe("knnd.cuda", function()
  it("reports the devices", function()
    assert.is_boolean(knnd.cuda.available())
    assert.equals(knnd.cuda_available(), knnd.cuda.available())
    local n = knnd.cuda.device_count()
    assert.is_true(math.type(n) == "integer" and n >= 0)
    assert.equals(n > 0, has_gpu)
  end)

  it("names a bad device argument", function()
    assert.matches("memory_stats: argument 1 'device' is 'x'", err(knnd.cuda.memory_stats, "x"), 1, true)
    assert.matches("argument 1 'device' expected a CUDA device index", err(knnd.cuda.memory_stats, {}), 1, true)
    assert.matches("synchronize: argument 1 'device'", err(knnd.cuda.synchronize, "cpu"), 1, true)
    -- an index beyond int is refused as it is, not wrapped to cuda:0
    assert.matches("argument 1 'device' is 4294967296 (expected a CUDA device index >= 0)",
      err(knnd.cuda.memory_stats, 4294967296), 1, true)
    assert.matches("argument 1 'device' is -1", err(knnd.cuda.memory_stats, -1), 1, true)
    assert.matches("allow_tf32: argument 1 'on' expected a boolean", err(knnd.cuda.allow_tf32, "yes"), 1, true)
  end)

  it("toggles TF32 and returns the previous setting", function()
    local before = knnd.cuda.allow_tf32()
    assert.is_boolean(before)
    assert.equals(before, knnd.cuda.allow_tf32(not before))
    if has_gpu then assert.equals(not before, knnd.cuda.allow_tf32()) end
    knnd.cuda.allow_tf32(before)
    assert.equals(before, knnd.cuda.allow_tf32())
  end)

  if not has_gpu then
    it("without a device: queries fail clearly, cache calls do nothing", function()
      assert.equals(0, knnd.cuda.device_count())
      assert.matches("memory_stats: no CUDA device is present", err(knnd.cuda.memory_stats), 1, true)
      assert.matches("synchronize: no CUDA device is present", err(knnd.cuda.synchronize), 1, true)
      assert.matches("no CUDA device", err(knnd.cuda.memory_stats, 0), 1, true)
      knnd.cuda.empty_cache()
      knnd.cuda.reset_peak_memory()
      assert.matches("no CUDA device", err(knnd.cuda.empty_cache, 0), 1, true)
    end)

    it("without a device: moving a tensor or a module to cuda says CUDA", function()
      local x = knnd.randn(2, 3)
      assert.matches("cuda", err(function() return x:to("cuda") end), 1, true)
      local lin = knnd.nn.Linear(3, 2)
      local w = lin.weight
      assert.matches("cuda:0", err(function() return lin:to("cuda") end), 1, true)
      assert.equals("cpu", lin.weight:device()) -- unchanged
      assert_close(flat(lin.weight), flat(w), 0)
      assert.matches("pin_memory", err(function() return x:pin_memory() end), 1, true)
    end)
  else
    it("memory statistics of a device", function()
      knnd.cuda.synchronize()
      knnd.cuda.reset_peak_memory()
      local x = knnd.randn(1024, 1024):to("cuda")
      local s = knnd.cuda.memory_stats()
      for _, k in ipairs {"allocated", "peak_allocated", "reserved", "peak_reserved", "num_mallocs", "num_frees"} do
        assert.is_true(math.type(s[k]) == "integer", k)
      end
      assert.is_true(s.allocated >= 4 * 1024 * 1024)
      assert.is_true(s.peak_allocated >= s.allocated)
      assert.same(s, knnd.cuda.memory_stats("cuda:0"))
      x = nil
      collectgarbage()
      knnd.cuda.empty_cache(0)
      assert.matches("expected 0..", err(knnd.cuda.memory_stats, knnd.cuda.device_count()), 1, true)
    end)
  end

  it("module:to moves parameters; forward matches the CPU", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local net = knnd.nn.Sequential {knnd.nn.Linear(5, 6), knnd.nn.GroupNorm(2, 6)}
    local x = knnd.randn(4, 5)
    local ref = net(x)
    assert.equals(net, net:to("cuda"))
    assert.equals("cuda:0", net[1].weight:device())
    assert.is_true(net[1].weight.requires_grad)
    local y = net(x:to("cuda"))
    assert_close(flat(y:to("cpu")), flat(ref), 1e-4)
    local opt = knnd.optim.AdamW(net, {lr = 1e-2})
    knnd.sum(net(x:to("cuda"))):backward()
    opt:step()
    net:to("cpu")
    assert.equals("cpu", net[1].weight:device())
  end)

  it("pin_memory copies a CPU tensor into page-locked memory", function()
    if not has_gpu then pending("needs a CUDA device") return end
    local x = knnd.randn(3, 4)
    local p = x:pin_memory()
    assert.is_true(p:is_pinned())
    assert.is_false(x:is_pinned())
    assert_close(flat(p), flat(x), 0)
    assert.matches("expected a CPU tensor", err(function() return x:to("cuda"):pin_memory() end), 1, true)
  end)
end)

describe("knnd.autocast", function()
  after_each(function() knnd.autocast(false) end)

  it("is off by default and sets, returning the previous state", function()
    assert.is_false(knnd.autocast())
    assert.is_false(knnd.autocast("bf16"))
    assert.equals("bf16", knnd.autocast())
    assert.equals("bf16", knnd.autocast("f16"))
    assert.equals("f16", knnd.autocast(false))
    assert.is_false(knnd.autocast())
  end)

  it("casts float inputs while on; gradients reach f32 leaves in f32", function()
    local x = knnd.randn(3, 4, {requires_grad = true})
    assert.equals("f32", knnd.autocast_input(x):dtype())
    knnd.autocast("bf16")
    local c = knnd.autocast_input(x)
    knnd.autocast(false)
    assert.equals("bf16", c:dtype())
    assert.equals("i64", knnd.autocast_input(knnd.arange(0, 4, 1, {dtype = "i64"})):dtype())
    knnd.sum(c):backward()
    assert.equals("f32", x.grad:dtype())
    assert_close(flat(x.grad), flat(knnd.ones(3, 4)), 0)
  end)

  it("scoped: on inside, restored after, results returned", function()
    local x = knnd.randn(2, 2)
    local a, b = knnd.autocast("f16", function(t, k)
      assert.equals("f16", knnd.autocast())
      return knnd.autocast_input(t):dtype(), k
    end, x, 7)
    assert.equals("f16", a)
    assert.equals(7, b)
    assert.is_false(knnd.autocast())
  end)

  it("scoped: restored when the function errors, nested scopes too", function()
    knnd.autocast("bf16")
    local ok, msg = pcall(knnd.autocast, "f16", function()
      knnd.autocast(false, function() error("inner boom") end)
    end)
    assert.is_false(ok)
    assert.matches("inner boom", msg, 1, true)
    assert.equals("bf16", knnd.autocast())
    ok = pcall(knnd.autocast, false, function() error("boom") end)
    assert.is_false(ok)
    assert.equals("bf16", knnd.autocast())
  end)

  it("names bad arguments", function()
    assert.matches("argument 1 'dtype' is 'i64'", err(knnd.autocast, "i64"), 1, true)
    assert.matches("argument 1 'dtype' expected", err(knnd.autocast, 3), 1, true)
    assert.matches("argument 2 'fn' expected a function", err(knnd.autocast, "bf16", 3), 1, true)
    assert.is_false(knnd.autocast()) -- unchanged by the refused calls
  end)
end)
