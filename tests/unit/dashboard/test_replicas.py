"""dashboard/replicas.py: the recommendation from CPU, p95 and the traffic trend."""

from __future__ import annotations

from dashboard.replicas import ReplicaPolicy, recommend

POLICY = ReplicaPolicy(minimum=2, maximum=8, scale_up_cpu=70, scale_down_cpu=30, p95_target_ms=200)


def test_hot_cpu_scales_up_to_put_each_node_at_the_threshold():
    """4 nodes at 105 % CPU need 6 to sit at 70 %."""
    rec = recommend(4, 105.0, 50.0, 100.0, 100.0, POLICY)
    assert (rec.replicas, rec.direction) == (6, "up")


def test_slow_p95_adds_one_node():
    """p95 over its target with cool CPU: one more node."""
    rec = recommend(3, 40.0, 450.0, 100.0, 100.0, POLICY)
    assert rec.replicas == 4
    assert "p95" in rec.reason


def test_rising_traffic_scales_before_the_cpu_is_hot():
    """60 % CPU with traffic doubled in a minute projects to 120 %: scale up now."""
    rec = recommend(2, 60.0, 50.0, 200.0, 100.0, POLICY)
    assert rec.replicas == 4


def test_cool_cluster_scales_down_one_step():
    """Under 30 % CPU: one node fewer."""
    rec = recommend(5, 10.0, 20.0, 50.0, 50.0, POLICY)
    assert (rec.replicas, rec.direction) == (4, "down")


def test_recommendation_stays_within_bounds():
    """Never above the maximum nor below the minimum, and the reason says so."""
    assert recommend(8, 200.0, None, 0.0, 0.0, POLICY).replicas == 8
    low = recommend(2, 1.0, None, 0.0, 0.0, POLICY)
    assert low.replicas == 2
    assert "minimum" in low.reason


def test_within_thresholds_holds():
    """Between the thresholds, the count holds."""
    rec = recommend(3, 50.0, 100.0, 10.0, 10.0, POLICY)
    assert (rec.replicas, rec.direction) == (3, "hold")
