from meta_sandbox.pacing import Gcra, Limits


def test_gcra_allows_the_burst_then_the_rate():
    gcra = Gcra(interval_s=0.1, tolerance_s=0.2)
    assert [gcra.allow("k", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert gcra.allow("k", now=0.15)
    assert not gcra.allow("k", now=0.15)
    assert gcra.allow("other", now=0.15)


def test_per_number_throughput_is_settable():
    limits = Limits(default_mps=80, throughput_burst=0, mps_by_number={"slow": 2})
    assert limits.throughput_ok("slow") and not limits.throughput_ok("slow")
    assert all(limits.throughput_ok("fast") for _ in range(1))


def test_pair_pacing_can_be_turned_off():
    limits = Limits(pair_interval_s=0)
    assert all(limits.pair_ok("n", "27123456789") for _ in range(100))
    paced = Limits(pair_interval_s=6, pair_burst=1)
    assert [paced.pair_ok("n", "1") for _ in range(3)] == [True, True, False]
