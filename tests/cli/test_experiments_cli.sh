#!/usr/bin/env bash
# test_experiments_cli.sh — the experiments of experiments/ run end to end at toy scale on their
# real data (Fashion-MNIST; Noto emoji and EmojiOne): quickstart.lua, stickers.lua, then
# db_swap.lua on the stickers run, each writing its pictures and metrics. The recipes are cut to a
# few steps: this checks that the scripts work, not what they measure (the README has that).
# Usage: test_experiments_cli.sh KNND_EXE  (run by ctest in a scratch directory; release build only)
set -u
knnd=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/lib.sh"
scratch experiments_cli

out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set clip.steps=20 --set judge.steps=20 \
  --set unet.steps=6 --set unet.batch=8 --set unet.checkpoint_every=3 --set sample.steps=3 --set sample.per_prompt=2 \
  --set sample.eval_per_class=4 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"quickstart finished"* ]] && [[ "$out" == *"generate 100%"* ]]
checkst $? "quickstart runs, with generate's progress bar ($(echo "$out" | tail -3))"
for f in metrics.json loss.png alignment.png neighbors_text.png neighbors_images.png knn/samples.png no_knn/samples.png \
  knn/model.h5 no_knn/checkpoint.h5; do
  [ -s "qs/$f" ] || { echo "# missing qs/$f"; false; }
done; check "quickstart writes its grids, plots, metrics and models" $?
grep -q '"alignment"' qs/metrics.json; check "quickstart's metrics hold the alignment of each mode" $?
grep -q '"fid_cnn"' qs/metrics.json && grep -q '"fid_real_floor"' qs/metrics.json
check "quickstart's metrics hold FID[fmnist-cnn] of each mode and of real images" $?

# the zero-shot protocol on the quickstart's models: samples in parts, FID[fmnist-cnn], KID, CLIP score
out=$("$knnd" run "$root/experiments/zero_shot.lua" --set run=qs --set n=12 --set part=8 --set batch=6 --set steps=2 \
  --set guidance_sweep=1,3 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"zero_shot finished"* ]] && [[ "$out" == *"FID[fmnist-cnn]"* ]]
checkst $? "zero_shot runs on the quickstart's models ($(echo "$out" | tail -3))"
for f in zero_shot.md zero_shot.csv knn/result.json knn/samples/part-00000.h5 knn/samples/part-00001.h5 \
  no_knn/result.json fid_fmnist_cnn_vs_guidance.png; do
  [ -s "qs/zero_shot/$f" ] || { echo "# missing qs/zero_shot/$f"; false; }
done; check "zero_shot writes its parts, results, table and the FID-vs-guidance plot" $?
grep -q "FID\[fmnist-cnn\]" qs/zero_shot/zero_shot.md && ! grep -q "| FID |" qs/zero_shot/zero_shot.md
check "the zero-shot table labels the classifier's FID and has no Inception FID column" $?
out=$("$knnd" run "$root/experiments/zero_shot.lua" --set run=nowhere 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"run experiments/quickstart.lua first"* ]]; check "zero_shot without a run says what to do" $?
out=$("$knnd" fid qs/zero_shot/knn/samples qs/data/test.h5 --classifier qs/judge.h5 --name fmnist-cnn -q 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == "FID[fmnist-cnn] "* ]]; check "knnd fid between the samples and the test set with the judge's features ($out)" $?
# the quickstart's folder is the reference layout of knnd export-notebook
out=$("$knnd" export-notebook qs -o qs.ipynb 2>&1); rc=$?
[ $rc = 0 ] && [ -s qs.ipynb ]; check "export-notebook exports the quickstart's folder ($out)" $?
if python3 -c 'import nbformat' 2>/dev/null; then
  python3 -c 'import nbformat,sys; nb = nbformat.read(sys.argv[1], as_version=4); nbformat.validate(nb)
src = "".join(c.source for c in nb.cells)
assert "## knn" in src and "## no_knn" in src and "knn/log.csv" in src, src[:2000]
assert sum(1 for c in nb.cells if c.cell_type == "code") >= 6' qs.ipynb
  check "the quickstart notebook is valid and holds both runs" $?
fi

