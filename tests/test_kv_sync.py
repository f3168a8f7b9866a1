"""Mirroring KV caches over links: page diffs, faults, restarts, conflicts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hybridsync import Link, Memory
from hybridsync.errors import DecodeError, LimitExceededError, OwnershipError
from hybridsync.frame import decode_frame, encode_frame
from hybridsync.kv import KVCache
from hybridsync.sim import Network


def pair(client: str = "c", server: str = "s", **kw: int) -> tuple[Memory, Memory, Link, Link]:
    cm, sm = Memory(client), Memory(server)
    return cm, sm, Link(cm, server, role="client", **kw), Link(sm, client, role="server", **kw)


def exchange(cl: Link, sv: Link) -> tuple[int, int]:
    frame = cl.outgoing()
    assert frame is not None
    sv.incoming(frame)
    reply = sv.outgoing()
    assert reply is not None
    cl.incoming(reply)
    return len(frame), len(reply)


def settle(cl: Link, sv: Link, rounds: int = 50) -> int:
    for i in range(rounds):
        if cl.idle and sv.idle:
            return i
        exchange(cl, sv)
    raise AssertionError("links did not settle")


def rows(rng: np.random.Generator, cache: KVCache, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def same(a: KVCache, b: KVCache) -> bool:
    return a.tokens == b.tokens and all(
        np.array_equal(a.quantized(layer, k), b.quantized(layer, k))
        for layer in range(a.layers)
        for k in "kv"
    )


def test_one_new_page_sends_only_that_page() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(24, 4, 128, "q4_0", page_tokens=256)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(0)
    cache.append(*rows(rng, cache, 512))
    settle(cl, sv)
    for _ in range(2):
        cache.append(*rows(rng, cache, 256))
        new_page_bytes = cache.layers * 2 * cache.kv_heads * 256 * cache.row_bytes
        up, down = exchange(cl, sv)
        assert up + down <= 1.02 * new_page_bytes + 1024
        assert cl.metrics.kv_page_bytes_sent >= new_page_bytes
        assert same(sm.kv["agent"], cache)
        assert settle(cl, sv) <= 1


@pytest.mark.parametrize("seed", range(16))
def test_random_fault_schedules_converge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    net = Network.star(
        4,
        seed=seed,
        loss=float(rng.uniform(0, 0.3)),
        duplicate=float(rng.uniform(0, 0.2)),
        reorder=float(rng.uniform(0, 0.2)),
        delay=(1, int(rng.integers(1, 4))),
    )
    _, a, b, c = net.names
    fmt = ["q4_0", "q8_0", "mlx4"][seed % 3]
    ca = KVCache(3, 2, 64, fmt, page_tokens=int(rng.integers(1, 40)), scale_type="bf16")
    cb = KVCache(2, 1, 128, "q8_0", page_tokens=16)
    net[a].kv["a"] = ca
    net[b].kv["b"] = cb
    for step in range(12):
        ca.append(*rows(rng, ca, int(rng.integers(1, 50))))
        cb.append(*rows(rng, cb, int(rng.integers(0, 20))))
        if step % 5 == 4:
            ca.truncate(int(rng.integers(0, ca.tokens)))
        if step == 6:
            net.partition(a, net.parent(a) or "", ticks=int(rng.integers(1, 10)))
        net.run(int(rng.integers(0, 5)))
    net.run_until_quiescent(5000)
    assert net.converged()
    for name in net.names:
        assert same(net[name].kv["a"], ca)
        assert same(net[name].kv["b"], cb)
    assert not net[c].kv["a"].writable


def test_restart_probes_and_sends_only_what_differs() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(8, 2, 64, "q4_0", page_tokens=32)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(1)
    cache.append(*rows(rng, cache, 200))
    settle(cl, sv)
    sent = cl.metrics.kv_pages_sent
    # A new link incarnation (a reconnect): both sides already agree.
    cl.close()
    cl2 = Link(cm, "s", role="client")
    settle(cl2, sv)
    assert cl2.metrics.kv_pages_sent == 0
    assert cl.metrics.kv_pages_sent == sent
    # The peer restored an older copy: only the differing pages travel.
    cache.append(*rows(rng, cache, 40))  # pages 6 and 7 of every head change
    cl2.close()
    cl3 = Link(cm, "s", role="client")
    settle(cl3, sv)
    assert cl3.metrics.kv_pages_sent == 8 * 2 * 2 * 2
    assert same(sm.kv["agent"], cache)


def test_frame_budget_splits_a_large_transfer() -> None:
    cm, sm, cl, sv = pair(kv_frame_bytes=20_000)
    cache = KVCache(4, 2, 64, "q8_0", page_tokens=64)
    cm.kv["agent"] = cache
    cache.append(*rows(np.random.default_rng(2), cache, 640))
    page = 64 * cache.row_bytes
    rounds = 0
    while not (cl.idle and sv.idle):
        up, _ = exchange(cl, sv)
        assert up <= 20_000 + page + 1024
        rounds += 1
    assert rounds > 5
    assert same(sm.kv["agent"], cache)


def test_tampered_pages_are_refused_and_change_nothing() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(3)
    cache.append(*rows(rng, cache, 40))
    settle(cl, sv)
    cache.append(*rows(rng, cache, 10))
    frame = decode_frame(cl.outgoing() or b"")
    (entry,) = frame.kv
    run = entry.runs[0]
    bad = bytearray(run.payload)
    bad[5] ^= 0x10
    bad_run = dataclasses.replace(run, payload=bytes(bad))
    forged = dataclasses.replace(frame, kv=(dataclasses.replace(entry, runs=(bad_run,)),))
    before = sm.digest()
    with pytest.raises(DecodeError, match="hashes to"):
        sv.incoming(encode_frame(forged))
    assert sm.digest() == before
    assert sm.kv["agent"].tokens == 40


def test_oversized_cache_is_refused() -> None:
    cm, sm = Memory("c"), Memory("s")
    cl = Link(cm, "s", role="client")
    sv = Link(sm, "c", role="server", max_kv_bytes=10_000)
    cache = KVCache(2, 2, 64, "q4_0")
    cm.kv["big"] = cache
    cache.append(*rows(np.random.default_rng(4), cache, 100))
    with pytest.raises(LimitExceededError):
        sv.incoming(cl.outgoing() or b"")
    assert "big" not in sm.kv


def test_same_name_on_two_writers_resolves_to_the_smaller_owner() -> None:
    net = Network.star(3, seed=5, loss=0.1)
    _, a, b = net.names  # "r1" < "r2"
    rng = np.random.default_rng(5)
    ca = KVCache(2, 1, 64, "q4_0", page_tokens=8)
    cb = KVCache(2, 1, 64, "q8_0", page_tokens=8)
    net[a].kv["shared"] = ca
    net[b].kv["shared"] = cb
    ca.append(*rows(rng, ca, 20))
    cb.append(*rows(rng, cb, 30))
    net.run_until_quiescent(2000)
    assert net.converged()
    for name in net.names:
        assert net[name].kv["shared"].owner == a
        assert same(net[name].kv["shared"], ca)
    with pytest.raises(OwnershipError, match="superseded"):
        cb.append(*rows(rng, cb, 1))
    assert any(c.winner == a and c.loser == b for c in net[b].kv.conflicts)
    ca.append(*rows(rng, ca, 5))  # the winner keeps writing
    net.run_until_quiescent(2000)
    assert same(net[b].kv["shared"], ca)


def test_delete_propagates_and_a_new_cache_of_that_name_survives() -> None:
    net = Network.chain(3, seed=6, loss=0.2)
    first, _, last = net.names
    cache = KVCache(1, 1, 32, "q8_0", page_tokens=4)
    net[last].kv["tmp"] = cache
    cache.append(*rows(np.random.default_rng(6), cache, 9))
    net.run_until_quiescent(2000)
    assert "tmp" in net[first].kv
    del net[last].kv["tmp"]
    net.run_until_quiescent(2000)
    assert all("tmp" not in net[n].kv for n in net.names)


def test_scan_catches_memory_changed_behind_the_api() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    cm.kv["agent"] = cache
    cache.append(*rows(np.random.default_rng(7), cache, 50))
    settle(cl, sv)
    cache._bufs[1][0][1, 33, 4] ^= 0xFF  # a stray write: the hash table does not know
    assert cache.scan() == 1
    settle(cl, sv)
    assert same(sm.kv["agent"], cache)
    assert cache.scan() == 0


def test_recreated_cache_is_not_deleted_by_the_old_deletion() -> None:
    net = Network.chain(3, seed=8, loss=0.3)
    last = net.names[-1]
    rng = np.random.default_rng(8)
    old = KVCache(1, 1, 32, "q4_0", page_tokens=4)
    net[last].kv["tmp"] = old
    old.append(*rows(rng, old, 9))
    net.run(3)
    del net[last].kv["tmp"]
    new = KVCache(1, 2, 64, "q4_0", page_tokens=4)
    net[last].kv["tmp"] = new
    new.append(*rows(rng, new, 5))
    net.run_until_quiescent(3000)
    for name in net.names:
        assert same(net[name].kv["tmp"], new)


def test_restarted_owner_gets_back_in_step_with_its_mirror() -> None:
    """An owner that restarts under its id and rebuilds its cache: the mirror
    learns the new content and sends nothing back but its page table."""
    cm, sm, cl, sv = pair()
    rng = np.random.default_rng(9)
    first = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    cm.kv["ctx"] = first
    k, v = rows(rng, first, 70)
    first.append(k, v)
    settle(cl, sv)
    assert same(sm.kv["ctx"], first)
    # The owner process restarts: a fresh replica, the same id, a shorter cache
    # whose first 40 tokens are the same.
    cm2 = Memory("c")
    again = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    again.append(k[:, :, :40], v[:, :, :40])
    cm2.kv["ctx"] = again
    cl2 = Link(cm2, "s", role="client")
    settle(cl2, sv)
    assert same(sm.kv["ctx"], again)
    assert same(cm2.kv["ctx"], again) and cm2.kv["ctx"] is again
    # Pages 0 and 1 of every (layer, K|V, head) were already there; only the
    # partial page 2 (40 = 2 x 16 + 8) travelled.
    assert cl2.metrics.kv_pages_sent == 2 * 2 * 2
    assert sv.metrics.kv_pages_sent == 0


def test_small_appends_send_only_the_new_rows() -> None:
    """Decoding appends a token or a few per cycle: a page that only grew
    travels as a tail (the rows the peer lacks), not whole again."""
    net = Network.star(3, seed=10, loss=0.2)
    _, owner, other = net.names
    cache = KVCache(4, 2, 64, "q8_0", page_tokens=256)
    net[owner].kv["dec"] = cache
    rng = np.random.default_rng(10)
    cache.append(*rows(rng, cache, 100))
    net.run_until_quiescent(2000)
    links = list(net.links.values())
    before = sum(link.metrics.kv_page_bytes_sent for link in links)
    for _ in range(20):
        cache.append(*rows(rng, cache, int(rng.integers(1, 4))))
        net.run_until_quiescent(2000)
    sent = sum(link.metrics.kv_page_bytes_sent for link in links) - before
    new_rows_bytes = (cache.tokens - 100) * cache.layers * 2 * cache.kv_heads * cache.row_bytes
    assert sent == 2 * new_rows_bytes  # owner -> hub -> other leaf: each new row twice
    assert same(net[other].kv["dec"], cache)
    assert sum(link.metrics.kv_resyncs for link in links) == 0


def test_a_tail_that_does_not_fit_heals_by_a_resync() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=32)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(11)
    cache.append(*rows(rng, cache, 40))
    settle(cl, sv)
    mirror = sm.kv["agent"]
    mirror._bufs[0][1][1, 33, 0] ^= 0x55  # the mirror's row 33 rots unnoticed
    cache.append(*rows(rng, cache, 3))  # page 1 (rows 32..42) travels as a tail
    settle(cl, sv)
    assert sv.metrics.kv_resyncs == 1
    assert same(mirror, cache)


def test_mirror_reconnecting_to_its_owner_keeps_the_link_alive() -> None:
    """The owner is the server; its mirror's link restarts. One entry per
    cache per frame: the link keeps working, text included."""
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    sm.kv["hubcache"] = cache
    rng = np.random.default_rng(12)
    cache.append(*rows(rng, cache, 40))
    settle(cl, sv)
    cl.close()
    cl2 = Link(cm, "s", role="client")
    settle(cl2, sv)
    cache.append(*rows(rng, cache, 5))
    cm.text["doc"] = "still flowing"
    settle(cl2, sv)
    assert same(cm.kv["hubcache"], cache) and sm.text["doc"] == "still flowing"


def test_scan_on_a_mirror_heals_from_the_owner() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    cm.kv["x"] = cache
    cache.append(*rows(np.random.default_rng(13), cache, 50))
    settle(cl, sv)
    mirror = sm.kv["x"]
    mirror._bufs[1][0][0, 3, 0] ^= 1
    assert sm.kv.scan() == 1
    settle(cl, sv)
    assert same(mirror, cache)
    assert cl.metrics.kv_pages_sent == 2 * 2 * 2 * 4 + 1  # the whole cache once, then the page


def test_deletions_survive_reconnects() -> None:
    a, h, b = Memory("a"), Memory("h"), Memory("b")
    la, ha = Link(a, "h", role="client"), Link(h, "a", role="server")
    lb, hb = Link(b, "h", role="client"), Link(h, "b", role="server")
    x = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    a.kv["x"] = x
    x.append(*rows(np.random.default_rng(14), x, 40))
    settle(la, ha)
    settle(lb, hb)
    assert "x" in b.kv
    del a.kv["x"]
    settle(la, ha)  # the hub learns of the deletion; b not yet
    lb.close()
    lb2 = Link(b, "h", role="client")  # b reconnects, still holding its mirror
    settle(lb2, hb)
    settle(la, ha)
    assert [list(m.kv) for m in (a, h, b)] == [[], [], []]
    # The owner deleted a cache while disconnected, then reconnects.
    y = KVCache(1, 1, 32, "q8_0", page_tokens=4)
    a.kv["y"] = y
    y.append(*rows(np.random.default_rng(15), y, 10))
    settle(la, ha)
    del a.kv["y"]
    la.close()
    la2 = Link(a, "h", role="client")
    a.text["note"] = "hi"
    settle(la2, ha)
    settle(la2, ha)
    assert "y" not in a.kv and "y" not in h.kv


def test_a_diverged_tail_heals_while_the_owner_keeps_appending() -> None:
    cm, sm, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=32)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(16)
    cache.append(*rows(rng, cache, 40))
    settle(cl, sv)
    sm.kv["agent"]._bufs[0][1][1, 33, 0] ^= 0x55
    for _ in range(10):
        cache.append(*rows(rng, cache, 1))
        exchange(cl, sv)
    assert sm.kv["agent"].digest() == cache.digest()
    assert same(sm.kv["agent"], cache)


def test_equal_tables_send_nothing() -> None:
    cm, _, cl, sv = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    cm.kv["agent"] = cache
    rng = np.random.default_rng(17)
    for _ in range(6):
        cache.append(*rows(rng, cache, int(rng.integers(1, 30))))
        settle(cl, sv)
    cm._kv_changed("agent", 0, None, first_token=0)  # a change that changed nothing
    assert not decode_frame(cl.outgoing() or b"").kv
