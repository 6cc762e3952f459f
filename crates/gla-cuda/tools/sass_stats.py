#!/usr/bin/env python3
"""Instruction mix of the kernels in a SASS listing (`cuobjdump -sass FILE.cubin`), without a GPU:
per entry point the static count of instructions, integer ones (IMAD, LEA, IADD3, SHF, VIADD, MOV,
LOP3, ISETP, SEL), HMMA, LDSM, LDS and branches; with two listings, each entry point before ->
after; with --loops, the loops of one entry point (backward branches: their instructions, HMMA,
LDSM, LDS and integer counts, nested loops counted in the enclosing one too). Static counts:
a loop's body counts once however often it runs, so read them beside the loops' trip counts.

Usage:
  eval "$(bash .ci/nvrtc-setup.sh)"
  python3 crates/gla-cuda/tools/ptxas_report.py --cubin /tmp/cub crates/gla-cuda/kernels/delta/chunk_bwd.cu
  cuobjdump -sass /tmp/cub/chunk_bwd.cubin > /tmp/after.sass     # PyPI nvidia-cuda-cuobjdump, -nvdisasm
  python3 crates/gla-cuda/tools/sass_stats.py /tmp/after.sass [REGEX]
  python3 crates/gla-cuda/tools/sass_stats.py /tmp/before.sass /tmp/after.sass [REGEX]
  python3 crates/gla-cuda/tools/sass_stats.py --loops /tmp/after.sass delta_dqk_s2_k128_bf16"""
import collections
import os
import re
import sys

INT = ("IMAD", "LEA", "IADD3", "SHF", "VIADD", "MOV", "LOP3", "ISETP", "SEL")
LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def functions(path):
    """{entry point: [(address, instruction text)]} in the listing's order."""
    out, cur = {}, None
    for line in open(path):
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            out[cur] = []
            continue
        m = LINE.match(line)
        if m and cur:
            out[cur].append((int(m.group(1), 16), m.group(2)))
    return out


def opcode(text):
    """The opcode's first part: `@P0 HMMA.16816.F32.BF16 R4, ..` -> HMMA."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def mix(ins):
    c = collections.Counter(opcode(t) for _, t in ins)
    return {"instr": sum(c.values()), "int": sum(c[k] for k in INT), "HMMA": c["HMMA"], "LDSM": c["LDSM"], "LDS": c["LDS"], "BRA": c["BRA"]}


def loops(ins):
    """Backward branches: (start, end, mix of the body)."""
    at = {a: i for i, (a, _) in enumerate(ins)}
    for i, (a, t) in enumerate(ins):
        m = re.search(r"BRA\s+(?:`\(.*?\)\s*)?(0x[0-9a-f]+)", t)
        if m:
            tgt = int(m.group(1), 16)
            if tgt < a and tgt in at:
                yield tgt, a, mix(ins[at[tgt]:i + 1])


def main(argv):
    if argv and argv[0] == "--loops":
        fs = functions(argv[1])
        for s, e, m in loops(fs[argv[2]]):
            print(f"loop {s:#07x}-{e:#07x}: " + ", ".join(f"{k} {v}" for k, v in m.items()))
        return
    paths = [a for a in argv if os.path.isfile(a)]
    rest = [a for a in argv if not os.path.isfile(a)]
    pat = re.compile(rest[0]) if rest else None
    fs = [functions(p) for p in paths]
    for name in fs[-1]:
        if pat and not pat.search(name):
            continue
        ms = [mix(f[name]) for f in fs if name in f]
        cols = "  ".join(f"{k} " + " -> ".join(str(m[k]) for m in ms) for k in ms[-1])
        print(f"{name:36s} {cols}")


if __name__ == "__main__":
    main(sys.argv[1:])
