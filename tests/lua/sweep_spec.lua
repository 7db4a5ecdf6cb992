-- sweep_spec.lua — knnd.run (run folder, log, metrics, failure), knnd.sweep (grid order and
-- names, resume, failed and interrupted runs, shards, the summary over seeds with 95% confidence
-- intervals, paired comparisons) and knnd.results (loading, filtering, comparing, paired t-tests,
-- CSV). The intervals and tests are checked against scipy (tests/reference/stats/stats_fixture.json).
local knnd = require "knnd"
local h = require "spec_helpers"
local files = require "knnd.files"
local sweep = require "knnd.sweep"
local results = knnd.results

local function tmpdir(name)
  local p = h.tmp("sweep_spec", name)
  os.execute("rm -rf " .. files.shell_quote(p))
  return p
end

local function names(planned)
  local out = {}
  for i, p in ipairs(planned) do out[i] = p.name end
  return out
end

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local fx = assert(files.read_json(here .. "../reference/stats/stats_fixture.json"))

local function lines(path)
  local out = {}
  for l in (files.read_all(path) or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

describe("knnd.run", function()
  it("writes run.json, the log, the metric series and the summary", function()
    local dir = tmpdir("run")
    local r = knnd.run { name = "a", dir = dir, config = { lr = 0.5, seed = 4 }, fn = function(run)
      local x = knnd.randn(3):totable()
      run:log("hello", { n = 3 })
      run:metric("loss", 1, 0.5)
      run:metrics(2, { loss = 0.25, acc = 1 })
      run:summary { acc = 1 }
      return { loss = 0.25, first = x[1] }
    end }
    assert.are.equal("finished", r.status)
    local info = assert(files.read_json(dir .. "/a/run.json"))
    assert.are.equal("finished", info.status)
    assert.are.equal("a", info.name)
    assert.are.same({ lr = 0.5, seed = 4 }, info.config)
    assert.are.equal(4, info.seed)
    assert.are.equal(knnd.version(), info.knnd.version)
    assert.truthy(info.knnd.build.GEMM)
    assert.truthy(info.host and info.host ~= "")
    assert.truthy(info.start_time:match("^%d%d%d%d%-%d%d%-%d%dT") and info.end_time)
    assert.is_true(info.duration_s >= 0)
    assert.truthy(info.process.pid)
    if info.knnd.git then assert.truthy(info.knnd.git.revision:match("^%x+$")) end
    -- the run was seeded with its seed: the same first number as a fresh generator with seed 4
    knnd.manual_seed(4)
    assert.are.equal(knnd.randn(3):totable()[1], assert(files.read_json(dir .. "/a/summary.json")).first)
    local s = files.read_json(dir .. "/a/summary.json")
    assert.are.equal(0.25, s.loss)
    assert.are.equal(1, s.acc)
    assert.are.same({ "step,name,value,time" }, { lines(dir .. "/a/metrics.csv")[1] })
    local series = results.series(dir .. "/a", "loss")
    assert.are.same({ 1, 2 }, series.steps)
    assert.are.same({ 0.5, 0.25 }, series.values)
    local log = lines(dir .. "/a/log.jsonl")
    local hello
    for _, l in ipairs(log) do
      local e = require("dkjson").decode(l)
      assert.truthy(e.time and e.level and e.message)
      if e.message == "hello" then hello = e end
    end
    assert.are.equal(3, hello.fields.n)
    assert.are.equal("info", hello.level)
  end)

  it("marks a crashed run failed with its error and raises it again (or returns it)", function()
    local dir = tmpdir("crash")
    h.errors_with(function()
      knnd.run { name = "c", dir = dir, fn = function(run) run:metric("x", 1, 1); error("boom at step 7") end }
    end, "boom at step 7")
    local info = files.read_json(dir .. "/c/run.json")
    assert.are.equal("failed", info.status)
    assert.truthy(info.error:find("boom at step 7", 1, true))
    assert.truthy(info.traceback:find("traceback", 1, true))
    assert.truthy(info.end_time)
    local r = knnd.run { name = "d", dir = dir, on_error = "return", fn = function() local t = nil; return t.x end }
    assert.are.equal("failed", r.status)
    assert.truthy(r.error:find("index a nil value", 1, true))
    h.errors_with(function() knnd.run { name = "e", dir = dir, fn = 3 } end, "knnd.run: option 'fn' expected a function")
    h.errors_with(function() knnd.run { name = "../e", dir = dir, fn = print } end, "option 'name' expected a relative folder name")
    h.errors_with(function() knnd.run { nme = "e", fn = print } end, "knnd.run: unknown option 'nme'")
    h.errors_with(function() knnd.run { name = "f", dir = dir, fn = function(run) run:metric("a,b", 1, 1) end } end,
      "run:metric: argument 1 (name) expected a non-empty string without commas")
  end)

  it("tells a run left running by a dead process from a live one", function()
    local me = files.process()
    assert.is_false(knnd.run.is_stale { status = "running", process = me })
    local dead = { pid = me.pid, start = "1", host = me.host, boot_id = me.boot_id } -- the pid reused
    assert.is_true(knnd.run.is_stale { status = "running", process = dead })
    assert.is_true(knnd.run.is_stale { status = "running", process = { pid = 2 ^ 22 + 1, host = me.host } })
    assert.is_true(knnd.run.is_stale { status = "running", process = { pid = me.pid, host = "elsewhere" } })
    assert.is_false(knnd.run.is_stale { status = "finished", process = dead })
  end)
end)

describe("knnd.sweep", function()
  it("orders the grid deterministically (seed axis last) and names runs by the keys it sets", function()
    local planned = sweep.plan { grid = { seed = { 1, 2 }, k = { 1, 5 }, cond = { "knn", "no_knn" } }, run = print }
    assert.are.same({ "cond=knn,k=1,seed=1", "cond=knn,k=1,seed=2", "cond=knn,k=5,seed=1", "cond=knn,k=5,seed=2",
      "cond=no_knn,k=1,seed=1", "cond=no_knn,k=1,seed=2", "cond=no_knn,k=5,seed=1", "cond=no_knn,k=5,seed=2" },
      names(planned))
    assert.are.same({ cond = "no_knn", k = 1, seed = 2 }, planned[6].config)
    -- an explicit order, explicit runs crossed with the grid, a base, sanitised names
    planned = sweep.plan { base = { k = 10, lr = 0.1, mode = "a b/c", seed = 0 }, order = { "k", "seed" },
      grid = { seed = { 3 }, k = { 20, 1 } }, runs = { { mode = "x/y z" }, { lr = 0.5, mode = "q" } }, run = print }
    assert.are.same({ "mode=x_y_z,k=20,seed=3", "mode=x_y_z,k=1,seed=3", "lr=0.5,mode=q,k=20,seed=3",
      "lr=0.5,mode=q,k=1,seed=3" }, names(planned))
    assert.are.same({ k = 1, lr = 0.5, mode = "q", seed = 3 }, planned[4].config)
    assert.are.equal(sweep.sanitise(("x"):rep(300)), sweep.sanitise(("x"):rep(300)))
    assert.is_true(#sweep.sanitise(("x"):rep(300)) <= 120)
  end)

  it("names the errors of a bad grid, runs or base", function()
    h.errors_with(function() sweep.plan { grid = { k = {} }, run = print } end,
      "grid axis 'k' expects a non-empty list of values")
    h.errors_with(function() sweep.plan { grid = { k = { 1 } }, runs = { { k = 2 } }, run = print } end,
      "key 'k' is both a grid axis and set by runs[1]")
    h.errors_with(function() sweep.plan { base = { k = 1 }, runs = { { kk = 2 } }, run = print } end,
      "runs[1] sets unknown key 'kk' (the base declares: k)")
    h.errors_with(function() sweep.plan { base = { k = knnd.config.param(1, "k", { min = 1 }) }, grid = { k = { 0, 1 } }, run = print } end,
      "run 1 (k=0): key 'k' expects an integer >= 1; got 0")
    h.errors_with(function() sweep.plan { runs = { { a = 1 }, { a = 1 } }, run = print } end,
      "runs 1 and 2 have the same name 'a=1'")
    h.errors_with(function() sweep.plan { grid = { k = { 1 } }, order = { "j" }, run = print } end,
      "option 'order' names 'j', which is no grid axis")
    h.errors_with(function() knnd.sweep { name = "x", grid = { k = { 1 } } } end, "option 'run' expected a function")
    h.errors_with(function() knnd.sweep { name = "x", run = print } end, "give the configs to run")
    h.errors_with(function() knnd.sweep { name = "x", grid = { k = { 1 } }, run = print, shard = { 3, 2 }, quiet = true } end,
      "option 'shard' expects {i, n} with 1 <= i <= n, got {3, 2}")
    h.errors_with(function() knnd.sweep { name = "x", grdi = {}, run = print } end, "knnd.sweep: unknown option 'grdi'")
  end)

  it("takes --set for the base and for grid axes, and names unknown keys", function()
    local planned = sweep.plan({ base = { steps = 10 }, grid = { k = { 1, 2 }, seed = { 1 } }, run = print },
      { steps = "3", k = "4,5,6" })
    assert.are.same({ "k=4,seed=1", "k=5,seed=1", "k=6,seed=1" }, names(planned))
    assert.are.equal(3, planned[1].config.steps)
    h.errors_with(function() sweep.plan({ base = { steps = 10 }, grid = { k = { 1 } }, run = print }, { stepz = "3" }) end,
      "--set stepz: unknown key 'stepz' (the sweep's keys: k, steps")
    h.errors_with(function() sweep.plan({ grid = { k = { 1 } }, run = print }, { k = "1,x" }) end,
      "grid axis 'k' expects a list of integers; got 'x' at position 2")
    knnd.config.set_cli_overrides {}
  end)

  it("resumes: finished runs are skipped, a changed config is refused, resume = false refuses a used folder", function()
    local dir = tmpdir("resume")
    local calls = 0
    local spec = function(extra)
      local s = { name = "r", dir = dir, quiet = true, base = { steps = 2 }, grid = { k = { 1, 2 }, seed = { 1, 2 } },
        run = function(cfg) calls = calls + 1; return { v = cfg.k * 10 + cfg.seed } end }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    local out = knnd.sweep(spec())
    assert.are.equal(4, calls)
    assert.are.equal(4, out.ran)
    out = knnd.sweep(spec())
    assert.are.equal(4, calls)
    assert.are.equal(4, out.skipped)
    h.errors_with(function() knnd.sweep(spec { base = { steps = 3 } }) end,
      "'" .. dir .. "/r/k=1,seed=1' finished with another config (steps: 2 -> 3)")
    -- a key the base gained after the runs finished, at its default, changes nothing they did
    out = knnd.sweep(spec { base = { steps = 2, backbone = "continuous" } })
    assert.are.equal(4, out.skipped)
    assert.are.equal(4, calls)
    h.errors_with(function() knnd.sweep(spec { resume = false }) end, "already holds 4 of this sweep's runs")
    -- a run left "running" by a dead process runs again; one held by a live process is left alone
    local info = files.read_json(dir .. "/r/k=2,seed=1/run.json")
    info.status = "running"
    info.process = { pid = files.process().pid, start = "1", host = files.process().host }
    files.write_json(dir .. "/r/k=2,seed=1/run.json", info)
    info.process = files.process()
    files.write_json(dir .. "/r/k=2,seed=2/run.json", info)
    out = knnd.sweep(spec())
    assert.are.equal(5, calls)
    assert.are.equal(1, out.ran)
    assert.are.equal("finished", files.read_json(dir .. "/r/k=2,seed=1/run.json").status)
    assert.are.equal(2, files.read_json(dir .. "/r/k=2,seed=1/run.json").attempt)
    assert.are.equal("running", files.read_json(dir .. "/r/k=2,seed=2/run.json").status)
    assert.are.equal("running", out.runs[4].status)
  end)

  it("marks failed runs with their error and retries them only on request", function()
    local dir = tmpdir("failed")
    local broken, calls = true, 0
    local function spec(extra)
      local s = { name = "f", dir = dir, quiet = true, grid = { seed = { 1, 2, 3 } },
        run = function(cfg)
          calls = calls + 1
          if cfg.seed == 2 and broken then error("diverged at step 12") end
          return { loss = cfg.seed }
        end }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    local out = knnd.sweep(spec())
    assert.are.equal(3, calls)
    assert.are.equal(1, out.failed)
    assert.are.same({ "seed=2" }, out.failed_names)
    local info = files.read_json(dir .. "/f/seed=2/run.json")
    assert.are.equal("failed", info.status)
    assert.truthy(info.error:find("diverged at step 12", 1, true))
    assert.truthy(info.traceback)
    broken = false
    out = knnd.sweep(spec())
    assert.are.equal(3, calls) -- not retried
    assert.are.equal("failed", out.runs[2].status)
    assert.are.equal(2, out.summary.rows[1].finished)
    out = knnd.sweep(spec { retry_failed = true })
    assert.are.equal(4, calls) -- only the failed one
    assert.are.equal("finished", files.read_json(dir .. "/f/seed=2/run.json").status)
    assert.are.equal(3, out.summary.rows[1].finished)
    -- on_error = "stop" ends the sweep at the first failure, with its error
    broken = true
    h.errors_with(function() knnd.sweep { name = "g", dir = dir, quiet = true, on_error = "stop", grid = { seed = { 2, 3 } },
      run = function() error("diverged again") end } end, "diverged again")
    assert.is_nil(files.read_json(dir .. "/g/seed=3/run.json"))
  end)

  it("splits the runs over shards: every run exactly once, in the sweep order", function()
    for n = 1, 4 do
      local dir = tmpdir("shard" .. n)
      local seen = {}
      for i = 1, n do
        knnd.sweep { name = "s", dir = dir, quiet = true, shard = { i, n }, grid = { a = { 1, 2, 3 }, seed = { 1, 2, 3 } },
          run = function(cfg) local key = cfg.a .. "/" .. cfg.seed; seen[key] = (seen[key] or 0) + 1; return { x = cfg.a } end }
      end
      local total = 0
      for _, c in pairs(seen) do assert.are.equal(1, c); total = total + 1 end
      assert.are.equal(9, total)
      local agg = results.aggregate(results.load(dir .. "/s"), { by = { "a" } })
      assert.are.equal(3, agg.rows[1].finished + 0 * n)
    end
    assert.are.same({ 2, 4 }, sweep.parse_shard("2/4"))
    assert.is_nil(sweep.parse_shard("0/4"))
    assert.is_nil(sweep.parse_shard("5/4"))
    assert.is_nil(sweep.parse_shard("x"))
    local env = function(t) return function(k) return t[k] end end
    assert.are.same({ 3, 4 }, sweep.env_shard(env { SLURM_ARRAY_TASK_ID = "2", SLURM_ARRAY_TASK_COUNT = "4" }))
    assert.are.same({ 2, 4 }, sweep.env_shard(env { SLURM_ARRAY_TASK_ID = "2", SLURM_ARRAY_TASK_MIN = "1", SLURM_ARRAY_TASK_COUNT = "4" }))
    assert.are.same({ 1, 2 }, sweep.env_shard(env { OMPI_COMM_WORLD_RANK = "0", OMPI_COMM_WORLD_SIZE = "2" }))
    assert.are.same({ 4, 4 }, sweep.env_shard(env { PMI_RANK = "3", PMI_SIZE = "4" }))
    assert.is_nil(sweep.env_shard(env {}))
    h.errors_with(function() sweep.env_shard(env { PMI_RANK = "4", PMI_SIZE = "4" }) end, "PMI_RANK + 1 / PMI_SIZE")
  end)

  it("summarises each group over seeds as mean ± sample std with the 95% CI and saves it", function()
    local dir = tmpdir("summary")
    local values = { knn = { 1, 2, 3 }, no_knn = { 2, 4, 9 } }
    local out = knnd.sweep { name = "m", dir = dir, quiet = true, grid = { cond = { "knn", "no_knn" }, seed = { 1, 2, 3 } },
      run = function(cfg) return { fid = values[cfg.cond][cfg.seed], tag = "text", one = cfg.seed == 1 and 7 or nil } end }
    local rows = out.summary.rows
    assert.are.same({ "cond" }, out.summary.by)
    assert.are.same({ "fid", "one" }, out.summary.metrics)
    assert.are.equal("knn", rows[1].group.cond)
    assert.are.equal(2, rows[1].stats.fid.mean)
    assert.are.equal(1, rows[1].stats.fid.std)
    assert.are.equal(3, rows[1].stats.fid.n)
    assert.are.equal(5, rows[2].stats.fid.mean)
    h.assert_close(rows[2].stats.fid.std, math.sqrt(13), 1e-12)
    assert.are.equal(1, rows[2].stats.one.n)
    assert.is_nil(rows[2].stats.one.std)
    assert.is_nil(rows[2].stats.one.ci95)
    -- scipy: t.interval(0.95, 2, mean, sem) of {1, 2, 3} and {2, 4, 9}
    local ci = {}
    for _, c in ipairs(fx.mean_ci) do if c.level == 0.95 then ci[table.concat(c.xs, ",")] = c.half end end
    h.assert_close(rows[1].stats.fid.ci95, ci["1.0,2.0,3.0"], 1e-10)
    h.assert_close(rows[2].stats.fid.ci95, ci["2.0,4.0,9.0"], 1e-10)
    local csv = lines(dir .. "/m/summary.csv")
    assert.are.same({ "cond,runs_finished,runs_total,fid_mean,fid_std,fid_ci95,fid_n,one_mean,one_std,one_ci95,one_n",
      "knn,3,3,2,1,2.484137712,3,7,,,1", "no_knn,3,3,5,3.605551275,8.956685895,3,7,,,1" }, csv)
    local md = files.read_all(dir .. "/m/summary.md")
    assert.truthy(md:find("| knn | 3/3 | 2 ± 1 (CI95 ±2.5, n=3) | 7 (n=1) |", 1, true), md)
    assert.truthy(md:find("| no_knn | 3/3 | 5 ± 3.6 (CI95 ±9, n=3) | 7 (n=1) |", 1, true), md)
    assert.is_nil(md:find("paired comparisons", 1, true))
    assert.is_nil(files.read_all(dir .. "/m/paired.csv"))
    assert.are.same({ 1, 2, 3 }, { results.mean_std { 2, 2 } == 2 and 1, 2, 3 })
    local m, s, n = results.mean_std { 1, 2, 3, 4 }
    assert.are.equal(2.5, m)
    h.assert_close(s, math.sqrt(5 / 3), 1e-12)
    assert.are.equal(4, n)
  end)
end)

describe("knnd.sweep's paired comparisons", function()
  local sw = fx.sweep -- alignment per mode over seeds 1..3, scipy's CIs and ttest_rel against no_knn
  local function spec(dir, extra)
    local s = { name = "p", dir = dir, quiet = true, grid = { mode = { "knn", "no_knn", "lafite_noise" }, k = { 5 },
      seed = { 1, 2, 3 } }, run = function(cfg) return { alignment = sw.values[cfg.mode][cfg.seed], k = cfg.k } end }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end

  it("tests every mode against the baseline, paired on the seed, into summary.md and paired.csv", function()
    local dir = tmpdir("paired")
    local out = knnd.sweep(spec(dir, { compare = { by = "mode", baseline = "no_knn", metrics = { "alignment" } } }))
    for _, row in ipairs(out.summary.rows) do
      h.assert_close(row.stats.alignment.ci95, sw.ci95[row.group.mode], 1e-10)
    end
    local md = files.read_all(dir .. "/p/summary.md")
    assert.truthy(md:find("## paired comparisons", 1, true), md)
    assert.truthy(md:find("### mode vs no_knn", 1, true), md)
    local r = sw.paired.knn
    local row = ("| alignment | 5 | knn − no_knn | 3 | 0.6167 | 0.52 | %+.4g | [%+.4g, %+.4g] | %.3g (2) | %.3g |")
      :format(r.diff, r.diff - r.ci, r.diff + r.ci, r.t, r.p)
    assert.truthy(md:find(row, 1, true), row .. "\n" .. md)
    local csv = lines(dir .. "/p/paired.csv")
    assert.are.equal("k,metric,by,a,b,n,mean_a,mean_b,mean_diff,ci95,t,df,p", csv[1])
    assert.are.equal(3, #csv)
    for i, mode in ipairs { "knn", "lafite_noise" } do
      local f = {}
      for x in (csv[i + 1] .. ","):gmatch("([^,]*),") do f[#f + 1] = x end
      assert.are.same({ "5", "alignment", "mode", mode, "no_knn", "3" }, { table.unpack(f, 1, 6) })
      local want = sw.paired[mode]
      h.assert_close({ tonumber(f[9]), tonumber(f[10]), tonumber(f[11]), tonumber(f[13]) },
        { want.diff, want.ci, want.t, want.p }, 1e-8)
      assert.are.equal("2", f[12])
    end
  end)

  it("checks the comparison against the grid before running", function()
    local dir = tmpdir("paired_bad")
    local ran = false
    local function bad(compare, text)
      h.errors_with(function()
        knnd.sweep(spec(dir, { compare = compare, run = function() ran = true end }))
      end, text)
    end
    bad({ by = "cond", baseline = "no_knn" }, "knnd.sweep: option 'compare': 'by' must name a grid axis other than the seed, got 'cond' (the axes: k, mode)")
    bad({ by = "seed" }, "'by' must name a grid axis other than the seed, got 'seed'")
    bad({ by = "mode", baseline = "none" }, "option 'compare': the baseline 'none' is no value of the axis 'mode' (its values: knn, no_knn, lafite_noise)")
    bad({ by = "mode", base = "no_knn" }, "option 'compare': unknown key 'base' (expected by, baseline, metrics)")
    bad({ { by = "mode" }, { by = "k", metrics = {} } }, "option 'compare'[2]: 'metrics' expected a list of metric names")
    bad("mode", "option 'compare' expected {by = axis, baseline = value, metrics = {...}} or a list of them, got string")
    assert.is_false(ran)
    -- --set taking the baseline off its axis leaves the comparison out, with a note
    knnd.config.set_cli_overrides { mode = "knn,lafite_noise" }
    local ok, err = pcall(knnd.sweep, spec(dir, { compare = { by = "mode", baseline = "no_knn" } }))
    knnd.config.set_cli_overrides {}
    assert(ok, err)
    local md = files.read_all(dir .. "/p/summary.md")
    assert.truthy(md:find("left out: the baseline mode = no_knn is not in this sweep (--set mode)", 1, true), md)
  end)

  it("without a baseline compares every pair; a list of comparisons gives a table each", function()
    local dir = tmpdir("paired_all")
    local out = knnd.sweep(spec(dir, { compare = { { by = "mode", metrics = "alignment" }, { by = "k" } } }))
    local pt = results.paired(out.summary, { by = "mode", metric = "alignment" })
    local got = {}
    for _, r in ipairs(pt.rows) do got[#got + 1] = r.a .. "-" .. r.b end
    assert.are.same({ "knn-no_knn", "knn-lafite_noise", "no_knn-lafite_noise" }, got)
    h.assert_close(pt.rows[1].p, sw.paired.knn.p, 1e-10)
    -- lafite_noise − no_knn is the negative of no_knn − lafite_noise: same p, opposite t
    h.assert_close(pt.rows[3].t, -sw.paired.lafite_noise.t, 1e-10)
    local md = files.read_all(dir .. "/p/summary.md")
    assert.truthy(md:find("### mode\n", 1, true), md)
    -- paired.csv: both comparisons under one header; k is a stratum of the mode table, mode of the k table
    local csv = lines(dir .. "/p/paired.csv")
    assert.are.equal("k,mode,metric,by,a,b,n,mean_a,mean_b,mean_diff,ci95,t,df,p", csv[1])
    assert.are.equal(4, #csv) -- the three pairs of modes; a single k has no pairs
    assert.truthy(csv[2]:match("^5,,alignment,mode,knn,no_knn,3,"), csv[2])
    -- a single value of k: nothing to pair, so the k table is empty but present
    assert.truthy(md:find("### k\n", 1, true), md)
  end)
end)

describe("knnd.results.paired", function()
  it("pairs runs on the seed within the other keys, from runs or an aggregate", function()
    local dir = tmpdir("paired_runs")
    -- two values of lr (strata) x two modes x three seeds; seed 3 of b at lr 0.1 failed: two pairs there
    knnd.sweep { name = "q", dir = dir, quiet = true, grid = { lr = { 0.1, 0.2 }, mode = { "a", "b" }, seed = { 1, 2, 3 } },
      run = function(cfg)
        if cfg.lr == 0.1 and cfg.mode == "b" and cfg.seed == 3 then error("diverged") end
        local p = fx.paired_t[4]
        return { m = (cfg.mode == "a" and p.xs or p.ys)[cfg.seed + (cfg.lr == 0.2 and 3 or 0)] }
      end }
    local runs = results.load(dir .. "/q")
    local pt = results.paired(runs, { by = "mode", baseline = "b", metric = "m" })
    assert.are.same({ "lr" }, pt.strata)
    assert.are.equal("seed", pt.pair_on)
    assert.are.equal(2, #pt.rows)
    assert.are.same({ 0.1, "a", "b", 2 }, { pt.rows[1].group.lr, pt.rows[1].a, pt.rows[1].b, pt.rows[1].n })
    local p = fx.paired_t[4]
    local want = knnd.stats.paired_t({ p.xs[1], p.xs[2] }, { p.ys[1], p.ys[2] })
    h.assert_close(pt.rows[1].p, want.p, 1e-12)
    local r2 = knnd.stats.paired_t({ p.xs[4], p.xs[5], p.xs[6] }, { p.ys[4], p.ys[5], p.ys[6] })
    h.assert_close({ pt.rows[2].mean_diff, pt.rows[2].t, pt.rows[2].p }, { r2.diff, r2.t, r2.p }, 1e-12)
    -- the same from the aggregate
    local agg = results.aggregate(runs, { by = { "lr", "mode" } })
    local pt2 = results.paired(agg, { by = "mode", baseline = "b", metric = "m" })
    h.assert_close(pt2.rows[2].p, r2.p, 1e-12)
    -- grouped by mode alone, each mode has two runs per seed (one per lr): no pairing is possible
    h.errors_with(function() results.paired(results.aggregate(runs, { by = { "mode" } }), { by = "mode", metric = "m" }) end,
      "knnd.results.paired: two finished runs of mode=a share seed = 1")
    h.errors_with(function() results.paired(runs, { by = "mode", baseline = "c" }) end,
      "knnd.results.paired: option 'baseline': 'c' is no value of 'mode' (the runs have: a, b)")
    h.errors_with(function() results.paired(runs, { by = "mode", metric = "fid" }) end,
      "knnd.results.paired: no metric 'fid' (the runs have: m)")
    h.errors_with(function() results.paired(agg, { by = "k" }) end,
      "knnd.results.paired: option 'by': the runs are not grouped by 'k' (their keys: lr, mode)")
    h.errors_with(function() results.paired(agg, { by = "mode", pair_on = "lr" }) end,
      "option 'pair_on' is 'lr' but the aggregate was made over 'seed'")
    h.errors_with(function() results.paired(runs, { by = "mode", baseline = "b", metrc = "m" }) end,
      "knnd.results.paired: unknown option 'metrc'")
    h.errors_with(function() results.paired(runs) end, "knnd.results.paired: argument 2 expected an options table")
    local md = results.paired_markdown(pt)
    assert.truthy(md:find("| m | 0.1 | a − b | 2 |", 1, true), md)
  end)
end)

describe("knnd.results", function()
  it("loads runs with their config and metrics, filters, compares and exports them", function()
    local dir = tmpdir("store")
    knnd.sweep { name = "st", dir = dir, quiet = true, grid = { lr = { 0.1, 0.01 }, seed = { 1, 2 } },
      run = function(cfg, run)
        run:metric("loss", 1, cfg.lr)
        if cfg.lr == 0.01 and cfg.seed == 2 then error("nan loss") end
        return { loss = cfg.lr * cfg.seed }
      end }
    local runs = results.load(dir)
    assert.are.same({ "st/lr=0.01,seed=1", "st/lr=0.01,seed=2", "st/lr=0.1,seed=1", "st/lr=0.1,seed=2" },
      (function() local t = {} for i, r in ipairs(runs) do t[i] = r.name end return t end)())
    assert.are.equal(0.01, runs[1].config.lr)
    assert.are.equal(0.01, runs[1].metrics.loss)
    assert.are.equal("failed", runs[2].status)
    assert.truthy(runs[2].error:find("nan loss", 1, true))
    assert.are.equal(2, #results.filter(runs, { lr = 0.1 }))
    assert.are.equal(3, #results.filter(runs, { status = "finished" }))
    assert.are.equal(1, #results.filter(runs, function(r) return (r.metrics.loss or 0) > 0.15 end))
    local cmp = results.compare(runs, { sort = "loss", descending = true })
    assert.are.same({ "lr" }, cmp.by)
    assert.are.equal(0.1, cmp.rows[1].group.lr)
    h.assert_close(cmp.rows[1].stats.loss.mean, 0.15, 1e-12)
    assert.are.equal(1, cmp.rows[2].stats.loss.n)
    h.errors_with(function() results.compare(runs, { sort = "fid" }) end, "no metric 'fid' (the runs have: loss)")
    local csv = results.to_csv(runs, dir .. "/runs.csv")
    assert.are.equal(csv, files.read_all(dir .. "/runs.csv"))
    local l = lines(dir .. "/runs.csv")
    assert.are.equal("name,status,duration_s,seed,lr,loss", l[1])
    assert.truthy(l[3]:match('^"st/lr=0%.01,seed=2",failed,[%d.e-]+,2,0%.01,$'), l[3]) -- quoted: the name holds a comma
    assert.are.equal(5, #l)
    assert.are.same({ 0.1 }, results.series(runs[3], "loss").values)
    assert.truthy(results.listing(runs):find("st/lr=0.1,seed=2%s+finished"))
    h.errors_with(function() results.load(dir .. "/nothing") end, "knnd.results.load: '" .. dir .. "/nothing' is not a folder")
  end)
end)
