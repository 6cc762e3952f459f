#!/usr/bin/env python3
"""Compiles a kernel file with NVRTC for sm_90a and prints ptxas's resource report (registers,
spills, shared memory) per entry point. No GPU needed. The program is the one src/kernels.rs
builds: common/base.cuh, common/mma.cuh, common/chunk.cuh for gla/chunk_*.cu (base.cuh alone for
the other gla/ files), common/base.cuh and nn/common.cuh for nn/*.cu, those three and
attn/common.cuh for attn/*.cu, delta/common.cuh for delta/*.cu (delta/chunk.cuh too for
delta/chunk_*.cu), and the GLA chunk files whose building blocks they run for bidir/chunk_*.cu.
Usage: eval "$(bash .ci/nvrtc-setup.sh)"; python3 crates/gla-cuda/tools/ptxas_report.py [--cubin DIR] crates/gla-cuda/kernels/gla/chunk_bwd.cu
--cubin DIR also writes each file's cubin to DIR/<name>.cubin, whose SASS `cuobjdump -sass` prints
without a GPU (PyPI: nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm, 13.2 or later; PATH to their
nvidia/cu13/bin): how ptxas scheduled a kernel's loads and products, before any device time."""
import ctypes, os, sys

here = os.path.dirname(os.path.abspath(__file__))
kernels = os.path.normpath(os.path.join(here, "..", "kernels"))


def headers(path):
    rel = os.path.relpath(os.path.abspath(path), kernels)
    if rel.startswith("nn/"):
        return ["common/base.cuh", "nn/common.cuh"]
    if rel.startswith("lab/") or rel in ("attn/fwd_wg.cu", "attn/bwd_wg.cu"):
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "attn/common.cuh", "common/wgmma.cuh"]
    if rel.startswith("attn/"):
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "attn/common.cuh"]
    if rel.startswith("bidir/chunk_"):
        gla = ["gla/chunk_fwd.cu", "gla/chunk_h.cu"] + (["gla/chunk_bwd.cu"] if rel == "bidir/chunk_bwd.cu" else [])
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh"] + gla
    if rel.startswith("delta/chunk_"):
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "common/wgmma.cuh", "delta/common.cuh", "delta/chunk.cuh"]
    if rel.startswith("delta/"):
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "delta/common.cuh"]
    if rel.startswith("gla/chunk_") and rel != "gla/chunk_fwd_f32.cu":
        return ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh"]
    return ["common/base.cuh"]


lib = None
for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") + [""]:
    try:
        lib = ctypes.CDLL(os.path.join(d, "libnvrtc.so.13") if d else "libnvrtc.so.13")
        break
    except OSError:
        pass
if lib is None:
    sys.exit("libnvrtc.so.13 not found (run .ci/nvrtc-setup.sh)")
args = sys.argv[1:]
cubin_dir = None
if len(args) >= 2 and args[0] == "--cubin":
    cubin_dir, args = args[1], args[2:]
    os.makedirs(cubin_dir, exist_ok=True)
for path in args:
    parts = [(h, open(os.path.join(kernels, h)).read()) for h in headers(path)] + [(os.path.relpath(os.path.abspath(path), kernels), open(path).read())]
    src = "".join(f'#line 1 "{name}"\n{text}\n' for name, text in parts).encode()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None) == 0
    opts = [b"--gpu-architecture=sm_90a", b"--std=c++17", b"--fmad=true", b"-default-device", b"--ptxas-options=-v"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, buf)
    print(f"== {path} (rc {rc})")
    print("\n".join(l for l in buf.value.decode().splitlines() if "Compiling entry" in l or "Used" in l or "spill" in l or "error" in l or "warning" in l or "(C75" in l))
    if cubin_dir is not None and rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        cub = ctypes.create_string_buffer(n.value)
        assert lib.nvrtcGetCUBIN(prog, cub) == 0
        out = os.path.join(cubin_dir, os.path.splitext(os.path.basename(path))[0] + ".cubin")
        open(out, "wb").write(cub.raw)
        print(f"wrote {out}")
