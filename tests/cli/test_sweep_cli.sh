#!/usr/bin/env bash
# test_sweep_cli.sh — `knnd sweep` and `knnd results` end to end: a small real sweep (an MLP fitted
# to sin(3x) per width and seed, about half a second a run) is killed with SIGKILL in the middle of
# a run, resumed with --resume, and must end with the same summary as an uninterrupted sweep; then
# shards, failed runs, the results listing, and the errors of bad flags and scripts.
# Usage: test_sweep_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd=$1
. "$(dirname "$0")/lib.sh"
scratch sweep_cli

cat > fit.lua <<'LUA'
-- fit y = sin(3x) on [-2, 2] with a one-hidden-layer MLP for every width and seed
local knnd = require "knnd"
local opt = knnd.options { name = "fit" }
knnd.sweep {
  name = opt.name,
  base = { steps = 150, lr = 1e-2, width = knnd.config.param(8, "hidden units", { min = 1 }), seed = 0,
    fail_seed = knnd.config.param(0, "a seed whose run raises (0: none)") },
  grid = { width = { 4, 16 }, seed = { 1, 2, 3 } },
  run = function(cfg, run)
    if cfg.seed == cfg.fail_seed then error("diverged (fail_seed)") end
    local x = knnd.rand(256, 1) * 4 - 2
    local y = (x * 3):sin()
    local l1, l2 = knnd.nn.Linear(1, cfg.width), knnd.nn.Linear(cfg.width, 1)
    local o = knnd.optim.AdamW(knnd.nn.Sequential { l1, l2 }, { lr = cfg.lr })
    local loss
    for step = 1, cfg.steps do
      o:zero_grad()
      loss = (l2(knnd.tanh(l1(x))) - y):square():mean()
      loss:backward()
      o:step()
      if step % 50 == 0 then run:metric("loss", step, loss:item()) end
    end
    return { loss = loss:item(), width = cfg.width }
  end,
}
LUA

