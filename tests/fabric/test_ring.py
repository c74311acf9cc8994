"""The shm ring (rtt_fabric.ring over the C core rtt_fabric._ring), in one process and across two.

Cross-process tests run a real second interpreter that receives the ring memfd and the doorbell
eventfd over a Unix socketpair with SCM_RIGHTS, exactly as a service will from the daemon.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rtt_fabric import _ring, ring


@pytest.fixture
def end():
    with ring.create(slot_count=8, max_payload=100) as handle:
        yield handle


def test_round_trip_in_process(end):
    assert end.ring.push(7, 1, b"hello")
    assert end.ring.push(7, 2, bytearray(b"world"))
    assert end.ring.push(9, 3, memoryview(b"x" * 100))
    assert end.ring.pending() == 3
    assert end.ring.pop() == (7, 1, b"hello")
    assert end.ring.pop() == (7, 2, b"world")
    route, frame, payload, latency = end.ring.pop_timed()
    assert (route, frame, payload) == (9, 3, b"x" * 100)
    assert 0 <= latency < 10_000_000_000
    assert end.ring.pop() is None


def test_geometry_follows_max_payload(end):
    assert end.ring.slot_count == 8
    assert end.ring.slot_size % 64 == 0
    assert end.ring.max_payload >= 100
    assert end.ring.max_payload == end.ring.slot_size - _ring.FRAME_HEADER


def test_wraparound_keeps_order():
    with ring.create(slot_count=4, max_payload=64) as handle:
        r, sent, got = handle.ring, 0, []
        for _ in range(50):
            while r.push(1, sent, sent.to_bytes(4, "little")):
                sent += 1
            got += [frame for _route, frame, _p in r.drain(3)]
        got += [frame for _route, frame, _p in r.drain(100)]
        assert got == list(range(sent))
        assert sent > 100


def test_full_ring_returns_false(end):
    assert [end.ring.push(1, i, b"p") for i in range(8)] == [True] * 8
    assert end.ring.push(1, 8, b"p") is False
    assert end.ring.pop() == (1, 0, b"p")
    assert end.ring.push(1, 8, b"p") is True


def test_send_many_pushes_what_fits_and_drain_takes_at_most_max(end):
    assert end.ring.send_many(3, 100, [b"a", b"bb", b"ccc"]) == 3
    assert end.ring.send_many(3, 103, [b"d"] * 10) == 5
    assert end.ring.drain(2) == [(3, 100, b"a"), (3, 101, b"bb")]
    assert [f for _r, f, _p in end.ring.drain(100)] == list(range(102, 108))
    assert end.ring.drain(10) == []


def test_oversize_payload_is_rejected(end):
    too_big = b"z" * (end.ring.max_payload + 1)
    with pytest.raises(ValueError, match="max_payload"):
        end.ring.push(1, 1, too_big)
    with pytest.raises(ValueError, match="max_payload"):
        end.ring.send_many(1, 1, [b"ok", too_big])
    assert end.ring.pending() == 0
    assert end.ring.push(1, 1, b"z" * end.ring.max_payload)


def test_bad_ids_and_bad_geometry_are_rejected(end):
    with pytest.raises(OverflowError):
        end.ring.push(2**32, 1, b"")
    with pytest.raises(ValueError, match="power of two"):
        ring.create(slot_count=6, max_payload=64)
    with pytest.raises(ValueError, match="formatted ring"):
        _ring.Ring(bytearray(4096))


def _slot_offset(handle, seq):
    return _ring.CONTROL_SIZE + (seq % handle.ring.slot_count) * handle.ring.slot_size


def test_corrupt_payload_byte_is_caught_by_crc_and_counted(end):
    end.ring.push(1, 1, b"payload-one")
    end.ring.push(1, 2, b"payload-two")
    end.ring.push(1, 3, b"payload-three")
    end.mapping[_slot_offset(end, 0) + _ring.FRAME_HEADER + 3] ^= 0x01
    with pytest.raises(ring.CorruptFrame):
        end.ring.pop()
    assert end.ring.crc_errors == 1
    end.mapping[_slot_offset(end, 2) + 12] ^= 0x80  # frame_id, covered by the crc too
    assert end.ring.drain(10) == [(1, 2, b"payload-two")]
    assert end.ring.crc_errors == 2


def test_bad_magic_and_bad_length_are_corrupt(end):
    end.ring.push(1, 1, b"a")
    end.ring.push(1, 2, b"b")
    end.mapping[_slot_offset(end, 0)] ^= 0xFF
    struct.pack_into("<I", end.mapping, _slot_offset(end, 1) + 16, 1 << 20)
    for _ in range(2):
        with pytest.raises(ring.CorruptFrame):
            end.ring.pop()
    assert end.ring.crc_errors == 2
    assert end.ring.pop() is None


CRC_VECTORS = [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
]


@pytest.mark.parametrize(("data", "expected"), CRC_VECTORS)
def test_crc32c_known_vectors_on_every_path(data, expected):
    assert _ring.crc32c_sw(data) == expected
    assert _ring.crc32c(data) == expected
    if _ring.has_sse42():
        assert _ring.crc32c_hw(data) == expected
    else:
        with pytest.raises(RuntimeError):
            _ring.crc32c_hw(data)


def test_crc32c_paths_agree_on_long_and_split_buffers():
    data = os.urandom(10_000)
    for n in (0, 7, 767, 768, 769, 2304, 4096, 4127, 10_000):
        assert _ring.crc32c(data[:n]) == _ring.crc32c_sw(data[:n])
    assert _ring.crc32c(data[5000:], _ring.crc32c(data[:5000])) == _ring.crc32c(data)


PRODUCER = textwrap.dedent("""
    import socket, sys, time
    from rtt_fabric import ring
    sock = socket.socket(fileno=int(sys.argv[1]))
    memfd, bell = ring.recv_fd(sock), ring.recv_fd(sock)
    count, mode = int(sys.argv[2]), sys.argv[3]
    with ring.attach(memfd, doorbell=bell) as end:
        sock.recv(1)
        if mode == "stream":
            push, frame = end.ring.push, 0
            while frame < count:
                body = frame.to_bytes(4, "little") * (1 + frame % 7)
                if push(5, frame, body):
                    frame += 1
        else:
            for frame in range(count):
                sock.recv(1)
                time.sleep(0.05)
                end.ring.push(5, frame, b"ding")
    sock.sendall(b"done")
