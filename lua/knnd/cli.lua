-- cli.lua — the knnd command line: `knnd run SCRIPT.lua`, `knnd version`, `knnd --help`.
-- Parsed with argparse (Debian's lua-argparse), not by hand.
local argparse = require "argparse"
local knnd = require "knnd"
local options = require "knnd.options"

local M = {}

-- the subcommands defined in lua/knnd/commands/ (one file each), in the order of the help
M.extra_commands = { "index", "clip", "data", "fid", "vqvae", "edit", "export-notebook", "sweep", "results" }
M.handlers = {}

local function build_parser()
  local p = argparse("knnd", "Retrieval-conditioned text-to-image diffusion (KNN-Diffusion), scripted in Lua.")
    :epilog("Examples:\n  knnd run experiments/demo_classifier.lua --set steps=300 --seed 1\n  knnd version")
  p:command_target("command")
  p:require_command(false)
  local run = p:command("run", "Run a Lua experiment script with the knnd module loaded.")
  run:argument("script", "The Lua script to run.")
  run:argument("args", "Arguments passed to the script as `arg`."):args("*")
  run:option("--set", "Override an option the script declares (key=value, dotted keys for nesting).")
    :count("*"):argname("<key=value>")
  run:option("--seed", "Seed the default random generator."):convert(tonumber)
  p:command("version", "Print the version and what this knnd was built with.")
  -- subcommands of the other areas: lua/knnd/commands/<name>.lua ('-' in a name is '_' in the file) returns
  -- {help = "...", setup = function(cmd) ... end, run = function(args) return exit_code end}
  for _, name in ipairs(M.extra_commands) do
    local module = "knnd.commands." .. name:gsub("-", "_")
    if not package.searchpath(module, package.path) then goto continue end
    local ok, mod = pcall(require, module)
    if not ok then error(("knnd: cannot load the '%s' command: %s"):format(name, mod), 0) end
    local cmd = p:command(name, mod.help)
    mod.setup(cmd)
    M.handlers[name] = mod.run
    ::continue::
  end
  return p
end

local function cmd_version()
  io.write(("knnd %s\n"):format(knnd.version()))
  for _, kv in ipairs(knnd.build_info()) do
    io.write(("  %-15s %s\n"):format(kv[1] .. ":", kv[2]))
  end
  return 0
end

local function cmd_run(a)
  options.set_overrides(require("knnd.config").parse_sets(a.set))
  if a.seed then
    if a.seed ~= math.floor(a.seed) or a.seed < 0 then
      error(("--seed expects a non-negative integer, got %s"):format(a.seed), 0)
    end
    knnd.manual_seed(math.tointeger(a.seed))
    knnd.seed = math.tointeger(a.seed)
  end
  require("knnd.cliutil").run_script(a.script, a.args)
  options.check_unused()
  return 0
end

function M.main(argv)
  local parser = build_parser()
  local ok, a = parser:pparse(argv)
  if not ok then
    io.stderr:write(parser:get_usage(), "\n\nknnd: ", a, "\n")
    return 2
  end
  if a.command == "run" then return cmd_run(a) end
  if a.command == "version" then return cmd_version() end
  if M.handlers[a.command] then return M.handlers[a.command](a) or 0 end
  io.write(parser:get_help(), "\n")
  return 0
end

return M
