-- report_spec.lua — knnd.report: the published baselines, result tables (markdown and CSV read
-- back), the extractor-separation rule (an FID never sits in another extractor's column or on the
-- published figure), and the FID-vs-parameters / FID-vs-k / FID-vs-guidance figures.
local knnd = require "knnd"
local report = require "knnd.report"

local h = require "spec_helpers"
local exists, errors_with = h.exists, h.errors_with
local function tmp(name) return h.tmp("report_spec", name) end

local INCEPTION = "inception-v3-fid/pool3"
local CNN = "fmnist-cnn/penultimate@0123456789ab"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- a markdown table back into header + rows of cell strings (unescaping "\|")
local function parse_markdown_table(text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) == "|" then lines[#lines + 1] = line end
  end
  local function cells(line)
    local out = {}
    line = line:gsub("\\|", "\1")
    for c in line:sub(2, -2):gmatch("([^|]*)|?") do out[#out + 1] = (c:gsub("^ +", ""):gsub(" +$", ""):gsub("\1", "|")) end
    if out[#out] == "" then out[#out] = nil end
    return out
  end
  local header, rows = cells(lines[1]), {}
  assert.is_truthy(lines[2]:match("^|[-:|]+|$"))
  for i = 3, #lines do rows[#rows + 1] = cells(lines[i]) end
  return header, rows
end

local function column(header, label)
  for c, l in ipairs(header) do if l == label then return c end end
end

-- the PNG is a real 800x500 picture
local function assert_png(path)
  assert.is_true(exists(path))
  assert.are.equal("\137PNG\r\n\26\n", read(path):sub(1, 8))
  assert.are.same({ 3, 500, 800 }, knnd.read_png(path):size())
end

local function no_temp_files(prefix)
  local p = io.popen("ls -1a . 2>/dev/null")
  for name in p:lines() do
    assert(not (name:find(prefix, 1, true) and name:find(".tmp.", 1, true)), "left behind: " .. name)
  end
  p:close()
end

describe("knnd.report.baselines", function()
  it("reads the published zero-shot FIDs with their sources", function()
    local all = report.baselines()
    assert.is_true(#all >= 15)
    for _, b in ipairs(all) do
      assert.are.equal("number", type(b.fid))
      assert.are.equal(INCEPTION, b.extractor)
      assert.is_truthy(b.source and b.source:find("PAPER.md", 1, true))
      assert.is_truthy(b.original and #b.original > 0)
    end
    local coco = report.baselines { dataset = "MS-COCO" }
    local by = {}
    for _, b in ipairs(coco) do by[b.system .. (b.variant and (" / " .. b.variant) or "")] = b end
    assert.are.equal(26.94, by["LAFITE / zero-shot (trained on CC3M)"].fid)
    assert.are.equal(75, by["LAFITE / zero-shot (trained on CC3M)"].params_m)
    assert.are.equal(18.04, by["LAFITE / language-free (trained on COCO images)"].fid)
    assert.are.equal(12.5, by["kNN-Diffusion / discrete (VQ) backbone"].fid)
    assert.are.equal(7.23, by["Parti"].fid)
    assert.are.equal(20000, by["Parti"].params_m)
    -- PAPER.md gives FuseDream no parameter count and flags its FID
    assert.is_nil(by["FuseDream"].params_m)
    assert.are.equal("unconfirmed", by["FuseDream"].fid_qualifier)
    local cub = report.baselines { dataset = "cub" }
    assert.are.equal(1, #cub)
    assert.are.equal(42.9, cub[1].fid)
    errors_with(function() report.baselines { dataset = "imagenet" } end,
      "knnd.report.baselines: no published FID for dataset 'imagenet'")
    errors_with(function() report.baselines { path = tmp("missing.csv") } end, "cannot read")
    errors_with(function() report.baselines { datasett = "cub" } end, "unknown option 'datasett'")
  end)
end)

describe("knnd.report CSV", function()
  it("round-trips quotes, commas and line breaks", function()
    local text = report.csv({ "a", "b", "c" }, { { 'say "hi"', "x,y", 1.5 }, { "two\nlines", nil, 3 } })
    local header, rows = report.parse_csv(text)
    assert.are.same({ "a", "b", "c" }, header)
    assert.are.same({ { 'say "hi"', "x,y", "1.5" }, { "two\nlines", "", "3" } }, rows)
    errors_with(function() report.parse_csv("a,b\n1,2,3\n", "t.csv") end, "t.csv: line 2 has 3 fields (expected 2")
    errors_with(function() report.parse_csv('a\n"open\n', "t.csv") end, "not closed")
  end)
end)

describe("knnd.report.write_table", function()
  local rows = {
    { name = "knn", mode = "knn", k = 10, extractor = CNN, fid = 40.125, kid = 0.0213, kid_std = 0.0011, clip_score = 27.5 },
    { name = "knn", mode = "knn", k = 10, extractor = INCEPTION, fid = 15.5 },
    { name = "no_knn | ablation", mode = "no_knn", k = 0, extractor = CNN, fid = 45.75, params = 35e6, seconds = 3 },
  }

  it("writes markdown and CSV with one column per extractor that read back", function()
    local md, csv = tmp("results.md"), tmp("results.csv")
    local t = report.write_table { rows = rows, markdown = md, csv = csv, title = "zero-shot" }
    assert.are.same({ "name", "mode", "k", "params (M)", "FID[fmnist-cnn]", "KID[fmnist-cnn]", "KID[fmnist-cnn] std",
      "FID", "CLIP score" }, t.header)
    -- CSV: exact values, each FID under its own extractor
    local header, back = report.read_csv(csv)
    assert.are.same(t.header, header)
    assert.are.equal(2, #back) -- the two "knn" rows (one per extractor) are one line
    local fid, cnn = column(header, "FID"), column(header, "FID[fmnist-cnn]")
    assert.are.equal("knn", back[1][1])
    assert.are.equal(15.5, tonumber(back[1][fid]))
    assert.are.equal(40.125, tonumber(back[1][cnn]))
    assert.are.equal("no_knn | ablation", back[2][1])
    assert.are.equal("", back[2][fid]) -- its CNN FID never lands in the Inception column
    assert.are.equal(45.75, tonumber(back[2][cnn]))
    assert.are.equal(35, tonumber(back[2][column(header, "params (M)")]))
    assert.are.equal(0.0011, tonumber(back[1][column(header, "KID[fmnist-cnn] std")]))
    -- markdown: the same table, a heading and the note on what FID means
    local text = read(md)
    assert.is_truthy(text:find("## zero-shot", 1, true))
    assert.is_truthy(text:find(INCEPTION, 1, true))
    local mh, mrows = parse_markdown_table(text)
    assert.are.same(t.header, mh)
    assert.are.equal("no_knn | ablation", mrows[2][1])
    assert.are.equal("15.5", mrows[1][column(mh, "FID")])
    assert.are.equal("40.12", mrows[1][column(mh, "FID[fmnist-cnn]")])
    assert.are.equal("", mrows[2][column(mh, "FID")])
    no_temp_files("report_spec_results")
    os.remove(md)
    os.remove(csv)
  end)

  it("keeps two extractors with the same short name apart", function()
    local t = report.table {
      { name = "a", extractor = "fmnist-cnn/penultimate@aaaa", fid = 1 },
      { name = "b", extractor = "fmnist-cnn/penultimate@bbbb", fid = 2 },
    }
    assert.are.same({ "name", "FID[fmnist-cnn/penultimate@aaaa]", "FID[fmnist-cnn/penultimate@bbbb]" }, t.header)
    assert.are.same({ { "a", 1 }, { "b", nil, 2 } }, t.rows)
  end)

  it("refuses unlabelled or mislabelled FIDs and conflicting rows", function()
    errors_with(function() report.table { { name = "x", fid = 3 } } end,
      "knnd.report.table: row 'x' has an FID/KID but no 'extractor'")
    errors_with(function() report.table { { name = "x", fid = 3, extractor = CNN, fid_label = "FID" } } end,
      "row 'x' labels its FID 'FID' but its extractor '" .. CNN .. "' makes it 'FID[fmnist-cnn]'")
    errors_with(function() report.table { { name = "x", k = 1 }, { name = "x", k = 2 } } end,
      "rows named 'x' disagree on 'k' (1 and 2)")
    errors_with(function() report.table {} end, "option 'rows' expected a non-empty list")
    errors_with(function() report.write_table { rows = rows } end, "give 'markdown' and/or 'csv'")
    errors_with(function() report.write_table { rows = rows, csv = "/nonexistent/dir/r.csv" } end, "cannot write")
  end)
end)

describe("knnd.report.fid_vs_params", function()
  local ours = { name = "knnd knn", dataset = "ms-coco", extractor = INCEPTION, fid = 21.5, params = 35e6 }

  it("places Inception FIDs on the same dataset among the published systems", function()
    local path = tmp("fid_vs_params.png")
    local out, skipped = report.fid_vs_params { rows = { ours }, dataset = "ms-coco", path = path }
    assert.are.equal(path, out)
    assert.are.same({}, skipped)
    assert_png(path)
    -- the published points alone, when no run of ours qualifies and skip is asked for
    local cnn_row = { name = "cnn run", dataset = "ms-coco", extractor = CNN, fid = 3, params = 1e6 }
    local _, sk = report.fid_vs_params { rows = { cnn_row, ours }, dataset = "ms-coco", path = path, skip = true }
    assert.are.equal(1, #sk)
    assert.are.equal("cnn run", sk[1].name)
    assert.is_truthy(sk[1].reason:find("FID[fmnist-cnn]", 1, true))
    os.remove(path)
    no_temp_files("report_spec_fid_vs_params")
  end)

  it("never puts another extractor's FID or another dataset on the figure", function()
    local path = tmp("refused.png")
    errors_with(function()
      report.fid_vs_params { rows = { { name = "cnn run", dataset = "ms-coco", extractor = CNN, fid = 3, params = 1e6 } },
        dataset = "ms-coco", path = path }
    end, "row 'cnn run' has FID[fmnist-cnn] (extractor '" .. CNN .. "'): only Inception pool3 FIDs")
    errors_with(function()
      report.fid_vs_params { rows = { { name = "fm", dataset = "fashion-mnist", extractor = INCEPTION, fid = 3, params = 1e6 } },
        dataset = "ms-coco", path = path }
    end, "row 'fm' is on dataset 'fashion-mnist', not 'ms-coco'")
    errors_with(function()
      report.fid_vs_params { rows = { { name = "np", dataset = "ms-coco", extractor = INCEPTION, fid = 3 } },
        dataset = "ms-coco", path = path }
    end, "row 'np' has no parameter count")
    errors_with(function() report.fid_vs_params { rows = { ours }, path = path } end, "option 'dataset' is required")
    assert.is_false(exists(path))
  end)
end)

describe("knnd.report.fid_vs", function()
  local sweep = {}
  for _, k in ipairs({ 1, 5, 10, 20, 100 }) do
    sweep[#sweep + 1] = { name = "knn k=" .. k, mode = "knn", k = k, guidance = 3, extractor = CNN, fid = 50 / (1 + math.log(k)) }
    sweep[#sweep + 1] = { name = "knn_only k=" .. k, mode = "knn_only", k = k, guidance = 3, extractor = CNN, fid = 60 / (1 + math.log(k)) }
  end

  it("plots FID against k (log x) and against guidance", function()
    local path = tmp("fid_vs_k.png")
    assert.are.equal(path, report.fid_vs { rows = sweep, x = "k", path = path })
    assert_png(path)
    local g = {}
    for i, s in ipairs({ 1, 2, 3, 5, 7 }) do g[i] = { name = "g" .. s, guidance = s, extractor = INCEPTION, fid = 20 - s } end
    local gpath = tmp("fid_vs_guidance.png")
    report.fid_vs { rows = g, x = "guidance", path = gpath }
    assert_png(gpath)
    os.remove(path)
    os.remove(gpath)
  end)

  it("keeps one extractor per figure", function()
    local path = tmp("mixed.png")
    local mixed = { sweep[1], sweep[3], { name = "inc", mode = "knn", k = 10, extractor = INCEPTION, fid = 12 } }
    errors_with(function() report.fid_vs { rows = mixed, x = "k", path = path } end,
      "the rows hold FID of 2 extractors (" .. CNN .. ", " .. INCEPTION .. "): choose one with option 'extractor'")
    assert.is_false(exists(path))
    report.fid_vs { rows = mixed, x = "k", path = path, extractor = INCEPTION }
    assert_png(path)
    errors_with(function() report.fid_vs { rows = { { name = "a", extractor = CNN, fid = 1 } }, x = "k", path = path } end,
      "row 'a' has k = nil (expected a number)")
    os.remove(path)
  end)
end)

describe("knnd.report.plot_groups", function()
  local function sweep_of(rows) return { dir = ".", summary = { by = { "mode", "seed" }, rows = rows } } end
  local rows = {
    { group = { mode = "knn" }, stats = { a = { mean = 0.30, ci95 = 0.10, n = 3 }, b = { mean = 0.5, n = 1 } } },
    { group = { mode = "no_knn" }, stats = { a = { mean = 0.25, ci95 = 0.05, n = 3 } } },
  }
  it("draws each group's means with their CI95 as error bars", function()
    local path = h.tmp("report_spec", "groups.png")
    assert.are.equal("./" .. path, knnd.report.plot_groups(sweep_of(rows), { by = "mode", metrics = { "a", "b" }, path = path }))
    local img = knnd.read_png(path)
    assert.are.same({ 500, 800 }, { img:size(2), img:size(3) })
  end)
  it("names a key the sweep does not vary, and metrics no run has", function()
    local path = h.tmp("report_spec", "groups2.png")
    h.errors_with(function() knnd.report.plot_groups(sweep_of(rows), { by = "align", metrics = { "a" }, path = path }) end,
      "the sweep does not vary 'align' (its keys: mode, seed)")
    h.errors_with(function() knnd.report.plot_groups(sweep_of(rows), { by = "mode", metrics = { "c" }, path = path }) end,
      "no finished run has any of c")
    h.errors_with(function() knnd.report.plot_groups(sweep_of(rows), { by = "mode", metrics = {}, path = path }) end,
      "option 'metrics'")
    assert.is_false(h.exists(path))
  end)
end)
