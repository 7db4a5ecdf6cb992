-- io_spec.lua — knnd.io (HDF5 files, safetensors, checkpoints), PNG and image grids, line
-- plots: round trips, atomic commits, and the errors of every misuse.
local knnd = require "knnd"

local h = require "spec_helpers"
local flat, exists, write_file = h.flat, h.exists, h.write_file
local function tmp(name) return h.tmp("io_spec", name) end

describe("knnd.io.h5open", function()
  it("writes and reads datasets, rows, info, listings and attributes", function()
    local path = tmp("basic.h5")
    local f = knnd.io.h5open(path, "w")
    local x = knnd.arange(12):view(4, 3)
    f:write("x", x)
    f:write("group/ids", knnd.tensor({5, 6, 7}, {dtype = "i64"}))
    f:attr("/", "count", 42)
    f:attr("/", "scale", 0.5)
    f:attr("x", "name", "twelve")
    assert.is_false(exists(path)) -- nothing at the target until the commit
    f:close()
    assert.is_true(exists(path))

    local r = knnd.io.h5open(path) -- "r" by default
    assert.are.same(flat(x), flat(r:read("x")))
    assert.are.same({3, 4, 5, 6, 7, 8}, flat(r:read_rows("x", 2, 2))) -- rows 2 and 3
    assert.are.same({dtype = "f32", shape = {4, 3}}, r:info("x"))
    assert.are.same({dtype = "i64", shape = {3}}, r:info("group/ids"))
    assert.are.same({"x", "group"}, r:list())
    assert.are.same({"ids"}, r:list("group"))
    assert.is_true(r:exists("group/ids"))
    assert.is_false(r:exists("nope"))
    assert.are.equal(42, r:attr("/", "count"))
    assert.are.equal("integer", math.type(r:attr("/", "count")))
    assert.are.equal(0.5, r:attr("/", "scale"))
    assert.are.equal("twelve", r:attr("x", "name"))
    assert.is_nil(r:attr("/", "missing"))
    assert.is_true(r:has_attr("/", "count"))
    assert.matches("mode r, open", tostring(r), 1, true)
    assert.is_true(r:is_open())
    r:close()
    assert.is_false(r:is_open())
    assert.matches("closed", tostring(r))
    assert.has_error(function() r:read("x") end, "knnd.io.H5File:read: the file '" .. path .. "' is closed")
    os.remove(path)
  end)

  it("grows appendable datasets and keeps state dicts in order", function()
    local path = tmp("append.h5")
    local f = knnd.io.h5open(path, "w")
    f:create_appendable("emb", "f32", {2}, {chunk_rows = 4})
    f:append("emb", knnd.ones(3, 2))
    f:append("emb", knnd.zeros(2, 2))
    local net = knnd.nn.Sequential{knnd.nn.Linear(2, 3), knnd.nn.Linear(3, 1)}
    f:write_state_dict("model", net)
    f:close()
    local r = knnd.io.h5open(path, "r")
    assert.are.same({dtype = "f32", shape = {5, 2}}, r:info("emb"))
    assert.are.same({1, 1, 0, 0}, flat(r:read_rows("emb", 3, 2)))
    local sd, names = r:read_state_dict("model")
    assert.are.same({"0.weight", "0.bias", "1.weight", "1.bias"}, names)
    assert.are.same(flat(net[2].weight), flat(sd["1.weight"]))
    r:close()
    os.remove(path)
  end)

  it("mode a keeps what was there; abort leaves the file as it was", function()
    local path = tmp("modes.h5")
    local f = knnd.io.h5open(path, "w")
    f:write("a", knnd.ones(2))
    f:close()
    f = knnd.io.h5open(path, "a")
    f:write("b", knnd.zeros(2))
    f:abort()
    local r = knnd.io.h5open(path)
    assert.are.same({"a"}, r:list())
    r:close()
    f = knnd.io.h5open(path, "a")
    f:write("b", knnd.zeros(2))
    f:close()
    r = knnd.io.h5open(path)
    assert.are.same({"a", "b"}, r:list())
    r:close()
    os.remove(path)
  end)

  it("<close> commits on a normal exit and abandons the file on an error", function()
    local path = tmp("close.h5")
    do
      local f <close> = knnd.io.h5open(path, "w")
      f:write("x", knnd.ones(1))
    end
    assert.is_true(exists(path))
    local ok = pcall(function()
      local f <close> = knnd.io.h5open(path, "a")
      f:write("y", knnd.ones(1))
      error("crash half-way")
    end)
    assert.is_false(ok)
    local r = knnd.io.h5open(path)
    assert.are.same({"x"}, r:list())
    r:close()
    os.remove(path)
  end)

  it("a writable file collected without close is abandoned, never committed", function()
    local path = tmp("gc.h5")
    do
      local f = knnd.io.h5open(path, "w")
      f:write("x", knnd.ones(3))
    end
    collectgarbage()
    collectgarbage()
    assert.is_false(exists(path))
  end)

  it("names the function, the argument and the file in its errors", function()
    assert.has_error(function() knnd.io.h5open(3) end, "knnd.io.h5open: argument 1 'path' expected a string, got number")
    assert.has_error(function() knnd.io.h5open("x.h5", "rw") end,
      "knnd.io.h5open: argument 2 'mode' is 'rw' (expected \"r\", \"w\" or \"a\")")
    local ok, err = pcall(knnd.io.h5open, tmp("missing.h5"))
    assert.is_false(ok)
    assert.matches("^knnd.io.h5open: .*io_spec_missing.h5", err)
    local garbage = tmp("garbage.h5")
    write_file(garbage, "not an HDF5 file at all")
    ok, err = pcall(knnd.io.h5open, garbage)
    assert.is_false(ok)
    assert.matches("not an HDF5 file", err, 1, true)
    os.remove(garbage)

    local path = tmp("errors.h5")
    local f = knnd.io.h5open(path, "w")
    assert.has_error(function() f:write("x", 3) end)
    assert.has_error(function() f:write(nil, knnd.ones(1)) end,
      "knnd.io.H5File:write: argument 2 'name' expected a string, got nil")
    ok, err = pcall(f.read, f, "nothing")
    assert.is_false(ok)
    assert.matches("^knnd.io.H5File:read: .*nothing", err)
    assert.has_error(function() f:attr("/", "flag", true) end,
      "knnd.io.H5File:attr: argument 4 'value' expected an integer, a number or a string, got boolean")
    f:write("x", knnd.ones(4, 2))
    assert.has_error(function() f:read_rows("x", 0, 1) end,
      "knnd.io.H5File:read_rows: argument 3 'first' is 0 (expected a row position >= 1)")
    assert.has_error(function() f:read_rows("x", 4, 2) end)
    assert.has_error(function() f:create_appendable("e", "f64", {2}) end)
    assert.has_error(function() f:create_appendable("e", "f32", 2) end,
      "knnd.io.H5File:create_appendable: argument 4 'row_shape' expected a table of sizes ({} for scalar rows), got number")
    assert.has_error(function() f.close() end,
      "knnd.io.H5File:close: argument 1 (self) expected an HDF5 file, got no value (call it as f:close(...))")
    f:abort()
    assert.has_error(function() f:close() end)
    assert.is_false(exists(path))
  end)
end)

