# lib.sh — what every tests/cli script starts with (`. "$(dirname "$0")/lib.sh"`, then `finish` as
# its last line): check prints a TAP line per check and counts the failures, contains tests a
# substring, scratch makes and enters a scratch folder removed on exit.
# shellcheck shell=bash
pass=0 fails=0
check() { # name, the condition's status ($?)
  if [ "$2" = 0 ]; then pass=$((pass + 1)); echo "ok - $1"; else fails=$((fails + 1)); echo "not ok - $1"; fi
}
# checkst: the same with the status first — needed when the name runs a command ("$(tail ...)"):
# bash expands arguments left to right, so a $? after such a name is that command's status
checkst() { check "$2" "$1"; }
contains() { grep -qF -- "$2" <<<"$1"; }
scratch() { # name: a fresh folder under the current one (ctest's tmp), entered, removed on exit
  dir=$(mktemp -d "$PWD/$1.XXXXXX") || exit 1
  trap 'rm -rf "$dir"' EXIT
  cd "$dir" || exit 1
}
finish() { # the script's status: 0 when every check passed
  echo "$pass passed, $fails failed"
  [ "$fails" = 0 ]
}
