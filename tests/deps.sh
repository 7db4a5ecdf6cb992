#!/usr/bin/env bash
# deps.sh — install the Debian packages knnd builds, tests and runs with (run as root or with sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config git ca-certificates \
  lua5.4 liblua5.4-dev lua-busted lua-argparse lua-penlight lua-dkjson \
  libhdf5-dev libopenblas-dev liblapacke-dev libdnnl-dev libpng-dev libjpeg-dev zlib1g-dev \
  libcairo2-dev fonts-dejavu-core libplplot-dev plplot-driver-cairo \
  libcmocka-dev libicu-dev libfaiss-dev dataset-fashion-mnist \
  libfreetype-dev libharfbuzz-dev fonts-noto-color-emoji unicode-data \
  libssl-dev libzip-dev libgsl-dev python3-nbformat libopencv-video-dev \
  libopenmpi-dev openmpi-bin >/dev/null
echo "deps.sh: Debian packages installed"

# EmojiOne 2 (the emojione dataset): the PNGs of ruby-gemojione, unpacked rather than installed
# (installing pulls Ruby) into /usr/local/share/knnd/gemojione: png/ (1,794 images of 64 x 64
# named by code points, e.g. 1F469-200D-1F4BB.png), index.json and the copyright file.
GEMOJIONE=/usr/local/share/knnd/gemojione
if [ "$(ls "$GEMOJIONE/png" 2>/dev/null | wc -l)" -lt 1794 ]; then
  tmp=$(mktemp -d)
  # as root, apt downloads as the _apt user: it must be able to write there
  if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq ruby-gemojione)
  dpkg-deb -x "$tmp"/ruby-gemojione_*.deb "$tmp/x"
  gem=$(echo "$tmp"/x/usr/share/rubygems-integration/all/gems/gemojione-*)
  $SUDO mkdir -p "$GEMOJIONE"
  $SUDO rm -rf "$GEMOJIONE/png"
  $SUDO cp -r "$gem/assets/png" "$gem/config/index.json" "$tmp/x/usr/share/doc/ruby-gemojione/copyright" "$GEMOJIONE/"
  rm -rf "$tmp"
fi
echo "deps.sh: EmojiOne PNGs in $GEMOJIONE/png ($(ls "$GEMOJIONE/png" | wc -l) files)"
