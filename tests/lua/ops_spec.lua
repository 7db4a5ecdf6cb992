-- ops_spec.lua — the ops of knnd/ops.h from Lua: values against hand-computed results, the
-- method forms, gradients through Lua, 1-based dims, and the errors of misuse.
local knnd = require "knnd"

local h = require "spec_helpers"
local close, assert_close, errors_with = h.close, h.assert_close, h.errors_with

local function map(t, f)
  local r = {}
  for i, v in ipairs(t) do r[i] = f(v) end
  return r
end

local function sigmoid(v) return 1 / (1 + math.exp(-v)) end
local function tanh(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end
local function lse(t)
  local s = 0
  for _, v in ipairs(t) do s = s + math.exp(v) end
  return math.log(s)
end

describe("elementwise", function()
  local a, b = knnd.tensor { 1, 2, 3 }, knnd.tensor { 3, 2, 1 }

  it("binary ops take tensors or numbers on either side", function()
    assert.are.same({ 4, 4, 4 }, knnd.add(a, b):totable())
    assert.are.same({ -2, 0, 2 }, knnd.sub(a, b):totable())
    assert.are.same({ 3, 4, 3 }, a:mul(b):totable())
    assert_close(knnd.div(a, b), { 1 / 3, 1, 3 })
    assert.are.same({ 1, 4, 3 }, knnd.pow(a, b):totable())
    assert.are.same({ 3, 2, 3 }, knnd.maximum(a, b):totable())
    assert.are.same({ 1, 2, 1 }, a:minimum(b):totable())
    assert.are.same({ 9, 8, 7 }, knnd.sub(10, a):totable())
    assert.are.same({ 2, 2, 3 }, knnd.maximum(a, 2):totable())
    errors_with(function() knnd.add(1, 2) end, "knnd.add: expected at least one tensor, got two numbers")
    errors_with(function() knnd.mul(a) end, "knnd.mul: argument 2 expected a tensor or a number, got no value")
  end)

  it("unary ops match their formulas", function()
    local v = { -1, 0, 0.5, 2 }
    local x = knnd.tensor(v)
    assert_close(knnd.exp(x), map(v, math.exp))
    assert_close(x:abs(), map(v, math.abs))
    assert_close(x:neg(), map(v, function(t) return -t end))
    assert_close(x:tanh(), map(v, tanh))
    assert_close(x:sigmoid(), map(v, sigmoid))
    assert_close(x:relu(), { 0, 0, 0.5, 2 })
    assert_close(x:silu(), map(v, function(t) return t * sigmoid(t) end))
    assert_close(x:quick_gelu(), map(v, function(t) return t * sigmoid(1.702 * t) end))
    assert_close(x:sin(), map(v, math.sin))
    assert_close(x:cos(), map(v, math.cos))
    assert_close(x:square(), map(v, function(t) return t * t end))
    -- x·Φ(x), values from torch.nn.functional.gelu
    assert_close(knnd.gelu(x), { -0.15865525, 0, 0.34573123, 1.95449974 }, 1e-5)
    assert_close(knnd.gelu(x, { approximate = "tanh" }), map(v, function(t)
      return 0.5 * t * (1 + tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ^ 3)))
    end))
    local p = knnd.tensor { 0.25, 1, 4 }
    assert_close(p:log(), map({ 0.25, 1, 4 }, math.log))
    assert_close(p:sqrt(), { 0.5, 1, 2 })
    assert_close(p:rsqrt(), { 2, 1, 0.5 })
    errors_with(function() knnd.gelu(x, { approximate = "fast" }) end,
      "knnd.gelu: option 'approximate' expected one of none, tanh, got 'fast'")
    errors_with(function() knnd.exp(knnd.tensor({ 1 }, { dtype = "i64" })) end,
      "knnd.exp: argument 'x' has dtype i64 (expected a float dtype)")
    errors_with(function() knnd.exp(3) end, "knnd.exp: argument 1 expected a tensor, got number")
  end)

  it("clamp takes options or positions, where picks, comparisons give u8", function()
    assert_close(knnd.clamp(a, { min = 1.5, max = 2.5 }), { 1.5, 2, 2.5 })
    assert_close(a:clamp(nil, 2), { 1, 2, 2 })
    assert_close(a:clamp { min = 2 }, { 2, 2, 3 })
    errors_with(function() a:clamp { lo = 1 } end, "knnd.clamp: unknown option 'lo' (expected min, max)")
    assert.are.same({ 0, 2, 3 }, knnd.where(knnd.gt(a, 1), a, 0):totable())
    assert.are.same({ 3, 2, 3 }, knnd.where(knnd.ge(a, b), a, b):totable())
    local cmp = { eq = { 0, 1, 0 }, ne = { 1, 0, 1 }, lt = { 1, 0, 0 }, le = { 1, 1, 0 }, gt = { 0, 0, 1 }, ge = { 0, 1, 1 } }
    for name, want in pairs(cmp) do
      local r = knnd[name](a, b)
      assert.are.equal("u8", r:dtype())
      assert.are.same(want, r:totable())
      assert.are.same(want, a[name](a, b):totable())
    end
    assert.are.same({ 1, 0, 0 }, a:lt(2):totable())
    assert.are.same({ 0, 0, 1 }, knnd.lt(2, a):totable())
  end)

  it("gradients flow through Lua expressions", function()
    local x = knnd.tensor({ 0.5, -1, 2 }):requires_grad_()
    knnd.exp(x):sum():backward()
    assert_close(x.grad, map({ 0.5, -1, 2 }, math.exp))
    x:zero_grad()
    local y = (x * x):sum() + (x * 3):sum() -- gradient 2x + 3
    y:backward()
    assert_close(x.grad, { 4, 1, 7 })
    x:zero_grad()
    x:sigmoid():sum():backward()
    assert_close(x.grad, map({ 0.5, -1, 2 }, function(t) return sigmoid(t) * (1 - sigmoid(t)) end))
  end)
