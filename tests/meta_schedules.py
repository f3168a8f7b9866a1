"""Random metadata schedules over a tree of links, with restarts from nothing.

Leaves append to a shared list and overwrite a key of their own; links
exchange through loss; the root (tight compaction thresholds), hubs and
leaves are killed and restarted with an empty replica at random. An append
counts as acknowledged once a request carrying it was answered by a reply
that integrated it (``Link.reply_complete``). At the end (no more faults)
every acknowledged append must be in the list exactly once, except those no
surviving replica held when a kill happened, and each leaf's latest write of
its key must win.

Used by tests/test_meta.py; run it to measure other topologies:

    python tests/meta_schedules.py --tree --seeds 300 [--no-root-kills] [--no-hub-kills]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from hybridsync import Link, Memory
from hybridsync.meta import CompactionPolicy

POLICY = CompactionPolicy(max_ratio=1.2, slack_bytes=256)
STAR = {f"n{i}": "root" for i in range(4)}
TREE = {"h0": "root", "h1": "root", "l0": "h0", "l1": "h0", "l2": "h1", "l3": "h1"}


@dataclass
class Outcome:
    acked: int = 0
    excused: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # leaves whose latest write lost
    converged: bool = True

    @property
    def ok(self) -> bool:
        return self.converged and not (self.lost or self.doubled or self.stale)


def run_schedule(
    seed: int,
    parents: dict[str, str] = STAR,
    *,
    steps: int = 500,
    loss: float = 0.2,
    kill_leaf: float = 0.06,
    kill_hub: float = 0.0,
    kill_root: float = 0.04,
) -> Outcome:
    rng = random.Random(seed)
    incarnations = iter(range(1, 1 << 30))

    def replica(name: str) -> Memory:
        return Memory(name, compaction=POLICY, incarnation=next(incarnations))

    mems = {"root": replica("root"), **{name: replica(name) for name in parents}}
    mems["root"].meta["log"] = []
    links = {n: (Link(mems[n], p), Link(mems[p], n, role="server")) for n, p in parents.items()}
    leaves = [n for n in parents if n not in parents.values()]
    hubs = [n for n in parents if n in parents.values()]
    gen = dict.fromkeys(leaves, 1)
    count = dict.fromkeys(leaves, 0)
    written: dict[str, list[str]] = {n: [] for n in leaves}
    in_request: dict[str, list[str]] = {n: [] for n in parents}
    acked: set[str] = set()
    excused: set[str] = set()
    out = Outcome(kills={"root": 0, "hub": 0, "leaf": 0})

    def exchange(name: str, loss: float) -> None:
        client, server = links[name]
        seq = client._seq
        frame = client.outgoing()
        if client._seq != seq:  # a new request: it carries what was written so far
            in_request[name] = list(written.get(name, []))
        if frame is None or rng.random() < loss:
            return
        server.incoming(frame)
        reply = server.outgoing()
        if reply is None or rng.random() < loss:
            return
        client.incoming(reply)
        if not client.awaiting_reply and client.reply_complete:
            acked.update(in_request[name])

    def restart(name: str) -> None:
        held = {t for n, m in mems.items() if n != name for t in m.meta.to_py().get("log", [])}
        excused.update(t for t in acked if t not in held)
        mems[name] = replica(name)
        for n, p in parents.items():
            if name in (n, p):
                links[n][0].close()  # a client learns its hub restarted: a fresh link
                links[n] = (Link(mems[n], p), Link(mems[p], n, role="server"))
                in_request[n] = []
        if name in leaves:
            gen[name], count[name], written[name] = gen[name] + 1, 0, []

    for _ in range(steps):
        r = rng.random()
        if r < 0.3:
            leaf = rng.choice(leaves)
            m = mems[leaf]
            if "log" in m.meta:
                count[leaf] += 1
                tag = f"{leaf}.{gen[leaf]}.{count[leaf]}"
                with m.meta.transaction():
                    m.meta["log"].append(tag)
                    m.meta[f"agent/{leaf}"] = {"gen": gen[leaf], "i": count[leaf]}
                written[leaf].append(tag)
            continue
        r = (r - 0.3) / 0.7
        if r < kill_root:
            restart("root")
            out.kills["root"] += 1
        elif r < kill_root + kill_hub and hubs:
            restart(rng.choice(hubs))
            out.kills["hub"] += 1
        elif r < kill_root + kill_hub + kill_leaf:
            restart(rng.choice(leaves))
            out.kills["leaf"] += 1
        else:
            exchange(rng.choice(list(parents)), loss)
    order = [n for n in parents if n in hubs] + leaves
    for _ in range(200):
        for name in order:
            exchange(name, 0.0)
        if len({m.digest() for m in mems.values()}) == 1 and all(
            c.idle and s.idle for c, s in links.values()
        ):
            break
    root = mems["root"]
    out.converged = len({m.digest() for m in mems.values()}) == 1
    log = root.meta.to_py().get("log", [])
    out.acked, out.excused = len(acked), len(excused)
    out.lost = sorted(acked - excused - set(log))
    out.doubled = sorted({t for t in log if log.count(t) > 1})
    for leaf in leaves:
        if count[leaf] and root.meta.to_py().get(f"agent/{leaf}") != {
            "gen": gen[leaf],
            "i": count[leaf],
        }:
            out.stale.append(leaf)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="store_true", help="root, 2 hubs, 4 leaves (default: star)")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--no-root-kills", action="store_true")
    ap.add_argument("--no-hub-kills", action="store_true")
    ap.add_argument("--no-leaf-kills", action="store_true")
    args = ap.parse_args()
    parents = TREE if args.tree else STAR
    rates = {
        "kill_root": 0.0 if args.no_root_kills else 0.03,
        "kill_hub": 0.0 if args.no_hub_kills or not args.tree else 0.03,
        "kill_leaf": 0.0 if args.no_leaf_kills else 0.06,
    }
    failed = 0
    for seed in range(args.seeds):
        out = run_schedule(seed, parents, steps=600, **rates)
        if not out.ok:
            failed += 1
            print(
                f"seed {seed}: converged={out.converged} lost={out.lost[:4]} "
                f"doubled={out.doubled[:4]} stale={out.stale}"
            )
    print(f"{failed}/{args.seeds} schedules lost, doubled or kept a stale write ({rates})")


if __name__ == "__main__":
    main()
