"""fsync off the event loop without a thread of our own: Linux's asynchronous I/O.

An fsync takes milliseconds and must not block the loop. Handed to a Python thread, each one
costs that thread's wake-up, its wait for the interpreter lock (the loop holds it while it has
work), the fsync, a second wait for the lock, and a wake of the loop: at a moderate rate, where
every required call commits on its own, that was four to five context switches per call for
the thread and two more for the loop it preempted on a shared core.

``KernelFsync`` asks the kernel instead: ``io_submit`` of an ``IOCB_CMD_FSYNC`` request (since
Linux 4.18 every file system that has an fsync takes it; a kernel worker runs exactly the
``fsync(2)`` of the file), completion signalled on an ``eventfd`` the loop watches like a
socket. No interpreter lock is involved, the fsync starts at once, and the loop is woken once,
when it is done. The result is the fsync's own: 0, or the error ``fsync(2)`` would have
returned (then ``OSError``).

Where the kernel interface is missing or refused (another OS or architecture, a seccomp policy
without ``io_setup``, a file system without fsync for it) ``KernelFsync.open`` returns None and
the caller keeps its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import platform
import struct
import sys
from typing import Final

# The system call numbers of the native AIO interface (unistd.h); architectures not listed
# keep the thread.
_SYSCALLS: Final = {
    "x86_64": {"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209},
    "aarch64": {"io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_getevents": 4},
}
_IOCB_CMD_FSYNC: Final = 2
_IOCB_CMD_FDSYNC: Final = 3
_IOCB_FLAG_RESFD: Final = 1
_RING: Final = 64
"""Requests in flight at most per context (one per commit in flight; a few at a time)."""


class _Iocb(ctypes.Structure):
    """``struct iocb`` of linux/aio_abi.h, little-endian layout (64 bytes)."""

    _fields_ = (
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    )


class _IoEvent(ctypes.Structure):
    """``struct io_event``: which request (``data``) and its result (``res``, -errno)."""

    _fields_ = (
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    )


_EVENT: Final = struct.Struct("=QQqq")
"""``struct io_event`` read from the completion array in place (``data``, ``obj``, ``res``,
``res2``): no ``_IoEvent`` object made per completion."""
assert _EVENT.size == ctypes.sizeof(_IoEvent)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Slot:
    """A request block made once and used again: its ``struct iocb`` (the constant fields
    set at creation) and the one-element array of pointers ``io_submit`` takes. A request
    in flight holds its slot, with its file descriptor and its caller's future, until the
    kernel reports it; the slot's number is the request's ``aio_data``."""

    __slots__ = ("array", "fd", "future", "iocb", "number")

    def __init__(self, number: int, resfd: int) -> None:
        self.number = number
        self.iocb = _Iocb(
            aio_data=number,
            aio_lio_opcode=_IOCB_CMD_FSYNC,
            aio_flags=_IOCB_FLAG_RESFD,
            aio_resfd=resfd,
        )
        self.array = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self.iocb))
        self.fd = -1
        self.future: asyncio.Future[None] | None = None


class KernelFsync:
    """fsyncs submitted to the kernel, completed on the loop through an eventfd.

    Bound to the loop it was opened on. A caller that stops waiting (timeout, cancellation)
    does not stop its fsync: the request completes, and the file descriptor is closed, when
    the kernel reports it. ``aclose`` waits for the requests still in flight."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL, calls: dict[str, int]
    ) -> None:
        self._loop = loop
        self._syscall = libc.syscall
        self._calls = calls
        self._ctx = ctypes.c_ulong(0)
        self._eventfd = -1
        self._pending: dict[int, _Slot] = {}
        """Requests in flight by their slot's number."""
        self._free: list[_Slot] = []
        """Slots not in flight, made once (a request block and its pointer array cost some
        fifteen thousand instructions of ctypes to make each time)."""
        self._slots = itertools.count(1)
        self._events = (_IoEvent * _RING)()
        self._submit_number = calls["io_submit"]
        self._getevents_number = calls["io_getevents"]
        self._no_wait = _Timespec(0, 0)
        self._no_wait_ref = ctypes.byref(self._no_wait)
        """Made once: ``byref`` makes an object per call."""
        self._closed = False
        self._drained = asyncio.Event()
        """Set while no request is in flight."""
        self._drained.set()
        self.submitted = 0
        """Requests submitted so far (for tests and figures)."""

    @classmethod
    async def open(cls, probe: str) -> KernelFsync | None:
        """A context on the running loop, or None where the kernel interface is unavailable.

        ``probe``: an existing file on the file system the fsyncs will be for; it is synced
        once through the new context, so that a file system that refuses the request is found
        now rather than at the first commit."""
        calls = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or calls is None or sys.byteorder != "little":
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
        libc.syscall.restype = ctypes.c_long
        syncer = cls(asyncio.get_running_loop(), libc, calls)
        try:
            syncer._setup()
            await syncer.fsync(probe)
        except OSError:
            await syncer.aclose()
            return None
        return syncer

    def _setup(self) -> None:
        if self._syscall(self._calls["io_setup"], _RING, ctypes.byref(self._ctx)) != 0:
            self._ctx = ctypes.c_ulong(0)
            raise _errno_error("io_setup")
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._loop.add_reader(self._eventfd, self._reap)

    async def fsync(self, path: str) -> None:
        """fsync ``path``: returns once the kernel has done it, raises its error otherwise
        (``FileNotFoundError`` at once when the file does not exist)."""
        await self._sync(path, _IOCB_CMD_FSYNC)

    async def fdatasync(self, path: str) -> None:
        """fdatasync ``path``, as ``fsync`` (the file's data, and its size when it grew)."""
        await self._sync(path, _IOCB_CMD_FDSYNC)

    def _sync(self, path: str, command: int) -> asyncio.Future[None]:
        """Submit the request; the future of its completion (see ``fsync``)."""
        if self._closed:
            raise OSError("the fsync context is closed")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        free = self._free
        slot = free.pop() if free else _Slot(next(self._slots), self._eventfd)
        iocb = slot.iocb
        iocb.aio_fildes = fd
        if iocb.aio_lio_opcode != command:
            iocb.aio_lio_opcode = command
        if self._syscall(self._submit_number, self._ctx, 1, slot.array) != 1:
            error = _errno_error("io_submit")
            os.close(fd)
            free.append(slot)
            raise error
        self.submitted += 1
        slot.fd = fd
        slot.future = future = self._loop.create_future()
        self._pending[slot.number] = slot
        self._drained.clear()
        # A caller that stops waiting cancels only its future: the request stays in flight
        # until the kernel reports it (``aclose`` waits for that), and the sync is done.
        return future

    def _reap(self) -> None:
        """The eventfd is readable: collect every finished request without blocking."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._eventfd)
        pending, events, read = self._pending, self._events, _EVENT.unpack_from
        while pending:
            done = self._syscall(
                self._getevents_number,
                self._ctx,
                0,
                _RING,
                events,
                self._no_wait_ref,
            )
            if done <= 0:
                return
            for offset in range(0, done * _EVENT.size, _EVENT.size):
                number, _, result, _ = read(events, offset)
                slot = pending.pop(number, None)
                if slot is None:
                    continue
                os.close(slot.fd)
                future, slot.future, slot.fd = slot.future, None, -1
                self._free.append(slot)
                if future is None or future.done():
                    continue  # its caller stopped waiting
                if result < 0:
                    code = -result
                    future.set_exception(OSError(code, os.strerror(code)))
                else:
                    future.set_result(None)
            if done < _RING:
                break
        if not pending:
            self._drained.set()

    async def aclose(self) -> None:
        """Wait for the requests in flight, then release the context and the eventfd."""
        self._closed = True
        await self._drained.wait()
        if self._eventfd >= 0:
            self._loop.remove_reader(self._eventfd)
            os.close(self._eventfd)
            self._eventfd = -1
        if self._ctx.value:
            self._syscall(self._calls["io_destroy"], self._ctx)
            self._ctx = ctypes.c_ulong(0)


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")
