"""The CLI's GPU paths next to the CPU's on one small model (bench/ab_binaries.sh runs it):
`gla eval --input/--output [--grads]` (logits, loss, every gradient) and `gla generate
--prompt-ids --print-ids`. Prints the relative RMSE of the GPU's outputs against the CPU's
(bf16 GEMM operands: about 1e-2 expected) and whether the greedy ids agree.
Usage: python3 bench/cli_gpu_smoke.py GLA WORKDIR"""
import json
import os
import struct
import subprocess
import sys

gla, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)


def run(*args):
    r = subprocess.run([gla, *args], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: gla {' '.join(args)}\n{r.stderr.strip()[-2000:]}")
        sys.exit(1)
    return r.stdout


def write_ids(path, rows):
    b, t = len(rows), len(rows[0])
    data = b"".join(struct.pack("<q", x) for r in rows for x in r)
    header = json.dumps({"input_ids": {"dtype": "I64", "shape": [b, t], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for k, v in meta.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = struct.unpack(f"<{(e - s) // 4}f", blob[s:e])
    return out


def rel(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b) or 1.0
    return (num / den) ** 0.5


model = os.path.join(work, "run")
run("train", "--steps", "30", "--eval-every", "30", "--out", model, "--device", "cuda")
ids = os.path.join(work, "ids.safetensors")
write_ids(ids, [[(7 * i + 3 * j) % 200 + 1 for i in range(64)] for j in range(2)])
outs = {}
for dev in ("cpu", "cuda"):
    o = os.path.join(work, f"eval_{dev}.safetensors")
    run("eval", "--model", model, "--input", ids, "--output", o, "--grads", "--device", dev)
    outs[dev] = read(o)
cpu, gpu = outs["cpu"], outs["cuda"]
grads = [k for k in cpu if k.startswith("grad.")]
worst = max(grads, key=lambda k: rel(gpu[k], cpu[k]))
print(f"gla eval --device cuda vs cpu: logits rel {rel(gpu['logits'], cpu['logits']):.2e}, loss {gpu['loss'][0]:.6f} vs {cpu['loss'][0]:.6f}, "
      f"{len(grads)} gradients, worst {worst} rel {rel(gpu[worst], cpu[worst]):.2e}, all grads rel "
      f"{rel([x for k in grads for x in gpu[k]], [x for k in grads for x in cpu[k]]):.2e}")
gen = {dev: run("generate", "--model", model, "--prompt-ids", "5,6,7,8", "--prompt-ids", "9,10", "--max-new-tokens", "24",
                "--temperature", "0", "--print-ids", "--device", dev).strip() for dev in ("cpu", "cuda")}
print(f"gla generate --print-ids: cpu {gen['cpu']!r} / cuda {gen['cuda']!r}: {'same' if gen['cpu'] == gen['cuda'] else 'DIFFERENT'}")
