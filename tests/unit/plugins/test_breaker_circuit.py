"""plugins/breaker/circuit.py: every transition of a member's circuit, with a fake clock."""

from __future__ import annotations

import pytest

from node.errors import ConfigError
from node.schema import build
from plugins.breaker.circuit import CLOSED, HALF_OPEN, OPEN, PASS, PROBE, REJECT, Circuit
from plugins.breaker.settings import BreakerSettings

SETTINGS = BreakerSettings(min_requests=10, window=10, open_seconds=5, max_open_seconds=30)


def calls(circuit: Circuit, now: float, ok: int = 0, bad: int = 0, slow: int = 0) -> None:
    """Record `ok` good, `bad` failed and `slow` slow calls, all admitted at `now`."""
    for outcome in [(False, False)] * ok + [(True, False)] * bad + [(False, True)] * slow:
        admitted = circuit.admit(now)
        assert admitted == PASS
        circuit.record(now, *outcome, admitted)


def tripped(settings: BreakerSettings = SETTINGS, now: float = 100.0) -> Circuit:
    circuit = Circuit(settings)
    calls(circuit, now, ok=5, bad=5)
    assert circuit.state == OPEN
    return circuit


def test_closed_passes_calls_below_min_requests_whatever_fails() -> None:
    """Nine failures of nine calls do not trip a circuit that needs ten calls."""
    circuit = Circuit(SETTINGS)
    calls(circuit, 100.0, bad=9)
    assert circuit.state == CLOSED


def test_failure_ratio_over_min_requests_opens() -> None:
    """Half of ten calls failing (ratio 0.5) opens the circuit, once."""
    circuit = tripped()
    assert circuit.trips == 1
    assert circuit.admit(100.0) == REJECT
    assert circuit.rejections == 1


def test_below_the_failure_ratio_stays_closed() -> None:
    """Four failures in ten calls stay under the 0.5 ratio."""
    circuit = Circuit(SETTINGS)
    calls(circuit, 100.0, ok=6, bad=4)
    assert circuit.state == CLOSED


def test_failures_older_than_the_window_are_forgotten() -> None:
    """Failures roll out of the window: 9 old ones and 1 new one are not 10."""
    circuit = Circuit(SETTINGS)
    calls(circuit, 100.0, bad=9)
    calls(circuit, 111.0, bad=1, ok=1)
    assert circuit.state == CLOSED
    calls(circuit, 111.5, bad=8)
    assert circuit.state == OPEN


def test_slow_ratio_opens() -> None:
    """Slow calls trip the circuit at slow_ratio even when none fails."""
    circuit = Circuit(BreakerSettings(min_requests=4, slow_call_ms=100, slow_ratio=0.75))
    calls(circuit, 1.0, ok=1, slow=2)
    assert circuit.state == CLOSED
    calls(circuit, 1.0, slow=1)
    assert circuit.state == OPEN


def test_open_becomes_half_open_after_open_seconds() -> None:
    """After open_seconds the next call is a trial; before, calls are rejected."""
    circuit = tripped()
    assert circuit.retry_after(101.0) == pytest.approx(4.0)
    assert circuit.admit(104.9) == REJECT
    assert circuit.admit(105.0) == PROBE
    assert circuit.state == HALF_OPEN


def test_half_open_allows_only_its_probes_concurrently() -> None:
    """With two probes, a third concurrent call is rejected until a probe finishes."""
    circuit = tripped(BreakerSettings(min_requests=10, half_open_probes=2, open_seconds=5))
    first, second = circuit.admit(105.0), circuit.admit(105.0)
    assert (first, second) == (PROBE, PROBE)
    assert circuit.admit(105.0) == REJECT
    circuit.record(105.0, False, False, first)
    assert circuit.state == HALF_OPEN  # one of two trials passed
    assert circuit.admit(105.1) == PROBE
    circuit.record(105.1, False, False, second)
    assert circuit.state == CLOSED
    assert circuit.probes == 3


def test_a_successful_probe_closes_with_a_clean_window() -> None:
    """A passing trial closes the circuit, and old failures no longer count."""
    closed: list[Circuit] = []
    circuit = tripped()
    circuit.on_close = closed.append
    probe = circuit.admit(105.0)
    circuit.record(105.0, False, False, probe)
    assert circuit.state == CLOSED
    assert closed == [circuit]
    calls(circuit, 105.5, bad=5)
    assert circuit.state == CLOSED


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    """Each re-trip doubles the open period: 5, 10, 20, then 30 (the maximum)."""
    opened: list[float] = []
    circuit = tripped()
    circuit.on_trip = lambda _, seconds: opened.append(seconds)
    now = 100.0
    for expected in (10.0, 20.0, 30.0, 30.0):
        now = circuit.open_until
        probe = circuit.admit(now)
        assert probe == PROBE
        circuit.record(now, True, False, probe)
        assert circuit.state == OPEN
        assert circuit.open_until - now == expected
    assert opened == [10.0, 20.0, 30.0, 30.0]


