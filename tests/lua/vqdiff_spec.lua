-- vqdiff_spec.lua — knnd.vqdiff, VQ-Diffusion's mask-and-replace discrete diffusion: construction
-- and schedule, the shapes of every method, integer or tensor timesteps, properties of the
-- process (distributions normalised, the mask absorbing, the posterior at t = 0 is x0, a perfect
-- x0 predictor is recovered by full and fast sampling), the loss and its gradient, misuse. The
-- values against microsoft/VQ-Diffusion are checked in tests/core/test_vqdiffusion.c.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, assert_close, errors_with = h.flat, h.assert_close, h.errors_with

local K, B, N = 6, 3, 5

-- logits [B, K, N] that put `margin` nats on the target tokens [B, N]
local function pointing_logits(target, margin)
  local v, tv = {}, target:totable()
  for b = 1, B do
    v[b] = {}
    for c = 1, K do
      v[b][c] = {}
      for n = 1, N do v[b][c][n] = (tv[b][n] == c - 1) and margin or 0 end
    end
  end
  return knnd.tensor(v)
end

describe("knnd.vqdiff", function()
  it("defaults to COCO's diffusion_config", function()
    local vq = knnd.vqdiff.new{num_classes = K}
    assert.are.equal(K, vq:num_classes())
    assert.are.equal(100, vq:num_timesteps())
    local att, ctt = vq:schedule("att"), vq:schedule("ctt")
    assert.are.equal(101, #att)
    assert_close(att[1], 0.99999, 1e-12)
    assert_close(att[100], 0.000009, 1e-12)
    assert_close(ctt[100], 0.99999, 1e-12)
    assert.are.equal(1, att[101]) -- the identity that q(x_{t-1}) at t = 0 reads
    assert.are.equal(0, ctt[101])
    local bt, at, ct = vq:schedule("bt"), vq:schedule("at"), vq:schedule("ct")
    assert.are.equal(100, #bt)
    for t = 1, 100 do assert_close(at[t] + K * bt[t] + ct[t], 1, 1e-9) end
    local la = vq:schedule("att", {log = true})
    assert_close(la[50], math.log(att[50]), 1e-6)
    assert.truthy(tostring(vq):find("T 100", 1, true))
    assert.truthy(tostring(vq):find("adaptive", 1, true))
  end)

  it("returns the documented shapes, with integer or tensor timesteps", function()
    local vq = knnd.vqdiff.new{num_classes = K, T = 10}
    local logits = knnd.randn(B, K, N, {gen = knnd.Generator(1)})
    local lx0 = vq:log_x0(logits)
    assert.are.same({B, K + 1, N}, lx0:shape())
    local x0 = knnd.randint(K, {B, N}, {gen = knnd.Generator(2)})
    local t = knnd.tensor({3, 3, 3}, {dtype = "i64"})
    local xt = vq:q_sample(x0, t, {gen = knnd.Generator(3)})
    assert.are.same({B, N}, xt:shape())
    assert.are.equal("i64", xt:dtype())
    assert.are.same(flat(vq:q_sample(x0, 3, {gen = knnd.Generator(3)})), flat(xt))
    assert.are.same({B, K + 1, N}, vq:q_pred(vq:log_onehot(x0), t):shape())
    local post = vq:q_posterior(lx0, xt, t)
    assert.are.same({B, K + 1, N}, post:shape())
    assert_close(vq:q_posterior(lx0, xt, 3), post:totable(), 1e-6)
    local tok, lp = vq:p_sample(lx0, xt, 3, {gen = knnd.Generator(4)})
    assert.are.same({B, N}, tok:shape())
    assert.are.equal("i64", tok:dtype())
    assert_close(lp, post:totable(), 1e-6)
    assert.are.same({B, K + 1, N}, vq:p_logprobs(lx0, xt, 3, {skip = 1}):shape())
    assert.are.same({B, K + 1, N}, vq:truncate(lx0, 0.9):shape())
    assert.are.same({B, K + 1, N}, vq:cfg(lx0, lx0, 2):shape())
    assert.are.same({B, N}, knnd.vqdiff.sample(lp, {gen = knnd.Generator(5)}):shape())
    assert.are.same({9, 8, 7, 6, 5, 4, 3, 2, 1, 0}, vq:timesteps())
    assert.are.same({9, 6, 3, 0}, vq:timesteps(2))
    assert.are.same({9, 5, 1, 0}, vq:timesteps(3))
  end)

  it("keeps distributions normalised and the mask absorbing", function()
    local vq = knnd.vqdiff.new{num_classes = K, T = 20}
    local g = knnd.Generator(7)
    local x0 = knnd.randint(K, {B, N}, {gen = g})
    for _, t in ipairs({0, 1, 7, 19}) do
      -- q(x_t | x0) and the posterior for a random x0 prediction sum to 1 over the K+1 rows
      local q = vq:q_pred(vq:log_onehot(x0), t)
      assert_close(knnd.logsumexp(q, 2), knnd.zeros(B, N):totable(), 1e-5)
      local xt = vq:q_sample(x0, t, {gen = g})
      local lx0 = vq:log_x0(knnd.randn(B, K, N, {gen = g}))
      local post = vq:q_posterior(lx0, xt, t)
      assert_close(knnd.exp(post):sum(2), knnd.ones(B, N):totable(), 1e-4)
      -- an unmasked x_t cannot come from a masked x_{t-1} (up to the reference's one-hot floor
      -- of 1e-30, scaled by 1/q(x_t | x0') <= 1/β̄)
      local p, xs = post:totable(), xt:totable()
      for b = 1, B do
        for n = 1, N do
          if xs[b][n] ~= K then assert.is_true(p[b][K + 1][n] < -40) end
        end
      end
    end
    -- at t = 0 the posterior of a one-hot x0 is that x0
    local xt = vq:q_sample(x0, 0, {gen = g})
    local post0 = vq:q_posterior(vq:log_onehot(x0), xt, 0)
    local idx = knnd.argmax(post0, 2)
    assert.are.same(flat(x0), flat(idx))
    -- the last step masks nearly everything
    local all = vq:q_sample(knnd.randint(K, {4, 500}, {gen = g}), knnd.tensor({19, 19, 19, 19}, {dtype = "i64"}),
                            {gen = g})
    local masked = 0
    for _, v in ipairs(flat(all)) do if v == K then masked = masked + 1 end end
    assert.is_true(masked > 1990)
  end)

  it("recovers a perfect x0 predictor with full and fast sampling", function()
    local vq = knnd.vqdiff.new{num_classes = K, T = 12}
    local target = knnd.randint(K, {B, N}, {gen = knnd.Generator(9)})
    local lx0 = vq:log_x0(pointing_logits(target, 60))
    for _, skip in ipairs({0, 2, 4}) do
      local g = knnd.Generator(10 + skip)
      local x = knnd.full({B, N}, K, {dtype = "i64"})
      for _, t in ipairs(vq:timesteps(skip)) do
        x = vq:p_sample(vq:truncate(lx0, 0.85), x, t, {skip = skip, gen = g})
      end
      assert.are.same(flat(target), flat(x))
    end
  end)

  it("truncates to the top-r mass and guides in log space", function()
    local vq = knnd.vqdiff.new{num_classes = K}
    local lx0 = vq:log_x0(knnd.randn(B, K, N, {gen = knnd.Generator(11)}) * 2)
    local tr = vq:truncate(lx0, 0.7)
    local p, q = knnd.exp(lx0):totable(), knnd.exp(tr):totable()
    for b = 1, B do
      for n = 1, N do
        local kept, kept_n, dropped_max, kept_min = 0, 0, 0, 1
        for c = 1, K do
          if q[b][c][n] > 1e-20 then
            kept, kept_n, kept_min = kept + p[b][c][n], kept_n + 1, math.min(kept_min, p[b][c][n])
            assert_close(q[b][c][n], p[b][c][n], 1e-6)
          else
            dropped_max = math.max(dropped_max, p[b][c][n])
          end
        end
        assert.is_true(kept_n >= 1 and kept >= 0.7 - 1e-6) -- enough mass kept ...
        assert.is_true(kept - kept_min < 0.7) -- ... and no more classes than needed
        assert.is_true(dropped_max <= kept_min)
      end
    end
    -- guidance 1 is the conditional prediction; otherwise u + s(c - u), renormalised
    local u = vq:log_x0(knnd.randn(B, K, N, {gen = knnd.Generator(12)}))
    assert_close(vq:cfg(u, lx0, 1), lx0:totable(), 0)
    local g = vq:cfg(u, lx0, 3)
    assert_close(knnd.exp(g):sum(2), knnd.ones(B, N):totable(), 1e-5)
    local gv, uv, cv = g:totable(), u:totable(), lx0:totable()
    local d1 = (gv[1][1][1] - gv[1][2][1])
    local want = uv[1][1][1] - uv[1][2][1] + 3 * ((cv[1][1][1] - uv[1][1][1]) - (cv[1][2][1] - uv[1][2][1]))
    assert_close(d1, want, 1e-4)
    assert.are.equal(-70, gv[1][K + 1][1])
  end)

  it("gives the vb + auxiliary loss and its gradient", function()
    local vq = knnd.vqdiff.new{num_classes = K, T = 10, aux_weight = 0.5, adaptive_aux = false,
                               mask_weight = {1, 2}}
    local g = knnd.Generator(13)
    local x0 = knnd.randint(K, {B, N}, {gen = g})
    local t = knnd.tensor({0, 4, 9}, {dtype = "i64"})
    local xt = vq:q_sample(x0, t, {gen = g})
    local logits = knnd.randn(B, K, N, {gen = g, requires_grad = true})
    local loss, parts = vq:loss(logits, x0, xt, t)
    assert.are.same({}, loss:shape())
    assert_close(loss:item(), parts.vb:item() + parts.aux:item(), 1e-5)
    assert.are.same({B}, parts.kl:shape())
    assert.is_false(parts.kl.requires_grad)
    -- at t = 0 the example's term is the decoder NLL, for vb and aux alike: its kl is the NLL
    local lp = vq:q_posterior(vq:log_x0(logits), xt, t):totable()
    local nll, xs = 0, x0:totable()
    for n = 1, N do nll = nll - lp[1][xs[1][n] + 1][n] end
    assert_close(parts.kl:totable()[1], nll, 1e-5)
    loss:backward()
    assert.are.same({B, K, N}, logits.grad:shape())
    -- a given pt divides each example's term
    local _, p2 = vq:loss(logits, x0, xt, t, {pt = knnd.tensor({0.2, 0.2, 0.2})})
    assert_close(p2.vb:item(), parts.vb:item() * (1 / 10) / 0.2, 1e-5)
    -- with aux_weight 0 the aux part is zero
    local plain = knnd.vqdiff.new{num_classes = K, T = 10, aux_weight = 0}
    local l0, p0 = plain:loss(logits, x0, xt, t)
    assert.are.equal(0, p0.aux:item())
    assert_close(l0:item(), p0.vb:item(), 1e-6)
  end)

  it("samples with given uniform noise deterministically and follows the law otherwise", function()
    local lp = knnd.log(knnd.tensor({{{0.7}, {0.2}, {0.1}}}))
    local u = knnd.tensor({{{0.5}, {0.99}, {0.5}}})
    -- Gumbel noise -log(-log u): 0.367, 4.60, 0.367 -> class 2 (index 1) wins
    assert.are.same({{1}}, knnd.vqdiff.sample(lp, {uniform = u}):totable())
    local many = knnd.log(knnd.tensor({0.7, 0.2, 0.1})):reshape(1, 3, 1):expand(1, 3, 6000):contiguous()
    local tok = flat(knnd.vqdiff.sample(many, {gen = knnd.Generator(14)}))
    local c = {0, 0, 0}
    for _, v in ipairs(tok) do c[v + 1] = c[v + 1] + 1 end
    assert.is_true(math.abs(c[1] / 6000 - 0.7) < 0.03 and math.abs(c[3] / 6000 - 0.1) < 0.02)
  end)

  it("refuses misuse with messages that name the argument", function()
    errors_with(function() knnd.vqdiff.new{T = 10} end, "option 'num_classes' expected an integer")
    errors_with(function() knnd.vqdiff.new{num_classes = 4, steps = 3} end, "unknown option 'steps'")
    errors_with(function() knnd.vqdiff.new{num_classes = 4, T = 1} end, "num_timesteps")
    errors_with(function() knnd.vqdiff.new{num_classes = 4, mask_weight = {1}} end, "option 'mask_weight'")
    errors_with(function() knnd.vqdiff.new{num_classes = 4, att_1 = 0.6, ctt_1 = 0.5} end, "beta_t")
    local vq = knnd.vqdiff.new{num_classes = K, T = 10}
    local lx0 = vq:log_x0(knnd.randn(B, K, N))
    local xt = knnd.full({B, N}, K, {dtype = "i64"})
    errors_with(function() vq:q_posterior(lx0, xt, 10) end, "argument 't' holds 10")
    errors_with(function() vq:q_posterior(lx0, xt, knnd.tensor({1, 2}, {dtype = "i64"})) end, "argument 't' has shape")
    errors_with(function() vq:q_posterior(lx0, knnd.full({B, N}, K + 1, {dtype = "i64"}), 1) end, "argument 'x_t' holds 7")
    errors_with(function() vq:q_posterior(lx0, knnd.zeros(B, N), 1) end, "argument 'x_t' has dtype f32")
    errors_with(function() vq:q_posterior(lx0, knnd.zeros(B, N + 1, {dtype = "i64"}), 1) end, "argument 'log_x0' has shape")
    errors_with(function() vq:log_x0(lx0) end, "argument 'logits' has shape")
    errors_with(function() vq:loss(knnd.randn(B, K, N), xt, xt, 1) end, "argument 'x0' holds 6")
    errors_with(function() vq:truncate(lx0, 0) end, "argument 'r'")
    errors_with(function() vq:p_sample(lx0, xt, 3, {skip = -1}) end, "argument 'skip'")
    errors_with(function() vq:p_sample(lx0, xt, 3, {steps = 2}) end, "unknown option 'steps'")
    errors_with(function() vq:q_pred(lx0, "x") end, "argument 3 't' expected an integer or an i64 tensor")
    errors_with(function() vq.q_pred(5, lx0, 1) end, "expected a knnd.vqdiff object")
    errors_with(function() vq:schedule("alpha") end, "invalid option 'alpha'")
  end)
end)