# the ablation sweeps on the toy testbed (qs), each cut to a few tiny runs
sweep() { "$knnd" sweep "$root/experiments/$1" --dir sweeps --set testbed=qs --set per_class=4 --set sample_steps=2 "${@:2}" 2>&1; }
out=$(sweep ablation_knn.lua --set steps=2 --set batch=4 --set mode=knn,lafite_noise --set seed=1); rc=$?
[ $rc = 0 ] && grep -q "FID\[fmnist-cnn\]" sweeps/ablation_knn/summary.md && grep -q "lafite_noise" sweeps/ablation_knn/summary.csv \
  && [ -s "sweeps/ablation_knn/mode=knn,seed=1/samples.png" ]
checkst $? "ablation_knn sweeps modes into a summary with FID[fmnist-cnn] ($(echo "$out" | tail -4))"
out=$(sweep ablation_knn.lua --resume --set steps=2 --set batch=4 --set mode=knn,lafite_noise --set seed=1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"2 skipped"* ]]; checkst $? "a resumed ablation skips its finished runs ($(echo "$out" | grep sweep | tail -1))"
out=$(sweep k_sweep.lua --set steps=2 --set batch=4 --set k=1,5); rc=$?
[ $rc = 0 ] && [ -s sweeps/k_sweep/fid_vs_k.png ] && grep -q "^k," sweeps/k_sweep/summary.csv
checkst $? "k_sweep trains per k and plots FID against k ($(echo "$out" | tail -2))"
out=$(sweep guidance_sweep.lua --set guidance=1,3 --set sample_steps=2); rc=$?
[ $rc = 0 ] && [ -s sweeps/guidance_sweep/fid_vs_guidance.png ] && [ -s sweeps/guidance_sweep/alignment_vs_guidance.png ]
checkst $? "guidance_sweep samples the quickstart's model per guidance scale ($(echo "$out" | tail -2))"
out=$(sweep index_sweep.lua --set steps=2 --set batch=4 --set train_index=flat --set infer_index=flat,hnsw); rc=$?
[ $rc = 0 ] && grep -q "hnsw" sweeps/index_sweep/summary.csv && grep -q "infer_recall" sweeps/index_sweep/summary.csv
checkst $? "index_sweep crosses training and inference indexes ($(echo "$out" | tail -2))"
# data-parallel training on the testbed: 2 MPI ranks, then judged by rank 0
if command -v mpirun >/dev/null; then
  out=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0 timeout 600 mpirun \
    --oversubscribe --bind-to none -np 2 "$knnd" run "$root/experiments/train_dist.lua" --set testbed=qs --set out=dist \
    --set steps=3 --set batch=8 --set per_class=4 --set sample_steps=2 2>&1); rc=$?
  [ $rc = 0 ] && grep -qE '"ranks": ?2' dist/metrics.json && [ -s dist/model.h5 ] && contains "$out" "4 per rank"
  checkst $? "train_dist trains on 2 ranks and scores the model ($(echo "$out" | tail -2))"
fi
out=$(sweep index_sweep.lua --set infer_index=annoy); rc=$?
[ $rc != 0 ] && [[ "$out" == *"infer_index"* ]] && [[ "$out" == *"hnsw"* ]]; check "an unknown index name is an error listing the names" $?
out=$("$knnd" run "$root/experiments/zero_shot_table.lua" --set run=qs --set n=8 --set steps=2 2>&1); rc=$?
[ $rc = 0 ] && grep -q "LAFITE" qs/zero_shot_table/table.md && grep -q "ours: knn" qs/zero_shot_table/table.md \
  && grep -q "fashion-mnist FID\[fmnist-cnn\]" qs/zero_shot_table/table.md
checkst $? "zero_shot_table puts our runs beside the published systems ($(echo "$out" | tail -2))"
out=$("$knnd" results sweeps/ablation_knn 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"mode=knn,seed=1"* ]]; check "knnd results lists the ablation's runs" $?
out=$("$knnd" export-notebook sweeps/ablation_knn -o ablation.ipynb 2>&1); rc=$?
[ $rc = 0 ] && [ -s ablation.ipynb ]; check "the ablation exports to a notebook ($out)" $?

# a rerun finds every stage done and only samples again
out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set clip.steps=20 --set judge.steps=20 \
  --set unet.steps=6 --set unet.batch=8 --set unet.checkpoint_every=3 --set sample.steps=3 --set sample.per_prompt=2 \
  --set sample.eval_per_class=4 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" != *"clip train"* ]] && [[ "$out" == *"train knn done"* ]]; check "a rerun skips the finished stages" $?

