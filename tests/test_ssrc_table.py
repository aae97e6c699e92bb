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
    t = rtp.SSRCTable(max_entries=10_000)
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


# -- the bound (op 5 comes from the network) -----------------------------------------


def test_100000_distinct_ssrcs_keep_the_default_bound(rtp):
    t = rtp.SSRCTable()
    assert t.max_entries == 1024 and t.evictions == 0
    for ssrc in range(100_000):
        t.set(ssrc, 7)
    assert len(t) == 1024 and t.evictions == 100_000 - 1024
    # The newest stay (nothing else was used); the oldest went first.
    assert sorted(e.ssrc for e in t) == list(range(100_000 - 1024, 100_000))


def test_eviction_takes_the_least_recently_active_entry(rtp):
    t = rtp.SSRCTable(max_entries=4)
    for ssrc in (1, 2, 3, 4):
        t.set(ssrc, ssrc * 10)
    t.lookup(1)  # a packet of SSRC 1 (the receive path looks it up)
    t.set(2, 20)  # op 5 again for SSRC 2 (same user): active too
    t.set(5, 50)
    assert sorted(e.ssrc for e in t) == [1, 2, 4, 5] and t.evictions == 1  # 3 was the oldest unused
    assert t.user_id(4) == 40 and 4 in t  # neither user_id() nor `in` count as use
    t.set(6, 60)
    assert 4 not in t and t.evictions == 2


def test_a_routed_packet_marks_its_entry_active(rtp):
    key = bytes(range(32))
    mode = "aead_xchacha20_poly1305_rtpsize"
    t = rtp.SSRCTable(max_entries=3)
    for ssrc in (1, 2, 3):
        t.set(ssrc, ssrc)
    dep = rtp.Depacketizer(mode, key)
    packet = dep.dispatch(rtp.Packetizer(1, mode, key).packetize(b"\xf8\xff\xfe"), t)
    assert packet is not None and packet.user_id == 1
    t.set(4, 4)
    assert 1 in t and 2 not in t


def test_max_entries_is_checked_alike_in_both_twins(rtp):
    with pytest.raises(ValueError, match="max_entries must be >= 1, got 0"):
        rtp.SSRCTable(0)
    with pytest.raises(TypeError, match="max_entries must be an int, not bool"):
        rtp.SSRCTable(True)
    with pytest.raises(TypeError, match="max_entries must be an int, not str"):
        rtp.SSRCTable(max_entries="8")


class LRUModel:
    """The reference: a dict in order of last use."""

    def __init__(self, max_entries):
        self.max = max_entries
        self.entries: dict[int, int] = {}
        self.evictions = 0

    def touch(self, ssrc):
        self.entries[ssrc] = self.entries.pop(ssrc)

    def set(self, ssrc, user):
        if self.entries.get(ssrc) == user:
            self.touch(ssrc)
            return
        self.entries.pop(ssrc, None)
        self.entries[ssrc] = user
        while len(self.entries) > self.max:
            del self.entries[next(iter(self.entries))]
            self.evictions += 1


bounded_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 30), st.integers(1, 5)),
        st.tuples(st.just("lookup"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("peek"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("remove_user"), st.just(0), st.integers(1, 5)),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=bounded_ops, max_entries=st.integers(1, 12))
def test_bounded_table_matches_an_lru_model(rtp, ops, max_entries):
    t = rtp.SSRCTable(max_entries=max_entries)
    model = LRUModel(max_entries)
    for op, ssrc, user in ops:
        ssrc *= 16  # shared home slots in the compiled twin's hash table
        if op == "set":
            t.set(ssrc, user)
            model.set(ssrc, user)
        elif op == "lookup":
            assert (t.lookup(ssrc) is not None) == (ssrc in model.entries)
            if ssrc in model.entries:
                model.touch(ssrc)
        elif op == "peek":
            assert t.user_id(ssrc) == model.entries.get(ssrc) and (ssrc in t) == (ssrc in model.entries)
        elif op == "remove":
            assert (t.remove(ssrc) is not None) == (model.entries.pop(ssrc, None) is not None)
        else:
            t.remove_user(user)
            model.entries = {s: u for s, u in model.entries.items() if u != user}
        assert len(t) == len(model.entries) <= max_entries
        assert t.evictions == model.evictions
    assert sorted((e.ssrc, e.user_id) for e in t) == sorted(model.entries.items())


async def test_a_flood_of_op_5_keeps_the_connection_table_bounded():
    """2,000 op 5 with distinct SSRCs from the voice server: the connection keeps at most
    ``ConnConfig.max_ssrcs`` of them and counts the rest as evictions."""
    from fastvoice.gateway_messages import GatewayMessageDataSpeaking, Opcode, SpeakingFlags
    from fastvoice.testing import VoiceServer

    from _calls import make_manager, wait_until

    async with VoiceServer() as server:
        _, bots = make_manager(server, 5, max_ssrcs=100)
        conn = bots.create_conn(9)
        await conn.open(90)
        assert conn.ssrcs.max_entries == 100
        session = server.session_for_user(5)
        for ssrc in range(1, 2001):
            await session.send(Opcode.SPEAKING, GatewayMessageDataSpeaking(SpeakingFlags.MICROPHONE, ssrc,
                                                                            user_id=1000 + ssrc))
        await wait_until(lambda: conn.user_id_by_ssrc(2000) == 3000, what="the last op 5")
        assert len(conn.ssrcs) == 100 and conn.ssrcs.evictions == 1900
        assert conn.user_id_by_ssrc(1) is None and conn.user_id_by_ssrc(1901) == 2901
        await bots.close()
