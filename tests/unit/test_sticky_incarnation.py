"""Positions of another incarnation of the cluster (rebuild, restore, failover), without servers: the rule,
the cookie's format (old and new), merging, and what a session's state drops."""

from __future__ import annotations

from django.core import signing

from replicarouter.sticky import incarnation as inc
from replicarouter.sticky import policy as sticky
from replicarouter.sticky.incarnation import Incarnation

NOW = Incarnation("7300000000000000001", 3)
#: the current primary's position in the snapshot
PRIMARY = 50_000


def test_a_position_of_the_current_incarnation_is_kept_whatever_its_value():
    # beyond the snapshot's primary position: written after the last probe, it is still to be replayed
    assert inc.keeps(NOW, PRIMARY * 10, NOW, PRIMARY)
    assert inc.keeps(NOW, 1, NOW, PRIMARY)


def test_another_system_identifier_is_dropped_even_below_the_primary():
    rebuilt = Incarnation("7300000000000000999", 3)
    assert inc.foreign(rebuilt, PRIMARY * 10, NOW, PRIMARY) == inc.SYSTEM
    assert inc.foreign(rebuilt, 1, NOW, PRIMARY) == inc.SYSTEM


def test_an_older_timeline_is_kept_at_or_below_the_current_primary_and_dropped_beyond():
    before_failover = Incarnation(NOW.system, 2)
    assert inc.keeps(before_failover, PRIMARY, NOW, PRIMARY)  # up to the switch point: read-your-writes
    assert inc.keeps(before_failover, PRIMARY - 1, NOW, PRIMARY)
    assert inc.foreign(before_failover, PRIMARY + 1, NOW, PRIMARY) == inc.TIMELINE  # a lost future
    assert inc.keeps(before_failover, PRIMARY + 1, NOW, None)  # the primary's position unknown: kept


def test_a_newer_timeline_than_the_snapshot_knows_is_kept():
    after_promotion = Incarnation(NOW.system, 4)  # the snapshot has not seen the promotion yet
    assert inc.keeps(after_promotion, PRIMARY * 10, NOW, PRIMARY)


def test_a_position_without_incarnation_is_judged_like_an_older_timeline():
    assert inc.keeps(None, PRIMARY, NOW, PRIMARY)
    assert inc.foreign(None, PRIMARY + 1, NOW, PRIMARY) == inc.UNKNOWN


def test_nothing_known_now_keeps_everything():
    assert inc.keeps(Incarnation("1", 1), PRIMARY * 10, None, None)
    # an identifier unreadable on either side: only the timeline decides
    assert inc.keeps(Incarnation("", 3), PRIMARY * 10, NOW, PRIMARY)
    assert inc.keeps(Incarnation("1", 3), PRIMARY * 10, Incarnation("", 3), PRIMARY)


def test_tokens_parse_and_reject_garbage():
    assert inc.parse(NOW.token()) == NOW
    assert inc.parse("/2") == Incarnation("", 2)
    for bad in ("", "1/", "x/1", "1/2/3", 12, None, "1" * 21 + "/1"):
        assert inc.parse(bad) is None


def test_merging_a_recorded_position_replaces_one_of_another_incarnation():
    old = Incarnation("1", 1)
    held = ({"a": 10**12, "b": 7}, {"a": old})
    positions, tags = inc.merge_recorded(held, ({"a": 500}, {"a": NOW}))
    assert positions == {"a": 500, "b": 7} and tags == {"a": NOW}  # not max(10**12, 500)
    positions, tags = inc.merge_recorded(({"a": 900}, {"a": NOW}), ({"a": 500}, {"a": NOW}))
    assert positions == {"a": 900} and tags == {"a": NOW}  # one incarnation: the further one
    positions, tags = inc.merge_recorded(({"a": 10**12}, {}), ({"a": 500}, {"a": NOW}))
    assert positions == {"a": 500}  # no incarnation (previous format): replaced too


