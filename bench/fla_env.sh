# Sourced by the side-by-side scripts (bench/*_vs_fla.sh) on the GPU machine: libnvrtc on the
# library path, Triton's cache outside $OUT (fla's first calls compile and autotune for minutes;
# the thousands of cache files must not come back with $OUT), unbuffered Python, and fla's
# wheels from .whl/ (pip download --no-deps flash-linear-attention==0.6.0 fla-core==0.6.0 -d
# .whl) installed into /tmp/site.
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# fla autotunes every config of every Triton kernel on a fresh machine (minutes per shape), so the
# autotuning RESULTS are kept between calls: TRITON_CACHE_AUTOTUNING=1 writes them as
# *.autotune.json in the cache; fla_autotune_restore unpacks .triton-autotune/triton-autotune.tgz
# (carry it: the folder is ignored by git), fla_autotune_save packs them into
# $OUT/triton-autotune.tgz (copy it back to .triton-autotune/ for the next call).
export TRITON_CACHE_AUTOTUNING=1
mkdir -p "$TRITON_CACHE_DIR"
# Without .triton-autotune/, the results kept in the repo for this card's model are restored
# (bench/fla-autotune/<nvidia-smi name, spaces as _>.tgz: fla's own autotuning on that card, idle,
# fla 0.6.0 and the device image's Triton; only for the card it was measured on, since H100 and
# H200 share the cache keys).
fla_autotune_restore() {
    local card f
    card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr ' ' '_')
    f=.triton-autotune/triton-autotune.tgz
    [ -f "$f" ] || f="bench/fla-autotune/$card.tgz"
    if [ -f "$f" ]; then
        tar -xzf "$f" -C "$TRITON_CACHE_DIR"
        echo "restored $(find "$TRITON_CACHE_DIR" -name '*.autotune.json' | wc -l) autotuning results from $f"
    fi
}
fla_autotune_save() {
    (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar -czf "$OUT/triton-autotune.tgz" -T -)
    echo "saved $(tar -tzf "$OUT/triton-autotune.tgz" | wc -l) autotuning results to \$OUT/triton-autotune.tgz"
}
