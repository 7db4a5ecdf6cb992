-- data.lua — `knnd data prepare|info`: prepared image datasets (lua/knnd/dataset.lua) from the shell.
--
--   knnd data prepare fashion-mnist --out fm.h5 [--split train] [--size 32] [--channels 1] [--limit N]
--   knnd data prepare folder DIR --out imgs.h5 [--size 64] [--captions captions.tsv]
--   knnd data info fm.h5 [--captions 5]
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"
local positive_int, exists = cliutil.positive_int, cliutil.exists

local M = { help = "Prepare image datasets (HDF5) for training and describe them." }

function M.setup(cmd)
  cmd:command_target("data_command")
  cmd:require_command(true)
  local p = cmd:command("prepare", "Write a prepared dataset: images u8 [N,C,H,W], labels, captions.")
  p:argument("source", "fashion-mnist (Debian's dataset-fashion-mnist) or folder."):choices({ "fashion-mnist", "folder" })
  p:argument("dir", "The folder of .png images (source folder only)."):args("?")
  p:option("--out", "The dataset file to write (written atomically)."):count(1)
  p:option("--split", "fashion-mnist: train or test.", "train"):choices({ "train", "test" })
  p:option("--size", "Side of the square images (default 32 for fashion-mnist, 64 for folder).")
    :convert(positive_int("--size"))
  p:option("--channels", "fashion-mnist: 1 or 3 channels.", "1"):choices({ "1", "3" })
  p:option("--limit", "fashion-mnist: the first N images only."):convert(positive_int("--limit"))
  p:option("--seed", "fashion-mnist: seed of the caption templates.", "0"):convert(function(v)
    local n = math.tointeger(tonumber(v))
    if not n or n < 0 then return nil, ("--seed expects a non-negative integer, got '%s'"):format(v) end
    return n
  end)
  p:option("--captions", "folder: a TSV of filename<TAB>caption.")
  p:flag("-q --quiet", "No progress bar.")

  local i = cmd:command("info", "Print a dataset's count, shape, classes and a few captions.")
  i:argument("file", "The dataset file.")
  i:option("--captions", "How many captions to show.", "5"):convert(tonumber)
end

-- strip the "knnd.<fn>: " prefix of library errors for the command's own message
local function call(what, fn, ...)
  local ok, res = pcall(fn, ...)
  if not ok then error(("%s: %s"):format(what, tostring(res):gsub("^knnd%.[%w_.:]+: ", "")), 0) end
  return res
end

local function cmd_prepare(a)
  local t0 = knnd.wall_time and knnd.wall_time() or os.clock()
  local n
  if a.source == "fashion-mnist" then
    if a.dir then error("knnd data prepare fashion-mnist takes no directory argument", 0) end
    if a.captions then error("--captions applies to the folder source only", 0) end
    n = call("cannot prepare fashion-mnist", knnd.dataset.prepare_fashion_mnist, {
      out = a.out, split = a.split, size = a.size or 32, channels = math.tointeger(tonumber(a.channels)),
      limit = a.limit, seed = a.seed, progress = not a.quiet,
    })
  else
    if not a.dir then error("knnd data prepare folder: the directory argument is missing", 0) end
    if a.limit or a.channels ~= "1" or a.split ~= "train" then
      error("--limit, --channels and --split apply to the fashion-mnist source only", 0)
    end
    if a.captions and not exists(a.captions) and not exists(a.dir .. "/" .. a.captions) then
      error(("captions file '%s' not found"):format(a.captions), 0)
    end
    n = call("cannot prepare the folder", knnd.dataset.prepare_folder, {
      dir = a.dir, out = a.out, size = a.size or 64, captions = a.captions, progress = not a.quiet,
    })
  end
  local dt = (knnd.wall_time and knnd.wall_time() or os.clock()) - t0
  io.write(("wrote %s: %d images in %.2f s\n"):format(a.out, n, dt))
  return 0
end

local function cmd_info(a)
  if not exists(a.file) then error(("dataset '%s' not found"):format(a.file), 0) end
  local ds = call("cannot read the dataset", knnd.dataset.open, a.file, { cache = false })
  local s = ds:image_shape()
  local function show(k, v) io.write(("%-9s %s\n"):format(k .. ":", tostring(v))) end
  show("dataset", a.file)
  show("source", ds.source)
  show("count", ds:count())
  show("shape", ("%d x %d x %d (C x H x W), u8"):format(s[1], s[2], s[3]))
  show("classes", #ds.classes > 0 and table.concat(ds.classes, ", ") or "(none)")
  local k = math.min(ds:count(), math.max(0, math.tointeger(a.captions) or 5))
  if k > 0 then io.write("captions:\n") end
  for r = 0, k - 1 do
    local label = ds:label(r)
    io.write(("  %5d  %s%s\n"):format(r, ds:caption(r), label >= 0 and (" [%d]"):format(label) or ""))
  end
  ds:close()
  return 0
end

function M.run(a)
  if a.prepare then return cmd_prepare(a) end
  if a.info then return cmd_info(a) end
  error("knnd data: expected a subcommand (prepare, info)", 0)
end

return M