describe("safetensors", function()
  it("round-trips tensors of every dtype, in sorted order, with metadata", function()
    local path = tmp("t.safetensors")
    local t = {
      b = knnd.randn(2, 3),
      a = knnd.tensor({1, 2, 3}, {dtype = "i64"}),
      c = knnd.tensor({0.5, -1}, {dtype = "bf16"}),
      d = knnd.tensor({7, 8}, {dtype = "u8"}),
    }
    knnd.io.save_safetensors(path, t, {metadata = {format = "pt", epoch = 3}})
    local back, meta, names = knnd.io.load_safetensors(path)
    assert.are.same({"a", "b", "c", "d"}, names)
    for k, v in pairs(t) do
      assert.are.equal(v:dtype(), back[k]:dtype())
      assert.are.same(flat(v), flat(back[k]))
    end
    assert.are.same({format = "pt", epoch = "3"}, meta)
    knnd.io.save_safetensors(path, {x = knnd.ones(1)})
    local _, empty = knnd.io.load_safetensors(path)
    assert.are.same({}, empty)
    os.remove(path)
  end)

  it("refuses bad arguments and files that are not safetensors", function()
    local path = tmp("bad.safetensors")
    assert.has_error(function() knnd.io.save_safetensors(path, {x = 1}) end,
      "knnd.io.save_safetensors: argument 2 'tensors': entry 'x' is a number (expected a tensor)")
    assert.has_error(function() knnd.io.save_safetensors(path, {knnd.ones(1)}) end)
    assert.has_error(function() knnd.io.save_safetensors(path, {x = knnd.ones(1)}, {metadata = {a = {}}}) end,
      "knnd.io.save_safetensors: option 'metadata' has an entry string -> table (expected string keys and string values)")
    assert.has_error(function() knnd.io.save_safetensors(path, {x = knnd.ones(1)}, {meta = {}}) end,
      "knnd.io.save_safetensors: unknown option 'meta' (expected metadata)")
    write_file(path, "\255\255\255\255\255\255\255\127{}")
    local ok, err = pcall(knnd.io.load_safetensors, path)
    assert.is_false(ok)
    assert.matches("^knnd.io.load_safetensors: ", err)
    os.remove(path)
    assert.is_false(exists(path))
  end)
end)

