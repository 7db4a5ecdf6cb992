-- sweep.lua — `knnd sweep SCRIPT.lua [--resume] [--retry-failed] [--shard i/n] [--set k=v]`: runs a
-- script that calls knnd.sweep{...}, the flags becoming the defaults that sweep picks up.
--
--   knnd sweep experiments/ablation_knn.lua                 # a fresh sweep
--   knnd sweep experiments/ablation_knn.lua --resume        # after a crash: skip the finished runs
--   knnd sweep experiments/ablation_knn.lua --resume --shard 2/4 --set steps=500
local config = require "knnd.config"
local options = require "knnd.options"
local cliutil = require "knnd.cliutil"

local M = { help = "Run a sweep script (knnd.sweep): resumable, shardable, with a summary over seeds." }

function M.setup(cmd)
  cmd:argument("script", "The Lua script calling knnd.sweep{...}.")
  cmd:argument("args", "Arguments passed to the script as `arg`."):args("*")
  cmd:flag("--resume", "Continue the sweep in its folder: finished runs are skipped, interrupted ones run again.")
  cmd:flag("--retry-failed", "With --resume: run the failed runs again too.")
  cmd:option("--shard", "Run only shard i of n (1-based): runs i, i+n, ... of the sweep's order "
    .. "(default: from SLURM_ARRAY_TASK_ID/COUNT, OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/SIZE).")
    :argname("<i/n>"):convert(function(s) return require("knnd.sweep").parse_shard(s) end)
  cmd:option("--set", "Override a key of the sweep's base config (or the values of a grid axis: --set k=1,5), "
    .. "or an option the script declares with knnd.options.")
    :count("*"):argname("<key=value>")
  cmd:option("--dir", "Results root (default: the script's dir option, else runs/).")
  cmd:flag("--dry-run", "List the runs and their state without running anything.")
end

function M.run(a)
  local sweep = require "knnd.sweep"
  options.set_overrides(config.parse_sets(a.set), { lenient = true })
  sweep.defaults = { resume = a.resume == true, retry_failed = a.retry_failed == true, shard = a.shard, dir = a.dir,
    dry_run = a.dry_run == true }
  local before = #sweep.history
  cliutil.run_script(a.script, a.args)
  options.check_unused()
  local done = {}
  for i = before + 1, #sweep.history do done[#done + 1] = sweep.history[i] end
  if #done == 0 then
    error(("%s called no knnd.sweep{...} (run plain scripts with `knnd run`)"):format(a.script), 0)
  end
  local failed = {}
  for _, s in ipairs(done) do
    for _, n in ipairs(s.failed_names) do failed[#failed + 1] = s.dir .. "/" .. n end
  end
  if #failed > 0 then
    io.stderr:write(("knnd sweep: %d run%s failed (their run.json holds the error and traceback):\n  %s\n"
      .. "rerun with --resume --retry-failed to run them again\n"):format(#failed, #failed == 1 and "" or "s",
      table.concat(failed, "\n  ")))
    return 1
  end
  return 0
end

return M