end)

describe("reductions", function()
  local x = knnd.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it("sum and mean over all, one or several 1-based dims", function()
    assert.are.equal(21, knnd.sum(x):item())
    assert.are.same({ 5, 7, 9 }, knnd.sum(x, 1):totable())
    assert.are.same({ 6, 15 }, x:sum(2):totable())
    assert.are.same({ 6, 15 }, x:sum(-1):totable())
    assert.are.same({ { 6 }, { 15 } }, x:sum(2, true):totable())
    assert.are.same({ { 6 }, { 15 } }, x:sum { dim = 2, keepdim = true }:totable())
    assert.are.equal(21, x:sum { dim = { 1, 2 } }:item())
    assert.are.equal(3.5, x:mean():item())
    assert.are.same({ 2, 5 }, knnd.mean(x, { dim = 2 }):totable())
  end)

  it("var is unbiased unless correction = 0", function()
    assert_close(x:var(), 3.5)
    assert_close(x:var { correction = 0 }, 17.5 / 6)
    assert_close(x:var { dim = 2 }, { 1, 1 })
  end)

  it("max and min give values and 0-based indices along a dim, the extreme value without", function()
    local v, i = x:max(2)
    assert.are.same({ 3, 6 }, v:totable())
    assert.are.same({ 2, 2 }, i:totable())
    assert.are.equal("i64", i:dtype())
    v, i = knnd.min(x, { dim = 1 })
    assert.are.same({ 1, 2, 3 }, v:totable())
    assert.are.same({ 0, 0, 0 }, i:totable())
    v, i = x:max()
    assert.are.equal(6, v:item())
    assert.is_nil(i)
    assert.are.equal(1, x:min():item())
    assert.are.equal(5, x:argmax():item())
    assert.are.same({ 1, 1, 1 }, x:argmax(1):totable())
    assert.are.same({ 0, 0 }, x:argmin { dim = 2 }:totable())
    assert.are.same({ { 0 }, { 0 } }, x:argmin(2, true):totable())
  end)

  it("logsumexp, softmax and log_softmax", function()
    assert_close(x:logsumexp(2), { lse { 1, 2, 3 }, lse { 4, 5, 6 } })
    local row = map({ 1, 2, 3 }, function(t) return math.exp(t - lse { 1, 2, 3 }) end)
    assert_close(x:softmax(), { row, row })
    assert_close(knnd.softmax(x, 2), { row, row })
    assert_close(x:softmax(1), { { sigmoid(-3), sigmoid(-3), sigmoid(-3) }, { sigmoid(3), sigmoid(3), sigmoid(3) } })
    local lrow = map({ 1, 2, 3 }, function(t) return t - lse { 1, 2, 3 } end)
    assert_close(x:log_softmax(-1), { lrow, lrow })
  end)

  it("gradients: mean spreads 1/n, max routes to the argmax", function()
    local w = knnd.tensor({ { 1, 5 }, { 7, 2 } }):requires_grad_()
    w:mean():backward()
    assert_close(w.grad, { { 0.25, 0.25 }, { 0.25, 0.25 } })
    w:zero_grad()
    local v = w:max(2)
    v:sum():backward()
    assert_close(w.grad, { { 0, 1 }, { 1, 0 } })
  end)

  it("refuses bad dims and options", function()
    assert.has_error(function() x:sum(3) end,
      "knnd.sum: dim 3 out of range for a tensor of 2 dims (expected 1..2 or -2..-1)")
    errors_with(function() x:sum(0) end, "knnd.sum: dim 0 out of range")
    errors_with(function() x:sum { dims = 1 } end, "knnd.sum: unknown option 'dims' (expected dim, keepdim)")
    errors_with(function() x:sum { dim = "a" } end, "knnd.sum: option 'dim' expected an integer or a table")
    errors_with(function() x:sum(1, 1) end, "knnd.sum: argument 3 'keepdim' expected a boolean, got number")
    errors_with(function() x:max { dim = { 1, 2 } } end, "knnd.max: option 'dim' expected one dim, got 2")
    errors_with(function() x:mean { correction = 1 } end, "knnd.mean: unknown option 'correction'")
    errors_with(function() x:softmax(5) end, "knnd.softmax: argument 2 'dim' 5 out of range")
  end)
end)

