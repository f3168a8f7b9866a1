"""Time to first token on a real model: restore a mirrored cache vs re-run prefill.

SmolLM2-135M-Instruct in llama.cpp (llama-cpp-python, CPU; ``--model PATH``
for any GGUF). For each prompt length (the start of a PEP from the revision
histories) and each KV type (F16, Q8_0, Q4_0), side by side in one run:

- **prefill**: agent A evaluates the prompt in a fresh context and gets the
  next-token logits (what an agent without a mirror runs);
- **cold mirror**: A's sequence exported into a :class:`~hybridsync.kv.KVCache`
  crosses a real hybridsync link (a session and a hub over loopback
  WebSocket, both in this process) to replica B, which restores it into its
  own context and evaluates the prompt's last token: transfer, then restore;
- **pre-mirrored hand-off**: A keeps generating (32 tokens) while its cache
  is mirrored every 8 tokens; at hand-off only the rows written since the
  last cycle cross (export on A, transfer, restore on B).

Context creation (model load + context) is timed on its own. B's logits are
checked equal to A's (bit for bit) on every path. Transfer times for 1 Gb/s
and 100 Mb/s links are projected from the measured wire bytes (bytes x 8 /
rate, on top of the measured restore). Best of ``--repeat`` runs.

    python benches/bench_ttft.py [--quick] [--model PATH] [--out benches/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import _llama
from _machine import cpu_model, git_revision
from hybridsync import Memory
from hybridsync.adapters.llama_cpp import export_sequence, restore_sequence
from hybridsync.kv import KVCache
from hybridsync.net import Hub, Session, connect, serve

RATES = {"1 Gb/s": 1e9, "100 Mb/s": 1e8}
GENERATE, CYCLE = 32, 8


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


class Wire:
    """A session (A, the cache's owner) and a hub (B) over loopback WebSocket."""

    def __init__(self, a: Memory, b: Memory, session: Session, hub: Hub) -> None:
        self.a, self.b, self.session, self.hub = a, b, session, hub

    def bytes(self) -> int:
        link = self.session.link
        assert link is not None
        return link.metrics.bytes_sent + link.metrics.bytes_received

    async def push(self, name: str, cache: KVCache) -> tuple[float, int]:
        """Seconds and wire bytes until B holds a complete mirror of ``cache``
        (A's change made at the call)."""
        want = (cache.tokens, cache.digest())
        before = self.bytes()
        t0 = time.perf_counter()
        if name not in self.a.kv:
            self.a.kv[name] = cache
        while True:
            await self.session.sync(timeout=600)
            m = self.b.kv.get(name)
            if m is not None and m.ready and (m.tokens, m.digest()) == want:
                return time.perf_counter() - t0, self.bytes() - before


def restore_and_step(llm: Any, cache: KVCache, token: int) -> np.ndarray:
    _llama.clear(llm)
    restore_sequence(llm, cache)
    llm.eval([token])
    return _llama.logits(llm)


async def cell(
    wire: Wire, model: Path, fmt: str, tokens: list[int], repeat: int, prefill_repeat: int
) -> dict[str, Any]:
    n = len(tokens)
    n_ctx = n + 256
    t_ctx, a = best(lambda: _llama.context(model, fmt, n_ctx), 1)

    def prefill() -> np.ndarray:
        _llama.clear(a)
        a.eval(tokens[:-1])
        a.eval(tokens[-1:])
        return _llama.logits(a)

    t_prefill, _ = best(prefill, prefill_repeat)
    # The reference: A's prompt minus its last token, exported; then the last token.
    _llama.clear(a)
    a.eval(tokens[:-1])
    t_export, (cache, _) = best(lambda: export_sequence(a), 1)
    a.eval(tokens[-1:])
    want = _llama.logits(a)

    transfers = []
    name = ""
    for r in range(repeat):
        if name:
            del wire.a.kv[name]
        name = f"{fmt}-{n}-{r}"
        transfers.append(await wire.push(name, cache))
    t_transfer = min(t for t, _ in transfers)
    wire_bytes = min(b for _, b in transfers)
    mirror = wire.b.kv[name]

    t_ctx_b, b = best(lambda: _llama.context(model, fmt, n_ctx), 1)
    t_restore, got = best(lambda: restore_and_step(b, mirror, tokens[-1]), repeat)
    assert np.array_equal(got, want), f"{fmt} {n}: restored logits differ"

    # Pre-mirrored hand-off: A generates, mirroring every CYCLE tokens.
    handoffs = []
    for _ in range(repeat):
        _llama.clear(a)
        restore_sequence(a, cache)  # A is back at the prompt (its own cache)
        owned = KVCache(
            cache.layers,
            cache.kv_heads,
            cache.head_dim,
            cache.fmt,
            runtime=cache.geometry.runtime,
        )
        export_sequence(a, into=owned)
        if name in wire.a.kv:
            del wire.a.kv[name]
        name = f"{fmt}-{n}-handoff-{len(handoffs)}"
        await wire.push(name, owned)
        tok = tokens[-1]
        a.eval([tok])
        for i in range(GENERATE):
            tok = int(np.argmax(_llama.logits(a)))
            if i + 1 == GENERATE:
                break
            a.eval([tok])
            if (i + 1) % CYCLE == 0:
                export_sequence(a, into=owned)
                await wire.push(name, owned)
        # Hand-off: A stops; the rows since the last cycle cross; B goes on.
        t0 = time.perf_counter()
        export_sequence(a, into=owned)
        t_exp = time.perf_counter() - t0
        t_tx, delta = await wire.push(name, owned)
        t0 = time.perf_counter()
        got = restore_and_step(b, wire.b.kv[name], tok)
        t_rs = time.perf_counter() - t0
        t0 = time.perf_counter()
        restore_and_step(b, wire.b.kv[name], tok)  # the same cache, already on B
        t_local = time.perf_counter() - t0
        a.eval([tok])
        assert np.array_equal(got, _llama.logits(a)), f"{fmt} {n}: hand-off logits differ"
        handoffs.append((t_exp + t_tx + t_rs, t_exp, t_tx, t_rs, delta, t_local))
    del wire.a.kv[name]
    h = min(handoffs)
    t_local = min(x[5] for x in handoffs)
    return {
        "tokens": n,
        "kv": fmt,
        "cache_bytes": cache.nbytes,
        "wire_bytes": wire_bytes,
        "context_s": t_ctx,
        "context_b_s": t_ctx_b,
        "prefill_s": t_prefill,
        "export_s": t_export,
        "transfer_s": t_transfer,
        "restore_s": t_restore,
        "handoff_s": h[0],
        "handoff_export_s": h[1],
        "handoff_transfer_s": h[2],
        "handoff_restore_s": h[3],
        "handoff_wire_bytes": h[4],
        "handoff_local_restore_s": t_local,
        "logits_equal": True,
    }


def projected(r: dict[str, Any], rate: float) -> float:
    return float(r["restore_s"] + r["wire_bytes"] * 8 / rate)


def handoff_projected(r: dict[str, Any], rate: float) -> float:
    return float(
        r["handoff_export_s"] + r["handoff_restore_s"] + r["handoff_wire_bytes"] * 8 / rate
    )


async def run(args: argparse.Namespace, model: Path) -> list[dict[str, Any]]:
    text = "\n\n".join(t for _, t in _llama.texts())
    tok = _llama.context(model, "f16", 512)
    all_tokens = tok.tokenize(text.encode())
    del tok
    secret = secrets.token_bytes(32)
    a, b = Memory("agent-a"), Memory("agent-b")
    rows = []
    async with (
        serve(b, "127.0.0.1", 0, secret=secret, max_frame_bytes=64 << 20, keepalive=None) as hub,
        connect(a, hub.url, secret=secret, max_frame_bytes=64 << 20, keepalive=None) as session,
    ):
        await session.wait_connected()
        wire = Wire(a, b, session, hub)
        for n in args.lengths:
            for fmt in args.types:
                prefill_repeat = 1 if n >= 2048 else args.prefill_repeat
                r = await cell(wire, model, fmt, all_tokens[:n], args.repeat, prefill_repeat)
                rows.append(r)
                print(
                    f"{n:5d} {fmt:5s} prefill {r['prefill_s']:.3f} s, restore "
                    f"{r['restore_s'] * 1e3:.1f} ms + transfer {r['transfer_s'] * 1e3:.1f} ms, "
                    f"hand-off {r['handoff_s'] * 1e3:.1f} ms, "
                    f"{r['wire_bytes'] / 1e6:.1f} MB",
                    flush=True,
                )
    return rows


def report(rows: list[dict[str, Any]], env: dict[str, str], cmd: str) -> str:
    f16_prefill = {r["tokens"]: r["prefill_s"] for r in rows if r["kv"] == "f16"}
    ms = 1e3
    out = [
        "# Time to first token on a real model: restore a mirrored cache vs re-prefill",
        "",
        f"`{cmd}` on {env['cpu']}, {env['build']}, {env['threads']} threads; model: "
        f"{env['model']}. Prompt: the start of a PEP (revision histories). Best of "
        f"{env['repeat']} (prefill: best of {env['prefill_repeat']}, one run at 2,048 tokens). "
        "Restored next-token logits equal the source's bit for bit in every row.",
        "",
        "restore = set the sequence state in B's context + evaluate the prompt's last token; "
        "transfer = A's cache to B over a hybridsync session over loopback WebSocket, until B's "
        "mirror is complete; context creation (model load + context) is not in these columns "
        "(its own column, and the ratio with it).",
        "",
        "| tokens | KV | cache | wire bytes | prefill | restore | transfer (loopback) "
        "| restore + transfer | **prefill / (restore + transfer)** "
        "| same, with B's context creation "
        "| f16 prefill / (restore + transfer) | 1 Gb/s (projected) | 100 Mb/s (projected) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rt = r["restore_s"] + r["transfer_s"]
        out.append(
            f"| {r['tokens']} | {r['kv']} | {r['cache_bytes'] / 1e6:.1f} MB "
            f"| {r['wire_bytes'] / 1e6:.1f} MB | {r['prefill_s']:.2f} s "
            f"| {r['restore_s'] * ms:.1f} ms | {r['transfer_s'] * ms:.1f} ms | {rt * ms:.1f} ms "
            f"| **{r['prefill_s'] / rt:.0f}x** | {r['prefill_s'] / (rt + r['context_b_s']):.0f}x "
            f"(context {r['context_b_s'] * ms:.0f} ms) "
            f"| {f16_prefill[r['tokens']] / rt:.0f}x | "
            + " | ".join(
                f"{r['prefill_s'] / projected(r, rate):.0f}x ({projected(r, rate) * ms:.0f} ms)"
                for rate in RATES.values()
            )
            + " |"
        )
    out += [
        "",
        f"## Pre-mirrored hand-off (A generates {GENERATE} tokens, mirrored every {CYCLE})",
        "",
        "At hand-off A exports the rows written since its last cycle into its mirrored cache, "
        "they cross, B restores and evaluates the next token. local restore = B restoring the same "
        "cache again once it is there (measured right after each hand-off); cold mirror = "
        "restore + transfer of the whole cache (the table above).",
        "",
        "| tokens | KV | wire bytes at hand-off | hand-off TTFT (loopback) | / local restore "
        "| / local restore, 100 Mb/s (projected) | prefill / hand-off | cold mirror / hand-off "
        "| cold mirror / hand-off, 100 Mb/s (projected) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h100 = handoff_projected(r, RATES["100 Mb/s"])
        out.append(
            f"| {r['tokens']} | {r['kv']} | {r['handoff_wire_bytes'] / 1e3:.0f} kB "
            f"| {r['handoff_s'] * ms:.1f} ms "
            f"(export {r['handoff_export_s'] * ms:.1f} + transfer "
            f"{r['handoff_transfer_s'] * ms:.1f} + restore {r['handoff_restore_s'] * ms:.1f}) "
            f"| {r['handoff_s'] / r['handoff_local_restore_s']:.2f}x "
            f"| {h100 / r['handoff_local_restore_s']:.2f}x "
            f"| **{r['prefill_s'] / r['handoff_s']:.0f}x** "
            f"| {(r['restore_s'] + r['transfer_s']) / r['handoff_s']:.2f}x "
            f"| {projected(r, RATES['100 Mb/s']) / h100:.2f}x |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"f16": "tab:blue", "q8_0": "tab:orange", "q4_0": "tab:green"}
    for fmt, color in colors.items():
        rs = [r for r in rows if r["kv"] == fmt]
        if not rs:
            continue
        x = [r["tokens"] for r in rs]
        ax.plot(x, [r["prefill_s"] for r in rs], "o-", color=color, label=f"{fmt} prefill")
        ax.plot(
            x,
            [projected(r, RATES["100 Mb/s"]) for r in rs],
            "s--",
            color=color,
            label=f"{fmt} restore + transfer at 100 Mb/s (projected)",
        )
        ax.plot(
            x,
            [r["restore_s"] + r["transfer_s"] for r in rs],
            "^:",
            color=color,
            label=f"{fmt} restore + transfer (loopback)",
        )
        ax.plot(x, [r["handoff_s"] for r in rs], "x-.", color=color, label=f"{fmt} hand-off")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 and 512 tokens, fewer runs")
    parser.add_argument("--model", type=Path, help="a GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--repeat", type=int, help="runs per restore/transfer (best of)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--lengths",
        type=lambda v: [int(x) for x in v.split(",")],
        help="prompt lengths, comma-separated (default 256,512,1024,2048; SmolLM2 allows up to "
        "8,192: 4,096 takes minutes of prefill per KV type on two cores)",
    )
    args = parser.parse_args()
    if not args.lengths:
        args.lengths = [256, 512] if args.quick else [256, 512, 1024, 2048]
    args.types = list(_llama.TYPES)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.prefill_repeat = 1 if args.quick else 2
    model = args.model or _llama.default_model()
    rows = asyncio.run(run(args, model))
    env = {
        "cpu": cpu_model(),
        "build": _llama.build_info(),
        "threads": "2",
        "model": model.name,
        "repeat": str(args.repeat),
        "prefill_repeat": str(args.prefill_repeat),
        "revision": git_revision(),
    }
    cmd = "python benches/bench_ttft.py" + (" --quick" if args.quick else "")
    if args.lengths != ([256, 512] if args.quick else [256, 512, 1024, 2048]):
        cmd += " --lengths " + ",".join(map(str, args.lengths))
    if args.model:
        cmd += f" --model {model.name}"
    name = "ttft-quick" if args.quick else "ttft"
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(rows, env, cmd)
    (args.out / f"{name}.md").write_text(text + f"\n![TTFT]({name}.png)\n")
    (args.out / f"{name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    plot(rows, args.out / f"{name}.png", f"TTFT, {model.name} on {env['cpu']} (2 threads)")
    print(text)


if __name__ == "__main__":
    main()
