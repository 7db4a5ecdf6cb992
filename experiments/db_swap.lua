-- db_swap.lua — the database swap (the paper's out-of-distribution generation): the model that
-- experiments/stickers.lua trained on Noto emoji is sampled from the same prompts twice, once
-- with its own index and once with an index over EmojiOne — the same concepts drawn by another
-- artist, a database the model never saw. Nothing is retrained: the index is one argument.
--
--   knnd run experiments/stickers.lua                       (first: the model, its CLIP, its index)
--   knnd run experiments/db_swap.lua [--set stickers=runs/stickers --set out=runs/db_swap]
--   knnd run experiments/db_swap.lua --set stickers=runs/stickers,runs/stickers-s1,runs/stickers-s2
--                                                           (stickers.lua runs with other --set seed=: training seeds)
--
-- Does the swap carry the style? A style classifier (knnd.style) trained on both databases, on
-- concepts it then leaves out, says which artist each sample looks like; CLIP retrieval of the
-- prompt among all emoji names says whether the sample still shows the prompt. Every number is
-- taken for each conditioning mode (no_knn ignores the index: the control) and each index, over
-- sampling seeds (and over the stickers runs given: then the runs are the units of the intervals),
-- as mean ± 95% CI, with paired t-tests of the swap (EmojiOne index minus own index, paired by
-- seed) and of the modes (paired by seed and index).
--
-- Written to out/: swap_<mode>.png (for each prompt: a row from the Noto index, then a row from
-- the EmojiOne index; the first run and seed), neighbors_emojione.png (what the prompts retrieve
-- from EmojiOne), style.h5 / style.json (the style classifier and its held-out accuracy),
-- db_swap.md and db_swap.csv (the table), db_swap.png (each measure's mean and CI per mode and
-- index), db_swap.ipynb (all of it as a notebook, as knnd export-notebook writes it) and
-- metrics.json: per mode the share of samples whose nearest image among both databases (CLIP image embeddings) is an EmojiOne image (closer_to_emojione_<index>_index),
-- and per mode and index the style classifier's EmojiOne share and the alignment, with the tests.
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  stickers = "runs/stickers", -- a stickers.lua folder, or several (one per training seed) separated by commas
  out = "runs/db_swap",
  modes = "knn,no_knn",
  seeds = "0,1,2", -- sampling seeds
  seed = 0, -- the style classifier's concept split and initialisation
  style = { steps = 300, batch = 64, width = 16, holdout = 0.2 },
  sample = { sampler = "dpmpp", steps = 25, guidance = 3.0, per_prompt = 6 },
  prompts = "red apple,grinning face,cat face,pizza,rocket,green heart,sun,snowman,house,ghost,"
    .. "woman technologist,soccer ball",
}
local exists = require("knnd.cliutil").exists
local files = require "knnd.files"
local function list(s, pattern)
  local out = {}
  for v in tostring(s):gmatch(pattern or "[^,%s]+") do out[#out + 1] = v end
  return out
end
local sources, modes, prompts = list(opt.stickers), list(opt.modes), list(opt.prompts, "[^,]+")
local seeds = {}
for i, s in ipairs(list(opt.seeds)) do
  seeds[i] = math.tointeger(tonumber(s)) or error(("db_swap: seeds: '%s' is not an integer"):format(s), 0)
end
if #sources == 0 or #modes == 0 or #seeds == 0 or #prompts == 0 then
  error("db_swap: stickers, modes, seeds and prompts each need at least one value", 0)
end
for _, src in ipairs(sources) do
  for _, f in ipairs { "clip.safetensors", "clip.merges.txt", "data/emoji_emb.h5", "data/emoji.index" } do
    if not exists(src .. "/" .. f) then
      error(("db_swap: %s/%s not found: run experiments/stickers.lua first (or --set stickers=<its out folder>)")
        :format(src, f), 0)
    end
  end
end
files.mkdir_p(opt.out)
local t_start = knnd.wall_time()

-- each stickers run: its CLIP, its Noto database and index, EmojiOne encoded with its CLIP
local size
local function open_run(src)
  local r = { dir = src }
  r.clip = knnd.clip.load(src .. "/clip.safetensors", { tokenizer = src .. "/clip.merges.txt" })
  r.noto_path = ("%s/data/emoji%d.h5"):format(src, r.clip:config().image_size)
  r.noto_store = knnd.embeddings.open(src .. "/data/emoji_emb.h5")
  r.noto_index = knnd.index.load(src .. "/data/emoji.index", { store = r.noto_store })
  r.size = knnd.dataset.open(r.noto_path):image_shape()[2]
  if size and r.size ~= size then error(("db_swap: %s draws %dx%d emoji, %s %dx%d"):format(src, r.size, r.size,
    sources[1], size, size), 0) end
  size = r.size
  return r
end
local first = open_run(sources[1])

-- the other database: EmojiOne at the model's size
local e1_path = ("%s/emojione%d.h5"):format(opt.out, size)
if not exists(e1_path) then knnd.dataset.prepare_emojione { out = e1_path, size = size } end
local e1_images, e1_captions = knnd.style.images(e1_path)
local noto_images, noto_captions = knnd.style.images(first.noto_path)

-- the style classifier: Noto or EmojiOne? Trained once, on the concepts both draw, a share held out
local style_path, style_json = opt.out .. "/style.h5", opt.out .. "/style.json"
local style_options = { steps = opt.style.steps, batch = opt.style.batch, width = opt.style.width,
  holdout = opt.style.holdout, seed = opt.seed, size = size }
local style, style_report = nil, exists(style_path) and files.read_json(style_json) or nil
if style_report and files.json_encode(style_report.options or {}) == files.json_encode(style_options) then
  style = knnd.classifier.load(style_path)
  print(("style classifier from %s (trained before with these options)"):format(style_path))
else
  local s = opt.style
  style, style_report = knnd.style.train { styles = {
    { name = "noto", images = noto_images, captions = noto_captions },
    { name = "emojione", images = e1_images, captions = e1_captions } },
    holdout = s.holdout, seed = opt.seed, steps = s.steps, batch = s.batch, width = s.width, progress = true }
  style_report.heldout_names, style_report.options = nil, style_options
  -- what it calls EmojiOne among the real images of each database (held-out and training concepts)
  style_report.real_noto_called_emojione = knnd.style.share(style, noto_images, "emojione")
  style_report.real_emojione_called_emojione = knnd.style.share(style, e1_images, "emojione")
  style:save(style_path)
  files.write_json(style_json, style_report)
end
print(("style classifier: %.1f%% held-out accuracy on %d concepts it never saw (Noto %.1f%%, EmojiOne %.1f%%); "
  .. "calls %.1f%% of real Noto and %.1f%% of real EmojiOne emoji EmojiOne"):format(100 * style_report.heldout_accuracy,
  style_report.heldout_concepts, 100 * style_report.per_style.noto, 100 * style_report.per_style.emojione,
  100 * style_report.real_noto_called_emojione, 100 * style_report.real_emojione_called_emojione))

local function with_emojione(r)
  -- the EmojiOne embeddings of this run's CLIP (one file per CLIP: the runs' CLIPs differ)
  local hash = knnd.clip.weights_hash(r.clip)
  local path = ("%s/emojione_emb.%s.h5"):format(opt.out, tostring(hash):sub(1, 16))
  if not exists(path) then
    r.clip:encode_dataset { images = e1_images, output = path, encoder = "stickers-clip", source_name = e1_path }
  end
  r.e1_store = knnd.embeddings.open(path)
  r.e1_index = knnd.index.build { store = r.e1_store, factory = "Flat" }
  -- the judge of alignment: CLIP retrieval of the prompt among all Noto emoji names
  local caps = r == first and noto_captions or select(2, knnd.style.images(r.noto_path))
  r.names_emb = knnd.no_grad(function() return r.clip:encode_text(caps, { normalize = true }) end)
  r.row_of = {}
  for row, c in ipairs(caps) do r.row_of[c] = r.row_of[c] or (row - 1) end
  -- which database is a sample closest to? (nearest neighbour among both, by CLIP image embedding)
  r.both = knnd.cat({ r.noto_store:read(1, #r.noto_store), r.e1_store:read(1, #r.e1_store) }, 1)
  return r
end
with_emojione(first)
print(("databases: %d Noto emoji, %d EmojiOne images (%dx%d); %d stickers run(s), %d sampling seeds")
  :format(#first.noto_store, #first.e1_store, size, size, #sources, #seeds))

do
  local q = knnd.no_grad(function() return first.clip:encode_text(prompts, { normalize = true }) end)
  local tn = first.e1_index:knn(q, { k = 8 })
  knnd.retrieval.neighbor_grid { path = opt.out .. "/neighbors_emojione.png", images = e1_images,
    neighbor_rows = tn.rows, query_texts = prompts, scores = tn.scores, captions = e1_captions, scale = 2,
    title = "prompts and their nearest EmojiOne images (the swapped-in condition)" }
end

-- the measures of one batch of samples
local METRICS = { "emojione_share", "clip_top1", "clip_top10", "closer_to_emojione" }
local function measure(r, g)
  local u8 = knnd.eval.samples_to_u8(g.images)
  local m = { emojione_share = knnd.style.share(style, g.images, "emojione") }
  local e = knnd.no_grad(function() return r.clip:encode_images(u8, { normalize = true }) end)
  local nearest = knnd.argmax(knnd.matmul(e, r.both:t()), 2)
  m.closer_to_emojione = knnd.ge(nearest, #r.noto_store):to("f32"):mean():item()
  local target, judged = {}, {}
  for i, p in ipairs(g.prompts) do
    if r.row_of[p] then
      target[#target + 1] = r.row_of[p]
      judged[#judged + 1] = i - 1
    end
  end
  if #judged > 0 then
    m.clip_top1, m.clip_top10 = knnd.eval.caption_retrieval { clip = r.clip,
      images = u8:index_select(1, knnd.tensor(judged, { dtype = "i64" })), captions = r.names_emb,
      targets = knnd.tensor(target, { dtype = "i64" }) }
  end
  return m
end

-- values[mode][index][metric][run][seed]
local INDEXES = { "noto", "emojione" }
local values = {}
for _, mode in ipairs(modes) do
  values[mode] = {}
  for _, ix in ipairs(INDEXES) do
    values[mode][ix] = {}
    for _, k in ipairs(METRICS) do values[mode][ix][k] = {} end
  end
end
local s = opt.sample
-- one bar over all the sampling (runs x modes x indexes x sampling seeds): the longest part
local per_batch = #prompts * s.per_prompt
local bar = knnd.progress { total = #sources * #modes * #INDEXES * #seeds * per_batch, desc = "db_swap sampling", unit = "img" }
for ri, src in ipairs(sources) do
  local r = ri == 1 and first or with_emojione(open_run(src))
  for _, mode in ipairs(modes) do
    local model_path = ("%s/%s/model.h5"):format(src, mode)
    if not exists(model_path) then error(("db_swap: %s not found (train mode %s in stickers.lua)"):format(model_path, mode), 0) end
    local model = kd.load(model_path)
    local grid_rows = {}
    for _, ix in ipairs(INDEXES) do
      for _, k in ipairs(METRICS) do values[mode][ix][k][ri] = {} end
      for si, seed in ipairs(seeds) do
        local g = kd.generate { model = model, clip = r.clip, index = ix == "noto" and r.noto_index or r.e1_index,
          prompts = prompts, n = s.per_prompt, sampler = model:sampler_option(s.sampler), steps = s.steps, guidance = s.guidance, seed = seed,
          progress = false }
        if ri == 1 and si == 1 then grid_rows[ix] = g.images end
        local m = measure(r, g)
        for _, k in ipairs(METRICS) do values[mode][ix][k][ri][si] = m[k] end
        bar:update(per_batch, { run = ri, mode = mode, index = ix, seed = seed })
      end
    end
    if ri == 1 then
      -- one grid: for each prompt, the Noto-index row then the EmojiOne-index row
      local P, n = #prompts, s.per_prompt
      local C = grid_rows.noto:size(2)
      local grid = knnd.cat({ grid_rows.noto:view(P, 1, n, C, size, size), grid_rows.emojione:view(P, 1, n, C, size, size) }, 2)
      local caps = {}
      for p = 1, P do
        for which = 1, 2 do
          for j = 1, n do caps[#caps + 1] = j == 1 and (which == 1 and prompts[p] .. " (Noto)" or "(EmojiOne)") or "" end
        end
      end
      knnd.save_grid(("%s/swap_%s.png"):format(opt.out, mode), grid:reshape(2 * P * n, C, size, size),
        { nrow = n, range = { -1, 1 }, scale = 2, captions = caps,
          title = ("%s model trained on Noto emoji: its own index vs the EmojiOne index"):format(mode) })
    end
  end
end
bar:close()

-- the units of the intervals and tests: the sampling seeds of one run, or the runs (each the mean
-- over its seeds): training seeds vary more than sampling seeds, and an interval over seeds of
-- several runs would pretend they do not
local units_of = #sources == 1 and "sampling seeds" or "stickers runs (means over sampling seeds)"
local function units(per_run)
  if #per_run == 0 or per_run[1][1] == nil then return {} end
  if #sources == 1 then return per_run[1] end
  local out = {}
  for i, xs in ipairs(per_run) do
    local sum = 0
    for _, x in ipairs(xs) do sum = sum + x end
    out[i] = sum / #xs
  end
  return out
end
local function summary(xs)
  local mean, ci, n = knnd.stats.mean_ci(xs)
  return { mean = mean, ci95 = ci, n = n, values = xs }
end
local function paired(xs, ys)
  if #xs == 0 or #xs ~= #ys then return nil end
  local t = knnd.stats.paired_t(xs, ys)
  return { diff = t.diff, ci95 = t.ci, t = t.t, p = t.p, n = t.n }
end

local metrics = { config = opt, units = units_of, style = style_report, modes = {}, modes_compared = {} }
for _, mode in ipairs(modes) do
  local m = {}
  for _, ix in ipairs(INDEXES) do
    m[ix] = {}
    for _, k in ipairs(METRICS) do m[ix][k] = summary(units(values[mode][ix][k])) end
  end
  -- the keys db_swap wrote before the style classifier
  m.closer_to_emojione_noto_index = m.noto.closer_to_emojione.mean
  m.closer_to_emojione_emojione_index = m.emojione.closer_to_emojione.mean
  m.swap = {}
  for _, k in ipairs(METRICS) do m.swap[k] = paired(m.emojione[k].values, m.noto[k].values) end
  metrics.modes[mode] = m
end
for i = 2, #modes do
  local a, b = modes[1], modes[i]
  local c = {}
  for _, ix in ipairs(INDEXES) do
    c[ix] = {}
    for _, k in ipairs(METRICS) do c[ix][k] = paired(metrics.modes[a][ix][k].values, metrics.modes[b][ix][k].values) end
  end
  metrics.modes_compared[a .. " - " .. b] = c
end

-- the table: one row per mode and index, then the paired differences
local function cell(st)
  if not st or st.mean == nil then return "" end
  if st.ci95 == nil then return ("%.3f"):format(st.mean) end
  return ("%.3f ± %.3f"):format(st.mean, st.ci95)
end
local function diff_cell(t)
  if not t or t.diff == nil then return "" end
  local ci = t.ci95 and (" ± %.3f"):format(t.ci95) or ""
  return ("%+.3f%s%s"):format(t.diff, ci, t.p and (" (p=%.3g)"):format(t.p) or "")
end
local header = { "mode", "index", "EmojiOne style (classifier)", "CLIP top-1 alignment", "CLIP top-10",
  "nearest image is EmojiOne" }
local rows = {}
for _, mode in ipairs(modes) do
  local m = metrics.modes[mode]
  for _, ix in ipairs(INDEXES) do
    rows[#rows + 1] = { mode, ix == "noto" and "own (Noto)" or "EmojiOne", cell(m[ix].emojione_share),
      cell(m[ix].clip_top1), cell(m[ix].clip_top10), cell(m[ix].closer_to_emojione) }
  end
  rows[#rows + 1] = { mode, "swap: EmojiOne - own", diff_cell(m.swap.emojione_share), diff_cell(m.swap.clip_top1),
    diff_cell(m.swap.clip_top10), diff_cell(m.swap.closer_to_emojione) }
end
for name, c in pairs(metrics.modes_compared) do
  for _, ix in ipairs(INDEXES) do
    rows[#rows + 1] = { name, ix == "noto" and "own (Noto)" or "EmojiOne", diff_cell(c[ix].emojione_share),
      diff_cell(c[ix].clip_top1), diff_cell(c[ix].clip_top10), diff_cell(c[ix].closer_to_emojione) }
  end
end
local md = knnd.report.markdown_table(header, rows)
local n_units = #units(values[modes[1]].noto.emojione_share)
files.write_atomic(opt.out .. "/db_swap.md", ("# Database swap: Noto-trained model, own index vs EmojiOne index\n\n"
  .. "%d prompts x %d samples per mode, index and sampling seed; mean ± 95%% CI half-width (Student's t) over %d %s; "
  .. "differences paired by %s with the paired t-test's p. The style classifier: %.1f%% held-out accuracy on "
  .. "%d concepts it never saw; it calls %.1f%% of real Noto and %.1f%% of real EmojiOne emoji EmojiOne. "
  .. "Alignment: the prompt's name among CLIP's top 1 / top 10 of all %d emoji names.\n\n%s")
  :format(#prompts, s.per_prompt, n_units, units_of, #sources == 1 and "sampling seed" or "run",
    100 * style_report.heldout_accuracy, style_report.heldout_concepts, 100 * style_report.real_noto_called_emojione,
    100 * style_report.real_emojione_called_emojione, #first.noto_store, md))
-- the same numbers as a tidy CSV (one measure per line, numbers in full) for pandas & co.
local csv_rows = {}
local function csv_row(what, ix, k, st, is_diff)
  if not st then return end
  local v = is_diff and st.diff or st.mean
  if v == nil then return end
  csv_rows[#csv_rows + 1] = { what, ix, k, v, st.ci95, st.n, st.p }
end
for _, mode in ipairs(modes) do
  local m = metrics.modes[mode]
  for _, ix in ipairs(INDEXES) do
    for _, k in ipairs(METRICS) do csv_row(mode, ix, k, m[ix][k], false) end
  end
  for _, k in ipairs(METRICS) do csv_row(mode, "emojione - noto", k, m.swap[k], true) end
end
for name, c in pairs(metrics.modes_compared) do
  for _, ix in ipairs(INDEXES) do
    for _, k in ipairs(METRICS) do csv_row(name, ix, k, c[ix][k], true) end
  end
end
files.write_atomic(opt.out .. "/db_swap.csv",
  knnd.report.csv({ "mode", "index", "measure", "mean_or_diff", "ci95", "n", "p" }, csv_rows))

-- the picture: per mode and index, each measure's mean with its 95% CI as an error bar
local groups, group_names, PLOTTED = {}, {}, { { "emojione_share", "EmojiOne style (classifier)" },
  { "clip_top1", "CLIP top-1 alignment" }, { "closer_to_emojione", "nearest image is EmojiOne" } }
for _, mode in ipairs(modes) do
  for _, ix in ipairs(INDEXES) do
    groups[#groups + 1] = { mode = mode, ix = ix }
    group_names[#groups] = ("%d: %s/%s"):format(#groups, mode, ix)
  end
end
local series = {}
for mi, pm in ipairs(PLOTTED) do
  local xs, ys, errs = {}, {}, {}
  for gi, g in ipairs(groups) do
    local st = metrics.modes[g.mode][g.ix][pm[1]]
    if st.mean then
      xs[#xs + 1] = gi + (mi - (#PLOTTED + 1) / 2) * 0.15
      ys[#ys + 1] = st.mean
      errs[#errs + 1] = st.ci95 or 0
    end
  end
  if #xs > 0 then series[#series + 1] = { name = pm[2], x = xs, y = ys, err = errs } end
end
knnd.scatter { path = opt.out .. "/db_swap.png", series = series, ylabel = "share of samples",
  title = ("database swap: mean ± 95%% CI over %d %s"):format(n_units, units_of),
  xlabel = "mode and index (" .. table.concat(group_names, ", ") .. ")" }
metrics.wall_seconds = knnd.wall_time() - t_start
kd.write_atomic(opt.out .. "/metrics.json", require("dkjson").encode(metrics, { indent = true }) .. "\n")
-- everything above in one self-contained notebook (knnd export-notebook)
knnd.notebook.export(opt.out, opt.out .. "/db_swap.ipynb", { title = "Database swap: own index vs EmojiOne index" })
print("\n" .. md .. "\n")
for _, mode in ipairs(modes) do
  local m = metrics.modes[mode]
  print(("%s: samples nearest to an EmojiOne image: %.1f%% with the Noto index, %.1f%% with the EmojiOne index; "
    .. "called EmojiOne by the style classifier: %.1f%% and %.1f%%"):format(mode, 100 * m.closer_to_emojione_noto_index,
    100 * m.closer_to_emojione_emojione_index, 100 * m.noto.emojione_share.mean, 100 * m.emojione.emojione_share.mean))
end
print(("results in %s/: swap_<mode>.png, neighbors_emojione.png, db_swap.md / .csv / .png / .ipynb, style.json, "
  .. "metrics.json (%.0f s)")
  :format(opt.out, metrics.wall_seconds))