describe("linear algebra", function()
  local A, B = knnd.tensor { { 1, 2 }, { 3, 4 } }, knnd.tensor { { 5, 6 }, { 7, 8 } }

  it("matmul, bmm and linear", function()
    assert.are.same({ { 19, 22 }, { 43, 50 } }, knnd.matmul(A, B):totable())
    assert.are.same({ 3, 7 }, A:matmul(knnd.tensor { 1, 1 }):totable())
    local bA, bB = knnd.stack { A, B }, knnd.stack { B, A }
    assert.are.same({ { { 19, 22 }, { 43, 50 } }, { { 23, 34 }, { 31, 46 } } }, knnd.bmm(bA, bB):totable())
    local w = knnd.tensor { { 1, 0 }, { 0, 1 }, { 1, 1 } }
    assert.are.same({ { 1, 3, 5 } }, knnd.linear(knnd.tensor { { 1, 2 } }, w, knnd.tensor { 0, 1, 2 }):totable())
    assert.are.same({ { 1, 2, 3 } }, knnd.tensor({ { 1, 2 } }):linear(w):totable())
  end)

  it("the gradient of sum(A·B) by A is ones·Bᵀ", function()
    local a = A:clone():requires_grad_()
    knnd.matmul(a, B):sum():backward()
    assert.are.same({ { 11, 15 }, { 11, 15 } }, a.grad:totable())
  end)

  it("names the argument on shape, dtype and type errors", function()
    errors_with(function() knnd.matmul(A, knnd.zeros(3, 2)) end, "knnd.matmul: argument 'b' has shape [3, 2]")
    errors_with(function() knnd.matmul(A, B:half()) end, "knnd.matmul: argument 'b' has dtype f16")
    errors_with(function() knnd.matmul(A) end, "knnd.matmul: argument 2 expected a tensor, got no value")
    errors_with(function() knnd.linear(A, "w") end, "knnd.linear: argument 2 expected a tensor, got string")
    errors_with(function() knnd.bmm(A, B) end, "knnd.bmm:")
  end)
end)

