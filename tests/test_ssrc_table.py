"""The SSRC dispatch table (both twins) against a dict model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_basic_operations(rtp):
    t = rtp.SSRCTable()
    assert len(t) == 0 and t.lookup(1) is None and t.user_id(1) is None
    e = t.set(1, 100)
    assert (e.ssrc, e.user_id, e.state) == (1, 100, None)
    e.state = "receiver state"
    assert t.set(1, 100) is e and e.state == "receiver state"  # op 5 again: entry and state kept
    e2 = t.set(1, 200, state="new")  # the SSRC moved to another user: fresh entry
    assert e2 is not e and t.user_id(1) == 200 and t.lookup(1).state == "new"
    t.set(2, 200)
    t.set(3, 300)
    assert 2 in t and 4 not in t and "x" not in t and -1 not in t and 2**40 not in t
    assert sorted(x.ssrc for x in t.remove_user(200)) == [1, 2]  # op 13
    assert len(t) == 1 and t.remove(3).user_id == 300 and t.remove(3) is None
    with pytest.raises(ValueError, match="ssrc must be in 0..4294967295"):
        t.set(2**32, 1)
    with pytest.raises(TypeError, match="user_id must be an int"):
        t.set(5, "123")
    t.set(0, 1)
    t.set(0xFFFFFFFF, 2)
    assert t.user_id(0) == 1 and t.user_id(0xFFFFFFFF) == 2
    t.clear()
    assert len(t) == 0 and list(t) == []


def test_many_entries_grow_and_delete(rtp):
    t = rtp.SSRCTable()
    ssrcs = [(i * 2654435761) & 0xFFFFFFFF for i in range(5000)] + list(range(1000, 1200))
    for s in ssrcs:
        t.set(s, s % 97)
    assert len(t) == len(set(ssrcs))
    for s in ssrcs[::2]:
        t.remove(s)
    gone = set(ssrcs[::2])
    for s in ssrcs:
        assert (t.user_id(s) is None) == (s in gone)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 40), st.integers(1, 6)),
        st.tuples(st.just("remove"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("remove_user"), st.just(0), st.integers(1, 6)),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_matches_dict_model(rtp, ops):
    t = rtp.SSRCTable()
    model: dict[int, int] = {}
    for op, ssrc, user in ops:
        # Collide on purpose: small SSRC range, and multiples of 16 share home slots.
        ssrc *= 16
        if op == "set":
            t.set(ssrc, user)
            model[ssrc] = user
        elif op == "remove":
            assert (t.remove(ssrc) is not None) == (model.pop(ssrc, None) is not None)
        else:
            removed = sorted(e.ssrc for e in t.remove_user(user))
            assert removed == sorted(s for s, u in model.items() if u == user)
            model = {s: u for s, u in model.items() if u != user}
        assert len(t) == len(model)
    for s in range(0, 41 * 16):
        assert t.user_id(s) == model.get(s)
    assert sorted((e.ssrc, e.user_id) for e in t) == sorted(model.items())
