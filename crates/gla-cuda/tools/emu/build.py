#!/usr/bin/env python3
"""Builds the emulator program: emu.h, the common headers with their PTX helpers removed (emu.h
has emulated ones), the delta-rule kernels, then harness.cpp; compiles it with g++. With --nn:
the language model's element-wise, norm, conv and reduction kernels (kernels/nn/) and
nn_harness.cpp instead (--vision: ViG's kernels/nn/vision.cu and vision_harness.cpp); with --attn: the softmax attention kernels (kernels/attn/) and
attn_harness.cpp; with --bidir: the bidirectional scan's kernels (kernels/bidir/, with the GLA
chunk kernels they build on) and bidir_harness.cpp.
Usage: python3 crates/gla-cuda/tools/emu/build.py [--nn | --vision | --attn | --bidir] [out-binary]"""
import os, re, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
kern = os.path.normpath(os.path.join(here, "..", "..", "kernels"))


def gxx(src, out):
    """The compile command; EMU_ASAN=1 builds with AddressSanitizer (-O1), which turns a kernel's
    read or write past a buffer (device memory is host memory here) or past the launch's
    dynamic shared memory into a report (run with ASAN_OPTIONS=detect_leaks=0)."""
    asan = os.environ.get("EMU_ASAN") == "1"
    opt = ["-O1", "-fsanitize=address"] if asan else ["-O2"]
    return ["g++", "-std=c++17"] + opt + ["-g", "-fno-strict-aliasing", "-I", here, src, "-o", out]


def strip_asm(text):
    out, i = [], 0
    pat = re.compile(r"(template <[^>]*>\s*\n)?__device__ __forceinline__[^{;]*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        depth, j = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        body = text[m.start():j]
        out.append(text[i:m.start()])
        if "asm" not in body:
            out.append(body)
        i = j
    return "".join(out)


def header(h):
    """a kernel header with its asm helpers stripped (emu.h defines them), behind its #line"""
    return f'#line 1 "{h}"\n' + strip_asm(open(os.path.join(kern, h)).read())


def source(f, text=None):
    """a kernel file (or its edited text) behind its #line"""
    return f'#line 1 "{f}"\n' + (open(os.path.join(kern, f)).read() if text is None else text)


def build(parts, harness, default_out):
    """the program parts + the harness written to OUT.cpp (argv[1] or default_out), compiled to
    OUT; exits with g++'s status"""
    parts.append(f'#line 1 "{harness}"\n#include "{harness}"\n')
    out = sys.argv[1] if len(sys.argv) > 1 else default_out
    open(out + ".cpp", "w").write("\n".join(parts))
    cmd = gxx(out + ".cpp", out)
    print(" ".join(cmd), file=sys.stderr)
    sys.exit(subprocess.call(cmd))


if len(sys.argv) > 1 and sys.argv[1] == "--lab":
    del sys.argv[1]
    parts = ['#include "emu.h"\n']
    parts += [header(h) for h in ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "attn/common.cuh", "common/wgmma.cuh"]]
    parts.append(source("lab/wgmma_gemm.cu"))
    build(parts, "lab_harness.cpp", "/tmp/lab-emu")

if len(sys.argv) > 1 and sys.argv[1] == "--attn":
    del sys.argv[1]
    # attn/common.cuh's PTX helpers (the backward's reduction add) are emu.h's too
    parts = ['#include "emu.h"\n']
    parts += [header(h) for h in ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "attn/common.cuh", "common/wgmma.cuh"]]
    parts += [source(f) for f in ["attn/fwd.cu", "attn/bwd.cu", "attn/decode.cu", "attn/fwd_wg.cu", "attn/bwd_wg.cu"]]
    build(parts, "attn_harness.cpp", "/tmp/attn-emu")

nn = len(sys.argv) > 1 and sys.argv[1] in ("--nn", "--vision")
if nn:
    # --vision: ViG's vision kernels (nn/vision.cu) with the reductions' last step
    vision = sys.argv[1] == "--vision"
    del sys.argv[1]
    parts = ['#include "emu.h"\n', header("common/base.cuh")]
    files = ["nn/common.cuh", "nn/vision.cu", "nn/reduce.cu"] if vision else ["nn/common.cuh", "nn/elementwise.cu", "nn/norm.cu", "nn/conv.cu", "nn/reduce.cu", "nn/adamw.cu", "nn/rows.cu"]
    parts += [source(f) for f in files]
    build(parts, "vision_harness.cpp" if vision else "nn_harness.cpp", "/tmp/vision-emu" if vision else "/tmp/nn-emu")