status_count() { # folder, status: how many run.json files say so
  grep -l "\"status\": \"$2\"" "$1"/*/run.json 2>/dev/null | wc -l
}

# runs of about half a second (release build), so that the kill below lands inside one
steps=3000
# 1. the uninterrupted sweep
out=$("$knnd" sweep fit.lua --dir ref --set steps=$steps 2>&1); rc=$?
[ $rc = 0 ] && [ "$(status_count ref/fit finished)" = 6 ]; checkst $? "an uninterrupted sweep finishes its 6 runs ($(tail -3 <<<"$out"))"
[ -s ref/fit/summary.csv ] && [ -s ref/fit/summary.md ] && [ -s ref/fit/sweep.json ]; check "the sweep saves summary.csv, summary.md, sweep.json" $?
contains "$out" "| 16 | 3/3 |" && contains "$(cat ref/fit/summary.md)" "± "; check "the summary table is printed and saved with mean ± std" $?

# 2. the same sweep killed (SIGKILL) in the middle of its third run or later
"$knnd" sweep fit.lua --dir killed --set steps=$steps >killed1.out 2>&1 &
pid=$!
killed=1
for _ in $(seq 1 1200); do
  if [ "$(status_count killed/fit finished)" -ge 2 ] && [ "$(status_count killed/fit running)" -ge 1 ]; then
    kill -9 $pid && killed=0
    break
  fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
wait $pid 2>/dev/null
check "the sweep was killed with SIGKILL mid-run" $killed
left=$(status_count killed/fit running)
[ "$left" = 1 ]; check "the kill left one run marked running ($left)" $?
done_before=$(status_count killed/fit finished)
out=$("$knnd" results killed 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "interrupted"; check "knnd results shows the killed run as interrupted" $?
out=$("$knnd" sweep fit.lua --dir killed --set steps=$steps 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "--resume"; check "without --resume a used folder is refused, naming --resume ($out)" $?
out=$("$knnd" sweep fit.lua --dir killed --set steps=$steps --resume 2>&1); rc=$?
[ $rc = 0 ]; checkst $? "the sweep resumes ($(tail -2 <<<"$out"))"
skipped=$(grep -c "finished before, skipped" <<<"$out")
[ "$skipped" = "$done_before" ]; check "resume skips the $done_before finished runs (skipped $skipped)" $?
contains "$out" "interrupted (process $pid"; check "resume runs the interrupted run again" $?
[ "$(status_count killed/fit finished)" = 6 ]; check "all 6 runs finished after the resume" $?
cmp -s ref/fit/summary.csv killed/fit/summary.csv; check "killed + resumed gives the summary.csv of the uninterrupted sweep" $?
cmp -s ref/fit/summary.md killed/fit/summary.md; check "... and the same summary.md" $?
bad=0
for m in killed/fit/*/metrics.csv; do [ "$(grep -c ",loss," "$m")" = $((steps / 50)) ] || bad=1; done
[ $bad = 0 ]; check "every run's metrics.csv holds its loss points once (the redone run restarted its series)" $?

# 3. shards: 1/2 and 2/2 cover the sweep; the shard comes from the environment too
out1=$("$knnd" sweep fit.lua --dir sh --set steps=$steps --shard 1/2 2>&1); rc1=$?
out2=$(SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=2 "$knnd" sweep fit.lua --dir sh --set steps=$steps 2>&1); rc2=$?
[ $rc1 = 0 ] && [ $rc2 = 0 ] && contains "$out1" "shard 1/2" && contains "$out2" "shard 2/2 from SLURM"
check "two shards run (--shard 1/2, and SLURM_ARRAY_TASK_ID=1 of 2)" $?
[ "$(grep -c ': finished in' <<<"$out1")" = 3 ] && [ "$(grep -c ': finished in' <<<"$out2")" = 3 ]; check "each shard runs 3 runs" $?
cmp -s ref/fit/summary.csv sh/fit/summary.csv; check "the last shard's summary covers every run and equals the reference" $?

# 4. a failing run: exit 1, recorded with its error, retried only with --retry-failed
out=$("$knnd" sweep fit.lua --dir fl --set fail_seed=2 --set name=one 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "2 runs failed" && grep -q "diverged (fail_seed)" fl/one/width=4,seed=2/run.json
checkst $? "failed runs make the sweep exit 1 and keep their error ($(tail -4 <<<"$out" | head -1))"
grep -q '"status": "failed"' fl/one/width=16,seed=2/run.json; check "a failed run is marked failed" $?
out=$("$knnd" sweep fit.lua --dir fl --set fail_seed=2 --set name=one --resume 2>&1); rc=$?
[ $rc = 0 ] && [ "$(grep -c "failed before" <<<"$out")" = 2 ]; check "--resume leaves failed runs alone" $?
out=$("$knnd" sweep fit.lua --dir fl --set fail_seed=2 --set name=one --resume --retry-failed 2>&1); rc=$?
[ $rc = 1 ] && [ "$(grep -c "FAILED" <<<"$out")" = 2 ]; check "--retry-failed runs them again" $?

# 5. knnd results
out=$("$knnd" results ref/fit 2>&1); rc=$?
[ $rc = 0 ] && [ "$(grep -c finished <<<"$out")" = 6 ] && contains "$out" "loss" && contains "$out" "width=16,seed=3"
check "knnd results lists name, status, duration and metrics ($out)" $?
out=$("$knnd" results ref --sort loss 2>&1); first=$(sed -n 3p <<<"$out" | awk '{print $1}')
best=$(for f in ref/fit/*/summary.json; do echo "$(grep -o '"loss": [^,]*' "$f" | awk '{print $2}') $(basename "$(dirname "$f")")"; done | sort -g | head -1 | awk '{print $2}')
[ "$first" = "fit/$best" ]; check "--sort loss puts the lowest loss first ($first, expected fit/$best)" $?
out=$("$knnd" results ref --sort loss --desc 2>&1); first=$(sed -n 3p <<<"$out" | awk '{print $1}')
[ "$first" != "fit/$best" ]; check "--sort loss --desc puts it elsewhere" $?
out=$("$knnd" results ref/fit --json 2>&1); rc=$?
[ $rc = 0 ] && [ "$(grep -c '"status": "finished"' <<<"$out")" = 6 ] && contains "$out" '"config": {'; check "--json prints the runs" $?
"$knnd" results ref/fit --csv runs.csv >/dev/null 2>&1 && [ "$(wc -l <runs.csv)" = 7 ] && head -1 runs.csv | grep -q "^name,status,duration_s,seed,width,loss"
check "--csv writes one row per run" $?
out=$("$knnd" results ref/fit --summary 2>&1); contains "$out" "| width | runs | loss |"; check "--summary groups over seeds" $?

# 6. errors
out=$("$knnd" sweep fit.lua --shard 3/2 2>&1); rc=$?
[ $rc = 2 ] && contains "$out" "--shard expects i/n with 1 <= i <= n"; check "a bad --shard is a usage error ($out)" $?
out=$("$knnd" sweep fit.lua --shard x 2>&1); rc=$?
[ $rc = 2 ]; check "a malformed --shard is a usage error" $?
out=$("$knnd" sweep fit.lua --dir e --set stepz=3 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "unknown key 'stepz'" && contains "$out" "steps" && contains "$out" "knnd.options: name" && [ ! -e e ]
check "an unknown --set key is named with the keys (and nothing runs) ($out)" $?
out=$("$knnd" sweep fit.lua --dir e --set width=0 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "key 'width' expects an integer >= 1; got 0"; check "a bad --set value is named ($out)" $?
out=$("$knnd" sweep fit.lua --dir e --set steps=abc 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "key 'steps' expects an integer; got 'abc'"; check "a --set of the wrong type is named ($out)" $?
out=$("$knnd" sweep missing.lua 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot load script"; check "a missing script is named ($out)" $?
echo 'print("no sweep here")' > plain.lua
out=$("$knnd" sweep plain.lua 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "called no knnd.sweep"; check "a script without knnd.sweep is an error ($out)" $?
out=$("$knnd" results nowhere 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "'nowhere' is not a folder"; check "knnd results on a missing folder ($out)" $?
mkdir empty
out=$("$knnd" results empty 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "no runs under 'empty'"; check "knnd results on a folder without runs ($out)" $?
out=$("$knnd" results ref --sort fid 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "--sort fid: no such metric (the runs have: loss, width"; check "--sort an unknown metric ($out)" $?

finish
