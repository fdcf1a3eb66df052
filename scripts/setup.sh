#!/usr/bin/env bash
# Set up everything on a fresh Debian machine: system packages (as root), then .venv with the package.
# Idempotent: re-running only installs what is missing. Python packages come from PyPI (and the
# machine's configured mirrors); torch/torchvision are pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

APT_PACKAGES=(
  python3-venv python3-dev
  # napari needs OpenGL and Qt's xcb platform; tests run on a virtual X server
  xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 libx11-xcb1
)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages (run as root or install them): ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" torch torchvision
# sam2 ships only as source: build it against the installed torch, without its optional CUDA op
SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation sam2
"${PIP[@]}" -e ".[testing]"
.venv/bin/matchseg --version
