"""Adapters between :class:`hybridsync.kv.KVCache` and inference runtimes.

- :mod:`hybridsync.adapters.mlx_lm`: mlx-lm's ``QuantizedKVCache`` lists and
  its ``save_prompt_cache`` files (mlx4 caches).
- :mod:`hybridsync.adapters.llama_cpp`: llama.cpp sequence state bytes
  (``llama_state_seq_get_data`` / ``set_data``) for Q4_0, Q8_0 and F16 caches.
"""
