"""``hybridsync bench``: hybridsync against pure-CRDT stacks (pycrdt, Loro) on
the same workloads over the same simulated lossy network.

- :mod:`hybridsync.bench.core` -- operations, network settings, the engine interface;
- :mod:`hybridsync.bench.engine_hybrid` -- hybridsync (Memory + Link over hybridsync.sim);
- :mod:`hybridsync.bench.baselines` -- pycrdt (Yjs sync protocol) and Loro;
- :mod:`hybridsync.bench.workloads`, :mod:`hybridsync.bench.runner`,
  :mod:`hybridsync.bench.report` -- the suite, its measurements and its reports.
"""