def test_closing_resets_the_backoff() -> None:
    """After a close, the next trip opens for open_seconds again."""
    circuit = tripped()
    probe = circuit.admit(105.0)
    circuit.record(105.0, True, False, probe)  # re-trip: 10 s
    probe = circuit.admit(115.0)
    circuit.record(115.0, False, False, probe)
    calls(circuit, 116.0, ok=5, bad=5)
    assert circuit.open_until - 116.0 == 5.0


def test_calls_from_before_a_trip_do_not_count_afterwards() -> None:
    """An outcome recorded after the circuit opened changes nothing."""
    circuit = Circuit(SETTINGS)
    late = circuit.admit(100.0)
    calls(circuit, 100.0, ok=5, bad=5)
    circuit.record(100.5, False, False, late)
    assert circuit.state == OPEN


def test_gated_circuit_waits_to_be_told_to_half_open() -> None:
    """A shared circuit stays open past its period until the coordinator half-opens it."""
    circuit = tripped()
    circuit.auto_half_open = False
    assert circuit.admit(200.0) == REJECT
    circuit.half_open()
    assert circuit.admit(200.0) == PROBE


def test_open_for_takes_another_nodes_trip() -> None:
    """A trip told by another node opens the circuit without calling on_trip."""
    told: list[float] = []
    circuit = Circuit(SETTINGS, on_trip=lambda _, s: told.append(s))
    circuit.open_for(50.0, 20.0, 2)
    assert (circuit.state, circuit.open_until, circuit.level, told) == (OPEN, 70.0, 2, [])


def test_a_doubted_circuit_trips_on_its_next_failure() -> None:
    """Doubted (another node tripped it): one failure, far under min_requests, opens it
    for open_seconds, and it reports the trip as its own."""
    told: list[float] = []
    circuit = Circuit(SETTINGS, on_trip=lambda _, s: told.append(s))
    circuit.doubt(until=130.0)
    calls(circuit, 100.0, bad=1)
    assert (circuit.state, circuit.level, told, circuit.doubts) == (OPEN, 0, [5.0], 1)


def test_a_success_dispels_a_doubt() -> None:
    """A doubted circuit whose next call succeeds is plainly closed again."""
    circuit = Circuit(SETTINGS)
    circuit.doubt(until=130.0)
    calls(circuit, 100.0, ok=1, bad=1)
    assert (circuit.state, circuit.doubt_until) == (CLOSED, 0.0)


def test_a_doubt_lapses_with_the_reporters_period() -> None:
    """A failure after the doubt's end is judged as any other."""
    circuit = Circuit(SETTINGS)
    circuit.doubt(until=130.0)
    calls(circuit, 131.0, bad=1)
    assert circuit.state == CLOSED


def test_an_open_circuit_is_not_doubted() -> None:
    """Doubt is for closed circuits: an open one keeps its own verdict."""
    circuit = tripped()
    circuit.doubt(until=130.0)
    assert (circuit.doubt_until, circuit.doubts) == (0.0, 0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"failure_ratio": 1.5}, "breaker.failure_ratio: must be > 0 and <= 1"),
        ({"min_requests": 0}, "breaker.min_requests: must be >= 1"),
        ({"open_seconds": 10, "max_open_seconds": 5}, "breaker.max_open_seconds: must be >="),
        ({"failure_statuses": [700]}, "breaker.failure_statuses[0]: must be an HTTP status"),
        ({"corroborate": 0}, "breaker.corroborate: must be >= 1"),
        ({"max_ejection_percent": 0}, "breaker.max_ejection_percent: must be > 0 and <= 100"),
        ({"max_ejection_percent": 101}, "breaker.max_ejection_percent: must be > 0 and <= 100"),
        ({"corroborate": 1.5}, "breaker.corroborate: must be an integer"),
        ({"open_secs": 5}, "breaker.open_secs: unknown key; did you mean 'open_seconds'?"),
    ],
)
def test_bad_settings_name_their_key(table: dict[str, object], message: str) -> None:
    """Every bad breaker key is a ConfigError naming its path."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(BreakerSettings, table, "breaker")
