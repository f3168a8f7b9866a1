"""Random metadata schedules over a star or a tree of links, with restarts from nothing.

Leaves append entries ``{"t": tag, "v": 0}`` to a shared list, change their own
entries in place (``v``), delete their own entries, and set or delete a key of their
own; links exchange through loss (each schedule draws a rate in 0-50%),
duplication and reordering (old frames of the link delivered again, late); the
root (tight compaction thresholds), hubs and leaves are killed and restarted with
an empty replica at random, as the *mix* says. An append counts as acknowledged
once a request carrying it was answered by a reply that integrated it
(``Link.reply_complete``). At the end (no more faults) the outcome counts:

* **lost**: an acknowledged entry not in the list (and not deleted by its
  writer), except those no surviving replica held when a kill happened;
* **doubled**: an entry in the list more than once;
* **resurrected**: an entry its writer deleted back in the list (except a
  deletion no surviving replica had seen when a kill happened), or a key its
  writer deleted back;
* **stale**: a surviving leaf whose latest write of its key, or of the ``v`` of one
  of its entries, is not what everyone holds;
* and whether every replica converged.

Used by tests/test_meta.py; run it to measure every mix:

    python tests/meta_schedules.py --seeds 1000            # every mix
    python tests/meta_schedules.py --mix tree-hub --seeds 300
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hybridsync import Link, Memory
from hybridsync.errors import HybridSyncError
from hybridsync.meta import CompactionPolicy

POLICY = CompactionPolicy(max_ratio=1.2, slack_bytes=256)
STAR = {f"n{i}": "root" for i in range(4)}
TREE = {"h0": "root", "h1": "root", "l0": "h0", "l1": "h0", "l2": "h1", "l3": "h1"}
#: Restart rates (per step that is not a write) of each mix.
MIXES: dict[str, tuple[dict[str, str], dict[str, float]]] = {
    "star-leaf": (STAR, {"kill_leaf": 0.06}),
    "star-root": (STAR, {"kill_root": 0.04}),
    "star-all": (STAR, {"kill_root": 0.03, "kill_leaf": 0.06}),
    "tree-leaf": (TREE, {"kill_leaf": 0.06}),
    "tree-hub": (TREE, {"kill_hub": 0.04}),
    "tree-root": (TREE, {"kill_root": 0.04}),
    "tree-all": (TREE, {"kill_root": 0.03, "kill_hub": 0.03, "kill_leaf": 0.06}),
}


@dataclass
class Outcome:
    acked: int = 0
    excused: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # leaves whose latest write lost
    converged: bool = True
    loss: float = 0.0

    @property
    def ok(self) -> bool:
        return self.converged and not (self.lost or self.doubled or self.resurrected or self.stale)


def _tags(memory: Memory) -> list[str]:
    return [e["t"] for e in memory.meta.to_py().get("log", []) if isinstance(e, dict)]


def run_schedule(
    seed: int,
    parents: dict[str, str] = STAR,
    *,
    steps: int = 500,
    loss: float | None = None,
    dup: float = 0.05,
    kill_leaf: float = 0.0,
    kill_hub: float = 0.0,
    kill_root: float = 0.0,
    deletes: bool = True,
) -> Outcome:
    """One schedule. ``loss``: the frame loss rate (None: drawn in 0-50%);
    ``dup``: the rate at which an old frame of a link is delivered again."""
    rng = random.Random(seed)
    if loss is None:
        loss = rng.choice([0.0, 0.1, 0.2, 0.3, 0.5])
    incarnations = iter(range(1, 1 << 30))

    def replica(name: str) -> Memory:
        return Memory(name, compaction=POLICY, incarnation=next(incarnations))

    mems = {"root": replica("root"), **{name: replica(name) for name in parents}}
    mems["root"].meta["log"] = []
    links = {n: (Link(mems[n], p), Link(mems[p], n, role="server")) for n, p in parents.items()}
    #: Old frames of each link (requests, replies), delivered again at random.
    old: dict[str, list[tuple[bool, bytes]]] = {n: [] for n in parents}
    leaves = [n for n in parents if n not in parents.values()]
    hubs = [n for n in parents if n in parents.values()]
    gen = dict.fromkeys(leaves, 1)
    count = dict.fromkeys(leaves, 0)
    written: dict[str, list[str]] = {n: [] for n in leaves}
    #: The latest write of each current leaf: its key (None: deleted) and entries' v.
    latest_key: dict[str, Any] = {}
    latest_v: dict[str, int] = {}
    deleted: set[str] = set()
    in_request: dict[str, list[str]] = {n: [] for n in parents}
    acked: set[str] = set()
    excused: set[str] = set()
    excused_del: set[str] = set()
    #: Per replica: the entries it held at some point, and the deletions it saw.
    had: dict[str, set[str]] = {n: set() for n in mems}
    knows_del: dict[str, set[str]] = {n: set() for n in mems}
    out = Outcome(kills={"root": 0, "hub": 0, "leaf": 0}, loss=loss)

    #: Per replica: (epoch id, state vector) when its tags were last read, and them.
    seen: dict[str, tuple[tuple[int, bytes], set[str]]] = {}

    def observe(name: str) -> None:
        meta = mems[name].meta
        key = (meta.epoch_id, meta.state())
        last = seen.get(name)
        if last is not None and last[0] == key and last[1] is not None:
            tags = last[1]  # nothing changed since (reading them is O(state))
        else:
            tags = set(_tags(mems[name]))
            seen[name] = (key, tags)
        had[name] |= tags
        knows_del[name] |= (deleted & had[name]) - tags

    def deliver(link: Link, data: bytes) -> bool:
        try:
            link.incoming(data)
        except HybridSyncError:
            return False
        return True

    def exchange(name: str, loss: float) -> None:
        client, server = links[name]
        if old[name] and rng.random() < dup:
            # A duplicated or late frame of this link arrives (again).
            is_reply, data = rng.choice(old[name])
            deliver(client if is_reply else server, data)
        seq = client._seq
        frame = client.outgoing()
        if client._seq != seq:  # a new request: it carries what was written so far
            in_request[name] = list(written.get(name, []))
        if frame is not None:
            old[name] = [*old[name][-5:], (False, frame)]
        if frame is None or rng.random() < loss:
            return
        deliver(server, frame)
        reply = server.outgoing()
        if reply is not None:
            old[name] = [*old[name][-5:], (True, reply)]
        observe(parents[name])
        if reply is None or rng.random() < loss:
            return
        deliver(client, reply)
        observe(name)
        if not client.awaiting_reply and client.reply_complete:
            acked.update(in_request[name])

    def restart(name: str) -> None:
        survivors = [n for n in mems if n != name]
        held = {t for n in survivors for t in _tags(mems[n])}
        excused.update(t for t in acked if t not in held)
        known = set().union(*(knows_del[n] for n in survivors))
        excused_del.update(t for t in deleted if t not in known)
        mems[name] = replica(name)
        had[name], knows_del[name] = set(), set()
        seen.pop(name, None)
        for n, p in parents.items():
            if name in (n, p):
                # The connection drops: both ends close, fresh links follow.
                links[n][0].close()
                links[n][1].close()
                links[n] = (Link(mems[n], p), Link(mems[p], n, role="server"))
                in_request[n] = []
                old[n] = []
        if name in leaves:
            gen[name], count[name], written[name] = gen[name] + 1, 0, []
            latest_key.pop(name, None)
            for t in [t for t in latest_v if t.startswith(f"{name}.")]:
                del latest_v[t]

    def own_entries(leaf: str) -> list[tuple[int, str]]:
        entries = mems[leaf].meta.to_py().get("log", [])
        mine = set(written[leaf]) - deleted
        return [
            (i, e["t"]) for i, e in enumerate(entries) if isinstance(e, dict) and e["t"] in mine
        ]

    def write(leaf: str) -> None:
        meta = mems[leaf].meta
        if "log" not in meta:
            return
        r = rng.random()
        key = f"agent/{leaf}"
        mine = own_entries(leaf) if deletes else []
        if r < 0.15 and mine:  # change an entry in place
            i, t = rng.choice(mine)
            latest_v[t] = latest_v.get(t, 0) + 1
            meta["log"][i]["v"] = latest_v[t]
        elif r < 0.25 and mine:  # delete an entry
            i, t = rng.choice(mine)
            del meta["log"][i]
            deleted.add(t)
            latest_v.pop(t, None)
            knows_del[leaf].add(t)
        elif r < 0.3 and deletes and key in meta:  # delete the key
            del meta[key]
            latest_key[leaf] = None
        else:
            count[leaf] += 1
            tag = f"{leaf}.{gen[leaf]}.{count[leaf]}"
            value = {"gen": gen[leaf], "i": count[leaf]}
            with meta.transaction():
                meta["log"].append({"t": tag, "v": 0})
                meta[key] = value
            written[leaf].append(tag)
            latest_key[leaf] = value
            latest_v[tag] = 0
            had[leaf].add(tag)

    for _ in range(steps):
        r = rng.random()
        if r < 0.3:
            write(rng.choice(leaves))
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
    final = root.meta.to_py()
    entries = [e for e in final.get("log", []) if isinstance(e, dict)]
    log = [e.get("t") for e in entries]
    out.acked, out.excused = len(acked), len(excused)
    out.lost = sorted(acked - excused - deleted - set(log))
    out.doubled = sorted({t for t in log if log.count(t) > 1})
    out.resurrected = sorted({t for t in log if t in deleted and t not in excused_del})
    for leaf in leaves:
        if leaf in latest_key:
            got = final.get(f"agent/{leaf}")
            if got != latest_key[leaf]:
                out.stale.append(leaf)
                if latest_key[leaf] is None:
                    out.resurrected.append(f"agent/{leaf}")
    for e in entries:
        if e["t"] in latest_v and e.get("v") != latest_v[e["t"]]:
            out.stale.append(e["t"])
    return out


def run_mix(mix: str, seeds: range, steps: int = 600) -> dict[str, Any]:
    """Run the schedules ``seeds`` of ``mix``; count the failed ones and each failure."""
    parents, rates = MIXES[mix]
    res: dict[str, Any] = {
        "mix": mix,
        "seeds": len(seeds),
        "failed": 0,
        "lost": 0,
        "doubled": 0,
        "resurrected": 0,
        "stale": 0,
        "diverged": 0,
        "acked": 0,
        "failures": [],
    }
    for seed in seeds:
        out = run_schedule(seed, parents, steps=steps, **rates)
        res["acked"] += out.acked
        for what in ("lost", "doubled", "resurrected", "stale"):
            res[what] += bool(getattr(out, what))
        res["diverged"] += not out.converged
        if not out.ok:
            res["failed"] += 1
            res["failures"].append((seed, out))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--mix", choices=sorted(MIXES), action="append", help="default: every mix")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("-v", "--verbose", action="store_true", help="print each failed schedule")
    args = ap.parse_args()
    print("| mix | schedules | failed | lost | doubled | resurrected | stale | diverged |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = 0
    for mix in args.mix or list(MIXES):
        t0 = time.perf_counter()
        res = run_mix(mix, range(args.first_seed, args.first_seed + args.seeds), args.steps)
        total += res["failed"]
        print(
            f"| {mix} | {res['seeds']} | {res['failed']} | {res['lost']} | {res['doubled']} "
            f"| {res['resurrected']} | {res['stale']} | {res['diverged']} |",
            flush=True,
        )
        if args.verbose:
            for seed, out in res["failures"]:
                print(
                    f"  seed {seed} (loss {out.loss}): converged={out.converged} "
                    f"lost={out.lost[:4]} doubled={out.doubled[:4]} "
                    f"resurrected={out.resurrected[:4]} stale={out.stale[:4]}",
                    file=sys.stderr,
                )
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
