"""One item made ahead on a worker thread while the caller works on the current one.

Modes T, R and D split a batch into a head (start images, segmentation, estimate, prior,
augmentation; mode D: poses, body, camera) and a tail (label render, the image generator, cycles,
verification, records). :func:`made_ahead` runs the head of batch i+1 on a worker thread while the
caller runs the tail of batch i, so the CPU stages of the next batch run while the current batch
denoises (a GPU waiting on a kernel releases the GIL, as ``time.sleep`` does).

Order and bytes are those of the sequential loop: items come out in input order, each made by
the same function from the same item; the models both threads use are serialised by
:class:`~diffusion_hpc.pipeline.stages.Stages` (their results never depend on which thread came
first). At most one item is made ahead: the worker starts item i+1 only once the caller has taken
item i, so memory holds two batches, as the sequential loop's head and tail do.

Errors: an exception raised while making an item reaches the caller, unchanged (same type, the
worker's traceback), when the caller asks for that item, after it has finished the items before
it (as the sequential loop would). When the caller stops early (its own error, or ``close``), the
worker finishes the item it is making, makes no more, and is joined before the error goes on.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generator, Iterable, TypeVar

Item = TypeVar("Item")
Made = TypeVar("Made")


def made_ahead(make: Callable[[Item], Made], items: Iterable[Item],
               name: str = "dhpc-ahead") -> Generator[Made, None, None]:  # fmt: skip
    """Yield ``make(item)`` for each of ``items`` in order, making the next one on a worker thread
    while the caller works on the current one (one item ahead at most).

    Args:
        make: called on the worker thread, once per item, in order.
        items: the items (read on the worker thread).
        name: the worker thread's name.

    Close the generator when stopping early (``contextlib.closing``): the worker is then joined at
    once rather than when the generator is collected.
    """
    # the handshake bounds what is made ahead; the queue never blocks the worker (after the caller
    # stopped, it may still hold a made item and the end)
    made: queue.SimpleQueue = queue.SimpleQueue()
    taken = threading.Semaphore(0)  # the caller took an item: the worker may make the next
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                made.put((True, make(item)))
                taken.acquire()
        except BaseException as exc:  # handed to the caller, who raises it
            made.put((False, exc))
            return
        made.put((False, None))  # the end

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            ok, value = made.get()
            if not ok:
                if value is not None:
                    raise value
                return
            taken.release()
            yield value
    finally:
        stop.set()
        taken.release()  # a worker waiting for the caller wakes, sees stop, ends
        worker.join()
