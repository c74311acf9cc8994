"""Per-route circuit breakers, judged from flight-page samples. Pure: the daemon feeds samples.

A route's errors are its wrong frames (`flight.Sample.errors`: corrupt or oversize; drops and
nacks are backpressure doing its job). The breaker:

- closed → open when more than `errors` happen within `window_s`;
- open → half-open after `window_s` (publishers are refused meanwhile: `BreakerOpen`);
- half-open → open again at the first error, or closed after a clean `window_s`.
"""

from __future__ import annotations

import collections
import dataclasses

from rtt_fabric.flight import BreakerState


@dataclasses.dataclass(frozen=True)
class Config:
    errors: int = 100
    window_s: float = 10.0


@dataclasses.dataclass
class _Route:
    state: BreakerState = BreakerState.CLOSED
    since: float = 0.0  # when the state was entered
    baseline: int = 0  # cumulative errors when the state was entered
    history: collections.deque[tuple[float, int]] = dataclasses.field(
        default_factory=collections.deque)


class Breakers:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._routes: dict[int, _Route] = {}
        self.trips = 0

    def observe(self, route_id: int, now: float, errors: int,
                config: Config | None = None) -> BreakerState:
        """Record the route's cumulative error count at `now`; return its state after it.
        `config` is the route's own threshold (from policy, carried by its link), if any."""
        rule = config or self.config
        route = self._routes.get(route_id)
        if route is None:  # a page starts at zero with its route: count from there
            route = self._routes[route_id] = _Route(since=now)
            route.history.append((now, 0))
        window = rule.window_s
        route.history.append((now, errors))
        while route.history and route.history[0][0] < now - window:
            route.history.popleft()
        if route.state is BreakerState.CLOSED:
            if errors - route.history[0][1] > rule.errors:
                self._enter(route, BreakerState.OPEN, now, errors)
                self.trips += 1
        elif route.state is BreakerState.OPEN:
            if now - route.since >= window:
                self._enter(route, BreakerState.HALF_OPEN, now, errors)
        elif errors > route.baseline:
            self._enter(route, BreakerState.OPEN, now, errors)
            self.trips += 1
        elif now - route.since >= window:
            self._enter(route, BreakerState.CLOSED, now, errors)
        return route.state

    def _enter(self, route: _Route, state: BreakerState, now: float, errors: int) -> None:
        route.state, route.since, route.baseline = state, now, errors
        route.history.clear()
        route.history.append((now, errors))

    def forget(self, live: set[int]) -> None:
        for route_id in set(self._routes) - live:
            del self._routes[route_id]
