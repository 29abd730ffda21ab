"""A fused CPU kernel for K lerp averages of the same weights: one pass, the live weights read once.

Why: K EMAs updated with K separate ``lerp_`` calls move 3K tensors' worth of memory (each reads its
average and the live weights and writes its average); fused, they move 1 + 2K (the live weights are read
once), which is the floor for K averages. Torch has no fused op for it (a broadcast ``lerp_`` over a
``[K, n]`` stack with a ``[K, 1]`` weight tensor pays for the weight broadcast and lands ~10% above the
floor; see ``benchmarks/bench_averaging.py``), so this module compiles a small C loop the first time it is
needed, with the system C compiler, and caches the shared library. It needs no torch headers (it is handed
raw pointers through ``ctypes``), so the compile takes well under a second.

Semantics are exactly ``torch.lerp`` per row j, element i:
    w_j <  0.5: a[j, i] = a[j, i] + w_j (t[i] - a[j, i])
    w_j >= 0.5: a[j, i] = t[i] - (t[i] - a[j, i]) (1 - w_j)
(the second form makes w = 1 give t exactly, which the first SWA update relies on). The loop walks
blocks of 512 elements: the live block stays in L1 while the K rows read it.

Fallback: without a C compiler :func:`load` returns ``None`` and
:class:`~trajlab.averaging.online.AveragedWeights` uses the torch path (also with
``StorageOptions(cpu_kernel=False)``, which the CLI sets for ``TRAJLAB_CPU_KERNEL=0``); both give the same
numbers (tests/averaging/test_cpu_kernel.py). Where the kernel is built and with which compiler is a
:class:`KernelBuild`; the library reads no environment variable (the CLI maps ``$TRAJLAB_CACHE`` /
``$XDG_CACHE_HOME`` and ``$CC`` onto it).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Elements per chunk handed to one thread (1 MiB of fp32): big enough that thread start-up is noise.
_CHUNK = 262_144
# Below this many elements in total one thread does everything (thread start-up would dominate).
_THREADED_MIN = 4 * _CHUNK

_SOURCE = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define BLOCK 512

#define LERP_ROWS(T, NAME)                                                                          \
static void NAME##_range(T *stack, const T *live, int64_t n, int64_t k, const T *w,                 \
                         int64_t lo, int64_t hi) {                                                  \
    for (int64_t i0 = lo; i0 < hi; i0 += BLOCK) {                                                   \
        int64_t i1 = i0 + BLOCK < hi ? i0 + BLOCK : hi;                                             \
        for (int64_t j = 0; j < k; ++j) {                                                           \
            T *restrict a = stack + j * n;                                                          \
            const T *restrict t = live;                                                             \
            const T wj = w[j];                                                                      \
            if (wj == (T)0) continue;                                                               \
            if (wj < (T)0.5) {                                                                      \
                for (int64_t i = i0; i < i1; ++i) a[i] = a[i] + wj * (t[i] - a[i]);                 \
            } else {                                                                                \
                const T cw = (T)1 - wj;                                                             \
                for (int64_t i = i0; i < i1; ++i) a[i] = t[i] - (t[i] - a[i]) * cw;                 \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
typedef struct {                                                                                    \
    T **stacks; const T **lives; const int64_t *numels; int64_t ntensors; int64_t k; const T *w;   \
    int64_t chunk; atomic_long next; int64_t nchunks; const int64_t *first_chunk;                   \
} NAME##_job;                                                                                       \
static void *NAME##_worker(void *arg) {                                                             \
    NAME##_job *job = (NAME##_job *)arg;                                                            \
    int64_t tensor = 0;                                                                             \
    for (;;) {                                                                                      \
        int64_t c = atomic_fetch_add(&job->next, 1);                                                \
        if (c >= job->nchunks) break;                                                               \
        while (tensor + 1 < job->ntensors && job->first_chunk[tensor + 1] <= c) ++tensor;           \
        while (job->first_chunk[tensor] > c) --tensor;                                              \
        int64_t lo = (c - job->first_chunk[tensor]) * job->chunk;                                   \
        int64_t n = job->numels[tensor];                                                            \
        int64_t hi = lo + job->chunk < n ? lo + job->chunk : n;                                     \
        NAME##_range(job->stacks[tensor], job->lives[tensor], n, job->k, job->w, lo, hi);           \
    }                                                                                               \
    return 0;                                                                                       \
}                                                                                                   \
int NAME(int64_t ntensors, T **stacks, const T **lives, const int64_t *numels, int64_t k,           \
         const T *w, int64_t chunk, const int64_t *first_chunk, int64_t nchunks, int nthreads) {    \
    if (nthreads <= 1) {                                                                            \
        for (int64_t s = 0; s < ntensors; ++s)                                                      \
            NAME##_range(stacks[s], lives[s], numels[s], k, w, 0, numels[s]);                       \
        return 0;                                                                                   \
    }                                                                                               \
    NAME##_job job = {stacks, lives, numels, ntensors, k, w, chunk, 0, nchunks, first_chunk};       \
    pthread_t th[64];                                                                               \
    int started = 0;                                                                                \
    if (nthreads > 64) nthreads = 64;                                                               \
    for (int p = 1; p < nthreads; ++p)                                                              \
        if (pthread_create(&th[started], 0, NAME##_worker, &job) == 0) ++started;                   \
    NAME##_worker(&job);                                                                            \
    for (int p = 0; p < started; ++p) pthread_join(th[p], 0);                                       \
    return 0;                                                                                       \
}

LERP_ROWS(float, trajlab_lerp_rows_f32)
LERP_ROWS(double, trajlab_lerp_rows_f64)
"""

