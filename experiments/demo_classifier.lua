-- demo_classifier.lua — the core issue's end-to-end demo: a small CNN trained on real
-- Fashion-MNIST (Debian's dataset-fashion-mnist), with a progress bar, a loss plot, a grid of
-- test images captioned with the predictions, and a checkpoint.
--
--   knnd run experiments/demo_classifier.lua [--set steps=600 --set batch=64 --set out=runs/demo] [--seed 1]
local knnd = require "knnd"

local opt = knnd.options{
  steps = 400,          -- optimisation steps
  batch = 64,
  lr = 2e-3,
  warmup = 40,
  weight_decay = 1e-4,
  channels = 16,        -- width of the first conv layer
  eval_every = 100,
  test_limit = 2000,    -- test images used for accuracy (10000 = all)
  out = "runs/demo_classifier",
}
knnd.manual_seed(knnd.seed or 0)
os.execute(("mkdir -p %q"):format(opt.out))

local train = knnd.data.fashion_mnist{split = "train"}
local test = knnd.data.fashion_mnist{split = "test", limit = opt.test_limit}
print(("Fashion-MNIST: %d training and %d test images from %s"):format(train.n, test.n, knnd.data.fashion_mnist_dir))

-- u8 [N,28,28] -> f32 [N,1,28,28] in [-1, 1]
local function prepare(images)
  local x = images:to("f32") / 127.5 - 1
  return x:unsqueeze(2)
end

-- the model: two conv blocks and a linear head
local c = opt.channels
local model = {
  conv1 = knnd.nn.Conv2d(1, c, 3, {padding = 1}),
  norm1 = knnd.nn.GroupNorm(4, c),
  conv2 = knnd.nn.Conv2d(c, 2 * c, 3, {padding = 1}),
  norm2 = knnd.nn.GroupNorm(4, 2 * c),
  head = knnd.nn.Linear(2 * c * 7 * 7, 10),
}
local order = {"conv1", "norm1", "conv2", "norm2", "head"}

local function forward(x)
  x = knnd.max_pool2d(knnd.silu(model.norm1(model.conv1(x))), {kernel_size = 2})  -- [B,c,14,14]
  x = knnd.max_pool2d(knnd.silu(model.norm2(model.conv2(x))), {kernel_size = 2})  -- [B,2c,7,7]
  return model.head(x:flatten(2))
end

local params = {}
for _, name in ipairs(order) do
  for _, p in ipairs(model[name]:parameters()) do params[#params + 1] = p end
end
local n_params = 0
for _, p in ipairs(params) do n_params = n_params + p:numel() end
print(("model: %d parameters"):format(n_params))

local optim = knnd.optim.AdamW(params, {lr = opt.lr, weight_decay = opt.weight_decay})
local schedule = knnd.optim.lr_schedule{kind = "cosine", base_lr = opt.lr, warmup_steps = opt.warmup,
                                        total_steps = opt.steps, min_lr = opt.lr * 0.05}

local function accuracy()
  local correct = 0
  knnd.no_grad(function()
    for s = 1, test.n, 500 do
      local n = math.min(500, test.n - s + 1)
      local logits = forward(prepare(test.images:narrow(1, s, n)))
      local pred = knnd.argmax(logits, 2)
      correct = correct + knnd.eq(pred, test.labels:narrow(1, s, n)):to("f32"):sum():item()
    end
  end)
  return correct / test.n
end

local losses, steps_x, accs, acc_x = {}, {}, {}, {}
local bar = knnd.progress{total = opt.steps, desc = "train", unit = "step"}
local t0 = knnd.wall_time()
for step = 1, opt.steps do
  local idx = knnd.randint(0, train.n, {opt.batch})
  local x = prepare(train.images:index_select(1, idx))
  local y = train.labels:index_select(1, idx)
  optim:set_lr(schedule(step - 1))
  optim:zero_grad()
  local loss = knnd.cross_entropy(forward(x), y)
  loss:backward()
  optim:step()
  losses[#losses + 1] = loss:item()
  steps_x[#steps_x + 1] = step
  if step % opt.eval_every == 0 or step == opt.steps then
    accs[#accs + 1] = accuracy()
    acc_x[#acc_x + 1] = step
  end
  bar:update(1, {loss = losses[#losses], acc = accs[#accs]})
end
bar:close()
local elapsed = knnd.wall_time() - t0
local final_acc = accs[#accs]
print(("trained %d steps in %.1f s (%.1f steps/s); test accuracy %.2f%% on %d images")
  :format(opt.steps, elapsed, opt.steps / elapsed, 100 * final_acc, test.n))

-- pictures: the loss curve and a grid of test images with predicted and true classes
knnd.plot{path = opt.out .. "/loss.png", title = "Fashion-MNIST classifier: training loss",
          xlabel = "step", ylabel = "cross-entropy", logy = true,
          series = {{name = "train loss", x = steps_x, y = losses}}}
knnd.plot{path = opt.out .. "/accuracy.png", title = "test accuracy", xlabel = "step", ylabel = "accuracy",
          series = {{name = "test", x = acc_x, y = accs}}}
local shown = 16
local imgs = test.images:narrow(1, 1, shown)
local pred = knnd.no_grad(function() return knnd.argmax(forward(prepare(imgs)), 2) end)
local captions = {}
for i = 1, shown do
  local p, t = pred:get(i) + 1, test.labels:get(i) + 1
  captions[i] = p == t and test.classes[p] or ("%s / %s"):format(test.classes[p], test.classes[t])
end
knnd.save_grid(opt.out .. "/predictions.png", imgs:unsqueeze(2), {nrow = 4, scale = 3, range = {0, 255},
               captions = captions,
               title = ("test accuracy %.1f%% (mistakes: predicted / true)"):format(100 * final_acc)})

-- a checkpoint with everything needed to resume
local state = {}
for _, name in ipairs(order) do
  for k, v in pairs(model[name]:state_dict()) do state[name .. "." .. k] = v end
end
knnd.io.save_checkpoint(opt.out .. "/checkpoint.h5", {model = state, optimizer = optim, step = opt.steps,
                                                      config = opt})
print(("wrote %s/{loss.png, accuracy.png, predictions.png, checkpoint.h5}"):format(opt.out))