describe("convolution, resampling, pooling", function()
  local x = knnd.arange(9):view(1, 1, 3, 3)
  local ones = knnd.ones(1, 1, 2, 2)

  it("conv2d sums windows, with bias, padding, stride and groups", function()
    assert.are.same({ { { { 8, 12 }, { 20, 24 } } } }, knnd.conv2d(x, ones):totable())
    assert.are.same({ { { { 9, 13 }, { 21, 25 } } } }, x:conv2d(ones, { bias = knnd.ones(1) }):totable())
    local padded = knnd.conv2d(x, ones, { padding = 1 })
    assert.are.same({ 1, 1, 4, 4 }, padded:shape())
    assert.are.equal(8, padded:get(1, 1, 2, 2))
    assert.are.equal(8, padded:get(1, 1, 4, 4))
    assert.are.same({ { { { 0, 3 }, { 9, 24 } } } }, knnd.conv2d(x, ones, { padding = 1, stride = { 2, 2 } }):totable())
    local two = knnd.ones(1, 2, 2, 2)
    local w = knnd.tensor({ 2, 3 }):view(2, 1, 1, 1)
    assert.are.same({ { { { 2, 2 }, { 2, 2 } }, { { 3, 3 }, { 3, 3 } } } }, knnd.conv2d(two, w, { groups = 2 }):totable())
  end)

  it("conv2d's weight gradient is the sum of the windows", function()
    local w = ones:clone():requires_grad_()
    knnd.conv2d(x, w):sum():backward()
    assert.are.same({ { { { 8, 12 }, { 20, 24 } } } }, w.grad:totable())
  end)

  it("interpolate follows F.interpolate", function()
    local s = knnd.tensor({ { 1, 2 }, { 3, 4 } }):view(1, 1, 2, 2)
    assert.are.same({ { 1, 1, 2, 2 }, { 1, 1, 2, 2 }, { 3, 3, 4, 4 }, { 3, 3, 4, 4 } },
      knnd.interpolate(s, { scale_factor = 2 })[1][1]:totable())
    assert_close(s:interpolate { size = 3, mode = "bilinear", align_corners = true }[1][1],
      { { 1, 1.5, 2 }, { 2, 2.5, 3 }, { 3, 3.5, 4 } })
    assert_close(knnd.interpolate(s, { size = { 4, 4 }, mode = "bilinear" })[1][1],
      { { 1, 1.25, 1.75, 2 }, { 1.5, 1.75, 2.25, 2.5 }, { 2.5, 2.75, 3.25, 3.5 }, { 3, 3.25, 3.75, 4 } })
    errors_with(function() knnd.interpolate(s, { size = 2, mode = "cubic" }) end,
      "knnd.interpolate: option 'mode' expected one of nearest, bilinear, got 'cubic'")
    errors_with(function() knnd.interpolate(s, { size = 2, scale_factor = 2 }) end, "exactly one of the options")
    errors_with(function() knnd.interpolate(s, { size = 2, align_corners = true }) end, "only applies to mode 'bilinear'")
    errors_with(function() knnd.interpolate(knnd.zeros(2, 2), { size = 2 }) end,
      "knnd.interpolate: argument 1 'x' has shape [2, 2] (expected 4 dims [N, C, H, W])")
  end)

  it("max_pool2d and avg_pool2d", function()
    local y = knnd.arange(16):view(1, 1, 4, 4)
    assert.are.same({ { 5, 7 }, { 13, 15 } }, knnd.max_pool2d(y, 2)[1][1]:totable())
    assert.are.same({ { 5, 7 }, { 13, 15 } }, y:max_pool2d { kernel_size = 2 }[1][1]:totable())
    assert_close(knnd.avg_pool2d(y, { kernel_size = { 2, 2 } })[1][1], { { 2.5, 4.5 }, { 10.5, 12.5 } })
    local p = knnd.avg_pool2d(y, 2, { stride = 2, padding = 1 })[1][1]
    assert.are.same({ 3, 3 }, p:shape())
    assert_close(p[1], { 0, 0.75, 0.75 })
    local q = knnd.avg_pool2d(y, 2, { stride = 2, padding = 1, count_include_pad = false })[1][1]
    assert_close(q[1], { 0, 1.5, 3 })
    errors_with(function() knnd.max_pool2d(y, 2, { count_include_pad = true }) end,
      "knnd.max_pool2d: unknown option 'count_include_pad'")
    errors_with(function() knnd.avg_pool2d(y, {}) end, "knnd.avg_pool2d: option 'kernel_size' is required")
  end)
end)