describe("checkpoints", function()
  local function build()
    local net = knnd.nn.Sequential{knnd.nn.Linear(3, 4), knnd.nn.Linear(4, 1)}
    local opt = knnd.optim.AdamW(net, {lr = 0.01})
    local ema = knnd.optim.EMA(net, 0.9)
    return net, opt, ema
  end
  local function train(net, opt, ema, steps)
    local x = knnd.randn(8, 3, {gen = knnd.Generator(3)})
    for _ = 1, steps do
      opt:zero_grad()
      knnd.mean(knnd.square(net(x))):backward()
      opt:step()
      ema:update()
    end
  end

  it("restore model, optimizer, EMA, step, config and the random stream", function()
    local path = tmp("ck.h5")
    local net, opt, ema = build()
    train(net, opt, ema, 3)
    local config = {lr = 0.01, layers = {3, 4, 1}, name = "tiny", nested = {steps = 1000, ok = true}}
    knnd.manual_seed(11)
    knnd.randn(5)
    knnd.io.save_checkpoint(path, {model = net, optimizer = opt, ema = ema, config = config})
    local after_save = flat(knnd.randn(4))

    local net2, opt2, ema2 = build()
    knnd.manual_seed(99)
    local ck = knnd.io.load_checkpoint(path, {model = net2, optimizer = opt2, ema = ema2})
    assert.are.same(flat(knnd.randn(4)), after_save) -- the default generator was restored
    assert.are.equal(3, ck.step) -- the optimizer's step count by default
    assert.are.equal(3, opt2:steps())
    assert.are.same(config, ck.config)
    assert.are.equal("integer", math.type(ck.config.nested.steps))
    assert.are.equal('{"layers":[3,4,1],"lr":0.01,"name":"tiny","nested":{"ok":true,"steps":1000}}', ck.config_json)
    assert.are.same(flat(net[1].weight), flat(net2[1].weight))
    assert.are.same(flat(net[1].weight), flat(ck.model["0.weight"]))
    -- training on from both gives the same numbers
    train(net, opt, ema, 2)
    train(net2, opt2, ema2, 2)
    assert.are.same(flat(net[2].weight), flat(net2[2].weight))
    ema:swap()
    ema2:swap()
    assert.are.same(flat(net[2].weight), flat(net2[2].weight))
    os.remove(path)
  end)

  it("take plain tables, JSON text, an explicit step and generator", function()
    local path = tmp("ck2.h5")
    local w = {weight = knnd.tensor({1, 2, 3})}
    local g = knnd.Generator(5)
    knnd.randn(3, {gen = g})
    knnd.io.save_checkpoint(path, {model = w, step = 7, config = '{"a": 1}', gen = g})
    local target = {weight = knnd.zeros(3)}
    local g2 = knnd.Generator(0)
    local ck = knnd.io.load_checkpoint(path, {model = target, gen = g2})
    assert.are.same({1, 2, 3}, flat(target.weight))
    assert.are.equal(7, ck.step)
    assert.are.same({a = 1}, ck.config)
    assert.are.equal(g:seed(), g2:seed())
    assert.are.equal(g:offset(), g2:offset())
    assert.are.same({seed = g:seed(), offset = g:offset()}, ck.rng)
    -- gen = false leaves every generator alone
    knnd.manual_seed(1)
    local want = flat(knnd.randn(2))
    knnd.manual_seed(1)
    knnd.io.load_checkpoint(path, {gen = false})
    assert.are.same(want, flat(knnd.randn(2)))
    os.remove(path)
  end)

  it("name what is wrong", function()
    local path = tmp("ck3.h5")
    local net = knnd.nn.Linear(2, 2)
    assert.has_error(function() knnd.io.save_checkpoint(path, {model = net, steps = 1}) end,
      "knnd.io.save_checkpoint: unknown option 'steps' (expected model, optimizer, ema, step, config, gen)")
    assert.has_error(function() knnd.io.save_checkpoint(path, {model = 3}) end,
      "knnd.io.save_checkpoint: option 'model' expected a knnd.nn.Module, an optimizer, an EMA, an object with " ..
      "state_dict() or a table name -> tensor, got number")
    local ok, err = pcall(knnd.io.save_checkpoint, path, {model = net, config = "{not json"})
    assert.is_false(ok)
    assert.matches("^knnd.io.save_checkpoint: option 'config' is not JSON text", err)
    ok, err = pcall(knnd.io.save_checkpoint, path, {model = net, config = {f = print}})
    assert.is_false(ok)
    assert.matches("^knnd.io.save_checkpoint: option 'config' cannot be written as JSON", err)
    assert.has_error(function() knnd.io.save_checkpoint(path, {model = net, step = -1}) end,
      "knnd.io.save_checkpoint: option 'step' is -1 (expected >= 0)")
    assert.is_false(exists(path))
    knnd.io.save_checkpoint(path, {model = net})
    local opt = knnd.optim.SGD(net)
    assert.has_error(function() knnd.io.load_checkpoint(path, {optimizer = opt}) end,
      "knnd.io.load_checkpoint: '" .. path .. "' has no optimizer state (option 'optimizer' was given)")
    ok, err = pcall(knnd.io.load_checkpoint, path, {model = knnd.nn.Linear(2, 3)})
    assert.is_false(ok)
    assert.matches("^knnd.io.load_checkpoint: .*weight", err)
    assert.has_error(function() knnd.io.load_checkpoint(path, {model = {weight = knnd.zeros(2, 2)}}) end,
      "knnd.io.load_checkpoint: option 'model': the state dict has tensor 'bias' that the table does not (strict)")
    knnd.io.load_checkpoint(path, {model = {weight = knnd.zeros(2, 2)}, strict = false})
    assert.has_error(function() knnd.io.load_checkpoint(path, {gen = 1}) end,
      "knnd.io.load_checkpoint: option 'gen' expected a knnd.Generator, got number")
    os.remove(path)
  end)
end)

