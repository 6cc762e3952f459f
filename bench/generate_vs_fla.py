"""Generation speed of fla's GLAForCausalLM through transformers' `generate`, on the setup of
`gla bench generate`: a random model of fla's gla_340M config saved by fla in bf16, greedy,
prompt 512 random tokens, 256 new tokens (no early stop), batch 1 and 16. Saves the model
directory first, so that `gla bench generate --model DIR` times the very same weights.

Measured per batch size, after one warm-up generate (Triton compiles fla's kernels on the first
call): time to first token = a `generate(max_new_tokens=1)` (prefill + one token), median of 3;
decode tokens/s = B * (new - 1) / (full generate - time to first token), median of 2 full runs.

Run on the GPU machine (bench/generate_vs_fla.sh runs it side by side with `gla`):
  PYTHONPATH=/tmp/site python3 bench/generate_vs_fla.py --model-dir /tmp/gla340m --out gen_fla.json
"""

import argparse
import copy
import json
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, help="where fla saves the random model (bf16)")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--config", default=None, help="GLAConfig keys as JSON (default: gla_340M)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from fla.models import GLAConfig, GLAForCausalLM

    cfg = dict(hidden_size=1024, num_hidden_layers=24, num_heads=4, tie_word_embeddings=True,
               vocab_size=32000, use_short_conv=False, expand_k=0.5, expand_v=1.0,
               initializer_range=0.02)
    if a.config:
        cfg.update(json.loads(a.config))
    torch.manual_seed(0)
    model = GLAForCausalLM(GLAConfig(**cfg)).to(dtype=torch.bfloat16).cuda().eval()
    model.save_pretrained(a.model_dir)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size

    gc = copy.deepcopy(model.generation_config)
    gc.do_sample, gc.num_beams = False, 1
    gc.eos_token_id = None  # never stop early: every run makes exactly max_new_tokens
    gc.pad_token_id = 0
    gc.temperature, gc.top_k, gc.top_p = None, None, None

    def generate(prompt, new):
        g = copy.deepcopy(gc)
        g.max_new_tokens, g.min_new_tokens = new, new
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=g)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        assert out.shape[1] == prompt.shape[1] + new, out.shape
        return dt

    results = []
    gen = torch.Generator(device="cuda").manual_seed(1)
    for b in [int(x) for x in a.batch.split(",")]:
        prompt = torch.randint(0, vocab, (b, a.prompt_len), device="cuda", generator=gen)
        t0 = time.perf_counter()
        generate(prompt, 8)  # warm-up: Triton compiles fla's kernels here on a fresh machine
        warm = time.perf_counter() - t0
        ttft = statistics.median(generate(prompt, 1) for _ in range(3))
        full = statistics.median(generate(prompt, a.new_tokens) for _ in range(2))
        decode = b * (a.new_tokens - 1) / max(full - ttft, 1e-9)
        r = dict(batch=b, prompt_len=a.prompt_len, new_tokens=a.new_tokens, ttft_ms=ttft * 1e3,
                 total_ms=full * 1e3, decode_tokens_per_s=decode,
                 ms_per_step=(full - ttft) * 1e3 / (a.new_tokens - 1), warmup_s=warm,
                 peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30)
        print(f"fla batch {b:3d}: TTFT {r['ttft_ms']:8.1f} ms  decode {decode:9.1f} tok/s  "
              f"{r['ms_per_step']:7.2f} ms/step  (warm-up {warm:.0f} s)", flush=True)
        results.append(r)
    doc = dict(who="fla", fla=__import__("fla").__version__, torch=torch.__version__,
               transformers=__import__("transformers").__version__,
               device=torch.cuda.get_device_name(), params=params, config=cfg, results=results)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
