"""Native libraries' log lines on file descriptor 2: keep the errors, drop the known chatter.

MediaPipe's C++ core (absl / glog / TFLite) and NVIDIA warp (used by Anny's skinning) write
informational lines straight to the process's stderr descriptor, past Python's logging. The
context manager below captures the descriptor for a block and writes back everything except lines
starting with the given prefixes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

#: MediaPipe's graph start-up and first-frame lines (informational, not errors)
MEDIAPIPE_CHATTER = ("W0000 ", "I0000 ", "INFO: Created TensorFlow Lite", "WARNING: All log messages before absl")
#: warp's notice on machines without an NVIDIA driver (Anny's kernels run on the CPU there)
WARP_CHATTER = ("Warp CUDA warning: Could not find or load the NVIDIA CUDA driver",)


#: descriptor 2 is the process's: one redirection at a time (threads take turns; a thread may nest)
_REDIRECT = threading.RLock()


@contextlib.contextmanager
def filtered_native_stderr(chatter: tuple[str, ...]):
    """Capture what is written to file descriptor 2 inside the block and write it back afterwards
    without the lines starting with one of ``chatter`` (nothing else is lost).

    Blocks of several threads run one at a time, so a thread never restores the descriptor while
    another's block is writing to the redirection."""
    with _REDIRECT:
        with _filtered(chatter):
            yield


@contextlib.contextmanager
def _filtered(chatter: tuple[str, ...]):
    fd = 2  # native code writes to the descriptor, whatever sys.stderr is
    sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no descriptor 2 at all
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(chatter)]
            if kept:
                os.write(fd, "".join(kept).encode())
