-- diffusion_spec.lua — knnd.diffusion: construction, q_sample and the loss against the formulas
-- written out in Lua, timestep sequences, DDIM / DDPM steps, the DPM-Solver++ sampler object
-- (exact recovery of x0 from a perfect noise predictor), classifier-free guidance, misuse.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, assert_close, errors_with = h.flat, h.assert_close, h.errors_with

describe("knnd.diffusion", function()
  it("builds schedules with diffusers' defaults", function()
    local d = knnd.diffusion.new{schedule = "linear"}
    assert.are.equal(1000, d:num_timesteps())
    local ac = d:alphas_cumprod()
    assert_close(ac[1], 1 - 1e-4, 1e-12)
    local c = knnd.diffusion.new{schedule = "cosine", T = 1000, prediction = "eps", min_snr_gamma = 5}
    assert.truthy(tostring(c):find("cosine"))
    assert.is_true(c:alphas_cumprod()[1000] < 1e-8)
  end)

  it("q_sample and the loss follow the formulas", function()
    local d = knnd.diffusion.new{schedule = "linear", prediction = "v", min_snr_gamma = 5}
    local ac = d:alphas_cumprod()
    local x0 = knnd.tensor({{1, 2}, {3, 4}})
    local noise = knnd.tensor({{0.5, -1}, {2, 0}})
    local t = knnd.tensor({10, 900}, {dtype = "i64"})
    local xt = flat(d:q_sample(x0, t, noise))
    local xs, ns = flat(x0), flat(noise)
    local want, tgt, total = {}, {}, 0
    for i = 1, 4 do
      local a = ac[(i <= 2) and 11 or 901]
      want[i] = math.sqrt(a) * xs[i] + math.sqrt(1 - a) * ns[i]
      tgt[i] = math.sqrt(a) * ns[i] - math.sqrt(1 - a) * xs[i]
    end
    assert_close(xt, want, 1e-5)
    assert_close(d:target(x0, t, noise), {{tgt[1], tgt[2]}, {tgt[3], tgt[4]}}, 1e-5)
    local out = knnd.zeros(2, 2, {requires_grad = true})
    for b = 1, 2 do
      local a = ac[(b == 1) and 11 or 901]
      local snr = a / (1 - a)
      local w = math.min(snr, 5) / (snr + 1)
      total = total + w * (tgt[2 * b - 1] ^ 2 + tgt[2 * b] ^ 2) / 2
    end
    local loss = d:loss(out, x0, noise, t)
    assert_close(loss:item(), total / 2, 1e-5)
    loss:backward()
    assert.is_not_nil(out.grad)
    assert.are.equal(2, #flat(d:loss_weights(t)))
  end)

  it("gives diffusers' timestep sequences", function()
    local d = knnd.diffusion.new{}
    local ts = d:timesteps(50, "ddim")
    assert.are.equal(50, #ts)
    assert.are.equal(980, ts[1]); assert.are.equal(0, ts[50])
    ts = d:timesteps(50, "ddim", "trailing")
    assert.are.equal(999, ts[1]); assert.are.equal(19, ts[50])
    ts = d:timesteps(50, "dpmpp")
    assert.are.equal(999, ts[1]); assert.are.equal(20, ts[50])
  end)

  it("recovers x0 with a perfect noise predictor (DDIM eta 0 and DPM-Solver++)", function()
    local d = knnd.diffusion.new{schedule = "linear"}
    local g = knnd.Generator(1)
    local x0, noise = knnd.randn(2, 3, {gen = g}), knnd.randn(2, 3, {gen = g})
    local tT = knnd.tensor({999, 999}, {dtype = "i64"})
    local ts = d:timesteps(20, "ddim", "trailing")
    local x = d:q_sample(x0, tT, noise)
    for i = 1, #ts do x = d:step("ddim", noise, ts[i], ts[i + 1], x, {eta = 0}) end
    assert_close(flat(x), flat(x0), 1e-3)
    local s = knnd.diffusion.dpmpp(d)
    ts = d:timesteps(20, "dpmpp", "trailing")
    x = d:q_sample(x0, tT, noise)
    for i = 1, #ts do x = s:step(noise, ts[i], ts[i + 1] or -1, x) end
    assert_close(flat(x), flat(x0), 1e-3)
    s:reset()
  end)

  it("draws DDPM / DDIM noise from a generator reproducibly", function()
    local d = knnd.diffusion.new{}
    local x, out = knnd.randn(4, {gen = knnd.Generator(2)}), knnd.randn(4, {gen = knnd.Generator(3)})
    local a = d:step("ddpm", out, 500, 480, x, {generator = knnd.Generator(7)})
    local b = d:step("ddpm", out, 500, 480, x, {generator = knnd.Generator(7)})
    assert.are.same(flat(a), flat(b))
    local c = d:step("ddim", out, 500, 480, x, {eta = 1, noise = knnd.zeros(4)})
    local e = d:step("ddim", out, 500, 480, x, {eta = 1, noise = knnd.ones(4)})
    assert.is_false(h.close(flat(c), flat(e), 1e-6))
  end)

  it("applies classifier-free guidance", function()
    local y = knnd.diffusion.cfg(knnd.tensor({1, 2}), knnd.tensor({2, 0}), 3)
    assert_close(y, {4, -4}, 1e-6)
  end)

  it("rejects bad arguments with clear messages", function()
    errors_with(function() knnd.diffusion.new{schedule = "quadratic"} end, "schedule")
    errors_with(function() knnd.diffusion.new{T = -3} end, "num_timesteps")
    errors_with(function() knnd.diffusion.new{steps = 3} end, "unknown option 'steps'")
    local d = knnd.diffusion.new{}
    local x = knnd.zeros(2, 3)
    errors_with(function() d:q_sample(x, knnd.tensor({0, 1000}, {dtype = "i64"}), x) end, "out of range")
    errors_with(function() d:q_sample(x, knnd.tensor({0, 1}, {dtype = "i64"}), knnd.zeros(2, 4)) end, "noise")
    errors_with(function() d:step("ddim", knnd.zeros(2, 4), 10, 5, x) end, "model_out")
    errors_with(function() d:step("euler", x, 10, 5, x) end, "invalid option 'euler'")
    errors_with(function() d:timesteps(2000, "ddim") end, "'n'")
  end)
end)
