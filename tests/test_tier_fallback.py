"""Which tier a click renders on (api.tiers.choose_tier): never refused for want of a worker,
a lower tier only as the project's fallback policy allows and after the grace period."""

from __future__ import annotations

from api.tiers import TierView, choose_tier
from studio.tiers import FallbackPolicy, Quality

ONLINE = TierView(online=True, offline_for=0, busy=False)
BUSY = TierView(online=True, offline_for=0, busy=True)


def offline(seconds: float) -> TierView:
    return TierView(online=False, offline_for=seconds, busy=False)


def views(high: TierView, standard: TierView, low: TierView) -> dict[Quality, TierView]:
    return {Quality.high: high, Quality.standard: standard, Quality.low: low}


def test_the_requested_tier_is_used_when_it_has_a_worker() -> None:
    used, why = choose_tier(Quality.high, FallbackPolicy.when_offline, 30,
                            views(ONLINE, ONLINE, ONLINE))
    assert (used, why) == (Quality.high, None)


def test_a_tier_offline_for_less_than_the_grace_period_is_waited_for() -> None:
    used, _ = choose_tier(Quality.high, FallbackPolicy.when_offline, 30,
                          views(offline(10), ONLINE, ONLINE))
    assert used == Quality.high


def test_a_tier_offline_past_the_grace_period_falls_back_to_the_next_lower_online() -> None:
    used, why = choose_tier(Quality.high, FallbackPolicy.when_offline, 30,
                            views(offline(31), offline(100), ONLINE))
    assert used == Quality.low
    assert why == "no task worker has been online for quality high for 31 s"


def test_with_nothing_lower_online_the_click_waits_for_its_own_tier() -> None:
    used, _ = choose_tier(Quality.standard, FallbackPolicy.when_offline, 0,
                          views(ONLINE, offline(500), offline(500)))
    assert used == Quality.standard  # never a higher tier, never refused


def test_never_waits_however_long_the_tier_is_offline() -> None:
    used, _ = choose_tier(Quality.high, FallbackPolicy.never, 0,
                          views(offline(3600), ONLINE, ONLINE))
    assert used == Quality.high


def test_a_busy_tier_is_kept_unless_the_policy_is_when_busy() -> None:
    tiers = views(BUSY, ONLINE, ONLINE)
    assert choose_tier(Quality.high, FallbackPolicy.when_offline, 0, tiers)[0] == Quality.high
    used, why = choose_tier(Quality.high, FallbackPolicy.when_busy, 0, tiers)
    assert (used, why) == (Quality.standard, "the high task worker is busy")


def test_when_busy_skips_lower_tiers_that_are_busy_too() -> None:
    used, _ = choose_tier(Quality.high, FallbackPolicy.when_busy, 0, views(BUSY, BUSY, ONLINE))
    assert used == Quality.low
    used, _ = choose_tier(Quality.high, FallbackPolicy.when_busy, 0, views(BUSY, BUSY, BUSY))
    assert used == Quality.high
