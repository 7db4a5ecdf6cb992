#!/usr/bin/env bash
# test_import_cli.sh — `knnd data prepare folder|coco|lncoco|cub` on small COCO-, LN-COCO- and
# CUB-shaped trees that a Lua script builds from real Fashion-MNIST test images (JPEG and PNG), then
# `knnd data info` of the results, and the errors: a missing image (fail, then --on-error skip), a
# truncated JPEG, malformed JSON, missing and misplaced options.
# Usage: test_import_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
scratch import_cli

cat > make_trees.lua <<'LUA'
local json = require "dkjson"
local fm = knnd.data.fashion_mnist { split = "test", limit = 8 }
local function img(i) return fm.images:narrow(1, i, 1):contiguous() end
local function write(path, text) local f = assert(io.open(path, "wb")); f:write(text); f:close() end
os.execute("mkdir -p coco/val2017 coco/annotations jpgs cub/images/001.Black_footed_Albatross "
  .. "cub/images/002.Laysan_Albatross cub/text_c10/001.Black_footed_Albatross cub/text_c10/002.Laysan_Albatross")
-- COCO: images 1..4, image 3 a PNG; two captions for image 1
local images, anns = {}, {}
for i = 1, 4 do
  local name = ("%012d.jpg"):format(i)
  if i == 3 then knnd.save_png("coco/val2017/" .. name, img(i)) else knnd.save_jpeg("coco/val2017/" .. name, img(i)) end
  images[i] = { id = i, file_name = name, width = 28, height = 28 }
  anns[#anns + 1] = { id = 100 + i, image_id = i, caption = fm.classes[fm.labels:get(i) + 1] .. " number " .. i }
end
anns[#anns + 1] = { id = 200, image_id = 1, caption = "another caption of image one" }
write("coco/annotations/captions_val2017.json", json.encode { images = images, annotations = anns })
-- LN-COCO narratives of the same images
local lines = {}
for i = 1, 4 do
  lines[i] = json.encode { dataset_id = "mscoco_val2017", image_id = tostring(i), annotator_id = 7,
    caption = "In this image we can see item " .. i .. "." }
end
write("coco/coco_val_captions.jsonl", table.concat(lines, "\n") .. "\n")
-- a folder of JPEGs
for i = 5, 6 do knnd.save_jpeg(("jpgs/garment_%d.jpg"):format(i), img(i)) end
-- CUB: 4 images of 2 classes, images 1 and 2 for training
local cls = { "001.Black_footed_Albatross", "002.Laysan_Albatross" }
local t = { images = {}, labels = {}, split = {}, boxes = {} }
for i = 1, 4 do
  local c = (i - 1) % 2 + 1
  local rel = ("%s/bird_%d.jpg"):format(cls[c], i)
  knnd.save_jpeg("cub/images/" .. rel, img(i + 4))
  write(("cub/text_c10/%s/bird_%d.txt"):format(cls[c], i), ("this bird %d has a white belly\nsmall bird %d\n"):format(i, i))
  t.images[i], t.labels[i] = ("%d %s"):format(i, rel), ("%d %d"):format(i, c)
  t.split[i], t.boxes[i] = ("%d %d"):format(i, i <= 2 and 1 or 0), ("%d 2.0 3.0 20.0 22.0"):format(i)
end
write("cub/images.txt", table.concat(t.images, "\n") .. "\n")
write("cub/image_class_labels.txt", table.concat(t.labels, "\n") .. "\n")
write("cub/train_test_split.txt", table.concat(t.split, "\n") .. "\n")
write("cub/bounding_boxes.txt", table.concat(t.boxes, "\n") .. "\n")
write("cub/classes.txt", "1 " .. cls[1] .. "\n2 " .. cls[2] .. "\n")
print("trees written")
LUA
out=$("$knnd" run make_trees.lua 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "trees written"; check "knnd run builds the trees ($out)" $?

out=$("$knnd" data prepare --help 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "coco" && contains "$out" "lncoco" && contains "$out" "cub" && contains "$out" "--annotations" \
  && contains "$out" "--on-error"; check "prepare --help lists the importers and their options ($out)" $?

# ---- folder of JPEGs ----
out=$("$knnd" data prepare folder jpgs --out jpgs.h5 --size 16 --split test -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote jpgs.h5: 2 images"; check "prepare folder of JPEGs ($out)" $?
out=$("$knnd" data info jpgs.h5 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "garment 5" && contains "$out" "split:    test" && contains "$out" "3 x 16 x 16"
check "info of the JPEG folder ($out)" $?

# ---- coco ----
out=$(KNND_PROGRESS=plain "$knnd" data prepare coco --annotations coco/annotations/captions_val2017.json \
  --images coco/val2017 --out coco.h5 --size 24 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote coco.h5: 4 images" && contains "$out" "prepare coco"
check "prepare coco with a progress bar ($out)" $?
out=$("$knnd" data info coco.h5 --captions 4 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "count:    4" && contains "$out" "3 x 24 x 24" && contains "$out" "split:    val" \
  && contains "$out" "ankle boot number 1" && contains "$out" "number 4" && ! contains "$out" "another caption"
check "info of the coco dataset ($out)" $?
out=$("$knnd" data prepare coco --annotations coco/annotations/captions_val2017.json --images coco/val2017 \
  --out coco_all.h5 --captions-mode all --limit 2 --split train -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote coco_all.h5: 3 images"; check "coco --captions-mode all --limit 2 ($out)" $?
out=$("$knnd" data info coco_all.h5 2>&1)
contains "$out" "another caption of image one" && contains "$out" "split:    train"; check "info of coco_all ($out)" $?

# ---- lncoco ----
out=$("$knnd" data prepare lncoco --annotations coco/coco_val_captions.jsonl --images coco/val2017 --out ln.h5 \
  --size 8 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote ln.h5: 4 images"; check "prepare lncoco ($out)" $?
out=$("$knnd" data info ln.h5 2>&1)
contains "$out" "In this image we can see item 3." && contains "$out" "lncoco:"; check "info of lncoco ($out)" $?

# ---- cub ----
out=$("$knnd" data prepare cub cub --captions cub/text_c10 --bbox --out cub.h5 --size 16 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote cub.h5: 2 images"; check "prepare cub ($out)" $?
out=$("$knnd" data info cub.h5 2>&1)
contains "$out" "Black footed Albatross, Laysan Albatross" && contains "$out" "this bird 2 has a white belly [1]" \
  && contains "$out" "split:    train"; check "info of cub ($out)" $?
out=$("$knnd" data prepare cub cub --split all --captions-mode all --out cub_all.h5 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote cub_all.h5: 4 images"; check "cub --split all without text: one caption each ($out)" $?
out=$("$knnd" data info cub_all.h5 2>&1)
contains "$out" "a photo of a Laysan Albatross [1]"; check "cub captions from class names ($out)" $?

# ---- errors ----
rm coco/val2017/000000000002.jpg
out=$("$knnd" data prepare coco --annotations coco/annotations/captions_val2017.json --images coco/val2017 \
  --out bad.h5 -q 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot prepare coco: image 2: image_read: cannot open 'coco/val2017/000000000002.jpg'" \
  && [ ! -e bad.h5 ]; check "a missing image fails, naming it ($out)" $?
out=$("$knnd" data prepare coco --annotations coco/annotations/captions_val2017.json --images coco/val2017 \
  --out skip.h5 --on-error skip -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote skip.h5: 3 images" && contains "$out" "skipped 1 image" \
  && contains "$out" "000000000002.jpg"; check "--on-error skip leaves it out and says so ($out)" $?
head -c 300 coco/val2017/000000000001.jpg > cut.jpg && mv cut.jpg coco/val2017/000000000001.jpg
out=$("$knnd" data prepare lncoco --annotations coco/coco_val_captions.jsonl --images coco/val2017 --out bad.h5 -q 2>&1)
rc=$?
[ $rc = 1 ] && contains "$out" "000000000001.jpg' is a corrupt JPEG" && [ ! -e bad.h5 ]
check "a truncated JPEG fails, naming it ($out)" $?
printf '{"images": [{"id": 1, "file_name": "a.jpg"}],\n "annotations": [{"image_id": 1, "caption": }]}\n' > broken.json
out=$("$knnd" data prepare coco --annotations broken.json --images coco/val2017 --out bad.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "broken.json: not valid JSON" && contains "$out" "line 2"; check "malformed JSON ($out)" $?
out=$("$knnd" data prepare coco --images coco/val2017 --out bad.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "needs --annotations and --images"; check "coco without --annotations ($out)" $?
out=$("$knnd" data prepare cub --out bad.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "directory argument (CUB_200_2011) is missing"; check "cub without its folder ($out)" $?
out=$("$knnd" data prepare cub cub --split val --out bad.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "option 'split' expected \"train\", \"test\" or \"all\""; check "cub --split val ($out)" $?
out=$("$knnd" data prepare fashion-mnist --out bad.h5 --on-error skip 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "do not apply to the fashion-mnist source"; check "importer options elsewhere ($out)" $?
out=$("$knnd" data prepare coco --annotations broken.json --images coco --out bad.h5 --captions-mode some 2>&1); rc=$?
[ $rc = 2 ]; check "a bad --captions-mode is a usage error ($out)" $?
[ ! -e bad.h5 ]; check "no failed import left a file" $?

finish
