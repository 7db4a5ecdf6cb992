-- fid.lua — `knnd fid A B`: the Fréchet distance between two image sets or statistics files.
--
--   knnd fid samples/ coco_val30k.npz --inception pt_inception.safetensors
--   knnd fid runs/q/knn/samples.h5 data/test.h5 --classifier runs/q/judge.h5 --name fmnist-cnn --kid
--   knnd fid a.fid.h5 b.fid.h5                      # two statistics files: no network needed
--
-- A and B: a folder of PNG/JPEG images or of zero-shot sample parts, a knnd image dataset (.h5),
-- or statistics (knnd's .h5 or pytorch-fid's .npz). The Inception weights come from --inception
-- or $KNND_INCEPTION_WEIGHTS; a classifier's features give FID[<name>], never printed as FID.
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"

local M = { help = "FID (and KID) between two image sets or statistics files." }

function M.setup(cmd)
  cmd:argument("a", "Images (folder, dataset .h5) or statistics (.h5, .npz).")
  cmd:argument("b", "Images (folder, dataset .h5) or statistics (.h5, .npz).")
  cmd:option("--inception", "pytorch-fid Inception weights (safetensors from eval/convert_inception.py); default $KNND_INCEPTION_WEIGHTS.")
  cmd:option("--dims", "Inception features: 64, 192, 768 or 2048 (pool3, the FID of papers).", "2048")
    :convert(cliutil.positive_int("--dims"))
  cmd:flag("--allow-other-weights", "Accept Inception weights other than pt_inception-2015-12-05 (not comparable to published FIDs).")
  cmd:option("--classifier", "A knnd classifier (.h5) whose penultimate features replace Inception's.")
  cmd:option("--name", "The classifier's name in the label FID[<name>].", "cnn")
  cmd:option("--batch", "Images per batch through the network.", "50"):convert(cliutil.positive_int("--batch"))
  cmd:flag("--kid", "Also KID (needs images on both sides).")
  cmd:option("--save-stats-a", "Write the statistics of A to this file (.h5).")
  cmd:option("--save-stats-b", "Write the statistics of B to this file (.h5).")
  cmd:option("--seed", "Seed of KID's subsets.", "0"):convert(tonumber)
  cmd:flag("--json", "Print JSON instead of text.")
  cmd:flag("-q --quiet", "No progress bars.")
end

local function extractor(a)
  local ev = knnd.eval
  if a.classifier and a.inception then error("give --inception or --classifier, not both", 0) end
  if a.classifier then
    if not cliutil.exists(a.classifier) then error(("--classifier: '%s' not found"):format(a.classifier), 0) end
    return ev.classifier_extractor(a.classifier, { name = a.name, batch = a.batch })
  end
  local w = a.inception or os.getenv("KNND_INCEPTION_WEIGHTS")
  if not w or w == "" then return nil end
  if not cliutil.exists(w) then error(("the Inception weights '%s' were not found"):format(w), 0) end
  return ev.inception(w, { dims = a.dims, batch = a.batch, reference = not a.allow_other_weights })
end

function M.run(a)
  local ev = knnd.eval
  for _, side in ipairs({ "a", "b" }) do
    if not cliutil.exists(a[side]) then error(("%s: '%s' not found"):format(side:upper(), a[side]), 0) end
  end
  local both_stats = ev.is_stats_file(a.a) and ev.is_stats_file(a.b)
  local ex = extractor(a)
  if not ex and not both_stats then
    error("images need a feature extractor: --inception PATH (or $KNND_INCEPTION_WEIGHTS) for FID, or --classifier PATH for FID[<name>]", 0)
  end
  local progress = not a.quiet
  local function stats(side, save)
    local v = a[side]
    if ev.is_stats_file(v) then return ev.load_stats(v) end
    return ev.stats(v, { extractor = ex, out = save, progress = progress, desc = "statistics of " .. side:upper() })
  end
  local sa, sb = stats("a", a.save_stats_a), stats("b", a.save_stats_b)
  local d, info = ev.fid(sa, sb)
  local r = { label = info.label, fid = d, extractor = sa:extractor(), n_a = sa:n(), n_b = sb:n() }
  if a.kid then
    if ev.is_stats_file(a.a) or ev.is_stats_file(a.b) then error("--kid needs images on both sides, not statistics", 0) end
    r.kid, r.kid_std = ev.kid(a.a, a.b, { extractor = ex, seed = math.tointeger(a.seed) or 0, progress = progress })
    r.kid_label = ev.fid_label(r.extractor, "KID")
  end
  if a.json then
    io.write(require("dkjson").encode(r, { indent = true }), "\n")
  else
    io.write(("%s %.4f  (%s; %d vs %d images)\n"):format(r.label, r.fid, r.extractor, r.n_a, r.n_b))
    if r.kid then io.write(("%s %.6f ± %.6f\n"):format(r.kid_label, r.kid, r.kid_std)) end
  end
  return 0
end

return M
