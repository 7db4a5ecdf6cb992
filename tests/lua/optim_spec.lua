-- optim_spec.lua — knnd.optim: AdamW and SGD against the PyTorch update rules written out in
-- Lua, the ways to pass parameters, state dicts, EMA, gradient clipping, LR schedules, misuse.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, assert_close = h.flat, h.assert_close

-- a leaf parameter with the given values, and a gradient set by hand
local function param(values) return knnd.tensor(values, {requires_grad = true}) end
local function set_grad(p, values) p.grad = knnd.tensor(values) end

-- torch.optim.AdamW, one parameter list of plain numbers
local function adamw_ref(p, grads, o)
  local m, v = {}, {}
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for t, g in ipairs(grads) do
    for i = 1, #p do
      p[i] = p[i] * (1 - o.lr * o.wd)
      m[i] = o.b1 * m[i] + (1 - o.b1) * g[i]
      v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] * g[i]
      local mhat, vhat = m[i] / (1 - o.b1 ^ t), v[i] / (1 - o.b2 ^ t)
      p[i] = p[i] - o.lr * mhat / (math.sqrt(vhat) + o.eps)
    end
  end
  return p
end

-- torch.optim.SGD
local function sgd_ref(p, grads, o)
  local buf = {}
  for _, g in ipairs(grads) do
    for i = 1, #p do
      local d = g[i] + o.wd * p[i]
      if o.momentum ~= 0 then
        buf[i] = buf[i] and o.momentum * buf[i] + (1 - o.dampening) * d or d
        d = o.nesterov and d + o.momentum * buf[i] or buf[i]
      end
      p[i] = p[i] - o.lr * d
    end
  end
  return p
end

local P0 = {0.5, -1.25, 2.0, 0.0}
local GRADS = {{0.1, -0.2, 0.3, 1.0}, {-0.4, 0.5, 0.05, 1.0}, {0.2, 0.2, -0.7, -2.0}}

