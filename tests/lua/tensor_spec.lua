-- tensor_spec.lua — the knnd.Tensor userdata from Lua: creation, 1-based indexing, views,
-- dtype moves, arithmetic metamethods, autograd, generators, and the errors of misuse.
local knnd = require "knnd"

-- every number of nested tables a and b within tol
local function close(a, b, tol)
  tol = tol or 1e-5
  if type(a) == "number" and type(b) == "number" then return math.abs(a - b) <= tol * (1 + math.abs(b)) end
  if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then return false end
  for i = 1, #a do
    if not close(a[i], b[i], tol) then return false end
  end
  return true
end

local function assert_close(t, expected, tol)
  local got = knnd.is_tensor(t) and t:totable() or t
  assert(close(got, expected, tol), ("expected %s, got %s"):format(require("pl.pretty").write(expected, ""),
    knnd.is_tensor(t) and tostring(t) or tostring(got)))
end

-- the error of fn contains `text` (plain, not a pattern)
local function errors_with(fn, text)
  assert.error_matches(fn, text, 1, true)
end

describe("knnd.tensor", function()
  it("reads nested tables row by row", function()
    local x = knnd.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ 2, 3 }, x:shape())
    assert.are.equal(2, x:dim())
    assert.are.equal(6, x:numel())
    assert.are.equal(2, #x)
    assert.are.equal("f32", x:dtype())
    assert.are.equal("cpu", x:device())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, x:totable())
    assert.are.same({ 3, 1 }, x:stride())
    assert.is_true(x:is_contiguous())
  end)

  it("takes a dtype and keeps integers exact", function()
    local x = knnd.tensor({ 1, 2, 2 ^ 40 // 1 }, { dtype = "i64" })
    assert.are.equal("i64", x:dtype())
    assert.are.equal(2 ^ 40 // 1, x[3])
    assert.is_true(math.type(x[1]) == "integer")
    local h = knnd.tensor({ 0.5, -2 }, { dtype = "f16" })
    assert.are.same({ 0.5, -2 }, h:totable())
    local b = knnd.tensor({ true, false }, { dtype = "u8" })
    assert.are.same({ 1, 0 }, b:totable())
  end)

  it("makes a 0-d tensor from a number and an empty one from {}", function()
    local s = knnd.tensor(3.5)
    assert.are.equal(0, s:dim())
    assert.are.equal(3.5, s:item())
    assert.are.equal(3.5, s:totable())
    assert.are.same({ 0 }, knnd.tensor({}):shape())
  end)

  it("copies a tensor, converting dtype", function()
    local x = knnd.tensor { 1.5, 2.5 }
    local y = knnd.tensor(x, { dtype = "i32" })
    x[1] = 9
    assert.are.same({ 1, 2 }, y:totable())
    assert.are.equal("i32", y:dtype())
  end)

  it("can ask for requires_grad", function()
    local x = knnd.tensor({ 1, 2 }, { requires_grad = true })
    assert.is_true(x.requires_grad)
  end)

  it("refuses ragged tables, non-numbers and unknown options", function()
    errors_with(function() knnd.tensor { { 1, 2 }, { 3 } } end, "knnd.tensor: argument 1 is ragged")
    errors_with(function() knnd.tensor { 1, "a" } end, "knnd.tensor: argument 1 expected a number at depth 1")
    errors_with(function() knnd.tensor("x") end, "knnd.tensor: argument 1 expected a number, nested tables")
    assert.has_error(function() knnd.tensor({ 1 }, { dtpye = "f32" }) end,
      "knnd.tensor: unknown option 'dtpye' (expected dtype, device, requires_grad)")
    errors_with(function() knnd.tensor({ 1 }, { dtype = "f65" }) end, "knnd.tensor: unknown dtype 'f65'")
    errors_with(function() knnd.tensor({ 1 }, { dtype = 32 }) end, "knnd.tensor: option 'dtype' expected a string")
  end)
end)

describe("creation functions", function()
  it("zeros, ones, full, empty take sizes or a shape table and options", function()
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, knnd.zeros(2, 3):totable())
    assert.are.same({ { 1, 1 } }, knnd.ones({ 1, 2 }):totable())
    local f = knnd.full({ 2 }, 7, { dtype = "i32" })
    assert.are.same({ 7, 7 }, f:totable())
    assert.are.equal("i32", f:dtype())
    assert.are.same({ 4, 5 }, knnd.empty(4, 5, { dtype = "bf16" }):shape())
    assert.are.equal("i64", knnd.zeros(3, { dtype = "i64" }):dtype())
    assert.are.same({ 0, 0 }, knnd.zeros_like(knnd.ones(2)):totable())
    assert.are.same({ 1, 1 }, knnd.ones_like(knnd.zeros(2)):totable())
  end)

  it("arange counts like PyTorch, [start, stop)", function()
    assert.are.same({ 0, 1, 2, 3 }, knnd.arange(4):totable())
    assert.are.same({ 2, 4, 6 }, knnd.arange(2, 8, 2, { dtype = "i64" }):totable())
    assert.are.equal("i64", knnd.arange(2, 8, 2, { dtype = "i64" }):dtype())
    errors_with(function() knnd.arange("a") end, "knnd.arange: argument 1 'stop' expected a number")
  end)

  it("rand, randn, randint, randperm follow a generator", function()
    local a = knnd.randn(3, 4, { gen = knnd.Generator(42) })
    local b = knnd.randn({ 3, 4 }, { gen = knnd.Generator(42) })
    assert.are.same(a:totable(), b:totable())
    local u = knnd.rand(1000)
    assert.is_true(u:min():item() >= 0 and u:max():item() < 1)
    local r = knnd.randint(3, 7, { 200 }, { gen = knnd.Generator(1) })
    assert.are.equal("i64", r:dtype())
    assert.is_true(r:float():min():item() >= 3 and r:float():max():item() <= 6)
    assert.are.same({ 50 }, knnd.randint(10, { 50 }):shape())
    local p = knnd.randperm(6, { gen = knnd.Generator(3) }):totable()
    table.sort(p)
    assert.are.same({ 0, 1, 2, 3, 4, 5 }, p) -- index-valued: 0-based
    assert.are.same({ 2, 3 }, knnd.randn_like(knnd.zeros(2, 3)):shape())
  end)

  it("manual_seed makes the default stream repeat", function()
    knnd.manual_seed(7)
    local a = knnd.rand(5):totable()
    knnd.manual_seed(7)
    assert.are.same(a, knnd.rand(5):totable())
  end)

  it("refuses bad shapes and options", function()
    errors_with(function() knnd.zeros(2, 1.5) end, "knnd.zeros: size 2 expected an integer")
    errors_with(function() knnd.zeros(2, "x") end, "knnd.zeros: argument 2 expected a size or an options table")
    errors_with(function() knnd.ones(-1) end, "knnd.ones: negative size")
    errors_with(function() knnd.full(2, 3) end, "knnd.full: argument 1 'shape' expected a table of sizes")
    errors_with(function() knnd.rand(2, { gen = 5 }) end, "knnd.rand: option 'gen' expected a knnd.Generator")
    errors_with(function() knnd.randperm(3, { seed = 1 }) end, "knnd.randperm: unknown option 'seed'")
    errors_with(function() knnd.zeros(2, { device = "tpu" }) end, "knnd.zeros: bad device 'tpu'")
  end)
end)

describe("knnd.Generator", function()
  it("has a seed and an offset that advances", function()
    local g = knnd.Generator(5)
    assert.are.equal(5, g:seed())
    assert.are.equal(0, g:offset())
    knnd.rand(8, { gen = g })
    assert.is_true(g:offset() > 0)
    local first = knnd.rand(4, { gen = g:seed(5) }):totable() -- reseed: offset back to 0
    assert.are.same(knnd.rand(4, { gen = knnd.Generator(5) }):totable(), first)
    g:offset(0)
    assert.are.same(first, knnd.rand(4, { gen = g }):totable())
    assert.matches("knnd.Generator%(seed=5", tostring(g))
  end)
end)

describe("1-based indexing", function()
  local x
  before_each(function() x = knnd.tensor { { 1, 2, 3 }, { 4, 5, 6 } } end)

  it("t[i] of a matrix is a row view, of a vector a number", function()
    assert.are.same({ 4, 5, 6 }, x[2]:totable())
    assert.are.equal(6, x[2][3])
    assert.are.equal(3, x[1][-1])
    assert.are.same({ 4, 5, 6 }, x[-1]:totable())
    x[2][1] = 40 -- the view writes through
    assert.are.equal(40, x:get(2, 1))
  end)

  it("t[i] = number | tensor writes a row", function()
    x[1] = 0
    x[2] = knnd.tensor { 7, 8, 9 }
    assert.are.same({ { 0, 0, 0 }, { 7, 8, 9 } }, x:totable())
  end)

  it("get and set take one position per dim", function()
    assert.are.equal(2, x:get(1, 2))
    assert.are.equal(6, x:get(-1, -1))
    assert.are.equal(x, x:set(1, 3, 30))
    assert.are.equal(30, x[1][3])
    assert.are.equal(21, knnd.tensor { 21 }:item())
  end)

  it("refuses positions out of range, in Lua terms", function()
    assert.has_error(function() return x[3] end,
      "knnd.tensor[i]: index 3 out of range for a dim of size 2 (expected 1..2 or -2..-1)")
    errors_with(function() return x[0] end, "index 0 out of range")
    errors_with(function() return x[1.5] end, "knnd.tensor[i]: index expected an integer")
    errors_with(function() x:get(1, 4) end, "knnd.get: argument 3 (index in dim 2) 4 out of range")
    errors_with(function() x:get(1) end, "knnd.get: expected 2 indices for a tensor of 2 dims, got 1")
    errors_with(function() x:set(1, 1, "v") end, "knnd.set: the last argument 'value' expected a number")
    errors_with(function() x[1] = "v" end, "the assigned value expected a number or a tensor")
    errors_with(function() x:item() end, "knnd.item: argument 1 has shape [2, 3]")
    errors_with(function() return knnd.tensor(1)[1] end, "a 0-d tensor cannot be indexed")
    errors_with(function() return #knnd.tensor(1) end, "a 0-d tensor has no length")
  end)

  it("unknown fields are nil and cannot be assigned", function()
    assert.is_nil(x.nothing)
    errors_with(function() x.nothing = 1 end, "knnd.Tensor: cannot assign field 'nothing'")
  end)
end)

describe("views", function()
  local x
  before_each(function() x = knnd.arange(6):view(2, 3) end)

  it("view and reshape infer -1", function()
    assert.are.same({ 3, 2 }, x:view(3, -1):shape())
    assert.are.same({ 6 }, x:reshape({ -1 }):shape())
    assert.are.same({ 3, 2 }, knnd.reshape(x, 3, 2):shape())
    errors_with(function() x:t():view(6) end, "knnd.view: the tensor's strides cannot express the new shape")
    assert.are.same({ 0, 3, 1, 4, 2, 5 }, x:t():reshape(6):totable())
  end)

  it("permute, transpose and t take 1-based dims", function()
    assert.are.same({ { 0, 3 }, { 1, 4 }, { 2, 5 } }, x:transpose(1, 2):totable())
    assert.are.same({ { 0, 3 }, { 1, 4 }, { 2, 5 } }, x:t():totable())
    assert.is_false(x:t():is_contiguous())
    assert.is_true(x:t():contiguous():is_contiguous())
    local y = knnd.zeros(2, 3, 4)
    assert.are.same({ 4, 2, 3 }, y:permute(3, 1, 2):shape())
    assert.are.same({ 4, 2, 3 }, y:permute { -1, 1, 2 }:shape())
    errors_with(function() y:permute(1, 2) end, "knnd.permute: expected 3 dims for a tensor of 3 dims, got 2")
    errors_with(function() y:transpose(1, 4) end,
      "knnd.transpose: argument 3 'dim1' 4 out of range for a tensor of 3 dims (expected 1..3 or -3..-1)")
  end)

  it("narrow, slice and select count from 1", function()
    assert.are.same({ { 1, 2 }, { 4, 5 } }, x:narrow(2, 2, 2):totable())
    assert.are.same({ { 2 }, { 5 } }, x:narrow(2, -1, 1):totable())
    assert.are.same({ { 0, 2 }, { 3, 5 } }, x:slice(2, 1, 3, 2):totable())
    assert.are.same({ { 1, 2 }, { 4, 5 } }, x:slice(2, 2):totable())
    assert.are.same({ { 1 }, { 4 } }, x:slice(2, 2, -2):totable())
    assert.are.same({ 2, 0 }, x:slice(2, 3, 2):shape())
    assert.are.same({ 3, 4, 5 }, x:select(1, 2):totable())
    assert.are.same({ 2, 5 }, x:select(2, -1):totable())
    errors_with(function() x:narrow(2, 2, 3) end,
      "knnd.narrow: argument 4 'length' 3 from start 2 runs outside dim 2 of size 3")
    errors_with(function() x:select(2, 4) end, "knnd.select: argument 3 'index' 4 out of range")
    errors_with(function() x:slice(1, 1, 2, 0) end, "knnd.slice: argument 5 'step' is 0")
  end)

  it("expand, squeeze, unsqueeze, flatten", function()
    local c = knnd.tensor { { 1 }, { 2 } }
    assert.are.same({ { 1, 1, 1 }, { 2, 2, 2 } }, c:expand(2, 3):totable())
    assert.are.same({ { 1, 1 }, { 2, 2 } }, c:expand(-1, 2):totable())
    assert.are.same({ 2 }, c:squeeze():shape())
    assert.are.same({ 2 }, c:squeeze(2):shape())
    assert.are.same({ 2, 1 }, c:squeeze(1):shape())
    assert.are.same({ 1, 2, 3 }, x:unsqueeze(1):shape())
    assert.are.same({ 2, 3, 1 }, x:unsqueeze(-1):shape())
    assert.are.same({ 2, 1, 3 }, x:unsqueeze(2):shape())
    assert.are.same({ 6 }, x:flatten():shape())
    assert.are.same({ 2, 12 }, knnd.zeros(2, 3, 4):flatten(2):shape())
    assert.are.same({ 6, 4 }, knnd.zeros(2, 3, 4):flatten(1, 2):shape())
    errors_with(function() x:unsqueeze(4) end, "knnd.unsqueeze: argument 2 'dim' 4 out of range for a tensor of 3 dims")
    errors_with(function() c:expand(3, 3) end, "knnd.expand: cannot expand shape [2, 1] to [3, 3]")
  end)

  it("clone copies, detach shares, views share storage", function()
    local c, d, v = x:clone(), x:detach(), x:view(6)
    x[1][1] = 100
    assert.are.equal(0, c:get(1, 1))
    assert.are.equal(100, d:get(1, 1))
    assert.are.equal(100, v[1])
  end)

  it("to, float, half, long convert dtypes", function()
    local h = x:half()
    assert.are.equal("f16", h:dtype())
    assert.are.equal("i64", knnd.tensor({ 1.7, -1.7 }):long():dtype())
    assert.are.same({ 1, -1 }, knnd.tensor({ 1.7, -1.7 }):long():totable())
    assert.are.equal("f32", h:float():dtype())
    assert.are.equal("bf16", x:to("bf16"):dtype())
    assert.are.equal("i32", x:to(knnd.zeros(1, { dtype = "i32" })):dtype())
    assert.are.equal(x, x:to("cpu")) -- already there: the same tensor
    assert.are.equal(x, x:float())
    errors_with(function() x:to("gpu") end, "knnd.to: argument 2 'gpu' is neither a dtype")
    if not knnd.cuda_available() then
      errors_with(function() x:to("cuda") end, "knnd.to:")
    end
  end)

  it("fill_ and copy_ write in place and return the tensor", function()
    local z = knnd.zeros(2, 2)
    assert.are.equal(z, z:fill_(3))
    assert.are.same({ { 3, 3 }, { 3, 3 } }, z:totable())
    z:copy_(knnd.tensor { 1, 2 }) -- broadcast
    assert.are.same({ { 1, 2 }, { 1, 2 } }, z:totable())
    errors_with(function() z:copy_(knnd.zeros(3)) end, "does not broadcast")
    errors_with(function() z:fill_("a") end, "knnd.fill_: argument 2 'value' expected a number")
  end)
end)

describe("printing and identity", function()
  it("tostring shows values, shape and dtype", function()
    local s = tostring(knnd.tensor { { 1, 2 }, { 3, 4 } })
    assert.matches("shape=%[2, 2%]", s)
    assert.matches("dtype=f32", s)
    assert.matches("4.0000", s)
  end)

  it("== is identity, not elementwise", function()
    local a, b = knnd.zeros(2), knnd.zeros(2)
    assert.is_true(a == a)
    assert.is_false(a == b)
    assert.is_true(a:contiguous() == a) -- the same tensor object comes back
  end)

  it("a closed tensor says so", function()
    local y = knnd.zeros(2)
    getmetatable(y).__close(y)
    errors_with(function() y:numel() end, "knnd.numel: argument 1 is a tensor that was already freed")
    do
      local z <close> = knnd.ones(3)
      assert.are.equal(3, z:numel())
    end
  end)
end)

describe("arithmetic metamethods", function()
  local a, b = knnd.tensor { 1, 2, 3 }, knnd.tensor { 4, 5, 6 }
  it("combine tensors and numbers on either side", function()
    assert.are.same({ 5, 7, 9 }, (a + b):totable())
    assert.are.same({ -3, -3, -3 }, (a - b):totable())
    assert.are.same({ 4, 10, 18 }, (a * b):totable())
    assert_close(b / a, { 4, 2.5, 2 })
    assert.are.same({ 1, 4, 9 }, (a ^ 2):totable())
    assert.are.same({ 2, 4, 8 }, (2 ^ a):totable())
    assert.are.same({ 9, 8, 7 }, (10 - a):totable())
    assert_close(6 / a, { 6, 3, 2 })
    assert.are.same({ 3, 4, 5 }, (a + 2):totable())
    assert.are.same({ -1, -2, -3 }, (-a):totable())
    assert.are.same({ { 5, 6, 7 }, { 6, 7, 8 } }, (knnd.tensor { { 1 }, { 2 } } + b):totable()) -- broadcast
  end)

  it("name the operation and the argument when misused", function()
    errors_with(function() return a + "x" end, "knnd.add: argument 2 expected a tensor or a number, got string")
    errors_with(function() return {} * a end, "knnd.mul: argument 1 expected a tensor or a number, got table")
    errors_with(function() return a + knnd.zeros(2) end, "knnd.add: shapes [3] and [2] do not broadcast")
  end)
end)

describe("autograd", function()
  it("the gradient of sum(x*x) is 2x", function()
    local x = knnd.tensor({ 1, -2, 3 }):requires_grad_()
    assert.is_true(x.requires_grad)
    assert.is_true(x.is_leaf)
    local y = (x * x):sum()
    assert.are.equal("sum", y.grad_fn)
    assert.is_false(y.is_leaf)
    y:backward()
    assert.are.same({ 2, -4, 6 }, x.grad:totable())
  end)

  it("accumulates, zero_grad clears, retain_graph allows a second pass", function()
    local x = knnd.tensor({ 1, 2 }, { requires_grad = true })
    local y = (x * 3):sum()
    y:backward(nil, { retain_graph = true })
    y:backward()
    assert.are.same({ 6, 6 }, x.grad:totable())
    errors_with(function() y:backward() end, "knnd.backward:")
    x:zero_grad()
    assert.is_nil(x.grad)
    local z = (x * 2):sum()
    z:backward()
    x.grad = nil
    assert.is_nil(x.grad)
  end)

  it("backward takes a gradient for a non-scalar root", function()
    local x = knnd.tensor({ 1, 2 }, { requires_grad = true })
    local y = x * x
    y:backward(knnd.tensor { 1, 10 })
    assert.are.same({ 2, 40 }, x.grad:totable())
    errors_with(function() (x * x):backward({ retain = true }) end, "knnd.backward: unknown option 'retain'")
  end)

  it("t.requires_grad = true works and integer tensors refuse it", function()
    local x = knnd.zeros(2)
    x.requires_grad = true
    assert.is_true(x.requires_grad)
    errors_with(function() knnd.zeros(2, { dtype = "i64" }):requires_grad_(true) end, "knnd.requires_grad_:")
    errors_with(function() x.requires_grad = 1 end, "field 'requires_grad' expected a boolean")
  end)

  it("refuses in-place writes to a leaf that requires grad, except under no_grad", function()
    local w = knnd.zeros(2, 2):requires_grad_()
    errors_with(function() w:fill_(1) end, "in-place write to a leaf that requires grad")
    errors_with(function() w[1] = 1 end, "in-place write to a leaf that requires grad")
    knnd.no_grad(function()
      w:fill_(1)
      w[2] = 2
    end)
    assert.are.same({ { 1, 1 }, { 2, 2 } }, w:totable())
  end)

  it("no_grad records nothing, returns fn's results and restores the mode on error", function()
    local x = knnd.ones(2):requires_grad_()
    local y, extra = knnd.no_grad(function(a) return a * 2, "ok" end, x)
    assert.is_false(y.requires_grad)
    assert.are.equal("ok", extra)
    assert.is_true(knnd.is_grad_enabled())
    local ok, err = pcall(knnd.no_grad, function() error("boom") end)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.is_true(knnd.is_grad_enabled())
    assert.is_true(knnd.set_grad_enabled(false))
    assert.is_false(knnd.is_grad_enabled())
    assert.is_true(knnd.enable_grad(knnd.is_grad_enabled))
    assert.is_false(knnd.set_grad_enabled(true))
    errors_with(function() knnd.no_grad(3) end, "knnd.no_grad: argument 1 expected a function")
  end)

  it("views carry gradients back to their base", function()
    local x = knnd.arange(6):view(2, 3):requires_grad_()
    local y = x:t():narrow(1, 2, 2):sum() -- columns 2 and 3 of x
    y:backward()
    assert.are.same({ { 0, 1, 1 }, { 0, 1, 1 } }, x.grad:totable())
  end)
end)
