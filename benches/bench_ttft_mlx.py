"""Time to first token with mlx-lm: restoring a mirrored 4-bit cache vs re-running prefill.

A llama-family mlx-lm model with random weights (no download) prefills
prompts of several lengths into ``QuantizedKVCache`` layers (4-bit, group
64). The cache is imported into a :class:`hybridsync.kv.KVCache`, mirrored to
another replica over a simulated link, and on that replica turned back into
mlx-lm caches for the next token. Both paths end with the same next-token
logits (checked); the table reports their time ratio, measured side by side
in one run, best of ``--repeat`` runs each.

    python benches/bench_ttft_mlx.py [--quick] [--out benches/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.models.cache import QuantizedKVCache

from _machine import cpu_model, package_version
from hybridsync import Link, Memory
from hybridsync.adapters.mlx_lm import from_mlx_lm, to_mlx_lm


def build_model(layers: int, hidden: int) -> tuple[llama.Model, llama.ModelArgs]:
    mx.random.seed(0)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=hidden * 3,
        num_attention_heads=hidden // 128,
        num_key_value_heads=max(hidden // 512, 1),
        rms_norm_eps=1e-5,
        vocab_size=4096,
    )
    model = llama.Model(args)
    mx.eval(model.parameters())  # float32: mlx's CPU backend has no fast float16 path
    return model, args


def prefill(model: llama.Model, layers: int, prompt: mx.array) -> tuple[list, mx.array]:
    cache = [QuantizedKVCache(group_size=64, bits=4) for _ in range(layers)]
    logits = model(prompt[None], cache=cache)
    mx.eval(logits, [c.keys for c in cache], [c.values for c in cache])
    return cache, logits


def mirror(kv: object) -> tuple[object, int]:
    """Mirror ``kv`` to a fresh replica over one link; returns the mirror and
    the bytes that crossed."""
    src, dst = Memory("source"), Memory("target")
    cl = Link(src, "target", role="client", kv_frame_bytes=1 << 30, max_frame_bytes=1 << 31)
    sv = Link(dst, "source", role="server", max_frame_bytes=1 << 31)
    src.kv["agent"] = kv  # type: ignore[assignment]
    wire = 0
    while not (cl.idle and sv.idle):
        up = cl.outgoing() or b""
        sv.incoming(up)
        down = sv.outgoing() or b""
        cl.incoming(down)
        wire += len(up) + len(down)
    return dst.kv["agent"], wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, short prompts")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    # mlx's CPU backend prefills slowly (tens of seconds for 512 tokens at
    # hidden size 1024 on two cores): the full run stays small enough to finish.
    layers, hidden = (4, 512) if args.quick else (8, 512)
    lengths = [256, 1024] if args.quick else [256, 512, 1024]
    model, margs = build_model(layers, hidden)
    target_model = llama.Model(margs)
    target_model.load_weights(list(tree_flatten(model.parameters())))
    mx.eval(target_model.parameters())
    rng = np.random.default_rng(0)
    rows = []
    for n in lengths:
        prompt = mx.array(rng.integers(0, margs.vocab_size, size=n))
        nxt = mx.array([[int(rng.integers(0, margs.vocab_size))]])
        t_prefill, t_restore = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            cache, _ = prefill(model, layers, prompt)
            t_prefill.append(time.perf_counter() - t0)
        kv = from_mlx_lm(cache)
        copy, wire = mirror(kv)
        want = model(nxt, cache=cache)
        mx.eval(want)
        got = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            restored = to_mlx_lm(copy)  # type: ignore[arg-type]
            got = target_model(nxt, cache=restored)
            mx.eval(got)
            t_restore.append(time.perf_counter() - t0)
        assert got is not None and np.array_equal(np.array(want), np.array(got))
        rows.append(
            {
                "prompt_tokens": n,
                "cache_bytes": kv.nbytes,
                "wire_bytes": wire,
                "prefill_s": min(t_prefill),
                "restore_s": min(t_restore),
                "speedup": min(t_prefill) / min(t_restore),
            }
        )
        print(rows[-1], flush=True)
    env = {
        "cpu": cpu_model(),
        "mlx": package_version("mlx"),
        "mlx-lm": package_version("mlx-lm"),
        "device": str(mx.default_device()),
        "model": f"llama, {layers} layers, hidden {hidden}, float32 weights, random",
    }
    cmd = "python benches/bench_ttft_mlx.py" + (" --quick" if args.quick else "")
    lines = [
        "# Time to first token (mlx-lm, random weights): restore a mirrored cache vs re-prefill",
        "",
        f"`{cmd}` on {env['cpu']} ({env['device']}), mlx {env['mlx']}, mlx-lm {env['mlx-lm']};",
        f"model: {env['model']}. Both paths give identical next-token logits.",
        "",
        "| prompt tokens | Q4 cache | mirror wire bytes / cache | re-prefill / restore |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt_tokens']} | {r['cache_bytes'] / 1e6:.1f} MB | "
            f"{r['wire_bytes'] / r['cache_bytes']:.3f} | **{r['speedup']:.0f}x** |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "ttft-mlx-quick" if args.quick else "ttft-mlx"
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
