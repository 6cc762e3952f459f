#!/usr/bin/env bash
# Registers, stack and shared memory of every CUDA kernel entry point, without a GPU: compiles
# every source with NVRTC (`gla kernels compile`) and reads the cubins with cuobjdump (from the
# PyPI wheel nvidia-cuda-cuobjdump; 13.2 reads NVRTC 13.0's cubins). A kernel at 255 registers
# with a stack frame is spilling (ptxas puts spills on the stack): the first thing to look at
# when one runs slower than its tiles say it should.
# Usage: tools/kernel_resources.sh [path/to/gla built --features cuda] [arch, default sm_90a]
#   env: TOOLS_DIR (default ~/.cache/gla-tools) for the wheel, CACHE (default a temp dir) for cubins
# Prints one line per entry point: name, registers, stack bytes, static shared bytes, sorted by
# registers then stack (dynamic shared memory is the host's launch choice: src/*/dispatch.rs).
set -euo pipefail
G="${1:-target/debug/gla}"
ARCH="${2:-sm_90a}"
TOOLS="${TOOLS_DIR:-$HOME/.cache/gla-tools}"
CUOBJ="$TOOLS/nvidia/cu13/bin/cuobjdump"
if [ ! -x "$CUOBJ" ]; then
    echo "kernel_resources: installing nvidia-cuda-cuobjdump==13.2.86 into $TOOLS" >&2
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$TOOLS" nvidia-cuda-cuobjdump==13.2.86 >&2
    chmod +x "$CUOBJ"
fi
eval "$(bash "$(dirname "$0")/../.ci/nvrtc-setup.sh")"
CACHE="${CACHE:-$(mktemp -d)}"
"$G" kernels compile --arch "$ARCH" --cache "$CACHE" >&2
for f in "$CACHE"/*-"$ARCH"-*.cubin; do
    "$CUOBJ" --dump-resource-usage "$f"
done | awk '/Function/ { name = $2; sub(":", "", name) }
            /REG:/ { for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
                     printf "%-40s reg %3d  stack %4d  shared %6d\n", name, v["REG"], v["STACK"], v["SHARED"] }' |
    sort -k3,3nr -k5,5nr
