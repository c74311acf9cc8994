"""The breaker's state machine, on a clock the test owns (rtt_fabric.breaker is pure)."""

from __future__ import annotations

from rtt_fabric.breaker import Breakers, Config
from rtt_fabric.flight import BreakerState as S


def test_it_trips_only_when_errors_within_the_window_exceed_the_threshold() -> None:
    b = Breakers(Config(errors=5, window_s=10))
    assert b.observe(1, 0.0, 0) is S.CLOSED
    assert b.observe(1, 5.0, 5) is S.CLOSED  # five in the window: not more than five
    assert b.observe(1, 16.0, 10) is S.CLOSED  # the first five have left the window
    assert b.observe(1, 17.0, 16) is S.OPEN  # six within ten seconds
    assert b.trips == 1


def test_open_waits_a_window_then_half_opens_and_closes_after_a_clean_window() -> None:
    b = Breakers(Config(errors=0, window_s=2))
    b.observe(1, 0.0, 0)
    assert b.observe(1, 1.0, 1) is S.OPEN
    assert b.observe(1, 2.0, 1) is S.OPEN
    assert b.observe(1, 3.0, 1) is S.HALF_OPEN
    assert b.observe(1, 4.0, 1) is S.HALF_OPEN
    assert b.observe(1, 5.0, 1) is S.CLOSED


def test_an_error_while_half_open_opens_it_again() -> None:
    b = Breakers(Config(errors=0, window_s=1))
    b.observe(1, 0.0, 0)
    assert b.observe(1, 0.5, 3) is S.OPEN
    assert b.observe(1, 1.5, 3) is S.HALF_OPEN
    assert b.observe(1, 1.6, 4) is S.OPEN
    assert b.trips == 2


def test_routes_are_judged_apart_and_forgotten_when_gone() -> None:
    b = Breakers(Config(errors=1, window_s=10))
    b.observe(1, 0.0, 0)
    b.observe(2, 0.0, 0)
    assert b.observe(1, 1.0, 9) is S.OPEN
    assert b.observe(2, 1.0, 1) is S.CLOSED
    b.forget({2})
    assert b.observe(1, 2.0, 0) is S.CLOSED  # forgotten: judged afresh from its new page


def test_errors_before_the_first_look_count_from_the_fresh_page() -> None:
    b = Breakers(Config(errors=3, window_s=10))
    assert b.observe(1, 0.0, 4) is S.OPEN
