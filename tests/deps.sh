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
  libhdf5-dev libopenblas-dev liblapacke-dev libdnnl-dev libpng-dev zlib1g-dev \
  libcairo2-dev fonts-dejavu-core libplplot-dev plplot-driver-cairo \
  libcmocka-dev libicu-dev libfaiss-dev dataset-fashion-mnist >/dev/null
echo "deps.sh: Debian packages installed"