# -march=native: the cache key includes the CPU's flags, so a library never meets another kind of CPU.
# -ffp-contract=fast: fused multiply-adds, as in torch's vectorised lerp (so results are bit-identical).
_CFLAGS = ("-O3", "-march=native", "-std=c11", "-ffp-contract=fast", "-shared", "-fPIC", "-pthread")

_FUNCS = {
    torch.float32: ("trajlab_lerp_rows_f32", ctypes.c_float),
    torch.float64: ("trajlab_lerp_rows_f64", ctypes.c_double),
}


def _cpu_tag() -> str:
    """What the compiled code depends on: the source, the machine's instruction set, the compiler."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return hashlib.sha256("\n".join([_SOURCE, *_CFLAGS, flags, platform.machine()]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KernelBuild:
    """Where the kernel is compiled to and with what.

    Attributes:
        cache_root: the cache root; the library goes to ``<cache_root>/trajlab/kernels`` (default
            ``~/.cache``).
        compiler: the C compiler (default: the first of ``cc``, ``gcc``, ``clang`` on PATH).
    """

    cache_root: str | None = None
    compiler: str | None = None

    def cache_dir(self) -> Path:
        root = Path(self.cache_root).expanduser() if self.cache_root else Path.home() / ".cache"
        return root / "trajlab" / "kernels"

    def find_compiler(self) -> str | None:
        return self.compiler or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compile(dst: Path, build: KernelBuild) -> None:
    cc = build.find_compiler()
    if cc is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        src = Path(tmp) / "lerp_rows.c"
        src.write_text(_SOURCE)
        out = Path(tmp) / dst.name
        cmd = [cc, *_CFLAGS, str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:500]}")
        os.replace(out, dst)  # atomic: concurrent processes (DDP ranks) never load a half-written file


@lru_cache(maxsize=8)
def load(build: KernelBuild = KernelBuild()) -> ctypes.CDLL | None:  # noqa: B008 (frozen, hashable)
    """The compiled kernel library, building it on first use; ``None`` when it cannot be had."""
    path = build.cache_dir() / f"lerp_rows_{_cpu_tag()}.so"
    try:
        if not path.exists():
            _compile(path, build)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        logger.info("fused CPU averaging kernel unavailable (%s); using torch ops", err)
        return None
    for name, ctype in _FUNCS.values():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int64,
            ctypes.POINTER(ctype),
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int64,
            ctypes.c_int,
        ]
    return lib


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers exactly ``numel`` consecutive elements of memory (contiguous or channels-last)."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def stack_like(t: Tensor, k: int) -> Tensor:
    """K copies of ``t`` as one ``[K, *shape]`` tensor whose rows have ``t``'s memory layout.

    Matching layouts let the kernel walk a row and the live tensor in the same memory order, so a
    channels-last model gets the fused pass too.
    """
    t = t.detach()
    if not _dense(t):
        return t.unsqueeze(0).repeat(k, *([1] * t.dim()))
    out = torch.empty_strided((k, *t.shape), (t.numel(), *t.stride()), dtype=t.dtype, device=t.device)
    out.copy_(t.unsqueeze(0).expand_as(out))
    return out


def supported(stacks: list[Tensor], live: list[Tensor]) -> bool:
    """Whether :func:`lerp_rows_` can run on these tensors.

    CPU, fp32 or fp64, the live tensor dense in memory and every row of its stack laid out like it.
    """
    return all(
        s.device.type == "cpu"
        and t.device.type == "cpu"
        and s.dtype == t.dtype
        and s.dtype in _FUNCS
        and s.dim() == t.dim() + 1
        and _dense(t)
        and s.stride() == (t.numel(), *t.stride())
        and s.storage_offset() == 0
        for s, t in zip(stacks, live)
    )


def lerp_rows_(lib: ctypes.CDLL, stacks: list[Tensor], live: list[Tensor], weights: list[float]) -> None:
    """In place, for every tensor pair and row j: ``stack[j].lerp_(live, weights[j])``, in one pass.

    Args:
        lib: from :func:`load`.
        stacks: ``[K, *shape]`` tensors (the K averages of one parameter each), each row laid out like
            its live tensor (:func:`stack_like`; checked by :func:`supported`).
        live: the live tensors, same shapes without the K, same dtype (see :func:`supported`).
        weights: K Python floats; a zero weight leaves its row untouched.
    """
    if not stacks:
        return
    k = len(weights)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, s in enumerate(stacks):
        by_dtype.setdefault(s.dtype, []).append(i)
    threads = max(1, torch.get_num_threads())
    for dtype, idx in by_dtype.items():
        name, ctype = _FUNCS[dtype]
        n = len(idx)
        numels = [live[i].numel() for i in idx]
        first, nchunks = [], 0
        for m in numels:
            first.append(nchunks)
            nchunks += -(-m // _CHUNK)
        use = threads if sum(numels) >= _THREADED_MIN else 1
        getattr(lib, name)(
            n,
            (ctypes.c_void_p * n)(*[stacks[i].data_ptr() for i in idx]),
            (ctypes.c_void_p * n)(*[live[i].data_ptr() for i in idx]),
            (ctypes.c_int64 * n)(*numels),
            k,
            (ctype * k)(*weights),
            _CHUNK,
            (ctypes.c_int64 * n)(*first),
            nchunks,
            use,
        )
