-- stats_spec.lua — knnd.stats (t and binomial distributions from GSL, the t confidence interval of a
-- mean, the paired t-test, the exact sign and McNemar tests) against scipy.stats
-- (tests/reference/stats/make_stats_fixture.py wrote stats_fixture.json), and its argument errors.
local knnd = require "knnd"
local h = require "spec_helpers"
local files = require "knnd.files"
local stats = knnd.stats

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local fx = assert(files.read_json(here .. "../reference/stats/stats_fixture.json"))

-- relative closeness, with an absolute floor for values near zero
local function close(got, want, tol)
  tol = tol or 1e-10
  assert(type(got) == "number", ("expected a number near %.17g, got %s"):format(want, tostring(got)))
  assert(math.abs(got - want) <= tol * math.max(1, math.abs(want)),
    ("expected %.17g, got %.17g (diff %.3g)"):format(want, got, got - want))
end

describe("knnd.stats distributions (GSL) match scipy.stats", function()
  it("t_quantile is t.ppf", function()
    for _, c in ipairs(fx.t_ppf) do close(stats.t_quantile(c.p, c.df), c.x, 1e-9) end
    assert.are.equal(math.huge, stats.t_quantile(1, 3))
    assert.are.equal(-math.huge, stats.t_quantile(0, 3))
  end)

  it("t_cdf and t_sf are t.cdf and t.sf, the upper tail keeping its small digits", function()
    for _, c in ipairs(fx.t_cdf) do
      close(stats.t_cdf(c.x, c.df), c.cdf)
      -- relative to the tail itself: t.sf(40, 4) is about 1e-6 and must not be 1 - cdf's rounding
      assert(math.abs(stats.t_sf(c.x, c.df) - c.sf) <= 1e-9 * c.sf, ("t_sf(%g, %g)"):format(c.x, c.df))
    end
  end)

  it("binom_cdf is binom.cdf", function()
    for _, c in ipairs(fx.binom_cdf) do close(stats.binom_cdf(c.k, c.n, c.p), c.cdf) end
    assert.are.equal(0, stats.binom_cdf(-1, 5, 0.5))
  end)

  it("names the bad argument", function()
    h.errors_with(function() stats.t_quantile(1.5, 3) end,
      "knnd.stats.t_quantile: argument 1 'p' expected a probability in [0, 1], got 1.5")
    h.errors_with(function() stats.t_quantile(0.5, 0) end, "knnd.stats.t_quantile: argument 2 'df' expected degrees of freedom > 0, got 0")
    h.errors_with(function() stats.t_quantile("x", 3) end, "knnd.stats.t_quantile: argument 1 'p' expected a number, got string")
    h.errors_with(function() stats.t_cdf(0 / 0, 3) end, "knnd.stats.t_cdf: argument 1 'x' is NaN")
    h.errors_with(function() stats.t_sf(1, math.huge) end, "knnd.stats.t_sf: argument 2 'df' expected degrees of freedom > 0, got inf")
    h.errors_with(function() stats.t_sf(1) end, "knnd.stats.t_sf: argument 2 'df' expected a number, got no value")
    h.errors_with(function() stats.binom_cdf(1, 2.5, 0.5) end, "knnd.stats.binom_cdf: argument 2 'n' expected a whole number of trials >= 0, got 2.5")
    h.errors_with(function() stats.binom_cdf(1.5, 3, 0.5) end, "knnd.stats.binom_cdf: argument 1 'k' expected a whole number of successes, got 1.5")
    h.errors_with(function() stats.binom_cdf(1, 3, -0.1) end, "knnd.stats.binom_cdf: argument 3 'p' expected a probability in [0, 1], got -0.1")
  end)
end)

