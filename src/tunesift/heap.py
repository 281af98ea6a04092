"""Keep the process heap from growing with the number of steps.

Two causes, two bounds: glibc's heap (below) and the CPU kernel caches of oneDNN and ideep
(:func:`bound_kernel_caches`).

glibc serves allocations above ``M_MMAP_THRESHOLD`` with their own ``mmap`` (returned to the OS on
``free``) and the rest from its heap. Its threshold is *dynamic*: each freed mmapped block raises it
(up to 32 MiB), so after a few training steps the activation tensors of varying shapes (one per
batch length) come from the heap, whose free holes are kept by the process. Measured on
``tunesift finetune`` (default model, LoRA, 10 Alpaca records): 1.99 GB peak RSS with the dynamic
threshold, 1.67 GB with a fixed 1 MiB threshold, at the same speed (a 64 KiB threshold reaches
1.38 GB but costs ~30% more time in page faults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20
# entries kept by oneDNN's primitive cache and by ideep's (PyTorch's oneDNN wrapper) LRU cache;
# both default to 1,024
KERNEL_CACHE = 64
KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

_done = False


def bound_heap_growth() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (once per process); True when it was set.

    A no-op on other C libraries and when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves."""
    global _done
    if _done or not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _done


def bound_kernel_caches() -> list[str]:
    """Cap the CPU kernel caches at ``KERNEL_CACHE`` entries (unless the user set the variables);
    returns the variables set.

    oneDNN (bf16 matmuls and the like on CPU) and ideep keep every compiled kernel of every shape
    they met, up to 1,024 each. Scoring runs forwards of ever new shapes (rows x length differ
    batch to batch), so these caches grew through a long run: 320 DELIFT row labels peaked at
    2.03 GB, 640 at 2.56 GB; with the caches capped at 8, 1.68 GB at the same speed
    (docs/results.md). Each library reads its variable when it first builds a kernel, so this
    must run before the process's first CPU matmul through oneDNN (:mod:`tunesift.models` calls
    it on import)."""
    done = []
    for name in KERNEL_CACHE_VARS:
        if name not in os.environ:
            os.environ[name] = str(KERNEL_CACHE)
            done.append(name)
    return done


def trim_heap() -> bool:
    """Hand the free pages of every malloc heap and arena back to the OS (glibc ``malloc_trim(0)``);
    True when some memory was released.

    Freed small allocations stay in the process (the heap only shrinks from its top), so after
    a bench cell fine-tunes and evaluates a model a few hundred MB of free holes would otherwise
    stay resident under the next cell. Takes milliseconds; a no-op off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
