"""A clean exit for gloo DDP ranks: no gloo work that holds a Python object may outlive a Trainer call.

Since torch 2.12 a ``backward()`` keeps a Python object (a ``contextvars.Context``) in a thread-local slot, so the
gradient all-reduce that DDP starts inside it carries that object in its gloo work. A gloo worker thread frees the
work when it is done, which takes the GIL; if that happens after interpreter finalization began (a rank that exits
right after its last backward, on a busy machine), Python 3.11 ends the thread with ``pthread_exit`` inside a
``noexcept`` destructor and the process aborts (``terminate called without an active exception``, exit -6/134),
after a complete run (docs/howto/ddp.md has the core dumps).

[settle_process_group][lightning_meta.distributed.settle_process_group] is a barrier at the end of every
successful ``fit``/``validate``/``test``/``predict`` (the learners' and the DataModule's ``teardown`` hooks): a
gloo barrier completes only after every work queued before it has completed, and this thread waits for it with the
GIL released, so the worker threads free those works while the interpreter is fully alive. It runs once per Trainer
call, not per step.
"""

from __future__ import annotations

import torch


def settle_process_group() -> bool:
    """Barrier on the default process group if it is a gloo group of several ranks; returns whether it ran.

    Examples:
        >>> settle_process_group()  # one process: nothing to do
        False
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return False
    if dist.get_backend() != "gloo":
        return False
    dist.barrier()
    return True


__all__ = ["settle_process_group"]