out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set unet.stepz=3 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"stepz"* ]]; check "an unknown --set key is an error naming it" $?

# --set device: a bad name, or cuda on a machine without a GPU, fails at once naming the option (before any stage)
out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set device=gpu 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"option 'device' is 'gpu'"* ]] && [[ "$out" != *"done in"* ]]
checkst $? "quickstart --set device=gpu names the option ($(echo "$out" | tail -1))"
echo 'print(knnd.cuda.available())' > has_gpu.lua
if [ "$("$knnd" run has_gpu.lua 2>/dev/null)" = false ]; then
  for script in quickstart stickers; do
    out=$("$knnd" run "$root/experiments/$script.lua" --set out=dev_$script --set device=cuda 2>&1); rc=$?
    [ $rc != 0 ] && [[ "$out" == *"option 'device' is 'cuda' but no CUDA device is available"* ]] && [[ "$out" != *"done in"* ]]
    checkst $? "$script --set device=cuda without a GPU says so at once ($(echo "$out" | tail -1))"
  done
fi

out=$("$knnd" run "$root/experiments/stickers.lua" --set out=st --set clip.steps=10 --set unet.steps=2 \
  --set unet.batch=4 --set unet.checkpoint_every=2 --set unet.channels=32 --set sample.per_prompt=1 \
  --set sample.steps=2 --set prompts="red apple,pizza" 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"stickers finished"* ]]; checkst $? "stickers runs ($(echo "$out" | tail -2))"
[ -s st/knn/samples.png ] && [ -s st/no_knn/model.h5 ] && [ -s st/metrics.json ]; check "stickers writes samples, models, metrics" $?

out=$("$knnd" run "$root/experiments/manipulation_emoji.lua" --set stickers=st --set unet.steps=2 --set unet.batch=4 \
  --set unet.channels=32 --set unet.checkpoint_every=2 --set per_edit=2 --set sample.steps=2 \
  --set edits="red apple>green apple,cat face>dog face,no such emoji>pizza" 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"2 edits, 2 seeds each"* ]] && [[ "$out" == *"skipped no such emoji -> pizza"* ]] \
  && [ -s st/edit/edits.png ] && grep -q "^cat face -> dog face,regenerate," st/edit/edits.csv && grep -q '"top10"' st/edit/metrics.json
checkst $? "manipulation_emoji edits emoji on the stickers run against regenerating them ($(echo "$out" | tail -4))"
out=$("$knnd" run "$root/experiments/manipulation_emoji.lua" --set stickers=missing 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"run experiments/stickers.lua"* ]]; check "manipulation_emoji without a stickers run says what to do" $?
out=$("$knnd" run "$root/experiments/db_swap.lua" --set stickers=missing --set out=swap 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"run experiments/stickers.lua first"* ]]; check "db_swap without a stickers run says what to do" $?
out=$("$knnd" run "$root/experiments/db_swap.lua" --set stickers=st --set out=swap --set sample.per_prompt=1 \
  --set sample.steps=2 --set prompts="red apple,pizza" --set seeds=1,2 --set style.steps=40 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"with the EmojiOne index"* ]] && [[ "$out" == *"db_swap sampling"*"16/16"* ]]
checkst $? "db_swap runs, with a progress bar over its sampling ($(echo "$out" | tail -2))"
[ -s swap/swap_knn.png ] && [ -s swap/swap_no_knn.png ] && [ -s swap/neighbors_emojione.png ] && [ -s swap/metrics.json ] \
  && [ -s swap/db_swap.png ] && grep -Eq "^knn,emojione - noto,emojione_share,[-0-9.e]+,[0-9.e]*,2,[0-9.e]*$" swap/db_swap.csv \
  && /usr/bin/python3 -c "import nbformat,sys; nb=nbformat.read('swap/db_swap.ipynb',as_version=4); nbformat.validate(nb); \
sys.exit(0 if sum(len(c.get('outputs',[])) for c in nb.cells if c.cell_type=='code') >= 4 else 1)"
check "db_swap writes its grids, metrics, table (markdown, CSV), plot and notebook" $?
# the style classifier, and per mode and index its EmojiOne share and the alignment over the sampling seeds
[ -s swap/style.h5 ] && grep -q '"heldout_accuracy"' swap/style.json && grep -q '"emojione_share"' swap/metrics.json \
  && grep -q '"closer_to_emojione_emojione_index"' swap/metrics.json && grep -q "| knn | swap: EmojiOne - own |" swap/db_swap.md \
  && grep -q "| knn - no_knn | EmojiOne |" swap/db_swap.md && grep -q "over 2 sampling seeds" swap/db_swap.md
