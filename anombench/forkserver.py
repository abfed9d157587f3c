"""The fork server every isolated job's process is forked from (``multiprocessing``'s forkserver).

Why a module of its own, importing nothing heavy: the server preloads torch and every plugin (about 4.5 CPU-seconds
of imports). ``anombench run`` starts it before importing them itself, so that the two sets of imports run side by
side on two cores instead of one after the other, and the first job does not wait for the server (on the
quickstart that wait was about 5 s, the whole cost of isolation).

The server never runs torch: a child starts in tens of milliseconds, and never inherits OpenMP threads (a child
forked from a parent whose torch had run multi-threaded hangs in its first parallel op) nor a CUDA context.
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

from anombench.plugins import ENTRY_POINT_GROUP


def context() -> BaseContext:
    """The forkserver context, its server preloading anombench's isolation module (the runner) and every plugin
    module, so each child starts with them imported. Started on first use; it lives as long as this process."""
    ctx = multiprocessing.get_context("forkserver")
    plugins = [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    ctx.set_forkserver_preload(["anombench.isolation", *dict.fromkeys(plugins)])
    _start_server()
    return ctx


def _start_server() -> None:
    """Start the fork server (once) with PYTHONSAFEPATH set. It runs as ``python -c``, which puts the current
    directory first on sys.path, and Python <= 3.12's fork server ignores the parent's sys.path: run from the folder
    holding a clone named ``anombench``, the clone's folder would shadow the installed package in every child
    (Python 3.11+ honours PYTHONSAFEPATH; it is set for the server's start only)."""
    previous = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if previous is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = previous


def warm_up() -> None:
    """Start the fork server now, so that its imports overlap with this process's own (and with the run's planning)
    instead of delaying the first job."""
    context()


def release_fork_server() -> None:
    """In a child: close the fork server's "alive" pipe that multiprocessing hands every child (so that it can start
    processes through the same server): while any process holds it the server never exits."""
    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