describe("PNG and image grids", function()
  it("save_png maps the value range to 0..255 and read_png reads it back", function()
    local path = tmp("img.png")
    local img = knnd.tensor({{{-1, 0, 1}}, {{1, 1, 1}}, {{-1, -1, -1}}}) -- [3, 1, 3]
    knnd.save_png(path, img, {range = {-1, 1}})
    local back = knnd.read_png(path)
    assert.are.equal("u8", back:dtype())
    assert.are.same({3, 1, 3}, back:size())
    assert.are.same({0, 128, 255, 255, 255, 255, 0, 0, 0}, flat(back))
    knnd.save_png(path, knnd.tensor({{0, 0.5}, {1, 2}})) -- [H, W] gray, default range {0, 1}
    assert.are.same({0, 128, 255, 255}, flat(knnd.read_png(path)))
    os.remove(path)
  end)

  it("image_grid lays out N images with padding, captions and a title", function()
    local imgs = knnd.rand(5, 3, 8, 8)
    local g = knnd.image_grid(imgs, {nrow = 3, padding = 2})
    assert.are.equal("u8", g:dtype())
    local size = g:size()
    assert.are.equal(3, size[1])
    assert.is_true(size[3] >= 3 * 8 + 2 * 2)
    local captioned = knnd.image_grid(imgs, {captions = {"a", "b", "c", "d", "e"}, title = "samples", scale = 2})
    assert.is_true(captioned:size(2) > 2 * 8)
    local path = tmp("grid.png")
    knnd.save_grid(path, imgs, {nrow = 5, range = {0, 1}})
    assert.are.same(3, knnd.read_png(path):size(1))
    os.remove(path)
  end)

  it("names bad options", function()
    local imgs = knnd.rand(2, 3, 4, 4)
    assert.has_error(function() knnd.image_grid(imgs, {captions = {"only one"}}) end,
      "knnd.image_grid: option 'captions' expected a list of 2 strings (one per image), got a list of another length")
    assert.has_error(function() knnd.image_grid(imgs, {captions = {"a", 2}}) end,
      "knnd.image_grid: option 'captions' entry 2 expected a string, got number")
    assert.has_error(function() knnd.image_grid(imgs, {range = {1, 0}}) end,
      "knnd.image_grid: option 'range' expected a pair {lo, hi} of numbers with lo < hi")
    assert.has_error(function() knnd.image_grid(imgs, {scale = 0}) end,
      "knnd.image_grid: option 'scale' is 0 (expected 1 .. 64)")
    assert.has_error(function() knnd.image_grid(imgs, {rows = 2}) end)
    assert.has_error(function() knnd.image_grid(knnd.rand(3, 4)) end)
    assert.has_error(function() knnd.save_png(tmp("x.png"), imgs) end)
    assert.has_error(function() knnd.save_png(3, imgs) end, "knnd.save_png: argument 1 'path' expected a string, got number")
    assert.has_error(function() knnd.read_png(tmp("none.png")) end)
  end)
end)

