-- stats.lua — knnd.stats: confidence intervals and paired tests for comparisons over seeds (the
-- sweeps' summaries, knnd.results.paired). The distributions come from GNU GSL (lua/bind_stats.c);
-- the formulas follow scipy.stats (t.interval, ttest_rel, binomtest), which the spec's fixture
-- (tests/reference/stats/) was made with.
--
--   local mean, half, n = knnd.stats.mean_ci({0.52, 0.55, 0.49})          -- mean ± half (95%, t, n-1 df)
--   local r = knnd.stats.paired_t(knn, no_knn)      -- {diff, ci, t, df, p, n}: knn[i] pairs with no_knn[i]
--   local m = knnd.stats.mcnemar(hits_a, hits_b)    -- exact McNemar on paired 0/1 outcomes: {b, c, n, p}
local C = require("knnd")._stats

local M = {}

local function fail(fname, fmt, ...) error(("knnd.stats.%s: " .. fmt):format(fname, ...), 0) end

--- t_quantile(p, df): the x with P(T <= x) = p for Student's t (scipy.stats.t.ppf)
M.t_quantile = C.t_quantile
--- t_cdf(x, df) = P(T <= x); t_sf(x, df) = P(T > x) (scipy.stats.t.cdf, t.sf)
M.t_cdf = C.t_cdf
M.t_sf = C.t_sf
--- binom_cdf(k, n, p) = P(X <= k) for X ~ Binomial(n, p) (scipy.stats.binom.cdf)
M.binom_cdf = C.binom_cdf

-- a list of finite numbers (the error names the function and the argument)
local function check_numbers(fname, xs, what)
  if type(xs) ~= "table" then fail(fname, "%s expected a list of numbers, got %s", what, type(xs)) end
  local n = #xs
  for k in pairs(xs) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail(fname, "%s expected a list of numbers, got a table with key %s", what, tostring(k))
    end
  end
  for i = 1, n do
    local x = xs[i]
    if type(x) ~= "number" then fail(fname, "%s: element %d expected a number, got %s", what, i, type(x)) end
    if x ~= x or x == math.huge or x == -math.huge then
      fail(fname, "%s: element %d is %s (expected a finite number)", what, i, x ~= x and "NaN" or tostring(x))
    end
  end
  return n
end

local function check_level(fname, level)
  if level == nil then return 0.95 end
  if type(level) ~= "number" or not (level > 0 and level < 1) then
    fail(fname, "argument 'level' expected a confidence level in (0, 1) such as 0.95, got %s", tostring(level))
  end
  return level
end

-- mean and sample standard deviation (n - 1) of xs[1..n]; two passes, as numpy does
local function mean_sd(xs, n)
  local s = 0
  for i = 1, n do s = s + xs[i] end
  local mean = s / n
  if n < 2 then return mean, nil end
  local ss = 0
  for i = 1, n do ss = ss + (xs[i] - mean) ^ 2 end
  return mean, math.sqrt(ss / (n - 1))
end

--- mean_ci(xs [, level = 0.95]) -> mean, half-width, n: the t confidence interval of the mean,
--- mean ± t_{(1+level)/2, n-1} * sd / sqrt(n) (scipy.stats.t.interval(level, n-1, mean, sem)).
--- The half-width is nil for n < 2 (no spread to estimate); the mean is nil for n = 0.
function M.mean_ci(xs, level)
  local fname = "mean_ci"
  local n = check_numbers(fname, xs, "argument 1 'xs'")
  level = check_level(fname, level)
  if n == 0 then return nil, nil, 0 end
  local mean, sd = mean_sd(xs, n)
  if n < 2 then return mean, nil, n end
  return mean, C.t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n
end

--- paired_t(xs, ys [, level = 0.95]) -> {diff, ci, t, df, p, n, level}: the paired t-test of xs[i]
--- against ys[i] (scipy.stats.ttest_rel, two-sided): diff = mean(xs - ys), ci its half-width at
--- `level`, t = diff / (sd / sqrt(n)), df = n - 1, p = 2 P(T > |t|). With n < 2, or every difference
--- equal to zero, t, p and ci are nil (undefined); equal non-zero differences give t = ±inf, p = 0
--- ("equal": their spread is below 1e-6 of the largest value, the rounding of f32 results).
function M.paired_t(xs, ys, level)
  local fname = "paired_t"
  local n = check_numbers(fname, xs, "argument 1 'xs'")
  local m = check_numbers(fname, ys, "argument 2 'ys'")
  if n ~= m then fail(fname, "arguments 'xs' and 'ys' are paired and must have the same length (got %d and %d)", n, m) end
  level = check_level(fname, level)
  local r = { n = n, df = n - 1, level = level }
  if n == 0 then return r end
  local d = {}
  for i = 1, n do d[i] = xs[i] - ys[i] end
  local mean, sd = mean_sd(d, n)
  r.diff = mean
  if n < 2 then r.df = nil return r end
  -- equal differences (up to the rounding of their subtractions: 0.1615 - 0.0990 and 0.2240 - 0.1615 differ in
  -- the last bits) have no spread: a t of 1e15 from that rounding would be reported as p = 1e-16. The values
  -- are often f32 results (a share of samples computed on tensors: 6/72 is 0.0833333358), whose rounding is
  -- 6e-8 of their size: a spread below 1e-6 of the largest value is that rounding, not a difference
  local scale = math.abs(mean)
  for i = 1, n do scale = math.max(scale, math.abs(xs[i]), math.abs(ys[i])) end
  if sd <= 1e-6 * scale then
    if mean ~= 0 then r.t, r.p, r.ci = mean > 0 and math.huge or -math.huge, 0, 0 end
    return r
  end
  local se = sd / math.sqrt(n)
  r.t = mean / se
  r.p = math.min(1, 2 * C.t_sf(math.abs(r.t), n - 1))
  r.ci = C.t_quantile((1 + level) / 2, n - 1) * se
  return r
end

-- two-sided exact binomial test of k successes in n trials at p = 1/2 (scipy.stats.binomtest's
-- p-value: the outcomes no likelier than k; for p = 1/2 that is both tails beyond min(k, n - k))
local function binom_two_sided_half(k, n)
  if n == 0 then return 1 end
  return math.min(1, 2 * C.binom_cdf(math.min(k, n - k), n, 0.5))
end

--- sign_test(xs, ys) -> {pos, neg, ties, n, p}: the exact two-sided sign test of paired values
--- (pos: pairs with xs[i] > ys[i]; ties are dropped, n = pos + neg; p from Binomial(n, 1/2))
function M.sign_test(xs, ys)
  local fname = "sign_test"
  local n = check_numbers(fname, xs, "argument 1 'xs'")
  local m = check_numbers(fname, ys, "argument 2 'ys'")
  if n ~= m then fail(fname, "arguments 'xs' and 'ys' are paired and must have the same length (got %d and %d)", n, m) end
  local pos, neg = 0, 0
  for i = 1, n do
    if xs[i] > ys[i] then pos = pos + 1 elseif xs[i] < ys[i] then neg = neg + 1 end
  end
  return { pos = pos, neg = neg, ties = n - pos - neg, n = pos + neg, p = binom_two_sided_half(pos, pos + neg) }
end

-- 0/1 outcomes: booleans or the numbers 0 and 1
local function check_binary(fname, xs, what)
  if type(xs) ~= "table" then fail(fname, "%s expected a list of booleans or 0/1, got %s", what, type(xs)) end
  local out = {}
  for i = 1, #xs do
    local x = xs[i]
    if x == true or x == 1 then out[i] = 1
    elseif x == false or x == 0 then out[i] = 0
    else fail(fname, "%s: element %d expected a boolean or 0/1, got %s", what, i, tostring(x)) end
  end
  return out
end

--- mcnemar(a, b) -> {b, c, n, p}: the exact McNemar test of paired binary outcomes (a[i], b[i]
--- the hits of two models on the same prompt and sampling seed): b = #(a hit, b missed), c = #(a
--- missed, b hit), n = b + c discordant pairs, p the two-sided exact binomial p-value of b in n at 1/2
--- (scipy.stats.binomtest(b, n, 0.5)); concordant pairs carry no information about the difference.
function M.mcnemar(a, b)
  local fname = "mcnemar"
  local x, y = check_binary(fname, a, "argument 1 'a'"), check_binary(fname, b, "argument 2 'b'")
  if #x ~= #y then fail(fname, "arguments 'a' and 'b' are paired and must have the same length (got %d and %d)", #x, #y) end
  local nb, nc = 0, 0
  for i = 1, #x do
    if x[i] == 1 and y[i] == 0 then nb = nb + 1 elseif x[i] == 0 and y[i] == 1 then nc = nc + 1 end
  end
  return { b = nb, c = nc, n = nb + nc, p = binom_two_sided_half(nb, nb + nc) }
end

return M