def test_cookie_carries_incarnations_and_reads_the_previous_format():
    state = sticky.CookieState(
        {"default": 42}, seen={"default": sticky.Seen("", 1.0, 2.0, 40)},
        incarnations={"default": NOW}, seen_incarnations={"default": NOW},
    )  # fmt: skip
    back = sticky.read_cookie(sticky.write_cookie(state, "lsn"), "lsn", 60)
    assert back.positions == {"default": 42} and back.incarnations == {"default": NOW}
    assert back.seen_incarnations == {"default": NOW}
    previous = signing.dumps({"m": "lsn", "p": {"default": 42}}, salt=sticky.COOKIE_SALT, compress=True)
    back = sticky.read_cookie(previous, "lsn", 60)
    assert back.positions == {"default": 42} and back.incarnations == {} and back.problem is None
    garbage = signing.dumps(
        {"m": "lsn", "p": {"default": 42}, "i": {"default": "x"}}, salt=sticky.COOKIE_SALT
    )
    assert sticky.read_cookie(garbage, "lsn", 60).incarnations == {}


def _state(**kwargs):
    dropped = []
    state = sticky.StickyState("lsn", **kwargs)
    state.now = lambda cluster: (NOW, PRIMARY)
    state.on_foreign = lambda cluster, reason, source: dropped.append((cluster, reason, source))
    return state, dropped


def test_screen_drops_the_cookies_foreign_position_and_floor_and_keeps_current_ones():
    rebuilt = Incarnation("99", 1)
    state, dropped = _state(
        known={"a": PRIMARY * 100, "b": PRIMARY * 100, "c": PRIMARY * 100},
        seen={"a": sticky.Seen("", 1.0, 1.0, PRIMARY * 100), "b": sticky.Seen("", 1.0, 1.0, PRIMARY * 100)},
    )
    state.incarnations = {"a": rebuilt, "c": NOW}
    state.seen_incarnations = {"a": rebuilt, "b": NOW}
    state.screen()
    assert state.known == {"c": PRIMARY * 100}  # a: rebuilt; b: no incarnation, beyond the primary
    assert set(state.seen) == {"b"}
    assert sorted(dropped) == [
        ("a", "system", "cookie"),
        ("a", "system", "cookie"),
        ("b", "unknown", "cookie"),
    ]
    assert state.seen_changed  # the cookie is set again without them
    assert state.incarnations == {"c": NOW} and state.seen_incarnations == {"b": NOW}  # a's tags go too
    assert state.required("a") is None and state.required("c") == PRIMARY * 100


def test_foreign_redis_positions_are_dropped_and_kept_for_deletion():
    state, dropped = _state(known={"a": 10})
    state.incarnations = {"a": NOW}
    rebuilt = Incarnation("99", 1)
    state.loader = lambda: ({"a": PRIMARY * 100, "b": PRIMARY * 100}, {}, {"a": rebuilt, "b": NOW})
    assert state.required("a") == 10  # the cookie's: Redis's is another cluster's
    assert state.required("b") == PRIMARY * 100
    assert dropped == [("a", "system", "redis")]
    assert state.foreign_stored == {"a": (PRIMARY * 100, rebuilt)}
    assert state.loaded_incarnations == {"a": NOW, "b": NOW}


def test_without_a_snapshot_nothing_is_dropped():
    state = sticky.StickyState("lsn", known={"a": 10**15})
    state.now = lambda cluster: None
    state.screen()
    assert state.required("a") == 10**15


def test_keeps_is_false_for_what_foreign_drops():
    assert not inc.keeps(Incarnation(NOW.system, 2), PRIMARY + 1, NOW, PRIMARY)
    assert not inc.keeps(Incarnation("other", 3), 1, NOW, PRIMARY)


def test_merging_one_incarnation_takes_the_further_position_whichever_comes_first():
    assert inc.merge_recorded(({"a": 500}, {"a": NOW}), ({"a": 900}, {"a": NOW})) == ({"a": 900}, {"a": NOW})
    assert inc.merge_recorded(({"a": 900}, {"a": NOW}), ({"a": 500}, {"a": NOW})) == ({"a": 900}, {"a": NOW})


def test_merge_recorded_tags_describe_its_positions_only():
    old = Incarnation(NOW.system, 2)
    # an untagged recorded position (another incarnation: none) replaces a tagged one, and carries no tag
    assert inc.merge_recorded(({"a": 5}, {"a": old}), ({"a": 9}, {})) == ({"a": 9}, {})
    # a tag without its position is not kept
    assert inc.merge_recorded(({}, {"a": old}), ({}, {})) == ({}, {})


