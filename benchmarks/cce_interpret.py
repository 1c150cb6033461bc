"""cut-cross-entropy's Triton kernels on the CPU, under ``TRITON_INTERPRET=1``.

Its kernels call CUDA's libdevice ``log1p``, which Triton's interpreter does not
implement (it returns nothing); :func:`patch` gives them ``log(1 + x)`` instead. Used by
the CPU rehearsal of ``gpu_checks.py`` only: on a GPU the kernels run unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _log1p(a):
    return tl.log(1.0 + a)


def patch() -> None:
    """Replace ``cut_cross_entropy.tl_utils.tl_log1p`` (read by its kernels at run time)."""
    from cut_cross_entropy import tl_utils

    tl_utils.tl_log1p = _log1p