check "db_swap reports the style classifier's EmojiOne share and the alignment per mode and index, with paired tests" $?
out=$("$knnd" run "$root/experiments/db_swap.lua" --set stickers=st --set out=swap --set sample.per_prompt=1 \
  --set sample.steps=2 --set prompts="red apple" --set seeds=1 --set modes=knn --set style.steps=40 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"style classifier from swap/style.h5"* ]] && [[ "$out" == *"held-out accuracy"* ]]
checkst $? "a rerun of db_swap reuses its style classifier ($(echo "$out" | tail -1))"

# the discrete backbone on the emoji: the stickers run's CLIP and index reused, a VQ-VAE trained a few
# steps, then VQ-Diffusion's transformer per mode into <mode>-discrete/
out=$("$knnd" run "$root/experiments/stickers.lua" --set out=st --set clip.steps=10 --set backbone=discrete \
  --set vqvae.steps=2 --set vqvae.channels=16 --set discrete.dim=32 --set discrete.heads=2 --set discrete.layers=1 \
  --set unet.steps=2 --set unet.batch=4 --set unet.checkpoint_every=2 --set sample.per_prompt=1 --set sample.steps=2 \
  --set prompts="red apple,pizza" 2>&1); rc=$?
[ $rc = 0 ] && [ -s st/vqvae/model.h5 ] && [ -s st/knn-discrete/samples.png ] && [ -s st/no_knn-discrete/model.h5 ] \
  && grep -q '"knn-discrete"' st/metrics.json && [[ "$out" == *"VQ-VAE: 2 steps, PSNR"* ]]
checkst $? "stickers --set backbone=discrete trains a VQ-VAE, then VQ-Diffusion per mode ($(echo "$out" | tail -2))"

# held-out concepts on the toy testbed: 2 modes x 1 seed (the statistics are sweep_spec's), trained
# without two classes (nor their images as neighbours), judged per held-out and seen class, paired
# against no_knn
out=$(sweep heldout.lua --set steps=2 --set batch=4 --set mode=knn,no_knn --set seed=1 --set heldout=sandal,bag); rc=$?
[ $rc = 0 ] && grep -q "alignment_heldout" sweeps/heldout/summary.csv && grep -q "alignment_seen_ci95" sweeps/heldout/summary.csv \
  && grep -q "| alignment_heldout | knn − no_knn | 1 |" sweeps/heldout/summary.md \
  && grep -q "^alignment_heldout,mode,knn,no_knn,1," sweeps/heldout/paired.csv && [ -s sweeps/heldout/alignment_by_mode.png ]
checkst $? "heldout sweeps modes into CIs and paired tests against no_knn ($(echo "$out" | tail -3))"
[ -s qs/data/subset-heldout-5-8/nn.h5 ] && grep -q "held out: sandal, bag; training on" "sweeps/heldout/mode=knn,seed=1/log.jsonl"
check "heldout trains on the seen classes' own database and neighbour cache" $?
out=$("$knnd" sweep "$root/experiments/heldout.lua" --dir sweeps_bad --set testbed=qs --set steps=2 --set mode=knn --set seed=1 \
  --set heldout=sandals 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"unknown class 'sandals'"* ]] && [[ "$out" == *"ankle boot"* ]]
check "an unknown held-out class is an error listing the classes" $?

# the modality gap on the toy testbed: one barely trained CLIP in its own folder (qs-clip5, sharing
# qs's judge), its gap measured, knn and no_knn over 2 seeds, the benefit paired by seed and plotted
out=$(sweep modality_gap.lua --set steps=2 --set batch=4 --set clip_steps=5 --set seed=1,2 --set gap_images=500); rc=$?
[ $rc = 0 ] && grep -q "gap_topk" sweeps/modality_gap/summary.csv && grep -q '"text_topk"' qs-clip5/modality_gap.json \
  && grep -q "^5," sweeps/modality_gap/benefit.csv && grep -q "alignment: knn - no_knn" sweeps/modality_gap/benefit.md \
  && [ -s sweeps/modality_gap/benefit_vs_gap.png ] && [ -s sweeps/modality_gap/fid_benefit_vs_gap.png ] && [ ! -e qs-clip5/judge.h5 ]