bidir = len(sys.argv) > 1 and sys.argv[1] == "--bidir"
if bidir:
    # the bidirectional scan's kernels (kernels/bidir/) with the GLA chunk kernels they build on;
    # their `extern __shared__` arrays become the emulator's dynamic shared memory
    del sys.argv[1]
    parts = ['#include "emu.h"\n'] + [header(h) for h in ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh"]]
    for f in ["gla/chunk_fwd.cu", "gla/chunk_h.cu", "gla/chunk_bwd.cu", "bidir/chunk_fwd.cu", "bidir/chunk_bwd.cu", "bidir/flip.cu"]:
        text = re.sub(r"extern __shared__ __align__\(16\) unsigned char (\w+)\[\];", r"unsigned char* \1 = emu::g_dyn;",
                      open(os.path.join(kern, f)).read())
        parts.append(source(f, text))
    build(parts, "bidir_harness.cpp", "/tmp/bidir-emu")

exp = os.environ.get("DELTA_EMU_EXP") == "1"
site = [0]
lsite = [0]
SPLIT_STORES = ("st2(", "stg2(", "st2_pair(", "stg2_pair(")


def lo_sites(text):
    """experiment mode: every split store of the chunk kernels numbered (its lo plane dropped
    under LOMASK), and the f32 stores of u (delta_wy) numbered likewise (rounded to bf16)"""
    if not exp:
        return text
    text = text.replace("st_pair(u + ", "st_pair_u_dbg(u + ")
    pat = re.compile(r"(?<![\w])(st2|stg2|st2_pair|stg2_pair|st_pair_u_dbg)\(")
    out, i = [], 0
    for m in pat.finditer(text):
        out.append(text[i:m.start()] + f"{m.group(1)}_lo({lsite[0]}, ")
        print(f"lo site {lsite[0]}: {m.group(1)} at {text.count(chr(10), 0, m.start()) + 1}", file=sys.stderr)
        lsite[0] += 1
        i = m.end()
    out.append(text[i:])
    return "".join(out)


def sites(text, l2=False):
    """experiment mode: every bf16 rounding site of the chunk kernels numbered (cvt_dbg)"""
    if not exp:
        return text
    if l2:
        return text.replace("y[row * K + i] = cvt<E>(", "y[row * K + i] = cvt_dbg<E>(25, ")
    out = []
    for piece in text.split("cvt<E>(")[:-1]:
        out.append(piece + f"cvt_dbg<E>({site[0]}, ")
        site[0] += 1
    return "".join(out) + text.split("cvt<E>(")[-1]


parts = ['#include "emu.h"\n'] + [header(h) for h in ["common/base.cuh", "common/mma.cuh", "common/chunk.cuh", "common/wgmma.cuh"]]
for f in ["delta/common.cuh", "delta/chunk.cuh", "delta/prep.cu", "delta/recurrent.cu", "delta/chunk_fwd.cu", "delta/chunk_h.cu",
          "delta/chunk_bwd.cu"]:
    text = open(os.path.join(kern, f)).read()
    if f == "delta/common.cuh" and exp:
        text += """
static unsigned g_round_mask = getenv("DROUND") ? (unsigned)strtoul(getenv("DROUND"), 0, 0) : 0u;
template <typename E> inline E cvt_dbg(int id, float x) {
    if (sizeof(E) == 4 && ((g_round_mask >> id) & 1)) return (E)emu::bf2f(f2bf(x));
    return cvt<E>(x);
}
// LOMASK: the split stores whose lo plane is dropped (x stored as bf16(x) alone), as a kernel
// with one bf16 plane there would store it; site ids from build.py's lo_sites
static unsigned long long g_lo_mask = getenv("LOMASK") ? strtoull(getenv("LOMASK"), 0, 0) : 0ull;
static inline float lo_cut(int id, float x) {
    return ((g_lo_mask >> id) & 1) ? emu::bf2f(f2bf(x)) : x;
}
template <typename E> inline void st2_lo(int id, E* hi, E* lo, int i, float x) { st2(hi, lo, i, lo_cut(id, x)); }
template <typename E> inline void stg2_lo(int id, E* base, idx_t plane, idx_t i, float x) { stg2(base, plane, i, lo_cut(id, x)); }
template <typename E> inline void st2_pair_lo(int id, E* hi, E* lo, int i, float a, float b) {
    st2_pair(hi, lo, i, lo_cut(id, a), lo_cut(id, b));
}
template <typename E> inline void stg2_pair_lo(int id, E* base, idx_t plane, idx_t i, float a, float b) {
    stg2_pair(base, plane, i, lo_cut(id, a), lo_cut(id, b));
}
inline void st_pair_u_dbg_lo(int id, float* p, float a, float b) { st_pair<float>(p, lo_cut(id, a), lo_cut(id, b)); }
"""
    if f in ("delta/chunk.cuh", "delta/chunk_fwd.cu", "delta/chunk_h.cu", "delta/chunk_bwd.cu"):
        text = lo_sites(sites(text))
    if f == "delta/prep.cu":
        text = sites(text, True)
    parts.append(source(f, text))
build(parts, "harness.cpp", "/tmp/delta-emu")
