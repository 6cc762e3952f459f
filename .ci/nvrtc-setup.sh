#!/usr/bin/env bash
# Installs NVRTC 13.0 (PyPI wheels, no GPU or toolkit needed) into a cache directory and prints
# the export line that lets cudarc find libnvrtc.so.13. Usage:
#     eval "$(.ci/nvrtc-setup.sh)"      # then: GLA_REQUIRE_NVRTC=1 cargo test -p gla-cuda
# Cache dir: $GLA_NVRTC_DIR, default ~/.cache/gla-nvrtc. Progress goes to stderr.
set -euo pipefail
dir="${GLA_NVRTC_DIR:-$HOME/.cache/gla-nvrtc}"
site="$dir/site"
lib="$site/nvidia/cu13/lib"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    echo "nvrtc-setup: installing nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 into $site" >&2
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$site" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 >&2
fi
found="$(dirname "$(find "$site" -name 'libnvrtc.so.13' -print -quit)")"
if [ -z "$found" ] || [ ! -e "$found/libnvrtc.so.13" ]; then
    echo "nvrtc-setup: libnvrtc.so.13 not found under $site" >&2
    exit 1
fi
echo "export LD_LIBRARY_PATH=$found\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
