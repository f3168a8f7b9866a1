"""What a quantized KV cache costs in precision, and whether hand-offs compound it.

A real model in llama.cpp (SmolLM2-135M-Instruct by default; ``--model PATH``
for any GGUF), on the text the repository's benchmarks use (the last version
of each PEP in the revision histories, ``HYBRIDSYNC_REVISIONS``):

1. **Perplexity** with F16, Q8_0 and Q4_0 K/V caches (and Q4_0 with
   llama.cpp's rotation of quantized caches turned off), over windows of 512
   and 2,048 tokens spread evenly over the text; with each, the mean KL
   divergence of the next-token distributions from F16's and the share of
   positions whose top token is F16's.
2. **Compounding across hand-offs**: a chain of agents. The first prefills a
   512-token prompt; at every hop 1..N the next agent restores the previous
   agent's cache (exported into a :class:`~hybridsync.kv.KVCache` and
   written back into another context: what a mirrored hand-off does),
   appends a short turn and generates 32 tokens greedily. Per hop, against
   the F16 chain: the share of generated tokens equal to F16's, the first
   divergence, and the mean KL of next-token distributions teacher-forced on
   the F16 transcript (the quantized chain re-run on F16's tokens, with its
   hand-offs). The same chains without hand-offs (one agent, one context)
   are the baseline: restores are bit-exact, so any drift is the
   quantization's alone.

    python benches/bench_precision.py [--quick] [--model PATH] [--out benches/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import _llama
from _machine import cpu_model, git_revision
from hybridsync.adapters.llama_cpp import export_sequence, restore_sequence

GENERATE = 32
PROMPT_TOKENS = 512
QUOTE = 40
VARIANTS = [("f16", True), ("q8_0", True), ("q4_0", True), ("q4_0", False)]


def variant_name(fmt: str, rotation: bool) -> str:
    return fmt if rotation else f"{fmt}, no rotation"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, from log-probabilities."""
    return (np.exp(ref) * (ref - other)).sum(axis=-1)  # type: ignore[no-any-return]


# -- 1. perplexity ---------------------------------------------------------------