describe("knnd.stats intervals and tests match scipy.stats", function()
  it("mean_ci is t.interval(level, n-1, mean, sem)", function()
    for _, c in ipairs(fx.mean_ci) do
      local mean, half, n = stats.mean_ci(c.xs, c.level)
      close(mean, c.mean, 1e-12)
      close(half, c.half, 1e-9)
      assert.are.equal(#c.xs, n)
    end
    local mean, half, n = stats.mean_ci { 4.5 }
    assert.are.same({ 4.5, nil, 1 }, { mean, half, n })
    mean, half, n = stats.mean_ci {}
    assert.are.same({ nil, nil, 0 }, { mean, half, n })
    local _, h95 = stats.mean_ci { 1, 2, 3 }
    local _, h90 = stats.mean_ci({ 1, 2, 3 }, 0.9)
    assert.is_true(h90 < h95)
  end)

  it("paired_t is ttest_rel (two-sided) with its confidence interval", function()
    for _, c in ipairs(fx.paired_t) do
      local r = stats.paired_t(c.xs, c.ys)
      close(r.diff, c.diff, 1e-12)
      close(r.t, c.t, 1e-9)
      close(r.p, c.p, 1e-9)
      close(r.ci, c.ci, 1e-9)
      assert.are.equal(c.df, r.df)
      assert.are.equal(#c.xs, r.n)
    end
    -- the same differences everywhere: no spread; zero differences: undefined
    local r = stats.paired_t({ 2, 3, 4 }, { 1, 2, 3 })
    assert.are.same({ 1, math.huge, 0, 0 }, { r.diff, r.t, r.p, r.ci })
    r = stats.paired_t({ 1, 2 }, { 1, 2 })
    assert.are.same({ 0, nil, nil }, { r.diff, r.t, r.p })
    -- equal up to the rounding of the subtraction (a sweep's shares: 6/96 more in both seeds)
    r = stats.paired_t({ 31 / 192, 43 / 192 }, { 19 / 192, 31 / 192 })
    assert.are.equal(math.huge, r.t)
    assert.are.equal(0, r.p)
    -- f32 shares (db_swap: one sample of 72 more in each of three seeds, means taken on f32 tensors)
    local f32 = function(v) return knnd.tensor({ v }):item() end
    r = stats.paired_t({ f32(6 / 72), f32(7 / 72), f32(5 / 72) }, { f32(5 / 72), f32(6 / 72), f32(4 / 72) })
    assert.are.same({ math.huge, 0, 0 }, { r.t, r.p, r.ci })
    -- a real spread, however small against the values, is still tested
    r = stats.paired_t({ 0.5, 0.6, 0.7 }, { 0.49, 0.58, 0.69 })
    assert.is_true(r.p > 0 and r.p < 1 and r.ci > 0)
    r = stats.paired_t({ 1 }, { 0.5 })
    assert.are.same({ 0.5, nil, nil, 1 }, { r.diff, r.t, r.p, r.n })
  end)

  it("mcnemar and sign_test are binomtest(k, n, 0.5) on the discordant pairs", function()
    for _, c in ipairs(fx.mcnemar) do
      local r = stats.mcnemar(c.a, c.b)
      assert.are.same({ c.nb, c.nc, c.nb + c.nc }, { r.b, r.c, r.n })
      close(r.p, c.p, 1e-10)
      -- booleans read as 0/1
      local a = {}
      for i, x in ipairs(c.a) do a[i] = x == 1 end
      close(stats.mcnemar(a, c.b).p, c.p, 1e-10)
    end
    for _, c in ipairs(fx.sign_test) do
      local r = stats.sign_test(c.xs, c.ys)
      assert.are.same({ c.pos, c.neg }, { r.pos, r.neg })
      close(r.p, c.p, 1e-10)
    end
    assert.are.equal(1, stats.mcnemar({ 1, 0 }, { 1, 0 }).p)
  end)

  it("names the bad argument", function()
    h.errors_with(function() stats.mean_ci("abc") end, "knnd.stats.mean_ci: argument 1 'xs' expected a list of numbers, got string")
    h.errors_with(function() stats.mean_ci { 1, "2" } end, "knnd.stats.mean_ci: argument 1 'xs': element 2 expected a number, got string")
    h.errors_with(function() stats.mean_ci { 1, 0 / 0 } end, "knnd.stats.mean_ci: argument 1 'xs': element 2 is NaN (expected a finite number)")
    h.errors_with(function() stats.mean_ci { a = 1 } end, "knnd.stats.mean_ci: argument 1 'xs' expected a list of numbers, got a table with key a")
    h.errors_with(function() stats.mean_ci({ 1, 2 }, 95) end,
      "knnd.stats.mean_ci: argument 'level' expected a confidence level in (0, 1) such as 0.95, got 95")
    h.errors_with(function() stats.paired_t({ 1, 2 }, { 1 }) end,
      "knnd.stats.paired_t: arguments 'xs' and 'ys' are paired and must have the same length (got 2 and 1)")
    h.errors_with(function() stats.paired_t({ 1, 2 }, nil) end, "knnd.stats.paired_t: argument 2 'ys' expected a list of numbers, got nil")
    h.errors_with(function() stats.mcnemar({ 1, 2 }, { 1, 0 }) end, "knnd.stats.mcnemar: argument 1 'a': element 2 expected a boolean or 0/1, got 2")
    h.errors_with(function() stats.sign_test({ 1 }, { 1, 2 }) end, "knnd.stats.sign_test: arguments 'xs' and 'ys' are paired")
  end)
end)
