#!/usr/bin/env python3
"""The frame codec's share of a small write: Rust codec vs its Python reference.

Two replicas hold N text documents in sync through a client/server ``Link``
pair; each cycle the client inserts 15 characters into one document and the
pair exchanges frames until both links are idle. The same cycles run with the
link's ``encode_frame``/``decode_frame`` being the Rust codec (what ships) and
the Python reference (``_py_encode_frame``/``_py_decode_frame``), alternating
in blocks so both share the machine's noise. Reported: the median process
time per cycle of each, and their ratio; both variants must leave the
replicas equal (checked every cycle).

Usage::

    python benches/bench_frame.py [--docs 100,1000,10000] [--cycles 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from hybridsync import Link, Memory
from hybridsync.sync import frame as F
from hybridsync.sync import link as link_module

CODECS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "rust": (F.encode_frame, F.decode_frame),
    "python": (F._py_encode_frame, F._py_decode_frame),
}


def _pair(docs: int, seed: int) -> tuple[Memory, Memory, Link, Link]:
    rng = random.Random(seed)
    client, server = Memory("client"), Memory("server")
    up = Link(client, "server", role="client")
    down = Link(server, "client", role="server")
    for i in range(docs):
        client.text[f"doc{i}"] = "".join(rng.choice("abcdef \n") for _ in range(200))
    _settle(up, down)
    return client, server, up, down


def _settle(up: Link, down: Link) -> None:
    for _ in range(50):
        request = up.outgoing()
        if request is not None:
            down.incoming(request)
        reply = down.outgoing()
        if reply is not None:
            up.incoming(reply)
        if up.idle and down.idle:
            return
    raise AssertionError("links did not settle")


def run(docs: int, cycles: int, block: int = 10) -> dict[str, float]:
    client, server, up, down = _pair(docs, docs)
    rng = random.Random(1)
    times: dict[str, list[float]] = {name: [] for name in CODECS}
    order = list(CODECS)
    for _ in range(0, cycles, block):
        for name in order:
            enc, dec = CODECS[name]
            link_module.encode_frame, link_module.decode_frame = enc, dec
            for _ in range(block):
                doc = f"doc{rng.randrange(docs)}"
                text = client.text[doc]
                pos = rng.randrange(len(text) + 1)
                t0 = time.process_time()
                client.text[doc] = text[:pos] + "fifteen chars.." + text[pos:]
                _settle(up, down)
                times[name].append(time.process_time() - t0)
                if server.text[doc] != client.text[doc]:
                    raise AssertionError(f"replicas differ after a cycle ({name})")
        order.reverse()
    link_module.encode_frame, link_module.decode_frame = CODECS["rust"]
    out = {name: statistics.median(ts) for name, ts in times.items()}
    out["ratio"] = out["rust"] / out["python"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="100,1000,10000")
    parser.add_argument("--cycles", type=int, default=300)
    args = parser.parse_args()
    print("| documents | Python codec (ms/cycle) | Rust codec (ms/cycle) | Rust / Python |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.docs.split(",")):
        r = run(n, args.cycles)
        print(f"| {n:,} | {r['python'] * 1e3:.3f} | {r['rust'] * 1e3:.3f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