def perplexity(
    model: Path, tokens: list[int], width: int, windows: int, variants: list[tuple[str, bool]]
) -> list[dict[str, Any]]:
    starts = np.linspace(0, len(tokens) - width, windows).astype(int).tolist()
    ctxs = {v: _llama.context(model, v[0], width, rotation=v[1], logits_all=True) for v in variants}
    nll: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    kls: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    top1: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for s in starts:
        window = tokens[s : s + width]
        ref: np.ndarray | None = None
        for v in variants:
            llm = ctxs[v]
            _llama.clear(llm)
            t0 = time.perf_counter()
            llm.eval(window)
            lp = log_softmax(np.asarray(llm.scores[: width - 1]))
            nll[v] += (-lp[np.arange(width - 1), window[1:]]).tolist()
            if ref is None:
                ref = lp
            kls[v] += kl(ref, lp).tolist()
            top1[v] += (ref.argmax(-1) == lp.argmax(-1)).tolist()
            print(
                f"  ppl window {width} @ {s}: {variant_name(*v)} {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    base = float(np.exp(np.mean(nll[variants[0]])))
    rows = []
    for v in variants:
        ppl = float(np.exp(np.mean(nll[v])))
        rows.append(
            {
                "window": width,
                "windows": len(starts),
                "kv": variant_name(*v),
                "perplexity": ppl,
                "vs_f16": ppl / base - 1,
                "mean_kl": float(np.mean(kls[v])),
                "top1_equal": float(np.mean(top1[v])),
            }
        )
    return rows


# -- 2. hand-off chains ------------------------------------------------------------


def turns(model_tok: Any, hops: int, tokens: list[int]) -> list[list[int]]:
    """A short turn per hop: a role, a quotation of 40 tokens from another
    part of the text (fresh context, so that hops do not repeat one
    another), and a cue to go on."""
    names = ["planner", "reviewer", "editor", "tester"]
    starts = np.linspace(4 * PROMPT_TOKENS, len(tokens) - QUOTE, hops).astype(int)
    out = []
    for h, at in enumerate(starts.tolist()):
        head = f"\n\n{names[h % 4].capitalize()} (turn {h + 1}) quotes:\n"
        tail = "\nThe next point is"
        out.append(
            model_tok.tokenize(head.encode(), add_bos=False)
            + tokens[at : at + QUOTE]
            + model_tok.tokenize(tail.encode(), add_bos=False)
        )
    return out


def chain(
    model: Path, fmt: str, prompt: list[int], hops: list[list[int]], *, handoff: bool, n_ctx: int
) -> list[list[int]]:
    """Greedy generation hop after hop; with ``handoff`` every hop runs in the
    other of two contexts, after restoring the previous hop's exported cache."""
    ctxs = [_llama.context(model, fmt, n_ctx) for _ in range(2 if handoff else 1)]
    llm = ctxs[0]
    llm.eval(prompt)
    out = []
    for h, turn in enumerate(hops):
        if handoff and h > 0:
            cache, state = export_sequence(llm)
            llm = ctxs[h % 2]
            _llama.clear(llm)
            restore_sequence(llm, cache, state)
        llm.eval(turn)
        gen = []
        for _ in range(GENERATE):
            tok = int(np.argmax(_llama.logits(llm)))
            gen.append(tok)
            llm.eval([tok])
        out.append(gen)
    return out


def teacher_forced(
    model: Path,
    fmt: str,
    prompt: list[int],
    hops: list[list[int]],
    transcript: list[list[int]],
    n_ctx: int,
) -> list[np.ndarray]:
    """Per hop, the log-probabilities of the next token at each of the
    transcript's generated positions, with a hand-off before every hop."""
    ctxs = [_llama.context(model, fmt, n_ctx, logits_all=True) for _ in range(2)]
    llm = ctxs[0]
    llm.eval(prompt)
    out = []
    for h, (turn, gen) in enumerate(zip(hops, transcript, strict=True)):
        if h > 0:
            cache, state = export_sequence(llm)
            llm = ctxs[h % 2]
            _llama.clear(llm)
            restore_sequence(llm, cache, state)
        first = llm.n_tokens + len(turn) - 1
        llm.eval(turn + gen)
        out.append(log_softmax(np.asarray(llm.scores[first : first + GENERATE])))
    return out


def compare(ref: list[list[int]], got: list[list[int]]) -> tuple[list[float], int | None]:
    """Per hop, the share of tokens equal to ``ref``'s; the first divergence
    as (hop, token) flattened to the generated-token index, or None."""
    shares, first = [], None
    for h, (a, b) in enumerate(zip(ref, got, strict=True)):
        eq = [x == y for x, y in zip(a, b, strict=True)]
        shares.append(float(np.mean(eq)))
        if first is None and not all(eq):
            first = h * GENERATE + eq.index(False)
    return shares, first


def handoffs(model: Path, tokens: list[int], n_hops: int, tok: Any) -> dict[str, Any]:
    prompt = tokens[:PROMPT_TOKENS]
    hops = turns(tok, n_hops, tokens)
    n_ctx = PROMPT_TOKENS + sum(len(t) + GENERATE for t in hops) + 16
    runs: dict[str, list[list[int]]] = {}
    for fmt in _llama.TYPES:
        for handoff in (True, False):
            t0 = time.perf_counter()
            runs[f"{fmt}/{'handoff' if handoff else 'one agent'}"] = chain(
                model, fmt, prompt, hops, handoff=handoff, n_ctx=n_ctx
            )
            print(f"  chain {fmt} handoff={handoff}: {time.perf_counter() - t0:.1f} s", flush=True)
    ref = runs["f16/handoff"]
    forced = {fmt: teacher_forced(model, fmt, prompt, hops, ref, n_ctx) for fmt in _llama.TYPES}
    rows = []
    for name, got in runs.items():
        fmt = name.split("/")[0]
        shares, first = compare(ref, got)
        kls = [float(kl(forced["f16"][h], forced[fmt][h]).mean()) for h in range(n_hops)]
        rows.append(
            {
                "run": name,
                "equal_share_per_hop": shares,
                "first_divergence_token": first,
                "mean_kl_per_hop": kls if name.endswith("handoff") else None,
                "identical_to_one_agent": got == runs[f"{fmt}/one agent"],
            }
        )
    return {"hops": n_hops, "prompt_tokens": PROMPT_TOKENS, "rows": rows}


# -- report ------------------------------------------------------------------------


def same(r: dict[str, Any]) -> str:
    if not r["run"].endswith("handoff"):
        return "-"
    return "yes" if r["identical_to_one_agent"] else "**no**"


def report(ppl: list[dict[str, Any]], chains: dict[str, Any], env: dict[str, str], cmd: str) -> str:
    out = [
        "# Precision of quantized KV caches on a real model",
        "",
        f"`{cmd}` on {env['cpu']}, {env['build']}; model: {env['model']}; text: the last "
        "version of each PEP in the revision histories.",
        "",
        "## Perplexity (next-token, over windows spread evenly over the text)",
        "",
        *(
            [
                "These rows come from an earlier run of the same command (at "
                f"{env['perplexity_from']}); the chains below were re-run.",
                "",
            ]
            if env.get("perplexity_from", "this run") != "this run"
            else []
        ),
        "| window | windows | KV | perplexity | vs f16 | mean KL from f16 (nats) "
        "| top token = f16's |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in ppl:
        out.append(
            f"| {r['window']} | {r['windows']} | {r['kv']} | {r['perplexity']:.3f} "
            f"| {r['vs_f16'] * 100:+.2f}% | {r['mean_kl']:.5f} | {r['top1_equal'] * 100:.1f}% |"
        )
    n = chains["hops"]
    out += [
        "",
        f"## Hand-off chains: {n} hops, {chains['prompt_tokens']}-token prompt, "
        f"a short turn (a {QUOTE}-token quotation from elsewhere in the text) + {GENERATE} "
        "greedy tokens per hop",
        "",
        "Share of generated tokens equal to the f16 chain's, per hop (hops 1, 2, 4, 8, 16...), "
        "first divergence (generated-token index, of "
        f"{n * GENERATE}), mean KL of next-token distributions teacher-forced on the f16 "
        "transcript (with hand-offs), and whether the chain equals the same chain without "
        "hand-offs (one agent, one context).",
        "",
    ]
    shown = [h for h in (1, 2, 4, 8, 12, 16, 24, 32) if h <= n]
    out.append(
        "| run | "
        + " | ".join(f"equal, hop {h}" for h in shown)
        + " | equal, all hops | first divergence | "
        + " | ".join(f"KL hop {h}" for h in shown)
        + " | = without hand-offs |"
    )
    out.append("|---|" + "---:|" * (2 * len(shown) + 3))
    for r in chains["rows"]:
        sh = r["equal_share_per_hop"]
        kls = r["mean_kl_per_hop"]
        first = r["first_divergence_token"]
        out.append(
            f"| {r['run']} | "
            + " | ".join(f"{sh[h - 1] * 100:.0f}%" for h in shown)
            + f" | {np.mean(sh) * 100:.0f}% | {'none' if first is None else first} | "
            + " | ".join(f"{kls[h - 1]:.4f}" if kls else "-" for h in shown)
            + f" | {same(r)} |"
        )
    return "\n".join(out) + "\n"


def plot(chains: dict[str, Any], ppl: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    hops = np.arange(1, chains["hops"] + 1)
    colors = {"f16": "tab:blue", "q8_0": "tab:orange", "q4_0": "tab:green"}
    for r in chains["rows"]:
        fmt = r["run"].split("/")[0]
        style = "-" if r["run"].endswith("handoff") else ":"
        ax1.plot(
            hops, np.array(r["equal_share_per_hop"]) * 100, style, color=colors[fmt], label=r["run"]
        )
        if r["mean_kl_per_hop"] and fmt != "f16":
            ax2.plot(hops, r["mean_kl_per_hop"], "o-", color=colors[fmt], label=f"{fmt} (KL)")
    ax1.set_xlabel("hop (hand-off)")
    ax1.set_ylabel("generated tokens equal to f16's (%)")
    ax1.set_ylim(-5, 105)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("hop (hand-off)")
    ax2.set_ylabel("mean KL from f16, teacher-forced (nats)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3, which="both")
    labels = ", ".join(
        f"{r['kv']} {r['vs_f16'] * 100:+.1f}%" for r in ppl if r["window"] == ppl[-1]["window"]
    )
    ax2.set_title(f"perplexity vs f16 ({ppl[-1]['window']}-token windows): {labels}", fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few windows, 4 hops")
    parser.add_argument("--model", type=Path, help="a GGUF (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--windows-512", type=int, help="512-token windows (default 6)")
    parser.add_argument("--windows-2048", type=int, help="2,048-token windows (default 2)")
    parser.add_argument("--hops", type=int, help="hand-offs in a chain (default 16)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--reuse-perplexity",
        type=Path,
        help="take the perplexity rows from an earlier run's json (same model); run the chains",
    )
    args = parser.parse_args()
    w512 = args.windows_512 or (2 if args.quick else 6)
    w2048 = args.windows_2048 if args.windows_2048 is not None else (0 if args.quick else 2)
    n_hops = args.hops or (4 if args.quick else 16)
    model = args.model or _llama.default_model()
    tok = _llama.context(model, "f16", 512)
    tokens: list[int] = []
    for _, text in _llama.texts():
        tokens += tok.tokenize(text.encode())
    t0 = time.perf_counter()
    reused = ""
    if args.reuse_perplexity:
        earlier = json.loads(args.reuse_perplexity.read_text())
        if earlier["env"]["model"] != model.name:
            raise SystemExit(f"{args.reuse_perplexity} is from another model")
        ppl = earlier["perplexity"]
        reused = earlier["env"].get("revision", "?")
    else:
        ppl = perplexity(model, tokens, 512, w512, VARIANTS)
        if w2048:
            ppl += perplexity(model, tokens, 2048, w2048, VARIANTS[:3])
    chains = handoffs(model, tokens, n_hops, tok)
    env = {
        "cpu": cpu_model(),
        "build": _llama.build_info(),
        "model": model.name,
        "revision": git_revision(),
        "seconds": f"{time.perf_counter() - t0:.0f}",
        "perplexity_from": reused or "this run",
    }
    cmd = "python benches/bench_precision.py" + (" --quick" if args.quick else "")
    if args.model:
        cmd += f" --model {model.name}"
    name = "precision-quick" if args.quick else "precision"
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(ppl, chains, env, cmd)
    (args.out / f"{name}.md").write_text(text + f"\n![precision]({name}.png)\n")
    (args.out / f"{name}.json").write_text(
        json.dumps({"env": env, "perplexity": ppl, "handoffs": chains}, indent=2)
    )
    plot(chains, ppl, args.out / f"{name}.png", f"{model.name}: KV precision")
    print(text)


if __name__ == "__main__":
    main()