describe("knnd.plot", function()
  it("writes a PNG line plot of several series, with gaps at NaN", function()
    local path = tmp("loss.png")
    local train, val = {}, {}
    for i = 1, 100 do train[i] = 2 * math.exp(-i / 20) + 0.05 end
    for i = 1, 10 do val[i] = 1.5 * math.exp(-i * 10 / 30) + 0.1 end
    val[4] = 0 / 0
    local steps = {}
    for i = 1, 10 do steps[i] = i * 10 end
    assert.are.equal(path, knnd.plot{path = path, title = "loss", xlabel = "step", ylabel = "mse",
      series = {{name = "train", y = train}, {name = "val #2", x = steps, y = val}}})
    local img = knnd.read_png(path)
    assert.are.same({3, 500, 800}, img:size())
    knnd.plot{path = path, logy = true, series = {{y = knnd.tensor(train)}}}
    assert.are.same({3, 500, 800}, knnd.read_png(path):size())
    local many = {}
    for s = 1, 64 do many[s] = {name = "run " .. s, x = {1, 2, 3}, y = {s, s + 1, s + 0.5}} end
    knnd.plot{path = path, series = many}
    assert.has_error(function() many[65] = many[1]; knnd.plot{path = path, series = many} end,
      "knnd.plot: option 'series' has 65 entries (at most 64)")
    os.remove(path)
  end)

  it("names bad options", function()
    local path = tmp("bad_plot.png")
    assert.has_error(function() knnd.plot{series = {{y = {1}}}} end,
      "knnd.plot: option 'path' is required (the PNG file to write)")
    assert.has_error(function() knnd.plot{path = path, series = {}} end,
      "knnd.plot: option 'series' expected a non-empty list of {name=, x=, y=} tables, got an empty table")
    assert.has_error(function() knnd.plot{path = path, series = {{y = {1, "2"}}}} end,
      "knnd.plot: series 1 'y' entry 2 expected a number, got string")
    assert.has_error(function() knnd.plot{path = path, series = {{x = {1}, y = {1, 2}}}} end,
      "knnd.plot: series 1 has 1 x values and 2 y values (expected as many)")
    assert.has_error(function() knnd.plot{path = path, series = {{y = {1}, colour = "red"}}} end,
      "knnd.plot: unknown option 'colour' (expected name, x, y, err)")
    assert.has_error(function() knnd.plot{path = path, series = {{y = {0 / 0}}}} end)
    assert.has_error(function() knnd.plot{path = path, logy = true, series = {{y = {0, -1}}}} end)
    assert.has_error(function() knnd.plot{path = "/nonexistent/dir/p.png", series = {{y = {1, 2}}}} end)
    assert.has_error(function() knnd.plot(path) end)
    assert.is_false(exists(path))
  end)
end)

