-- nn_spec.lua — knnd.nn: Module userdata, constructors, parameters and state dicts, modes,
-- files, Lua-side composition, and the errors of every misuse.
local knnd = require "knnd"

local function shape(t) return table.concat(t:size(), "x") end

-- the values of a tensor as a flat Lua list
local h = require "spec_helpers"
local flat, assert_close = h.flat, h.assert_close

describe("knnd.nn constructors", function()
  it("Linear has weight [out, in] and bias [out], and bias = false drops the bias", function()
    local l = knnd.nn.Linear(4, 3)
    assert.are.equal("Linear", l:type())
    assert.are.equal("3x4", shape(l.weight))
    assert.are.equal("3", shape(l.bias))
    assert.are.equal(15, l:num_params())
    local nb = knnd.nn.Linear(4, 3, {bias = false})
    assert.is_nil(nb.bias)
    assert.are.equal(12, nb:num_params())
  end)

  it("Conv2d takes an integer or a {kh, kw} kernel and the conv options", function()
    local c = knnd.nn.Conv2d(3, 8, 3, {padding = 1})
    assert.are.equal("8x3x3x3", shape(c.weight))
    assert.are.equal("2x8x5x5", shape(c(knnd.randn(2, 3, 5, 5))))
    local r = knnd.nn.Conv2d(4, 4, {1, 3}, {stride = {1, 2}, groups = 2, bias = false})
    assert.are.equal("4x2x1x3", shape(r.weight))
    assert.is_nil(r.bias)
    assert.are.equal("1x4x6x3", shape(r(knnd.randn(1, 4, 6, 7))))
  end)

  it("GroupNorm, LayerNorm and Embedding have PyTorch's parameters", function()
    local g = knnd.nn.GroupNorm(2, 8)
    assert.are.equal("8", shape(g.weight))
    assert.are.equal("8", shape(g.bias))
    assert.is_nil(knnd.nn.GroupNorm(2, 8, {affine = false}).weight)
    local ln = knnd.nn.LayerNorm(6, {eps = 1e-6})
    assert.are.equal("2x6", shape(ln(knnd.randn(2, 6))))
    local e = knnd.nn.Embedding(10, 4)
    assert.are.equal("10x4", shape(e.weight))
    -- index tensors are 0-based, as everywhere in knnd
    local y = e(knnd.tensor({0, 9, 3}, {dtype = "i64"}))
    assert.are.equal("3x4", shape(y))
    assert_close(flat(y[2]), flat(e.weight[10]))
  end)

  it("MultiheadAttention has q/k/v/out projections and takes a context", function()
    local m = knnd.nn.MultiheadAttention(8, 2, {kdim = 6})
    assert.are.equal("Linear", m.q_proj:type())
    assert.are.equal("8x6", shape(m.k_proj.weight))
    local q, ctx = knnd.randn(2, 5, 8), knnd.randn(2, 3, 6)
    assert.are.equal("2x5x8", shape(m(q, ctx)))
    assert.are.equal("2x5x8", shape(m(q, ctx, nil)))
    local self_attn = knnd.nn.MultiheadAttention(8, 4)
    assert.are.equal("2x5x8", shape(self_attn(q)))
  end)

  it("Sequential takes a list or the modules as arguments", function()
    local a = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.Linear(8, 2)}
    local b = knnd.nn.Sequential(knnd.nn.Linear(4, 8), knnd.nn.Linear(8, 2))
    assert.are.equal(2, #a)
    assert.are.equal(2, #b)
    assert.are.equal("2x2", shape(a(knnd.randn(2, 4))))
  end)

  it("the gen option makes initialisation reproducible", function()
    local w1 = knnd.nn.Linear(5, 5, {gen = knnd.Generator(7)}).weight
    local w2 = knnd.nn.Linear(5, 5, {gen = knnd.Generator(7)}).weight
    local w3 = knnd.nn.Linear(5, 5, {gen = knnd.Generator(8)}).weight
    assert.are.same(flat(w1), flat(w2))
    assert.are_not.same(flat(w1), flat(w3))
  end)
end)

describe("knnd.nn.Module", function()
  it("m(x) and m:forward(x) compute x W^T + b", function()
    local l = knnd.nn.Linear(3, 2)
    local x = knnd.randn(4, 3)
    local y = l(x)
    assert.are.same(flat(y), flat(l:forward(x)))
    local W, b, X = l.weight:totable(), l.bias:totable(), x:totable()
    local want = {}
    for i = 1, 4 do
      for o = 1, 2 do
        local s = b[o]
        for k = 1, 3 do s = s + X[i][k] * W[o][k] end
        want[#want + 1] = s
      end
    end
    assert_close(flat(y), want)
  end)

  it("indexes children by position and by name, tensors by name", function()
    local net = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.Linear(8, 2)}
    assert.are.equal("Linear", net[1]:type())
    assert.are.equal("2x8", shape(net[2].weight))
    assert.is_nil(net[3])
    assert.is_nil(net.nothing)
    assert.are.equal(net[1], net:children()[1])
    assert.are.equal("0", net:named_children()[1].name)
    -- handles share the module's tensors
    assert.are.equal(net[1].weight, net[1].weight)
  end)

  it("lists parameters in registration order, with dotted names", function()
    local net = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.Linear(8, 2)}
    local names = {}
    for _, p in ipairs(net:named_parameters()) do names[#names + 1] = p.name end
    assert.are.same({"0.weight", "0.bias", "1.weight", "1.bias"}, names)
    local ps = net:parameters()
    assert.are.equal(4, #ps)
    assert.are.equal(net[1].weight, ps[1])
    assert.is_true(ps[1].requires_grad)
    assert.are.equal(4 * 8 + 8 + 8 * 2 + 2, net:num_params())
  end)

  it("state_dict gives name -> tensor and the order; load_state_dict copies values", function()
    local a, b = knnd.nn.Linear(3, 2), knnd.nn.Linear(3, 2)
    local sd, order = a:state_dict()
    assert.are.same({"weight", "bias"}, order)
    assert.are.equal(a.weight, sd.weight)
    assert.are.equal(b, b:load_state_dict(sd))
    assert.are.same(flat(a.weight), flat(b.weight))
    -- a module is accepted as the source too
    local c = knnd.nn.Linear(3, 2)
    c:load_state_dict(a)
    assert.are.same(flat(a.bias), flat(c.bias))
  end)

  it("load_state_dict is strict by default and names what is wrong", function()
    local l = knnd.nn.Linear(3, 2)
    local before = flat(l.weight)
    assert.has_error(function() l:load_state_dict({weight = knnd.zeros(2, 3)}) end)
    local ok, err = pcall(l.load_state_dict, l, {weight = knnd.zeros(2, 3)})
    assert.is_false(ok)
    assert.matches("knnd.nn.Module:load_state_dict", err, 1, true)
    assert.matches("bias", err, 1, true)
    assert.are.same(before, flat(l.weight)) -- nothing copied
    l:load_state_dict({weight = knnd.zeros(2, 3)}, {strict = false})
    assert.are.same({0, 0, 0, 0, 0, 0}, flat(l.weight))
    ok, err = pcall(l.load_state_dict, l, {weight = knnd.zeros(3, 3), bias = knnd.zeros(2)})
    assert.is_false(ok)
    assert.matches("weight", err, 1, true)
    assert.matches("[3, 3]", err, 1, true)
    ok, err = pcall(l.load_state_dict, l, {weight = "no"})
    assert.is_false(ok)
    assert.matches("entry 'weight' is a string (expected a tensor)", err, 1, true)
  end)

  it("train/eval set the mode recursively; training is a field", function()
    local net = knnd.nn.Sequential{knnd.nn.Linear(2, 2)}
    assert.is_true(net.training)
    assert.are.equal(net, net:eval())
    assert.is_false(net.training)
    assert.is_false(net[1].training)
    net:train()
    assert.is_true(net[1].training)
    net.training = false
    assert.is_false(net[1].training)
    net:train(true)
    assert.is_true(net.training)
  end)

  it("zero_grad drops the accumulated gradients", function()
    local l = knnd.nn.Linear(3, 1)
    knnd.sum(l(knnd.randn(2, 3))):backward()
    assert.is_not_nil(l.weight.grad)
    l:zero_grad()
    assert.is_nil(l.weight.grad)
    assert.is_nil(l.bias.grad)
  end)

  it("save and load round-trip through a safetensors file", function()
    local a = knnd.nn.Sequential{knnd.nn.Linear(3, 4), knnd.nn.LayerNorm(4)}
    local b = knnd.nn.Sequential{knnd.nn.Linear(3, 4), knnd.nn.LayerNorm(4)}
    a:save("nn_spec_model.safetensors")
    b:load("nn_spec_model.safetensors")
    local x = knnd.randn(2, 3)
    assert.are.same(flat(a(x)), flat(b(x)))
    local c = knnd.nn.Linear(3, 4)
    assert.has_error(function() c:load("nn_spec_model.safetensors") end)
    c:load("nn_spec_model.safetensors", {strict = false}) -- no names in common: nothing loaded
    os.remove("nn_spec_model.safetensors")
  end)

  it("tostring shows the tree with shapes", function()
    local net = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.MultiheadAttention(8, 2)}
    local s = tostring(net)
    assert.matches("knnd.nn.Sequential (", s, 1, true)
    assert.matches("(0): Linear: weight [8, 4], bias [8]", s, 1, true)
    assert.matches("    (q_proj): Linear: weight [8, 8]", s, 1, true)
    assert.matches("eval mode", tostring(net:eval()), 1, true)
  end)
end)

describe("modules written in Lua", function()
  -- a residual MLP as a plain Lua object around C modules
  local MLP = {}
  MLP.__index = MLP
  local function new_mlp(dim)
    return setmetatable({fc1 = knnd.nn.Linear(dim, 16), fc2 = knnd.nn.Linear(16, dim)}, MLP)
  end
  function MLP:forward(x) return x + self.fc2(knnd.relu(self.fc1(x))) end
  function MLP:parameters() return {self.fc1, self.fc2} end
  function MLP:state_dict()
    local sd = {}
    for _, part in ipairs{"fc1", "fc2"} do
      for name, t in pairs(self[part]:state_dict()) do sd[part .. "." .. name] = t end
    end
    return sd
  end

  it("train with the optimisers and save like C modules", function()
    local m = new_mlp(3)
    local opt = knnd.optim.SGD(m, {lr = 0.05})
    local x, target = knnd.randn(16, 3, {gen = knnd.Generator(1)}), knnd.zeros(16, 3)
    local first, last
    for _ = 1, 30 do
      opt:zero_grad()
      local loss = knnd.mse_loss(m:forward(x), target)
      loss:backward()
      opt:step()
      first = first or loss:item()
      last = loss:item()
    end
    assert.is_true(last < first)
    knnd.io.save_safetensors("nn_spec_lua.safetensors", m)
    local back = knnd.io.load_safetensors("nn_spec_lua.safetensors")
    assert.are.same(flat(m.fc1.weight), flat(back["fc1.weight"]))
    os.remove("nn_spec_lua.safetensors")
  end)

  it("cannot be put inside a C Sequential", function()
    assert.has_error(function() knnd.nn.Sequential{knnd.nn.Linear(2, 2), new_mlp(2)} end,
      "knnd.nn.Sequential: element 2 expected a knnd.nn.Module, got table (a Lua-table module cannot run " ..
      "inside a C Sequential: compose it in Lua instead)")
  end)
end)

describe("knnd.nn misuse is a Lua error naming the function and argument", function()
  local l = knnd.nn.Linear(4, 3)
  it("constructor arguments", function()
    assert.has_error(function() knnd.nn.Linear(0, 3) end,
      "knnd.nn.Linear: argument 1 'in_features' is 0 (expected a positive integer)")
    assert.has_error(function() knnd.nn.Linear({}, 3) end,
      "knnd.nn.Linear: argument 1 'in_features' expected an integer, got table")
    assert.has_error(function() knnd.nn.Linear(4, 3, {biass = true}) end,
      "knnd.nn.Linear: unknown option 'biass' (expected bias, gen)")
    assert.has_error(function() knnd.nn.Linear(4, 3, {bias = 1}) end,
      "knnd.nn.Linear: option 'bias' expected a boolean, got number")
    assert.has_error(function() knnd.nn.Linear(4, 3, {gen = 1}) end,
      "knnd.nn.Linear: option 'gen' expected a knnd.Generator, got number")
    assert.has_error(function() knnd.nn.Conv2d(3, 8, {3}) end,
      "knnd.nn.Conv2d: argument 3 'kernel_size' expected a positive integer or a pair {kh, kw} of them")
    assert.has_error(function() knnd.nn.MultiheadAttention(8, 3) end)
    assert.has_error(function() knnd.nn.Sequential{1} end)
  end)

  it("forward inputs and self", function()
    assert.has_error(function() l("x") end,
      "knnd.nn.Module:forward: input 1 of Linear expected a tensor or nil, got string")
    assert.has_error(function() l.forward(3) end,
      "knnd.nn.Module:forward: argument 1 (self) expected a knnd.nn.Module, got number (call it as m:forward(...))")
    local ok, err = pcall(l, knnd.randn(2, 5))
    assert.is_false(ok)
    assert.matches("^knnd.nn.Module:forward: Linear: .*%[2, 5%]", err)
    assert.has_error(function() l() end)
  end)

  it("fields and methods", function()
    assert.has_error(function() l.weight = knnd.zeros(3, 4) end)
    assert.has_error(function() l.training = "yes" end,
      "knnd.nn.Module: field 'training' expected a boolean, got string")
    assert.has_error(function() l:train("no") end,
      "knnd.nn.Module:train: argument 2 'mode' expected a boolean, got string")
    assert.has_error(function() l:save(3) end, "knnd.nn.Module:save: argument 2 'path' expected a string, got number")
    assert.has_error(function() l:load("/nonexistent/nn_spec.safetensors") end)
    assert.has_error(function() l:load_state_dict(3) end)
    assert.has_error(function() l:load_state_dict({}, {strict = 1}) end,
      "knnd.nn.Module:load_state_dict: option 'strict' expected a boolean, got number")
  end)
end)