checkst $? "modality_gap measures the CLIP's gap and kNN's paired benefit against it ($(echo "$out" | tail -3))"

# the two backbones on the toy testbed: the testbed's VQ-VAE built once (a few steps), then the UNet
# and VQ-Diffusion's transformer trained and scored alike, paired by seed
out=$(sweep backbone_ablation.lua --set steps=2 --set batch=4 --set vq_steps=3 --set seed=1); rc=$?
[ $rc = 0 ] && [ -s qs/vqvae/model.h5 ] && grep -q "^discrete," sweeps/backbone_ablation/summary.csv \
  && grep -q "| alignment | discrete − continuous | 1 |" sweeps/backbone_ablation/summary.md \
  && [ -s "sweeps/backbone_ablation/backbone=discrete,seed=1/samples.png" ]
checkst $? "backbone_ablation trains and scores both backbones on one testbed ($(echo "$out" | tail -3))"
out=$(sweep backbone_ablation.lua --set backbone=pixels 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"pixels"* ]] && [[ "$out" == *"discrete"* ]]
check "an unknown backbone is an error naming the choices" $?

# local manipulation on the toy testbed: an edit model per align (ECC, resize) and the regenerating
# baseline, the garment edits measured; then `knnd edit` on a real test image with that model
out=$(sweep manipulation.lua --set steps=2 --set batch=4 --set seed=1 --set edit_images=2); rc=$?
run="sweeps/manipulation/align=ecc_affine,seed=1"
[ $rc = 0 ] && grep -q "target_acc_regen" sweeps/manipulation/summary.csv && grep -q "| target_acc | resize − ecc_affine | 1 |" \
  sweeps/manipulation/summary.md && [ -s "$run/edits.png" ] && grep -q "^pullover -> coat,edit," "$run/edit_metrics.csv" \
  && grep -q "ECC converged on" "$run/log.jsonl" && [ -s qs/edit-baseline/knn-k10-steps2-batch4-seed1/model.h5 ] \
  && [ -s sweeps/manipulation/edits_by_align.png ]
checkst $? "manipulation trains edit models and the regenerating baseline and measures the edits ($(echo "$out" | tail -3))"
out=$("$knnd" sweep "$root/experiments/manipulation.lua" --dir sweeps_discrete --set testbed=qs --set steps=2 --set batch=4 \
  --set seed=1 --set edit_images=2 --set sample_steps=2 --set align=resize --set backbone=discrete 2>&1); rc=$?
[ $rc = 0 ] && grep -q "^resize," sweeps_discrete/manipulation/summary.csv \
  && [ -s qs/edit-baseline/knn-discrete-k10-steps2-batch4-seed1/model.h5 ] \
  && [ -s "sweeps_discrete/manipulation/align=resize,seed=1/edits.png" ]
checkst $? "manipulation runs on the discrete backbone too ($(echo "$out" | tail -3))"
cat > mkimg.lua <<'EOF'
local knnd = require "knnd"
local ts = knnd.data.fashion_mnist { split = "test" }
knnd.save_png("pullover.png", ts.images:narrow(1, 2, 1):reshape(1, 28, 28))
EOF
"$knnd" run mkimg.lua >/dev/null 2>&1
out=$("$knnd" edit pullover.png "a photo of a coat" --model "$run/edit/model.h5" --clip qs/clip.safetensors \
  --index qs/data/train.index --steps 2 -n 2 --out coat.png --grid coat_grid.png -q 2>&1); rc=$?
[ $rc = 0 ] && [ -s coat.png ] && [ -s coat_grid.png ] && [[ "$out" == *"2 results"* ]]
check "knnd edit writes the edited image and a before/after grid ($out)" $?
out=$("$knnd" edit pullover.png "a photo of a coat" --model qs/knn/model.h5 --clip qs/clip.safetensors 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"not an edit model"* ]]; check "knnd edit with a text-to-image model says so ($out)" $?
out=$("$knnd" edit pullover.png "a coat" --model "$run/edit/model.h5" --clip qs/clip.safetensors 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"give --index"* ]]; check "knnd edit of a kNN model without an index says so ($out)" $?
out=$("$knnd" edit nothing.png "a coat" --model "$run/edit/model.h5" --clip qs/clip.safetensors 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"nothing.png' not found"* ]]; check "knnd edit of a missing image names it ($out)" $?

[ $fails = 0 ]
