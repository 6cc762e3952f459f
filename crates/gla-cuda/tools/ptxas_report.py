#!/usr/bin/env python3
"""Compiles a kernel source (common.cuh + FILE) with NVRTC for sm_90a and prints ptxas's resource
report (registers, spills, shared memory) per entry point. No GPU needed.
Usage: eval "$(bash .ci/nvrtc-setup.sh)"; python3 crates/gla-cuda/tools/ptxas_report.py crates/gla-cuda/kernels/lab/X.cu"""
import ctypes, os, sys

here = os.path.dirname(os.path.abspath(__file__))
common = open(os.path.join(here, "..", "kernels", "common.cuh")).read()
lib = None
for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") + [""]:
    try:
        lib = ctypes.CDLL(os.path.join(d, "libnvrtc.so.13") if d else "libnvrtc.so.13")
        break
    except OSError:
        pass
if lib is None:
    sys.exit("libnvrtc.so.13 not found (run .ci/nvrtc-setup.sh)")
for path in sys.argv[1:]:
    src = (common + "\n#line 1 \"" + os.path.basename(path) + "\"\n" + open(path).read()).encode()
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
    print("\n".join(l for l in buf.value.decode().splitlines() if "Compiling entry" in l or "Used" in l or "spill" in l or "error" in l or "warning" in l))