describe("normalisation and attention", function()
  it("group_norm and layer_norm normalise with weight, bias and eps", function()
    local z = 1.5 / math.sqrt(1.25 + 1e-5)
    local ln = { -z, -z / 3, z / 3, z }
    local x = knnd.tensor { { 1, 2, 3, 4 } }
    assert_close(knnd.layer_norm(x, 1), { ln }, 1e-4)
    assert_close(x:layer_norm({ 4 }, { weight = knnd.full({ 4 }, 2), bias = knnd.ones(4) }),
      { map(ln, function(t) return 2 * t + 1 end) }, 1e-4)
    local g = knnd.tensor({ 1, 2, 3, 4 }):view(1, 2, 2)
    assert_close(knnd.group_norm(g, 1):view(4), ln, 1e-4)
    local e = 0.5 / math.sqrt(0.25 + 1e-5)
    assert_close(g:group_norm(2, { weight = knnd.tensor { 2, 1 }, bias = knnd.tensor { 0, 1 }, eps = 1e-5 }),
      { { { -2 * e, 2 * e }, { 1 - e, 1 + e } } }, 1e-4)
    errors_with(function() knnd.layer_norm(x, { 3 }) end,
      "knnd.layer_norm: argument 2 'normalized_shape' [3] is not the last dims of x's shape [1, 4]")
    errors_with(function() knnd.layer_norm(x, 3) end, "knnd.layer_norm: argument 2 'normalized_ndim' is 3")
    errors_with(function() knnd.group_norm(g, 3) end, "knnd.group_norm:")
    errors_with(function() knnd.group_norm(g, 1, { weight = 1 }) end, "knnd.group_norm: option 'weight' expected a tensor")
  end)

  it("scaled_dot_product_attention is softmax(q·kᵀ·scale)·v", function()
    local q = knnd.tensor({ { 1, 0 }, { 0, 1 } }):view(1, 1, 2, 2)
    local v = knnd.tensor({ { 1, 2 }, { 3, 4 } }):view(1, 1, 2, 2)
    local p = sigmoid(1 / math.sqrt(2)) -- weight of the matching key
    local full = { { p * 1 + (1 - p) * 3, p * 2 + (1 - p) * 4 }, { (1 - p) * 1 + p * 3, (1 - p) * 2 + p * 4 } }
    assert_close(knnd.scaled_dot_product_attention(q, q, v)[1][1], full)
    assert_close(q:scaled_dot_product_attention(q, v, { is_causal = true })[1][1], { { 1, 2 }, full[2] })
    local mask = knnd.tensor({ { 1, 0 }, { 1, 1 } }, { dtype = "u8" })
    assert_close(knnd.scaled_dot_product_attention(q, q, v, { mask = mask })[1][1], { { 1, 2 }, full[2] })
    local p2 = sigmoid(2)
    assert_close(knnd.scaled_dot_product_attention(q, q, v, { scale = 2 })[1][1][1], { p2 + (1 - p2) * 3, 2 * p2 + (1 - p2) * 4 })
    errors_with(function() knnd.scaled_dot_product_attention(q, q, v, { scale = -1 }) end, "option 'scale' must be positive")
    errors_with(function() knnd.scaled_dot_product_attention(q, q, v, { causal = true }) end,
      "unknown option 'causal' (expected mask, is_causal, scale)")
    errors_with(function() knnd.scaled_dot_product_attention(q, q, knnd.zeros(1, 1, 3, 2)) end,
      "knnd.scaled_dot_product_attention:")
  end)
end)

