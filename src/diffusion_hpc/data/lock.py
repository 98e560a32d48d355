"""The lock of an output folder: one writer at a time (``dhpc generate``, ``dhpc merge --out``).

``RUN/.lock`` holds the owner's pid, host name and start time (JSON). It is created atomically
when a run starts writing: the content goes to a temporary file made with ``O_CREAT|O_EXCL``,
which is then hard-linked to ``RUN/.lock`` (``link`` fails when the lock exists, as ``O_EXCL``
does, and a reader never sees a lock without its owner). It is removed when the run ends, also on
an error or KeyboardInterrupt. Ray workers write shards under their driver's lock; they do not
take it.

A second writer gets a :class:`~diffusion_hpc.errors.DhpcError` naming the owner. A lock is stale
when its owner ran on this host and its pid is gone (``os.kill(pid, 0)`` raises
ProcessLookupError, e.g. a SIGKILLed run): the next run takes it over with a warning. A lock of
another host is never taken over: the error says to delete ``RUN/.lock`` if that host's run is
really dead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from diffusion_hpc.errors import DhpcError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: temporary files of a lock being taken: ``.lock.<host>.<pid>.tmp``
LOCK_TMP_PREFIX = ".lock."


def is_lock_file(name: str) -> bool:
    """True for the lock and its temporary files (not data: an output folder holding only them is empty)."""
    return name == LOCK_NAME or (name.startswith(LOCK_TMP_PREFIX) and name.endswith(".tmp"))


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: pid, host name, start time (ISO, UTC)."""

    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid}@{self.host}, since {self.started}"

    def alive(self) -> bool:
        """False only when the owner ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return True  # cannot tell: never taken over silently
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in the lock file ``path`` (None when there is none)."""
    try:
        data = json.loads(path.read_text())
        return LockOwner(int(data["pid"]), str(data["host"]), str(data["started"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise DhpcError(f"{path} is not a lock dhpc wrote ({exc}); if no dhpc run writes to {path.parent}, "
                        f"delete {path} and rerun") from None


class OutputLock:
    """The lock of the output folder ``root``; ``acquire`` creates it (and ``root``), ``release`` removes it.

    ``what`` names the writer in errors (``--out``). Use as a context manager or call both.
    """

    def __init__(self, root: str | os.PathLike, what: str = "--out") -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.what = what
        self.owner: LockOwner | None = None
        self._made_root = False

    def acquire(self) -> "OutputLock":
        if self.owner is not None:
            return self
        if self.root.exists() and not self.root.is_dir():
            raise DhpcError(f"{self.what} {self.root} is a file, not a directory; choose a directory path")
        if not self.root.exists():
            try:
                self.root.mkdir(parents=True)
                self._made_root = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise DhpcError(f"{self.what} {self.root}: cannot create the folder ({exc.strerror or exc}); "
                                "choose a writable --out") from None
        me = LockOwner(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        tmp = self.root / f"{LOCK_TMP_PREFIX}{me.host}.{me.pid}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left by a killed process of our pid: it is not alive (we are that pid)
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, json.dumps(me.__dict__).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            for _ in range(3):  # a stale lock removed, then taken; a racing taker wins at most once
                try:
                    os.link(tmp, self.path)
                    self.owner = me
                    return self
                except FileExistsError:
                    pass
                holder = read_owner(self.path)
                if holder is None:
                    continue  # released in between: try again
                if holder.alive():
                    raise DhpcError(self._held_message(holder))
                log.warning("%s %s: taking over the stale lock of %s (that process is gone)",
                            self.what, self.root, holder.describe())
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            raise DhpcError(f"{self.what} {self.root}: another process keeps taking {self.path}; "
                            "make sure one dhpc run writes there, then rerun")
        except OSError as exc:
            raise DhpcError(f"{self.what} {self.root}: cannot write its lock {self.path} ({exc.strerror or exc}); "
                            "make the folder writable (or free space there), or choose another --out") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _held_message(self, holder: LockOwner) -> str:
        if holder.host != socket.gethostname():
            return (f"{self.what} {self.root} is in use by {holder.describe()} (another host); wait for that run "
                    f"to end, or if it is really dead, delete {self.path} and rerun with --resume")
        return (f"{self.what} {self.root} is in use by {holder.describe()}; wait for that run to end, or if that "
                "process is gone, rerun with --resume (a stale lock is cleared)")

    def release(self) -> None:
        """Remove the lock if this object holds it (and the folder, if the lock made it and it is empty)."""
        if self.owner is None:
            return
        try:
            if read_owner(self.path) == self.owner:
                os.unlink(self.path)
            else:  # pragma: no cover - someone deleted or replaced our lock
                log.warning("%s: the lock was not ours any more; left as it is", self.path)
        except (OSError, DhpcError) as exc:  # pragma: no cover - the run's own error matters more
            log.warning("could not remove the lock %s: %s", self.path, exc)
        self.owner = None
        if self._made_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when empty: the run failed before writing anything

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
