"""The lock of a folder being written: one process at a time, and a lock left by a killed one taken over safely.

``RUN/.lock`` holds "PID HOSTNAME". It appears with that text already in it (written in full under another name,
then linked into place, which fails if a lock is there), and its holder keeps an ``flock`` on it until it is
removed, so a second process is refused however the two interleave (tests/test_hostile_runs.py races two
processes hundreds of times). A lock nobody holds is taken over only when it names a process of this host that is
gone; one from another host, or with no owner in it, is left for a person to remove (the message says how).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmtransfer.errors import UserError

LOCK = ".lock"
_NEW = re.compile(r"\.lock\.\d+\.[0-9a-f]{8}")  # a lock being written in full before it is put in place


class LockError(UserError):
    """The folder is locked by another process, or by a lock that cannot be judged stale; the message says which."""


def is_lock_file(name: str) -> bool:
    """The lock, or a lock being put in place: never part of what a folder holds."""
    return name == LOCK or bool(_NEW.fullmatch(name))


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while writing the folder (made if missing, and removed again if left empty): a
    second process that tries is refused with :class:`LockError`, naming the holder."""
    created = not run_dir.exists()
    fd = _take_lock(run_dir)
    try:
        yield
    finally:
        _release_lock(run_dir / LOCK, fd)
        if created:  # nothing was written (a mistake found first): no folder left
            with contextlib.suppress(OSError):  # not empty: kept
                run_dir.rmdir()


def _take_lock(run_dir: Path) -> int:
    path = run_dir / LOCK
    for _ in range(100):  # a pass ends holding the lock or refused, unless the lock moved under it: then again
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = _new_lock(path, replace=False)
            if fd is not None:
                return fd
            continue  # another process put its lock there first: look at it
        except OSError as err:  # a symlink (ELOOP), a folder
            raise LockError(
                f"{path}: not a lock file ({err.strerror}); if no fit is writing {run_dir}, remove it"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by a live process (named by the lock now in place: it may be a new one)
                pid, host = _owner_of(_read_path(path) or _read_lock(fd))
                raise LockError(
                    f"{run_dir} is being written by process {pid or '?'}"
                    + (f" on {host}" if host and host != socket.gethostname() else "")
                    + f" ({path}); wait for it to finish, or stop it"
                ) from None
            if not _same_file(path, fd):
                continue  # released and removed (or replaced) between our open and our flock: look again
            _check_stale(run_dir, path, _read_lock(fd))
            return _new_lock(path, replace=True)  # ours, in one step; the stale file's flock goes with its fd
        finally:
            os.close(fd)
    raise LockError(f"{path}: cannot take the lock (other processes keep taking and releasing it)")


def _new_lock(path: Path, *, replace: bool) -> int | None:
    """A lock file holding this process's "PID HOSTNAME", flocked, put at ``path`` in one step: linked (None
    when a lock is already there) or, over a stale lock, renamed. Returns its descriptor, to hold."""
    tmp = path.with_name(f"{LOCK}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileNotFoundError:  # the folder was removed by a process that made it and found it empty
        return None
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a file nobody else has opened: never waits
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                os.close(fd)
                return None
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _check_stale(run_dir: Path, path: Path, text: str) -> None:
    """Raise unless the lock (no flock held on it) names a process of this host that is gone."""
    pid, host = _owner_of(text)
    if pid is None:
        what = "empty" if not text.strip() else "no process id in it"
        raise LockError(
            f"{path}: a lock with no owner ({what}); if no fit is writing {run_dir}, remove {path} and start again"
        )
    if host != socket.gethostname():
        raise LockError(
            f"{run_dir} is locked by process {pid} on host {host} ({path}); this host cannot tell whether it still "
            f"runs: if no fit is writing the folder there, remove {path}"
        )
    if pid != os.getpid() and _alive(pid):  # a live process that holds no flock: an older mmtransfer's lock
        raise LockError(f"{run_dir} is being written by process {pid} ({path}); wait for it to finish, or stop it")


def _owner_of(text: str) -> tuple[int | None, str | None]:
    """(PID, host) of a lock's text; a bare PID (older versions wrote only that) is this host's."""
    parts = text.split()
    if not parts or not parts[0].isdigit() or int(parts[0]) <= 0 or len(parts) > 2:
        return None, None
    return int(parts[0]), parts[1] if len(parts) == 2 else socket.gethostname()


def _read_lock(fd: int) -> str:
    return os.pread(fd, 512, 0).decode("utf-8", errors="replace")


def _read_path(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never a link's target, never waits
    except OSError:
        return ""
    try:
        return _read_lock(fd)
    except OSError:
        return ""
    finally:
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.lstat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _release_lock(path: Path, fd: int) -> None:
    try:
        if _same_file(path, fd):  # removed while the flock is still held: no one can take the file we remove
            path.unlink()
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
