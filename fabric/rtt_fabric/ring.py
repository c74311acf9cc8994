"""The shm lane's ring: a memfd-backed SPSC ring, its eventfd doorbell and the wait policy.

The hot path (push, pop, drain, send_many) lives in the C extension `rtt_fabric._ring`; this
module owns the resources around it. The daemon calls `create` at route setup and hands the two
file descriptors (ring memfd, doorbell eventfd) to each end with `send_fd` over its Unix control
socket; each service end calls `recv_fd` and `attach`. No descriptor moves on the hot path.

The byte layout and the ordering rules are in `fabric/FRAME.md`.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import socket
import time

from typing_extensions import Buffer

from rtt_fabric import _ring

__all__ = [
    "SHARED",
    "CorruptFrame",
    "RingMap",
    "WaitPolicy",
    "attach",
    "crc32c",
    "create",
    "recv",
    "recv_fd",
    "ring_bytes",
    "send_fd",
    "shared_file",
    "slot_size_for",
]

CorruptFrame = _ring.CorruptFrame
crc32c = _ring.crc32c


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How a consumer waits for the next frame.

    The default spins for `spin_us` microseconds, polling the ring with `pause` between polls,
    and then sleeps on the eventfd doorbell; `backstop_ms` bounds each sleep so that a lost
    wake-up costs a delay, never a hang. A frame that arrives within the spin is taken with no
    syscall and no wake-up (a sleeping consumer's wake-up costs tens of µs on a busy machine),
    and an idle consumer spends `spin_us` per `backstop_ms` awake. `busy_poll` never sleeps:
    lowest latency, one core burned.
    """

    spin_us: float = 50.0
    backstop_ms: int = 100
    busy_poll: bool = False

    @property
    def spin_ns(self) -> int:
        return int(self.spin_us * 1000)


@dataclasses.dataclass
class RingMap:
    """One end's handle on a ring: the memfd, its mapping, the doorbell and the C ring over them.

    `close()` releases the ring, unmaps, and closes the memfd and the doorbell if it owns it (a
    doorbell shared by a subscriber's rings belongs to whoever made it).
    """

    fd: int
    doorbell: int
    mapping: mmap.mmap
    ring: _ring.Ring
    owns_doorbell: bool = True

    def prefault(self) -> None:
        """Map every page of the ring into this process now. `create` and `attach` map with
        MAP_POPULATE, so their ends never fault on the hot path; a process that inherited the
        mapping across `fork` has no page table entries for it and calls this first (the
        benchmarks do)."""
        for offset in range(0, len(self.mapping), mmap.PAGESIZE):
            self.mapping[offset]  # the read is the point: it faults the page in

    def close(self) -> None:
        self.ring.close()
        self.mapping.close()
        os.close(self.fd)
        if self.owns_doorbell and self.doorbell >= 0:
            os.close(self.doorbell)

    def __enter__(self) -> RingMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ring_bytes(*, slot_count: int, slot_size: int) -> int:
    """Size of the memfd for a ring of this geometry: the control block plus the slots."""
    return _ring.CONTROL_SIZE + slot_count * slot_size


def slot_size_for(max_payload: int) -> int:
    """The smallest valid slot size (a multiple of 64) that carries `max_payload` bytes."""
    return -(-(max_payload + _ring.FRAME_HEADER) // 64) * 64


# Populated at map time: a page first touched on the hot path cost a frame about 5 µs here, and
# the first pass through a 4,096-slot ring held three quarters of the 64 B p99 outliers.
SHARED = mmap.MAP_SHARED | mmap.MAP_POPULATE


def shared_file(size: int, name: str) -> tuple[int, mmap.mmap]:
    """A new memfd of `size` bytes, mapped shared and writable: (fd, mapping)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size, SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise


def create(*, slot_count: int, max_payload: int, doorbell: bool = True,
           shared_doorbell: int | None = None, name: str = "rtt-ring") -> RingMap:
    """Create a formatted ring in a new memfd, with a new eventfd doorbell (unless
    `doorbell=False`) or with `shared_doorbell`, an eventfd the caller keeps.

    Raises ValueError when `slot_count` is not a power of two.
    """
    slot_size = slot_size_for(max_payload)
    fd, mapping = shared_file(ring_bytes(slot_count=slot_count, slot_size=slot_size), name)
    try:
        _ring.format(mapping, slot_count, slot_size)
    except BaseException:
        mapping.close()
        os.close(fd)
        raise
    if shared_doorbell is not None:
        return RingMap(fd=fd, doorbell=shared_doorbell, mapping=mapping, owns_doorbell=False,
                       ring=_ring.Ring(mapping, doorbell=shared_doorbell))
    bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if doorbell else -1
    return RingMap(fd=fd, doorbell=bell, mapping=mapping, ring=_ring.Ring(mapping, doorbell=bell))


def attach(fd: int, *, doorbell: int = -1, owns_doorbell: bool = True,
           flight: Buffer | None = None) -> RingMap:
    """Map an existing ring memfd (received with `recv_fd`); takes ownership of `fd`, and of
    `doorbell` when `owns_doorbell`. `flight` is the route's flight page, recorded into by the
    C hot path.

    Raises ValueError if the memfd does not hold a ring this version understands.
    """
    size = os.fstat(fd).st_size
    mapping = mmap.mmap(fd, size, SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        ring = _ring.Ring(mapping, doorbell=doorbell, flight=flight)
    except BaseException:
        mapping.close()
        raise
    return RingMap(fd=fd, doorbell=doorbell, mapping=mapping, ring=ring,
                   owns_doorbell=owns_doorbell)


def send_fd(sock: socket.socket, fd: int) -> None:
    """Pass one descriptor over a connected AF_UNIX socket (SCM_RIGHTS); setup time only."""
    socket.send_fds(sock, [b"F"], [fd])


def recv_fd(sock: socket.socket) -> int:
    """Receive one descriptor sent with `send_fd`. Raises ConnectionError if none arrives."""
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
    if len(fds) != 1:
        raise ConnectionError("expected one file descriptor over SCM_RIGHTS")
    return fds[0]


def recv(end: RingMap, policy: WaitPolicy, *,
         timeout_s: float | None = None) -> tuple[int, int, bytes] | None:
    """Pop the next frame, waiting by `policy`; None once `timeout_s` passes with nothing.

    Raises CorruptFrame (after counting it) for a frame that fails its crc32c or magic check.
    """
    ring = end.ring
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        frame = ring.pop()
        if frame is not None:
            return frame
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if policy.busy_poll:
            ring.wait(policy.spin_ns, 0)
        else:
            ring.wait(policy.spin_ns, _sleep_ms(policy.backstop_ms, deadline))


def _sleep_ms(backstop_ms: int, deadline: float | None) -> int:
    if deadline is None:
        return backstop_ms
    left = int((deadline - time.monotonic()) * 1000) + 1
    return max(0, min(backstop_ms, left))
