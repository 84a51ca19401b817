"""Atomic file writes (a reader, or a run killed mid-write, sees the old file or the new one, never half), and a
thread that writes a run's files while training goes on."""

import os
import tempfile
import threading
from pathlib import Path


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file beside ``path``, flush it to disk, rename it over path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file 0600; give it the mode open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FileWriter:
    """Writes files in a thread of its own, so that training never waits for the disk.

    ``put(path, write)`` hands over a file: the thread calls ``write(path)``. Files are written in the order they
    were first handed over. A file handed over again before the thread has begun writing it is written once, in
    its newer version: the run's checkpoint and metrics.jsonl are rewritten whole every epoch, so when the disk is
    slower than an epoch only the newest of them matters, and training does not queue up ~35 MB snapshots behind
    it. Files with paths of their own, like each epoch's sample grid, are all written. The first write that fails
    stops the thread's work: the files it still held are dropped, and its error is raised by the next ``put`` or
    ``raise_error``. ``wait`` returns once every file handed over has been written or dropped.
    """

    def __init__(self):
        self._pending = {}  # path -> write, in the order first handed over
        self._writing = False
        self._error = None
        self._changed = threading.Condition()
        self._thread = None

    def put(self, path, write):
        self.raise_error()
        with self._changed:
            self._pending[path] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="file-writer", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def wait(self):
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and not self._writing)

    def raise_error(self):
        with self._changed:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
                path = next(iter(self._pending))
                write = self._pending.pop(path)
                self._writing = True
            try:
                write(path)
            except Exception as e:  # raised where the run can report it, not lost with this thread
                with self._changed:
                    self._error = e
                    self._pending.clear()
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