describe("joining and indexing", function()
  it("cat, stack and split use 1-based dims", function()
    local a, b = knnd.tensor { 1, 2 }, knnd.tensor { 3, 4 }
    assert.are.same({ 1, 2, 3, 4 }, knnd.cat { a, b }:totable())
    assert.are.same({ { 1, 2 }, { 3, 4 } }, knnd.stack { a, b }:totable())
    assert.are.same({ { 1, 3 }, { 2, 4 } }, knnd.stack({ a, b }, 2):totable())
    assert.are.same({ { 1, 2, 1, 2 } }, knnd.cat({ a:view(1, 2), a:view(1, 2) }, -1):totable())
    local parts = knnd.split(knnd.arange(5), 2)
    assert.are.equal(3, #parts)
    assert.are.same({ 4 }, parts[3]:totable())
    local two = knnd.arange(6):view(2, 3):split({ 1, 2 }, 2)
    assert.are.same({ { 1, 2 }, { 4, 5 } }, two[2]:totable())
    -- more inputs than an autograd node holds (8): joined in groups when one needs a gradient, in one
    -- go when none does (integer tokens, or tensors without requires_grad) -- no error either way
    local many, ints = {}, {}
    for i = 1, 20 do
      many[i] = knnd.full({ 2 }, i)
      ints[i] = knnd.full({ 2 }, i, { dtype = "i64" })
    end
    assert.are.same({ 40 }, knnd.cat(many):shape())
    assert.are.equal(20, knnd.cat(ints):totable()[40])
    many[3].requires_grad = true
    local joined = knnd.cat(many)
    joined:sum():backward()
    assert.are.same({ 1, 1 }, many[3].grad:totable())
    errors_with(function() knnd.cat {} end, "knnd.cat: argument 1 expected a non-empty list of tensors")
    errors_with(function() knnd.cat { a, 1 } end, "knnd.cat: argument 1 entry 2 expected a tensor, got number")
    errors_with(function() knnd.cat(a) end, "knnd.cat: argument 1 expected a list of tensors")
    errors_with(function() knnd.stack({ a, b }, 3) end, "knnd.stack: argument 2 'dim' 3 out of range")
    errors_with(function() knnd.split(a, { 1, 2 }) end, "knnd.split:")
    errors_with(function() knnd.split(a, 0) end, "knnd.split: argument 2 'size' is 0")
  end)

  it("gather, index_select, scatter_add and embedding take 0-based index tensors", function()
    local x = knnd.tensor { { 1, 2 }, { 3, 4 } }
    local idx = knnd.tensor({ { 0, 0 }, { 1, 0 } }, { dtype = "i64" })
    assert.are.same({ { 1, 1 }, { 4, 3 } }, knnd.gather(x, 2, idx):totable())
    assert.are.same({ { 3, 4 } }, x:index_select(1, knnd.tensor({ 1 }, { dtype = "i64" })):totable())
    local s = knnd.scatter_add(knnd.zeros(3), 1, knnd.tensor({ 0, 2, 0 }, { dtype = "i64" }), knnd.tensor { 1, 2, 3 })
    assert.are.same({ 4, 0, 2 }, s:totable())
    local w = knnd.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }
    assert.are.same({ { 5, 6 }, { 1, 2 } }, knnd.embedding(w, knnd.tensor({ 2, 0 }, { dtype = "i64" })):totable())
    errors_with(function() knnd.gather(x, 2, knnd.tensor { { 0, 0 }, { 1, 0 } }) end, "knnd.gather: argument 'index' has dtype f32")
    errors_with(function() knnd.index_select(x, 3, idx) end, "knnd.index_select: argument 2 'dim' 3 out of range")
    errors_with(function() knnd.embedding(w, knnd.tensor({ 3 }, { dtype = "i64" })) end, "knnd.embedding:")
  end)

  it("embedding passes gradients to the rows used", function()
    local w = knnd.zeros(3, 2):requires_grad_()
    knnd.embedding(w, knnd.tensor({ 2, 0, 2 }, { dtype = "i64" })):sum():backward()
    assert.are.same({ { 1, 1 }, { 0, 0 }, { 2, 2 } }, w.grad:totable())
  end)
end)