def test_merge_kept_per_cluster():
    old = Incarnation(NOW.system, 2)
    # a cluster only the second source has is taken, even at positions 0 and 1
    assert inc.merge_kept(({}, {}), ({"a": 0, "b": 1}, {"b": NOW})) == ({"a": 0, "b": 1}, {"b": NOW})
    # equal positions: the tagged side's incarnation is the one kept
    assert inc.merge_kept(({"a": 5}, {}), ({"a": 5}, {"a": NOW})) == ({"a": 5}, {"a": NOW})
    assert inc.merge_kept(({"a": 5}, {"a": NOW}), ({"a": 5}, {})) == ({"a": 5}, {"a": NOW})
    # the second source further without a tag: the first source's tag goes with its position
    assert inc.merge_kept(({"a": 5}, {"a": old}), ({"a": 9}, {})) == ({"a": 9}, {})
    # the first source further: it stays, with its tag
    assert inc.merge_kept(({"a": 9}, {"a": old}), ({"a": 5}, {"a": NOW})) == ({"a": 9}, {"a": old})
    # a tag without its position is not returned
    assert inc.merge_kept(({}, {"a": old}), ({}, {})) == ({}, {})


def test_each_cluster_is_judged_by_its_own_snapshot():
    rebuilt = Incarnation("99", 1)
    state, dropped = _state(known={"a": PRIMARY * 100, "b": PRIMARY * 100})
    state.incarnations = {"a": rebuilt, "b": rebuilt}
    state.now = lambda cluster: {"a": (NOW, PRIMARY)}.get(cluster)  # b: nothing fresh known
    state.screen()
    assert state.known == {"b": PRIMARY * 100} and dropped == [("a", "system", "cookie")]


def test_an_older_timeline_from_redis_is_compared_with_the_primary():
    before_failover = Incarnation(NOW.system, 2)
    state, dropped = _state()
    state.loader = lambda: (
        {"a": PRIMARY, "b": PRIMARY + 1},
        {},
        {"a": before_failover, "b": before_failover},
    )
    assert state.required("a") == PRIMARY and state.required("b") is None
    assert dropped == [("b", "timeline", "redis")]


def test_screen_keeps_the_tags_of_what_it_keeps_and_judges_untagged_floors():
    state, dropped = _state(
        known={"c": PRIMARY * 100},
        seen={
            "b": sticky.Seen("", 1.0, 1.0, PRIMARY * 100),
            "d": sticky.Seen("", 1.0, 1.0, PRIMARY),
            "e": sticky.Seen("", 1.0, 1.0, PRIMARY + 1),
        },
    )
    state.incarnations = {"c": NOW}
    state.seen_incarnations = {"b": NOW}
    state.screen()
    assert state.incarnations == {"c": NOW} and state.seen_incarnations == {"b": NOW}
    assert set(state.seen) == {"b", "d"}  # d: no incarnation, at the primary; e: beyond it
    assert dropped == [("e", "unknown", "cookie")]


def test_a_dropped_cookie_position_alone_sets_the_cookie_again():
    """Else the foreign position would come back with every request."""
    state, _ = _state(known={"a": PRIMARY * 100})
    state.incarnations = {"a": Incarnation("99", 1)}
    state.screen()
    assert state.known == {} and state.seen_changed is True


def test_the_cookie_carries_the_tags_of_what_it_writes_only():
    old = Incarnation(NOW.system, 2)
    state, _ = _state(seen={"a": sticky.Seen("", 1.0, 1.0, 5)})
    state.incarnations = {"a": NOW, "b": old}
    state.seen_incarnations = {"a": NOW, "b": old}
    content = state.cookie({"a": 5}, 0)
    assert content.incarnations == {"a": NOW} and content.seen_incarnations == {"a": NOW}
    back = sticky.read_cookie(sticky.write_cookie(content, "lsn"), "lsn", 60)
    assert back.incarnations == {"a": NOW} and back.seen_incarnations == {"a": NOW}


def test_a_new_floor_is_tagged_with_its_cluster_s_incarnation():
    state, _ = _state()
    state.now = lambda cluster: {"a": (NOW, PRIMARY)}.get(cluster)
    state.observe("a", "r1", None, now=10.0)
    state.observe("b", "r1", None, now=10.0)
    assert state.seen_incarnations == {"a": NOW}