""")


def _producer(count, mode, handle):
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, str(child.fileno()), str(count), mode],
                            pass_fds=[child.fileno()])
    child.close()
    ring.send_fd(parent, handle.fd)
    ring.send_fd(parent, handle.doorbell)
    return proc, parent


def test_a_million_frames_cross_processes_in_order():
    count = 1_000_000
    with ring.create(slot_count=1024, max_payload=64) as handle:
        proc, sock = _producer(count, "stream", handle)
        with sock:
            sock.sendall(b"g")
            policy, expected, r = ring.WaitPolicy(), 0, handle.ring
            deadline = time.monotonic() + 60
            while expected < count and time.monotonic() < deadline:
                batch = r.drain(4096)
                if not batch:
                    r.wait(policy.spin_ns, policy.backstop_ms)
                for route, frame, body in batch:
                    assert (route, frame) == (5, expected)
                    assert body == frame.to_bytes(4, "little") * (1 + frame % 7)
                    expected += 1
            assert expected == count
            assert sock.recv(4) == b"done"
            assert proc.wait(10) == 0
            assert r.pop() is None
            assert r.crc_errors == 0


def test_doorbell_wakes_a_blocked_consumer_without_burning_cpu():
    delay = 0.05  # the producer sleeps this long before each push, so we are asleep when it lands
    with ring.create(slot_count=16, max_payload=64) as handle:
        proc, sock = _producer(3, "bell", handle)
        with sock:
            sock.sendall(b"g")
            for frame in range(3):
                cpu0, t0 = time.process_time(), time.monotonic()
                sock.sendall(b"n")
                got = ring.recv(handle, ring.WaitPolicy(spin_us=5, backstop_ms=5000), timeout_s=5)
                waited = time.monotonic() - t0
                assert got == (5, frame, b"ding")
                assert delay * 0.9 < waited < 1.0  # woken by the doorbell, not the 5 s backstop
                assert time.process_time() - cpu0 < delay / 2
            assert sock.recv(4) == b"done"
            assert proc.wait(10) == 0


def test_fd_passing_round_trip():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, ring.create(slot_count=2, max_payload=8, doorbell=False) as handle:
        ring.send_fd(a, handle.fd)
        with ring.attach(ring.recv_fd(b)) as other:
            assert handle.ring.push(1, 2, b"via fd")
            assert other.ring.pop() == (1, 2, b"via fd")


def test_a_second_handle_with_stale_caches_stays_correct(end):
    late = _ring.Ring(end.mapping)  # its cached head/tail are from before the traffic below
    try:
        for frame in range(5):
            end.ring.push(1, frame, b"x")
            end.ring.pop()
        assert late.pop() is None
        assert late.push(1, 5, b"y")
        assert end.ring.pop() == (1, 5, b"y")
    finally:
        late.close()


def test_recv_policies_return_frames_time_out_and_raise_on_corruption(end):
    for policy in (ring.WaitPolicy(busy_poll=True), ring.WaitPolicy(spin_us=1, backstop_ms=5)):
        t0 = time.monotonic()
        assert ring.recv(end, policy, timeout_s=0.02) is None
        assert 0.02 <= time.monotonic() - t0 < 1.0
        end.ring.push(4, 4, b"four")
        assert ring.recv(end, policy, timeout_s=0.02) == (4, 4, b"four")
    end.ring.push(4, 5, b"five")
    end.mapping[_slot_offset(end, 2) + _ring.FRAME_HEADER] ^= 0x10
    with pytest.raises(ring.CorruptFrame):
        ring.recv(end, ring.WaitPolicy(), timeout_s=1)
    assert end.ring.crc_errors == 1


def test_geometry_helpers():
    assert ring.slot_size_for(32) == 64
    assert ring.slot_size_for(33) == 128
    assert ring.slot_size_for(4096) == 4160
    assert ring.ring_bytes(slot_count=4, slot_size=64) == _ring.CONTROL_SIZE + 256


def _resident_kib(name: str) -> list[tuple[int, int]]:
    """(Size, Rss) in KiB of each of this process's mappings of memfd `name`."""
    found, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.startswith(("Size", "Rss")):
            current = line.endswith(f"/memfd:{name} (deleted)")
        elif current and line.startswith(("Size:", "Rss:")):
            found.append(int(line.split()[1]))
    return list(zip(found[::2], found[1::2], strict=True))


def test_both_ends_map_every_page_before_the_first_frame():
    # A page first touched on the hot path costs a frame several µs: ends come pre-faulted.
    with ring.create(slot_count=4096, max_payload=64, name="rtt-prefault-test") as made, \
            ring.attach(os.dup(made.fd)) as mapped:
        assert mapped.ring.slot_count == 4096
        maps = _resident_kib("rtt-prefault-test")
        assert len(maps) == 2
        assert all(size >= 512 and rss == size for size, rss in maps), maps
