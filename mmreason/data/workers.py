"""Loader worker processes that die with the process that started them.

A worker blocked on a full queue outlives a parent killed with SIGKILL and
holds its memory for good. On Linux the kernel can send the worker SIGKILL
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere PyTorch's own
liveness check is all there is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(worker_id: int = 0) -> None:
    """``worker_init_fn`` for every DataLoader: SIGKILL this worker when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: PyTorch's watchdog still ends an idle worker
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
