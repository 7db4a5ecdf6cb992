-- tour.lua — the README's tour of the Lua API, runnable: knnd run experiments/tour.lua
local knnd = require "knnd"

-- tensors: dtypes f32 (default), f16, bf16, i32, i64, u8; dims and positions are 1-based
local x = knnd.randn(2, 3)                   -- from the default Philox generator
local y = knnd.tensor({{1, 2, 3}, {4, 5, 6}})
print(x + y * 2, y:shape()[2], y[2][3], #y)  -- arithmetic broadcasts; y[2][3] is 6
local h = y:to("f16"):transpose(1, 2)        -- a strided view, no copy
print(h:is_contiguous(), h:contiguous():dtype())

-- autograd: leaves that require grad, backward on a scalar, no_grad
local w = knnd.randn(3, 4):requires_grad_()
local loss = (knnd.matmul(y, w):relu() ^ 2):mean()
loss:backward()
print("grad of w", w.grad:shape()[1], w.grad:shape()[2])
knnd.no_grad(function() print("no grad inside:", knnd.is_grad_enabled()) end)

-- ops take keyword options; a misspelt option is an error that names the accepted ones
local img = knnd.randn(8, 3, 32, 32)
local k = knnd.randn(16, 3, 3, 3)
local feat = knnd.conv2d(img, k, {stride = 2, padding = 1})             -- [8,16,16,16]
local up = knnd.interpolate(feat, {scale_factor = 2, mode = "bilinear"}) -- [8,16,32,32]
local ok, err = pcall(knnd.conv2d, img, k, {strid = 2})
print(table.concat(up:shape(), "x"), err)

-- modules and optimisers
local net = knnd.nn.Sequential{knnd.nn.Linear(4, 8), knnd.nn.LayerNorm(8), knnd.nn.Linear(8, 2)}
local opt = knnd.optim.AdamW(net, {lr = 1e-2})
local target = knnd.randint(0, 2, {16})
for step = 1, 20 do
  opt:zero_grad()
  local l = knnd.cross_entropy(net(knnd.randn(16, 4)), target)
  l:backward()
  opt:step()
end
print(("%d parameters"):format(net:num_params()))

-- files: safetensors and HDF5 (atomic writes), PNG grids, plots
local dir = os.getenv("TMPDIR") or "/tmp"
net:save(dir .. "/tour.safetensors")
knnd.save_grid(dir .. "/tour_grid.png", knnd.rand(4, 3, 16, 16), {nrow = 2, scale = 4, captions = {"a", "b", "c", "d"}})
knnd.plot{path = dir .. "/tour_plot.png", title = "a line", series = {{name = "y = x^2", x = {1, 2, 3}, y = {1, 4, 9}}}}
print("tour done")