describe("knnd.optim.AdamW", function()
  local function run(opts, ref)
    local p = param(P0)
    local opt = knnd.optim.AdamW({p}, opts)
    for _, g in ipairs(GRADS) do
      set_grad(p, g)
      opt:step()
    end
    assert.are.equal(#GRADS, opt:steps())
    assert_close(flat(p), adamw_ref({table.unpack(P0)}, GRADS, ref))
  end

  it("follows torch.optim.AdamW with its defaults", function()
    run(nil, {lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01})
  end)

  it("takes lr, betas, eps and weight_decay, including explicit zeros", function()
    run({lr = 0.1, betas = {0.8, 0.99}, eps = 1e-6, weight_decay = 0.5},
        {lr = 0.1, b1 = 0.8, b2 = 0.99, eps = 1e-6, wd = 0.5})
    run({lr = 0.1, weight_decay = 0}, {lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0})
    run({lr = 0.1, betas = {0, 0.99}, weight_decay = 0}, {lr = 0.1, b1 = 0, b2 = 0.99, eps = 1e-8, wd = 0})
  end)

  it("reports and changes the learning rate", function()
    local opt = knnd.optim.AdamW({param({1})}, {lr = 0.25})
    assert.are.equal(0.25, opt:lr())
    assert.are.equal(opt, opt:set_lr(0.5))
    assert.are.equal(0.5, opt:lr())
    assert.matches("knnd.optim.AdamW (lr 0.5, 1 parameter tensors, 0 steps)", tostring(opt), 1, true)
    assert.are.equal(0, knnd.optim.AdamW({param({1})}, {lr = 0}):lr())
  end)

  it("skips a parameter without a gradient and zero_grad drops gradients", function()
    local a, b = param({1, 2}), param({3})
    local opt = knnd.optim.AdamW({a, b}, {lr = 0.1, weight_decay = 0})
    set_grad(a, {1, 1})
    opt:step()
    assert.are.same({3}, flat(b))
    assert.are_not.same({1, 2}, flat(a))
    opt:zero_grad()
    assert.is_nil(a.grad)
  end)

  it("refuses a non-finite gradient and leaves the parameters as they were", function()
    local p = param({1, 2})
    local opt = knnd.optim.AdamW({p})
    set_grad(p, {0 / 0, 1})
    local ok, err = pcall(opt.step, opt)
    assert.is_false(ok)
    assert.matches("^knnd.optim.Optimizer:step: ", err)
    assert.are.same({1, 2}, flat(p))
  end)

  it("state_dict/load_state_dict resume the same trajectory", function()
    local p, q = param(P0), param(P0)
    local a = knnd.optim.AdamW({p}, {lr = 0.1})
    set_grad(p, GRADS[1])
    a:step()
    local sd, names = a:state_dict()
    assert.is_true(#names >= 2)
    knnd.no_grad(function() q:copy_(p) end) -- a leaf that requires grad: written under no_grad
    local b = knnd.optim.AdamW({q}, {lr = 0.1})
    b:load_state_dict(sd)
    assert.are.equal(1, b:steps())
    set_grad(p, GRADS[2])
    set_grad(q, GRADS[2])
    a:step()
    b:step()
    assert.are.same(flat(p), flat(q))
  end)
end)

describe("knnd.optim.SGD", function()
  local function run(opts)
    local p = param(P0)
    local opt = knnd.optim.SGD(p, opts)
    for _, g in ipairs(GRADS) do
      set_grad(p, g)
      opt:step()
    end
    assert_close(flat(p), sgd_ref({table.unpack(P0)}, GRADS, {lr = opts.lr, momentum = opts.momentum or 0,
      dampening = opts.dampening or 0, wd = opts.weight_decay or 0, nesterov = opts.nesterov}))
  end
  it("follows torch.optim.SGD: plain, momentum, dampening, weight decay, nesterov", function()
    run({lr = 0.1})
    run({lr = 0.1, momentum = 0.9})
    run({lr = 0.05, momentum = 0.9, dampening = 0.5, weight_decay = 0.1})
    run({lr = 0.05, momentum = 0.8, nesterov = true})
  end)
end)

describe("parameters can be given as", function()
  local function count(params)
    return tonumber(tostring(knnd.optim.SGD(params)):match("(%d+) parameter tensors"))
  end

  it("a tensor, a list, a module, named_parameters, a Lua object or a nested mix", function()
    local l = knnd.nn.Linear(3, 2)
    local extra = param({1})
    assert.are.equal(1, count(extra))
    assert.are.equal(2, count(l))
    assert.are.equal(2, count(l:parameters()))
    assert.are.equal(2, count(l:named_parameters()))
    assert.are.equal(3, count({l, extra}))
    assert.are.equal(3, count({parameters = function() return {l, {extra}} end}))
    local nested = {param({1})}
    for _ = 1, 15 do nested = {nested, param({2}), knnd.nn.Linear(1, 1)} end
    assert.are.equal(1 + 15 * 3, count(nested))
    -- a tensor reached twice is optimised once
    assert.are.equal(2, count({l, l.weight, {l:parameters()}}))
  end)

  it("and a wrong value is named by its path", function()
    assert.has_error(function() knnd.optim.SGD({param({1}), {3}}) end,
      "knnd.optim.SGD: argument 1 'params'[2][1] expected a tensor, a knnd.nn.Module, an object with " ..
      "parameters() or a list of them, got number")
    assert.has_error(function() knnd.optim.SGD({weight = param({1})}) end)
    assert.has_error(function() knnd.optim.SGD({}) end)
    assert.has_error(function() knnd.optim.AdamW(knnd.tensor({1, 2}, {dtype = "i64"})) end)
  end)
end)

describe("knnd.optim.EMA", function()
  it("keeps decay * shadow + (1 - decay) * param, swaps and swaps back", function()
    local p = param({1, 2})
    local ema = knnd.optim.EMA({p}, 0.9)
    assert.are.equal(0.9, ema:decay())
    knnd.no_grad(function() p:copy_(knnd.tensor({3, 4})) end)
    ema:update()
    assert_close(flat(p), {3, 4})
    ema:swap()
    assert_close(flat(p), {0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4})
    ema:swap()
    assert_close(flat(p), {3, 4})
  end)

  it("warms up as diffusers' EMAModel: decay 0, then min(decay, (1+n)/(10+n)), resumed from its state dict", function()
    local p = param({1, -2})
    local ema = knnd.optim.EMA({p}, 0.5, {warmup = true})
    local shadow, seen = {1, -2}, {}
    for n = 0, 9 do
      -- diffusers: optimization_step = n + 1, step = n, decay 0 at step 0
      local want = n == 0 and 0 or math.min(0.5, (1 + n) / (10 + n))
      seen[#seen + 1] = ema:next_decay()
      assert.is_true(math.abs(seen[#seen] - want) < 1e-12, ("update %d: decay %g, want %g"):format(n, seen[#seen], want))
      local v = {n + 0.5, 2 * n - 3}
      knnd.no_grad(function() p:copy_(knnd.tensor(v)) end)
      ema:update()
      for i = 1, 2 do shadow[i] = want * shadow[i] + (1 - want) * v[i] end
    end
    assert.are.equal(0.5, seen[#seen]) -- (1+n)/(10+n) passes 0.5 at n = 8
    assert.is_true(seen[2] < seen[3] and seen[3] < seen[4])
    ema:swap()
    assert_close(flat(p), shadow, 1e-5)
    ema:swap()
    -- a fresh EMA resumes the ramp from the step count its state dict carries
    local q = param({0, 0})
    local fresh = knnd.optim.EMA({q}, 0.9, {warmup = true})
    assert.are.equal(0, fresh:next_decay())
    fresh:load_state_dict((ema:state_dict()))
    assert.is_true(math.abs(fresh:next_decay() - 11 / 20) < 1e-12)
    -- without warm-up the decay is the constant one from the first update
    assert.are.equal(0.9, knnd.optim.EMA({q}, 0.9):next_decay())
    assert.is_truthy(tostring(knnd.optim.EMA({q}, 0.9, {warmup = true})):find("warming up", 1, true))
  end)

  it("state_dict round-trips", function()
    local p = param({1, 2})
    local a = knnd.optim.EMA(p, 0.5)
    knnd.no_grad(function() p:copy_(knnd.tensor({3, 6})) end)
    a:update()
    local b = knnd.optim.EMA(p, 0.5)
    b:load_state_dict((a:state_dict()))
    b:swap()
    assert_close(flat(p), {2, 4})
  end)

  it("checks its arguments", function()
    assert.has_error(function() knnd.optim.EMA({param({1})}) end,
      "knnd.optim.EMA: argument 2 'decay' expected a number in [0, 1] (e.g. 0.9999), got nil")
    assert.has_error(function() knnd.optim.EMA({param({1})}, 2) end)
    assert.has_error(function() knnd.optim.EMA({param({1})}, 0.9, {warmup = "yes"}) end)
    assert.has_error(function() knnd.optim.EMA({param({1})}, 0.9, {warmpu = true}) end)
    assert.has_error(function() knnd.optim.EMA({param({1})}, 0.9, 3) end, "knnd.optim.EMA: argument 3 expected an options table {warmup=}, got number")
    assert.has_error(function() knnd.optim.EMA.update() end)
  end)
end)

describe("knnd.optim.clip_grad_norm", function()
  it("returns the total norm and scales the gradients down to max_norm", function()
    local a, b = param({0, 0}), param({0})
    set_grad(a, {3, 0})
    set_grad(b, {4})
    local total = knnd.optim.clip_grad_norm({a, b}, 1.0)
    assert.is_true(math.abs(total - 5) < 1e-6)
    assert_close(flat(a.grad), {0.6, 0})
    assert_close(flat(b.grad), {0.8})
    assert.is_true(math.abs(knnd.optim.clip_grad_norm({a, b}, 10) - 1) < 1e-5)
    assert_close(flat(b.grad), {0.8}) -- under the limit: unchanged
  end)
  it("checks max_norm", function()
    assert.has_error(function() knnd.optim.clip_grad_norm({param({1})}, "1") end,
      "knnd.optim.clip_grad_norm: argument 2 'max_norm' expected a number, got string")
  end)
end)

describe("knnd.optim.lr_schedule", function()
  it("cosine: linear warm-up from 0, then cosine down to min_lr, then holds", function()
    local s = knnd.optim.lr_schedule{kind = "cosine", base_lr = 1.0, warmup_steps = 10, total_steps = 110, min_lr = 0.1}
    assert.are.equal(0, s(0))
    assert.is_true(math.abs(s(5) - 0.5) < 1e-12)
    assert.is_true(math.abs(s(10) - 1.0) < 1e-12)
    for _, step in ipairs{20, 60, 100} do
      local want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
      assert.is_true(math.abs(s(step) - want) < 1e-12)
    end
    assert.is_true(math.abs(s(110) - 0.1) < 1e-12)
    assert.is_true(math.abs(s(1000) - 0.1) < 1e-12)
    assert.matches("cosine", tostring(s))
  end)

  it("constant and linear_warmup", function()
    local c = knnd.optim.lr_schedule{base_lr = 3e-4}
    assert.are.equal(3e-4, c(0))
    assert.are.equal(3e-4, c(100000))
    local w = knnd.optim.lr_schedule{kind = "linear_warmup", base_lr = 2, warmup_steps = 4}
    assert.are.same({0, 0.5, 1, 1.5, 2, 2}, {w(0), w(1), w(2), w(3), w(4), w(5)})
  end)

  it("drives an optimizer", function()
    local opt = knnd.optim.SGD(param({1}), {lr = 1})
    local s = knnd.optim.lr_schedule{kind = "linear_warmup", base_lr = 0.5, warmup_steps = 2}
    opt:set_lr(s(opt:steps()))
    assert.are.equal(0, opt:lr())
  end)

  it("checks its options", function()
    assert.has_error(function() knnd.optim.lr_schedule{kind = "cosine", base_lr = 1} end,
      "knnd.optim.lr_schedule: option 'total_steps' is 0 (a cosine schedule needs total_steps > warmup_steps = 0)")
    assert.has_error(function() knnd.optim.lr_schedule{kind = "step", base_lr = 1} end,
      "knnd.optim.lr_schedule: option 'kind' expected one of constant, linear_warmup, cosine, got 'step'")
    assert.has_error(function() knnd.optim.lr_schedule{} end, "knnd.optim.lr_schedule: option 'base_lr' is required")
    assert.has_error(function() knnd.optim.lr_schedule{base_lr = 1, warmup = 3} end)
    assert.has_error(function() knnd.optim.lr_schedule(1) end)
    local s = knnd.optim.lr_schedule{base_lr = 1}
    assert.has_error(function() s(-1) end, "knnd.optim.lr_schedule(step): argument 'step' is -1 (expected >= 0)")
    assert.has_error(function() s(1.5) end)
  end)
end)

describe("knnd.optim misuse is a Lua error naming the function and argument", function()
  it("options", function()
    local p = param({1})
    assert.has_error(function() knnd.optim.AdamW(p, {lr = -1}) end,
      "knnd.optim.AdamW: option 'lr' is -1.0 (expected a finite number >= 0)")
    assert.has_error(function() knnd.optim.AdamW(p, {betas = {0.9}}) end,
      "knnd.optim.AdamW: option 'betas' expected a pair {beta1, beta2} of numbers in [0, 1)")
    assert.has_error(function() knnd.optim.AdamW(p, {betas = {0.9, 1}}) end)
    assert.has_error(function() knnd.optim.AdamW(p, {momentum = 0.9}) end,
      "knnd.optim.AdamW: unknown option 'momentum' (expected lr, betas, eps, weight_decay)")
    assert.has_error(function() knnd.optim.SGD(p, {lr = 0.1, nesterov = true}) end)
    assert.has_error(function() knnd.optim.SGD(p, {lr = "0.1"}) end,
      "knnd.optim.SGD: option 'lr' expected a number, got string")
  end)

  it("methods", function()
    local opt = knnd.optim.AdamW(param({1}))
    assert.has_error(function() opt.step() end,
      "knnd.optim.Optimizer:step: argument 1 (self) expected an optimizer, got no value (call it as opt:step(...))")
    assert.has_error(function() opt:set_lr("x") end,
      "knnd.optim.Optimizer:set_lr: argument 2 'lr' expected a number, got string")
    assert.has_error(function() opt:set_lr(0 / 0) end)
    assert.has_error(function() opt:load_state_dict({}) end)
    assert.has_error(function() opt:load_state_dict(3) end)
  end)
end)
