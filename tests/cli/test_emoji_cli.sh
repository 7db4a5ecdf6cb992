#!/usr/bin/env bash
# test_emoji_cli.sh — `knnd data prepare emoji|emojione` on the real files (Debian's fonts-noto-color-emoji
# and unicode-data, ruby-gemojione's PNGs unpacked by tests/deps.sh): every emoji of the list, counts,
# captions and the report of what was left out, and the errors for missing files and options that do
# not apply.
# Usage: test_emoji_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
gemojione=/usr/local/share/knnd/gemojione/png
scratch emoji_cli

out=$("$knnd" data prepare --help 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "emojione" && contains "$out" "--font" && contains "$out" "--emoji-test"
check "prepare --help lists the emoji sources and options ($out)" $?

# ---- emoji: all of emoji-test.txt's fully-qualified emoji, none skipped ----
out=$(KNND_PROGRESS=plain "$knnd" data prepare emoji --out emoji.h5 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote emoji.h5: 3655 images" && ! contains "$out" "skipped"
check "prepare emoji writes all 3655 ($out)" $?
contains "$out" "prepare emoji" && contains "$out" "3655/3655"; check "prepare emoji shows a progress bar ($out)" $?
out=$("$knnd" data info emoji.h5 --captions 3 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "count:    3655" && contains "$out" "3 x 32 x 32" && contains "$out" "source:   emoji" \
  && contains "$out" "Smileys & Emotion, People & Body" && contains "$out" "0  grinning face [0]"
check "info of the emoji dataset ($out)" $?
out=$("$knnd" data prepare emoji --out e64.h5 --size 64 --limit 20 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote e64.h5: 20 images" && ! contains "$out" "100%"; check "prepare emoji --size --limit -q ($out)" $?

# ---- a list with one sequence the font lacks: skipped and reported ----
printf '%s\n' '# group: Smileys & Emotion' '# subgroup: face-smiling' \
  '1F600 ; fully-qualified # 😀 E1.0 grinning face' '1F469 200D 1F355 ; fully-qualified # 👩‍🍕 E99.0 woman eating pizza' \
  > list.txt
out=$("$knnd" data prepare emoji --out small.h5 --emoji-test list.txt -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "skipped 1 of 2 emoji the font has no glyph for: woman eating pizza" \
  && contains "$out" "wrote small.h5: 1 images"; check "an unsupported sequence is skipped and reported ($out)" $?

# ---- emojione ----
out=$("$knnd" data prepare emojione --out one.h5 --size 32 --limit 40 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "1784 of 1794 PNGs name an emoji of the list; 10 do not" \
  && contains "$out" "wrote one.h5: 40 images"; check "prepare emojione reports the matches ($out)" $?
out=$("$knnd" data info one.h5 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "source:   emojione" && contains "$out" "3 x 32 x 32" && contains "$out" "0  grinning face [0]"
check "info of the emojione dataset ($out)" $?
mkdir -p pngs && cp "$gemojione/1F600.png" "$gemojione/1F468-1F469-1F467.png" "$gemojione/1F3FB.png" pngs/
out=$("$knnd" data prepare emojione pngs --out mine.h5 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "2 of 3 PNGs" && contains "$out" "1F3FB.png" && contains "$out" "wrote mine.h5: 2 images"
check "prepare emojione from a folder ($out)" $?
out=$("$knnd" data info mine.h5 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "family: man, woman, girl [1]"; check "a ZWJ family file matched by its code points ($out)" $?

# ---- errors ----
out=$("$knnd" data prepare emoji somedir --out x.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "takes no directory argument"; check "emoji with a directory ($out)" $?
out=$("$knnd" data prepare emoji --out x.h5 --font nope.ttf 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "font 'nope.ttf' not found"; check "a missing font ($out)" $?
out=$("$knnd" data prepare emoji --out x.h5 --font list.txt 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot prepare emoji: 'list.txt' is not a font"; check "a file that is not a font ($out)" $?
out=$("$knnd" data prepare emojione --out x.h5 --emoji-test nope.txt 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "emoji list 'nope.txt' not found"; check "a missing emoji list ($out)" $?
out=$("$knnd" data prepare emojione --out x.h5 --font list.txt 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "--font applies to the emoji source only"; check "emojione with --font ($out)" $?
out=$("$knnd" data prepare emoji --out x.h5 --channels 3 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "do not apply to the emoji source"; check "emoji with --channels ($out)" $?
out=$("$knnd" data prepare emojione no_such_dir --out x.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot read the directory 'no_such_dir'"; check "emojione from a missing folder ($out)" $?
[ ! -e x.h5 ]; check "no file is left behind by a failed prepare" $?

finish