describe("knnd.scatter", function()
  it("writes labelled groups of points with log axes, and knnd.plot takes logx", function()
    local path = tmp("scatter.png")
    assert.are.equal(path, knnd.scatter{path = path, title = "FID vs parameters", xlabel = "params (M)", ylabel = "FID",
      logx = true, series = {
        {name = "published", x = {12000, 4000, 370}, y = {28, 27.1, 19.75}, labels = {"DALL-E", "CogView", false}},
        {name = "ours", x = knnd.tensor({35}), y = {21.5}, labels = {"knn"}}}})
    assert.are.same({3, 500, 800}, knnd.read_png(path):size())
    knnd.scatter{path = path, logx = true, logy = true, series = {{x = {1, 10}, y = {1, 100}}}}
    knnd.plot{path = path, logx = true, series = {{x = {1, 5, 10, 100, 1000}, y = {30, 20, 15, 14, 13}}}}
    assert.are.same({3, 500, 800}, knnd.read_png(path):size())
    os.remove(path)
  end)

  it("names bad options", function()
    local path = tmp("bad_scatter.png")
    assert.has_error(function() knnd.scatter{path = path, series = {{y = {1, 2}, labels = {"a", 3}}}} end,
      "knnd.scatter: series 1 'labels' entry 2 expected a string, got number")
    assert.has_error(function() knnd.scatter{path = path, series = {{y = {1}, labels = {"a", "b"}}}} end,
      "knnd.scatter: series 1 'labels' has 2 entries for 1 points (expected at most as many)")
    assert.has_error(function() knnd.scatter{path = path, series = {{y = {1}, labels = "a"}}} end,
      "knnd.scatter: series 1 'labels' expected a list of strings, got string")
    assert.has_error(function() knnd.plot{path = path, series = {{y = {1}, labels = {"a"}}}} end,
      "knnd.plot: unknown option 'labels' (expected name, x, y, err)")
    assert.has_error(function() knnd.scatter{path = path, logx = true, series = {{x = {0, -1}, y = {1, 2}}}} end,
      "knnd.scatter: plot_scatter: argument 'ys' has no finite point to plot (a log axis needs values > 0)")
    assert.is_false(exists(path))
  end)
end)
