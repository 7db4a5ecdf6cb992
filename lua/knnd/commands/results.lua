-- results.lua — `knnd results RESULTS_DIR [--json] [--csv FILE] [--sort METRIC] [--summary]`: the
-- runs below a folder (knnd.run / knnd.sweep folders) with their status, duration and final metrics.
local files = require "knnd.files"

local M = { help = "List the runs in a results folder with their status, duration and final metrics." }

function M.setup(cmd)
  cmd:argument("dir", "A results folder: a sweep, a run, or a folder of them.")
  cmd:flag("--json", "Print the runs (name, status, duration, seed, config, metrics, error) as JSON.")
  cmd:option("--csv", "Also write one row per run to this CSV file (atomically)."):argname("<file>")
  cmd:option("--sort", "Sort by this final metric (or name, status, duration)."):argname("<metric>")
  cmd:flag("--desc", "With --sort: largest first.")
  cmd:flag("--summary", "Print the metrics grouped over seeds (mean ± std) instead of one row per run.")
end

function M.run(a)
  local results = require "knnd.results"
  if not files.is_dir(a.dir) then error(("knnd results: '%s' is not a folder"):format(a.dir), 0) end
  local runs, bad = results.load(a.dir)
  for _, msg in ipairs(bad) do io.stderr:write("knnd results: skipped ", msg, "\n") end
  if #runs == 0 then error(("knnd results: no runs under '%s' (no run.json found)"):format(a.dir), 0) end
  if a.sort then
    local key = a.sort == "duration" and "duration_s" or a.sort
    local known = { name = true, status = true, duration_s = true }
    for _, m in ipairs(results.metric_names(runs)) do known[m] = true end
    if not known[key] then
      error(("knnd results: --sort %s: no such metric (the runs have: %s; or name, status, duration)")
        :format(a.sort, table.concat(results.metric_names(runs), ", ")), 0)
    end
    for i, r in ipairs(runs) do r._pos = i end
    table.sort(runs, function(x, y)
      local u, v = results.value(x, key), results.value(y, key)
      if type(u) ~= type(v) or u == v or (type(u) ~= "number" and type(u) ~= "string") then
        if (u == nil) ~= (v == nil) then return v == nil end -- missing values last
        return x._pos < y._pos
      end
      if a.desc then return u > v end
      return u < v
    end)
  end
  if a.csv then
    results.to_csv(runs, a.csv)
    io.stderr:write(("wrote %d runs to %s\n"):format(#runs, a.csv))
  end
  if a.json then
    local out = {}
    for i, r in ipairs(runs) do
      out[i] = { name = r.name, dir = r.dir, status = r.status, duration_s = r.duration_s, seed = r.seed,
        config = r.config, metrics = r.metrics, error = r.error, start_time = r.info.start_time }
    end
    io.write(files.json_encode(require("knnd.config").serialisable(out)), "\n")
  elseif a.summary then
    local agg = results.compare(runs, { sort = a.sort ~= nil and a.sort ~= "name" and a.sort ~= "status"
      and a.sort ~= "duration" and a.sort or nil, descending = a.desc })
    io.write(results.markdown(agg))
  else
    io.write(results.listing(runs))
  end
  return 0
end

return M
