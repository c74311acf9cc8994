"""The node's data plane: the lanes behind its committed routes, and which service holds each end.

The daemon calls in at three moments: a COMMIT (`rewire`), a service attaching or detaching an
endpoint (`attach`, `detach`), and a service's control connection closing (`drop_session`). Each
call returns the messages to push, as `Push` values; the daemon sends them, with their file
descriptors, over the services' control sockets. Nothing here touches a socket that a service
reads, so the rules are testable without one.

Vocabulary:
- A **route** is a committed link with an end on this node. It has a stable `route_id` (the
  frame header's), a flight page, and a current **generation**: the lane resources (an shm ring,
  a socketpair, a tcp connection) that its frames cross.
- An **endpoint** is (saddr, role), role "pub" or "sub", attached by one service session.
- Every push carries an endpoint's whole lane set: the SDK swaps it in one step (the epoch flip).
  A route that stays keeps its generation, so its frames are neither lost nor repeated. A route
  that changes gets a new generation; the subscriber drains the old one to its end (the seal, or
  EOF on a socket) before it reads the new one, which keeps frames in order.

The tcp lane's connection is made by the sending node's daemon to the receiving node's data
listener, which the daemon owns; this module only records the sockets it is given.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from rtt_fabric import flight, graph, participant, ring

MAX_PAYLOAD = 64 * 1024 - 32  # the largest frame payload on a uds or tcp lane (fabric/FRAME.md)
SHM_SLOT = 4096  # an shm slot holds one frame: payloads up to 4064 bytes
SHM_SLOT_PAYLOAD = SHM_SLOT - 32
ROLES = ("pub", "sub")

Session = Hashable


@dataclasses.dataclass(frozen=True)
class Push:
    """One control message for a session and the descriptors to pass with it. The push owns
    them (duplicates, or stream ends handed over): whoever sends it closes them afterwards, so a
    later rewire that closes the originals cannot touch a message still queued."""

    session: Session
    message: dict[str, Any]
    fds: tuple[int, ...] = ()


@dataclasses.dataclass(eq=False)
class Generation:
    """One set of lane resources for a route. Stream ends are handed to a service exactly once."""

    number: int
    lane: str
    ring: ring.RingMap | None = None  # shm: the daemon's own mapping (fd kept for re-attach)
    pub_fd: int = -1  # uds/tcp: the sender's socket, until handed off
    sub_fd: int = -1  # uds/tcp: the receiver's socket, until handed off

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        for fd in (self.pub_fd, self.sub_fd):
            if fd >= 0:
                os.close(fd)
        self.pub_fd = self.sub_fd = -1


@dataclasses.dataclass(eq=False)
class Route:
    key: graph.LinkKey
    route_id: int
    link: graph.Link
    flight_fd: int = -1
    page: Any = None  # mmap of the flight page, while the route has lanes (`live`)
    tx: Generation | None = None  # what the sender writes into
    rx: Generation | None = None  # what the receiver reads (the same object, except for tcp)
    delivered: dict[str, int] = dataclasses.field(default_factory=dict)  # role -> generation sent

    def close_lanes(self, *, seal: bool) -> None:
        """Drop this node's copies of the lane resources. With `seal`, first mark the ring as
        ended, for when no producer is attached to do it."""
        if seal and self.tx is not None and self.tx.ring is not None:
            self.tx.ring.ring.seal()
        for gen in {id(g): g for g in (self.tx, self.rx) if g is not None}.values():
            gen.close()
        self.tx = self.rx = None

    @property
    def live(self) -> bool:
        return self.page is not None

    def close(self) -> None:
        self.close_lanes(seal=False)
        if self.page is not None:
            self.page.close()
            os.close(self.flight_fd)
            self.page, self.flight_fd = None, -1


def slot_count(link: graph.Link) -> int:
    """Slots of SHM_SLOT bytes within the ring memory the plan accounted for this route
    (graph.ring_bytes), never more: a power of two, at least two."""
    budget = graph.ring_bytes(link.throughput_qps, link.latency_budget_ms)
    return max(2, 1 << ((budget // SHM_SLOT).bit_length() - 1)) if budget >= SHM_SLOT else 2


class DataPlane:
    def __init__(self, *, node: str, tcp_connect: Callable[[Route, int], None]) -> None:
        """`tcp_connect(route, generation)` asks the daemon to open the sending side of a tcp
        lane; it calls `tcp_connected` (or nothing, and retries) when the socket is up."""
        self.node = node
        self._tcp_connect = tcp_connect
        self.routes: dict[graph.LinkKey, Route] = {}
        self._by_saddr: dict[tuple[str, int], set[graph.LinkKey]] = {}  # (saddr, 0 from|1 to)
        self.endpoints: dict[tuple[str, str], Session] = {}
        self.bells: dict[str, int] = {}  # subscriber saddr -> eventfd shared by its shm rings
        self._next_route_id = 1
        self._next_gen = 1

    # --- commits -------------------------------------------------------------------------------

    def rewire(self, links: Mapping[graph.LinkKey, graph.Link],
               changed: Iterable[graph.LinkKey]) -> list[Push]:
        """After a COMMIT: give each changed route its new lane (or none) and tell its ends."""
        touched: set[tuple[str, str]] = set()
        for key in sorted(set(changed)):
            link = links.get(key)
            if link is not None and self.node not in (link.from_node, link.to_node):
                link = None
            route = self.routes.get(key)
            touched |= {(key[0], "pub"), (key[1], "sub")}
            if route is not None and link == route.link:
                continue
            if route is not None:
                # The publisher seals the old ring when its new lane set drops it; with none
                # attached nobody else will write, so the daemon seals it.
                route.close_lanes(seal=(key[0], "pub") not in self.endpoints)
                route.delivered.clear()
                if link is None:
                    route.close()
                    del self.routes[key]
                    self._index(key, add=False)
                    continue
                route.link = link
                if self._wanted(route):
                    self._bring_up(route)
            elif link is not None:
                self.routes[key] = self._open_route(link)
                self._index(key, add=True)
        pushes = self._pushes(touched)
        self._gc_bells()
        return pushes

    def _open_route(self, link: graph.Link) -> Route:
        """A committed route. Its lane and flight page are made once one of its ends on this
        node is attached (at once, if one already is): a route nobody has used holds no
        descriptor, so a node's committed routes are not bounded by its open-file limit."""
        route = Route(key=link.key, route_id=self._next_route_id, link=link)
        self._next_route_id += 1
        if self._wanted(route):
            self._bring_up(route)
        return route

    def _wanted(self, route: Route) -> bool:
        sends = (route.key[0], "pub") in self.endpoints and route.link.from_node == self.node
        receives = (route.key[1], "sub") in self.endpoints and route.link.to_node == self.node
        return sends or receives

    def _bring_up(self, route: Route, *, lanes: bool = True) -> None:
        if not route.live:
            route.flight_fd, route.page = flight.create(route.route_id,
                                                        name=f"rtt-flight-{route.route_id}")
        if lanes and route.tx is None and route.rx is None:
            self._new_generation(route)

    def _new_generation(self, route: Route) -> None:
        number, link = self._next_gen, route.link
        self._next_gen += 1
        if link.lane == "shm":
            bell = self._bell(link.to)
            made = ring.create(slot_count=slot_count(link), max_payload=SHM_SLOT_PAYLOAD,
                               shared_doorbell=bell, name=f"rtt-ring-{route.route_id}")
            gen = Generation(number, "shm", ring=made)
            route.tx = route.rx = gen
        elif link.lane == "uds":
            pub, sub = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            gen = Generation(number, "uds", pub_fd=pub.detach(), sub_fd=sub.detach())
            route.tx = route.rx = gen
        elif link.from_node == self.node:
            route.tx = Generation(number, "tcp")  # the receiving generation comes with accept
            self._tcp_connect(route, number)

    def tcp_connected(self, key: graph.LinkKey, number: int, fd: int) -> list[Push]:
        """The sending side of a tcp lane is up; hand it to the publisher."""
        route = self.routes.get(key)
        if route is None or route.tx is None or route.tx.number != number or route.tx.pub_fd >= 0:
            os.close(fd)  # the route changed while connecting: this socket is stale
            return []
        route.tx.pub_fd = fd
        return self._pushes({(key[0], "pub")})

    def receives(self, key: graph.LinkKey) -> bool:
        route = self.routes.get(key)
        return route is not None and route.link.lane == "tcp" and route.link.to_node == self.node

    def tcp_accepted(self, key: graph.LinkKey, fd: int) -> list[Push]:
        """A sending node connected for `key` (`receives(key)` holds): the route's new
        receiving generation."""
        route = self.routes[key]
        self._bring_up(route, lanes=False)
        old = route.rx
        route.rx = Generation(self._next_gen, "tcp", sub_fd=fd)
        self._next_gen += 1
        if old is not None and old is not route.tx:
            old.close()
        return self._pushes({(key[1], "sub")})

    # --- endpoints -----------------------------------------------------------------------------

    def attach(self, session: Session, saddr: str, role: str) -> Push:
        """Bind (saddr, role) to `session`; the reply carries the endpoint's lanes now."""
        holder = self.endpoints.get((saddr, role))
        if holder is not None and holder != session:
            raise participant.Refused(
                "busy", f"{saddr} already has a {role} attached (SPSC: one per end)")
        self.endpoints[(saddr, role)] = session
        for route in self.routes_of(saddr, role):
            route.delivered.pop(role, None)
            self._bring_up(route)
        return self._lane_set(session, saddr, role)

    def detach(self, session: Session, saddr: str, role: str) -> list[Push]:
        if self.endpoints.get((saddr, role)) != session:
            raise participant.Refused(
                "not-attached", f"{saddr} {role} is not attached by this session")
        return self._release(saddr, role)

    def drop_session(self, session: Session) -> list[Push]:
        """A service's control connection closed (it exited, or was killed): reclaim its ends."""
        pushes: list[Push] = []
        for (saddr, role), holder in sorted(self.endpoints.items()):
            if holder == session:
                pushes += self._release(saddr, role)
        return pushes

    def _release(self, saddr: str, role: str) -> list[Push]:
        """The end is gone. A stream lane cannot be re-attached (its socket went with the
        service), nor can a ring whose producer died mid-stream: those routes start a new
        generation, and the other end drains the old one first. A ring outlives its consumer,
        so the next subscriber carries on where the last one stopped. A route with neither end
        attached any more gives back its lanes."""
        del self.endpoints[(saddr, role)]
        touched: set[tuple[str, str]] = set()
        for route in self.routes_of(saddr, role):
            route.delivered.pop(role, None)
            if not self._wanted(route):
                # Nobody reads or writes it: the lanes go (frames left in them are lost); the
                # flight page stays, so the route's counters outlive its services.
                route.close_lanes(seal=True)
                continue
            if route.link.lane == "shm" and role == "sub":
                continue
            other = (route.key[1], "sub") if role == "pub" else (route.key[0], "pub")
            route.delivered.pop(other[1], None)
            if route.link.lane == "tcp" and role == "sub":
                if route.rx is not None:  # the sender reconnects: the next receiving generation
                    route.rx.close()
                    route.rx = None
                if route.link.from_node != self.node:
                    continue
            route.close_lanes(seal=True)  # a dead producer cannot seal its ring itself
            self._new_generation(route)
            touched.add(other)
        return self._pushes(touched)

    # --- lane sets -----------------------------------------------------------------------------

    def routes_of(self, saddr: str, role: str) -> Iterator[Route]:
        """The routes at one end on this node, in key order (from an index: an attach or a
        push costs the end's routes, not the node's)."""
        index = 0 if role == "pub" else 1
        node_field = "from_node" if role == "pub" else "to_node"
        for key in sorted(self._by_saddr.get((saddr, index), ())):
            route = self.routes[key]
            if getattr(route.link, node_field) == self.node:
                yield route

    def _index(self, key: graph.LinkKey, *, add: bool) -> None:
        for position in (0, 1):
            keys = self._by_saddr.setdefault((key[position], position), set())
            if add:
                keys.add(key)
            else:
                keys.discard(key)
                if not keys:
                    del self._by_saddr[(key[position], position)]

    def _pushes(self, endpoints: Iterable[tuple[str, str]]) -> list[Push]:
        pushes = []
        for saddr, role in sorted(endpoints):
            session = self.endpoints.get((saddr, role))
            if session is not None:
                pushes.append(self._lane_set(session, saddr, role))
        return pushes

    def _lane_set(self, session: Session, saddr: str, role: str) -> Push:
        """The endpoint's whole lane set. Descriptors go only with generations the session does
        not hold yet; stream ends are handed off, never kept."""
        fds: list[int] = []
        lanes = []
        for route in self.routes_of(saddr, role):
            gen = route.tx if role == "pub" else route.rx
            entry: dict[str, Any] = {
                "route_id": route.route_id, "from": route.key[0], "to": route.key[1],
                "class": route.key[2], "lane": route.link.lane, "max_payload": MAX_PAYLOAD
                if route.link.lane != "shm" else SHM_SLOT_PAYLOAD,
                "qos": {"latency_budget_ms": route.link.latency_budget_ms,
                        "throughput_qps": route.link.throughput_qps,
                        "backpressure": route.link.backpressure},
                "generation": None, "fds": {}}
            ready = gen is not None and (gen.ring is not None or
                                         (gen.pub_fd if role == "pub" else gen.sub_fd) >= 0
                                         or route.delivered.get(role) == gen.number)
            if gen is not None and ready:
                entry["generation"] = gen.number
                if route.delivered.get(role) != gen.number:
                    entry["fds"] = self._hand(route, gen, role, fds)
                    route.delivered[role] = gen.number
            lanes.append(entry)
        message: dict[str, Any] = {"id": None, "event": "lanes", "saddr": saddr, "role": role,
                                   "lanes": lanes, "nfds": 0}
        if role == "sub":
            message["bell"] = len(fds)
            fds.append(os.dup(self._bell(saddr)))
        message["nfds"] = len(fds)
        return Push(session, message, tuple(fds))

    def _hand(self, route: Route, gen: Generation, role: str, fds: list[int]) -> dict[str, int]:
        out = {"flight": len(fds)}
        fds.append(os.dup(route.flight_fd))
        if gen.ring is not None:
            out["ring"] = len(fds)
            fds.append(os.dup(gen.ring.fd))
            out["bell"] = len(fds)
            fds.append(os.dup(self._bell(route.key[1])))
            return out
        fd = gen.pub_fd if role == "pub" else gen.sub_fd
        out["sock"] = len(fds)
        fds.append(fd)  # handed over: the push owns it now
        if role == "pub":
            gen.pub_fd = -1
        else:
            gen.sub_fd = -1
        return out

    # --- doorbells and teardown ----------------------------------------------------------------

    def _bell(self, saddr: str) -> int:
        if saddr not in self.bells:
            self.bells[saddr] = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self.bells[saddr]

    def _gc_bells(self) -> None:
        wanted = {k[1] for k, r in self.routes.items() if r.link.lane == "shm"}
        wanted |= {saddr for saddr, role in self.endpoints if role == "sub"}
        for saddr in sorted(set(self.bells) - wanted):
            os.close(self.bells.pop(saddr))

    def pages(self) -> Iterator[tuple[Route, Any]]:
        """The flight pages of the routes that have lanes now."""
        for key in sorted(self.routes):
            route = self.routes[key]
            if route.live:
                yield route, route.page

    def close(self) -> None:
        for route in self.routes.values():
            route.close()
        self.routes.clear()
        self._by_saddr.clear()
        for fd in self.bells.values():
            os.close(fd)
        self.bells.clear()