describe("losses and dropout", function()
  it("mse_loss reduces by mean, sum or none", function()
    local a, b = knnd.tensor { 1, 2 }, knnd.tensor { 3, 5 }
    assert_close(knnd.mse_loss(a, b), 6.5)
    assert_close(a:mse_loss(b, { reduction = "sum" }), 13)
    assert_close(knnd.mse_loss(a, b, { reduction = "none" }), { 4, 9 })
    errors_with(function() knnd.mse_loss(a, b, { reduction = "avg" }) end,
      "knnd.mse_loss: option 'reduction' expected one of mean, sum, none, got 'avg'")
  end)

  it("cross_entropy takes 0-based targets, ignore_index and label smoothing", function()
    local logits = knnd.tensor { { 1, 2, 3 } }
    local t = knnd.tensor({ 2 }, { dtype = "i64" })
    local nll = lse { 1, 2, 3 } - 3
    assert_close(knnd.cross_entropy(logits, t), nll)
    assert_close(knnd.cross_entropy(knnd.tensor { { 0, 0 } }, knnd.tensor({ 1 }, { dtype = "i64" })), math.log(2))
    local two = knnd.tensor { { 1, 2, 3 }, { 5, 5, 5 } }
    assert_close(two:cross_entropy(knnd.tensor({ 2, -100 }, { dtype = "i64" })), nll)
    assert_close(two:cross_entropy(knnd.tensor({ 2, 7 }, { dtype = "i64" }), { ignore_index = 7 }), nll)
    local mean_nll = (3 * lse { 1, 2, 3 } - 6) / 3
    assert_close(knnd.cross_entropy(logits, t, { label_smoothing = 0.1 }), 0.9 * nll + 0.1 * mean_nll)
    local x = logits:clone():requires_grad_()
    knnd.cross_entropy(x, t):backward() -- softmax − onehot
    local sm = map({ 1, 2, 3 }, function(v) return math.exp(v - lse { 1, 2, 3 }) end)
    assert_close(x.grad, { { sm[1], sm[2], sm[3] - 1 } })
    errors_with(function() knnd.cross_entropy(logits, knnd.tensor { 2 }) end, "knnd.cross_entropy: argument 'target' has dtype f32")
    errors_with(function() knnd.cross_entropy(logits, t, { smoothing = 0.1 }) end, "knnd.cross_entropy: unknown option 'smoothing'")
  end)

  it("dropout is the identity when not training, scales kept values by 1/(1-p)", function()
    local x = knnd.ones(1000)
    assert.are.equal(x:sum():item(), knnd.dropout(x, { training = false }):sum():item())
    assert.are.same(x:totable(), x:dropout { p = 0 }:totable())
    local y = knnd.dropout(x, { p = 0.5, gen = knnd.Generator(1) })
    local kept = knnd.gt(y, 0):float():sum():item()
    assert.is_true(kept > 400 and kept < 600)
    assert.are.equal(2 * kept, y:sum():item())
    assert.are.same(y:totable(), knnd.dropout(x, { p = 0.5, gen = knnd.Generator(1) }):totable())
    errors_with(function() knnd.dropout(x, { p = 1.5 }) end, "knnd.dropout:")
    errors_with(function() knnd.dropout(x, { rate = 0.5 }) end, "knnd.dropout: unknown option 'rate' (expected p, training, gen)")
  end)
end)
