-- notebook_spec.lua — knnd.notebook: a results folder laid out as the quickstart's (metrics.json,
-- plots, knn/ and no_knn/ with samples.png and log.csv) exported to a Jupyter notebook, parsed back
-- and checked cell by cell (images decode to the very PNG bytes), validated by nbformat where
-- python3-nbformat is installed; base64 against RFC 4648; the errors for missing and empty folders.
local knnd = require "knnd"
local notebook = require "knnd.notebook"
local json = require "dkjson"

local h = require "spec_helpers"
local exists, errors_with, write_file = h.exists, h.errors_with, h.write_file
local function tmp(name) return h.tmp("notebook_spec", name) end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function sh(cmd) return os.execute(cmd) == true end

-- RFC 4648's decoder, written independently of the encoder under test
local function unbase64(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local value, out = {}, {}
  for i = 1, 64 do value[alphabet:sub(i, i)] = i - 1 end
  for i = 1, #s, 4 do
    local q = s:sub(i, i + 3)
    local n, pad = 0, 0
    for j = 1, 4 do
      local c = q:sub(j, j)
      if c == "=" then pad = pad + 1 end
      n = n * 64 + (value[c] or 0)
    end
    local bytes = string.char((n >> 16) & 255, (n >> 8) & 255, n & 255)
    out[#out + 1] = bytes:sub(1, 3 - pad)
  end
  return table.concat(out)
end

-- a results folder like runs/quickstart/, with real PNGs from knnd's own writers
local function make_results(dir)
  sh(("rm -rf '%s' && mkdir -p '%s/knn' '%s/no_knn' '%s/data' '%s/empty'"):format(dir, dir, dir, dir, dir))
  knnd.plot { path = dir .. "/loss.png", title = "loss", series = { { name = "knn", y = { 3, 2, 1.5, 1 } } } }
  knnd.save_png(dir .. "/knn/samples.png", knnd.rand(3, 20, 30))
  knnd.save_png(dir .. "/no_knn/samples.png", knnd.rand(1, 28, 28))
  local metrics = { config = { k = 10, modes = "knn,no_knn", unet = { steps = 600, lr = 1e-3 } },
    modes = { knn = { alignment = 0.625, per_class = { ["T-shirt/top"] = 0.5 } }, no_knn = { alignment = 0.63 } },
    wall_seconds = 812.5 }
  write_file(dir .. "/metrics.json", json.encode(metrics, { indent = true }))
  local log = { "step,loss,lr,seconds" }
  for i = 1, 100 do log[#log + 1] = ("%d,%.4f,0.001,%d"):format(i, 1 / i, i) end
  write_file(dir .. "/knn/log.csv", table.concat(log, "\n") .. "\n")
  write_file(dir .. "/no_knn/log.csv", "step,loss,lr,seconds\n1,0.9,0.001,1\n")
  write_file(dir .. "/knn/model.h5", "not really HDF5")
  write_file(dir .. "/data/train.h5", "x")
end

local function cells_text(nb)
  local all = {}
  for _, c in ipairs(nb.cells) do
    all[#all + 1] = type(c.source) == "table" and table.concat(c.source) or c.source
  end
  return table.concat(all, "\n\1\n")
end

describe("knnd.notebook.base64", function()
  it("encodes the RFC 4648 test vectors and any bytes", function()
    local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=",
      foobar = "Zm9vYmFy" }
    for plain, encoded in pairs(vectors) do assert.are.equal(encoded, notebook.base64(plain)) end
    local bytes = {}
    for i = 0, 1000 do bytes[#bytes + 1] = string.char((i * 37 + 11) % 256) end
    local s = table.concat(bytes)
    for n = 1, 7 do assert.are.equal(s:sub(1, n * 100 + n), unbase64(notebook.base64(s:sub(1, n * 100 + n)))) end
  end)
end)

describe("knnd.notebook.export", function()
  it("turns a quickstart-like results folder into a valid notebook", function()
    local dir = tmp("results")
    make_results(dir)
    local out = tmp("report.ipynb")
    local path, ncells = notebook.export(dir, out)
    assert.are.equal(out, path)
    local nb = assert(json.decode(read(out), 1, json.null))
    assert.are.equal(4, nb.nbformat)
    assert.are.equal(5, nb.nbformat_minor)
    assert.are.equal(ncells, #nb.cells)
    assert.are.equal("python3", nb.metadata.kernelspec.name)
    local ids = {}
    for _, c in ipairs(nb.cells) do
      assert.is_truthy(c.cell_type == "markdown" or c.cell_type == "code")
      assert.is_truthy(c.id:match("^[%w_-]+$"))
      assert.is_nil(ids[c.id])
      ids[c.id] = true
      assert.are.equal("table", type(c.metadata))
    end
    local text = cells_text(nb)
    -- the title names the folder; the config comes from metrics.json
    assert.is_truthy(nb.cells[1].source:find("# notebook_spec_results", 1, true))
    assert.is_truthy(text:find("Config (the `config` of `metrics.json`)", 1, true))
    assert.is_truthy(text:find('"steps":%s*600'))
    -- metrics flattened, the config not repeated in the table
    assert.is_truthy(text:find("| modes.knn.alignment | 0.625 |", 1, true))
    assert.is_truthy(text:find("| modes.knn.per_class.T-shirt/top | 0.5 |", 1, true))
    assert.is_truthy(text:find("| wall_seconds | 812.5 |", 1, true))
    assert.is_falsy(text:find("| config.k |", 1, true))
    -- each run subfolder is its section, in name order, with its CSV (long ones cut) and grid
    local knn_at, no_knn_at = text:find("\n## knn\n", 1, true), text:find("\n## no_knn\n", 1, true)
    assert.is_truthy(knn_at and no_knn_at and knn_at < no_knn_at)
    assert.is_truthy(text:find("### `knn/log.csv`", 1, true))
    assert.is_truthy(text:find("| 1 | 1.0000 | 0.001 | 1 |", 1, true))
    assert.is_truthy(text:find("| 100 | 0.0100 | 0.001 | 100 |", 1, true))
    assert.is_truthy(text:find("100 rows; the first and last 20 shown.", 1, true))
    assert.is_falsy(text:find("| 50 | ", 1, true))
    assert.is_truthy(text:find("`knn/model.h5`", 1, true)) -- listed, not embedded
    assert.is_truthy(text:find("`data/train.h5`", 1, true))
    assert.is_falsy(text:find("## empty", 1, true)) -- an empty subfolder has no section
    -- every PNG embedded as display_data, decoding to the file's bytes
    local images = {}
    for _, c in ipairs(nb.cells) do
      if c.cell_type == "code" then
        assert.are.equal(json.null, c.execution_count)
        assert.are.equal(1, #c.outputs)
        local o = c.outputs[1]
        assert.are.equal("display_data", o.output_type)
        local name = c.source:match("^# (%S+)")
        images[#images + 1] = name
        assert.are.equal(read(dir .. "/" .. name), unbase64(o.data["image/png"]))
      end
    end
    assert.are.same({ "loss.png", "knn/samples.png", "no_knn/samples.png" }, images)
    -- nbformat's own validator, where it is installed
    if sh("python3 -c 'import nbformat' >/dev/null 2>&1") then
      assert.is_true(sh(("python3 -c 'import nbformat,sys; nbformat.validate(nbformat.read(sys.argv[1], as_version=4))' '%s'")
        :format(out)))
    else
      print("# SKIP nbformat validation: python3 -c 'import nbformat' failed (install python3-nbformat)")
    end
    sh(("rm -rf '%s'"):format(dir))
    os.remove(out)
  end)

  it("shows config.json and a bad CSV without failing the export", function()
    local dir = tmp("cfg")
    sh(("rm -rf '%s' && mkdir -p '%s'"):format(dir, dir))
    write_file(dir .. "/config.json", '{"seed": 3, "b": {"a": 1}}')
    write_file(dir .. "/bad.csv", "a,b\n1\n")
    local nb = notebook.build(dir)
    local text = cells_text(nb)
    assert.is_truthy(text:find("Config (`config.json`)", 1, true))
    assert.is_truthy(text:find('"seed":%s*3'))
    assert.is_truthy(text:find("could not read it:", 1, true))
    sh(("rm -rf '%s'"):format(dir))
  end)

  it("names a missing folder, an empty one and an unwritable output", function()
    local dir = tmp("none")
    errors_with(function() notebook.export(dir, tmp("x.ipynb")) end,
      "knnd.notebook.export: 'notebook_spec_none' is not a folder")
    sh(("mkdir -p '%s'"):format(dir))
    errors_with(function() notebook.export(dir, tmp("x.ipynb")) end, "'notebook_spec_none' is empty")
    write_file(dir .. "/model.h5", "x")
    errors_with(function() notebook.export(dir, tmp("x.ipynb")) end, "has no results to show")
    knnd.save_png(dir .. "/a.png", knnd.rand(3, 4, 4))
    errors_with(function() notebook.export(dir, "/nonexistent/dir/x.ipynb") end, "cannot write")
    assert.is_false(exists(tmp("x.ipynb")))
    sh(("rm -rf '%s'"):format(dir))
  end)
end)
