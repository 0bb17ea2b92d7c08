"""Writers in manifest keys and which checkpoint a process loads (ADR 004, core side).

Keys spell the writer (nothing for rank 0, ``w<node>.<local>``, ``s`` for sharded), one spelling
per key; the manifest body agrees with its key or is refused; old rank-0 keys and bodies read
as before; and the load rule (own + sharded if the process saved any and its newest is not
older than the gang's from another attempt, else rank 0's + sharded) is checked as a table over
writers and as a property against a direct statement of the rule.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout, policies
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    Manifest,
    loads,
    manifest_key,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.position import (
    MAX_INDEX,
    RANK0,
    Position,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import ManifestError

from .helpers import make_scope, tiny

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCOPE = make_scope()
PREFIX = SCOPE.task_prefix()
ID = "0123456789abcdef"


def _key(flag: str, created: int = 1_700_000_000_000, seq: int = 0) -> str:
    return "%s%013d-0-%06d-%s-%s-mfchckpt.json" % (PREFIX, created, seq, flag, ID)


# ------------------------------------------------------------------------------ keys
@pytest.mark.parametrize(
    "position, sharded, token",
    [
        (RANK0, False, "L"),
        (Position(1, 0), False, "Lw1.0"),
        (Position(0, 3), False, "Lw0.3"),
        (Position(12, 7), False, "Lw12.7"),
        (RANK0, True, "Ls"),
    ],
)
def test_the_key_spells_the_writer(position, sharded, token):
    key = manifest_key(SCOPE, 1_700_000_000_000, 0, True, ID, "mfchckpt", position, sharded)
    assert key == _key(token)
    header = parse_key(key)
    assert (header.position, header.sharded) == (position, sharded)


def test_keys_written_before_writers_were_recorded_are_rank_0s():
    header = parse_key(_key("N"))
    assert (header.position, header.sharded, header.latest) == (RANK0, False, False)


@pytest.mark.parametrize(
    "flag",
    [
        "Lw0.0",  # rank 0 has one spelling: no token
        "Lw01.0",  # leading zeros: a second spelling of w1.0
        "Lw1.00",
        "Lw1",
        "Lw.1",
        "Lw1.",
        "Lw-1.0",
        "Lw1.0s",
        "Lsw1.0",
        "Lss",
        "LS",
        "Lx",
        "Lw1000000000.0",  # ten digits: beyond MAX_INDEX
        "Lw١.0",  # another script's digit
        "sL",
        "w1.0",
    ],
)
def test_other_spellings_of_a_writer_are_not_manifest_keys(flag):
    key = _key(flag)
    assert layout.split_manifest_key(key) is None
    with pytest.raises(ManifestError, match="not a checkpoint manifest key"):
        parse_key(key)


def test_a_sharded_checkpoint_names_no_writer():
    with pytest.raises(ValueError, match="sharded checkpoint has no writer"):
        manifest_key(SCOPE, 1, 0, True, ID, "mfchckpt", Position(1, 0), True)


@pytest.mark.parametrize("bad", [-1, MAX_INDEX + 1, True, 1.0, "1", None])
def test_positions_are_whole_numbers_in_range(bad):
    with pytest.raises(ValueError, match="whole number"):
        Position(bad, 0)
    with pytest.raises(ValueError, match="whole number"):
        Position(0, bad)


positions = st.builds(Position, st.integers(0, MAX_INDEX), st.integers(0, MAX_INDEX))
writers = st.one_of(
    st.tuples(positions, st.just(False)),
    st.tuples(st.just(RANK0), st.just(True)),
)


@PROPS
@given(writers, st.integers(0, 2**40), st.integers(0, 2**20), st.booleans())
def test_key_and_header_round_trip_with_any_writer(writer, created, seq, latest):
    position, sharded = writer
    key = manifest_key(SCOPE, created, seq, latest, ID, "mfchckpt", position, sharded)
    header = parse_key(key)
    assert (header.position, header.sharded, header.latest, header.created_ms, header.seq) == (
        position,
        sharded,
        latest,
        created,
        seq,
    )
    # One spelling per key: building it again from what was parsed gives the same key.
    assert (
        manifest_key(
            header.scope, created, seq, latest, ID, "mfchckpt", header.position, header.sharded
        )
        == key
    )


# ------------------------------------------------------------------------------ bodies
def _manifest(position=RANK0, sharded=False) -> Manifest:
    return Manifest(
        ID, "mfchckpt", SCOPE, True, 1_700_000_000_000, 0, {}, [], position=position,
        sharded=sharded,
    )  # fmt: skip


@pytest.mark.parametrize(
    "position, sharded", [(RANK0, False), (Position(2, 1), False), (RANK0, True)]
)
def test_a_body_records_its_writer_and_parses_back(position, sharded):
    m = _manifest(position, sharded)
    body = json.loads(m.dumps())
    # Rank 0's plain manifests are what they were before writers were recorded.
    assert ("position" in body, "sharded" in body) == (not position.is_rank0, sharded)
    back = loads(m.dumps(), m.key)
    assert (back.position, back.sharded, back.key) == (position, sharded, m.key)


@pytest.mark.parametrize(
    "change",
    [
        {"position": {"node": 1, "local": 0}},  # the body says w1.0, the key rank 0
        {"sharded": True},  # the body says sharded, the key does not
    ],
)
def test_a_body_that_disagrees_with_its_key_is_refused(change):
    m = _manifest()
    body = dict(json.loads(m.dumps()), **change)
    with pytest.raises(ManifestError, match="moved or tampered with"):
        loads(json.dumps(body).encode(), m.key)


@pytest.mark.parametrize(
    "position",
    [{"node": -1, "local": 0}, {"node": 1}, {"node": 1, "local": 0, "x": 1}, [1, 0], "w1.0"],
)
def test_a_malformed_writer_in_a_body_names_the_field(position):
    m = _manifest(Position(1, 0))
    body = dict(json.loads(m.dumps()), position=position)
    with pytest.raises(ManifestError, match="position"):
        loads(json.dumps(body).encode(), m.key)


def test_a_sharded_body_with_a_writer_is_refused():
    m = _manifest(RANK0, True)
    body = dict(json.loads(m.dumps()), position={"node": 1, "local": 0})
    with pytest.raises(ManifestError, match="sharded checkpoint has no writer"):
        loads(json.dumps(body).encode(), m.key)


def test_saves_commit_under_the_writers_key(store, tmp_path):
    src = str(tiny(tmp_path))
    plain = store.save(src, SCOPE)
    other = store.save(src, SCOPE, position=Position(1, 2))
    assert "-L-" in plain.key and "-Lw1.2-" in other.key
    assert store.read(other.key).position == Position(1, 2)
    assert {h.position for h in store.headers(PREFIX)} == {RANK0, Position(1, 2)}


# ------------------------------------------------------------------------------ the load rule
A, B, C = RANK0, Position(1, 0), Position(0, 1)


def _h(n: int, writer, latest: bool = True, attempt: int = 0, run: str = "1"):
    """The ``n``-th checkpoint (later n is newer) of ``writer`` ("s": sharded), or of
    ``(writer, attempt)``, saved by ``attempt`` of the task in ``run``."""
    if isinstance(writer, tuple):
        writer, attempt = writer
    position, sharded = (RANK0, True) if writer == "s" else (writer, False)
    scope = make_scope(run=run, attempt=attempt)
    key = manifest_key(scope, 1_700_000_000_000 + n, 0, latest, ID, "mfchckpt", position, sharded)
    return parse_key(key)


# (writers of checkpoints 0..n-1 in save order, the process, index of the one it loads or None);
# a writer alone saved in attempt 0, (writer, k) in attempt k.
RULE = [
    ([], A, None),
    ([A, A], A, 1),
    ([A, B], A, 0),  # rank 0 never loads node 1's
    ([A, B], B, 1),  # node 1 gets its own back
    ([B, A], B, 0),
    ([A], B, 0),  # node 1 saved nothing: rank 0's (the `if rank == 0: save()` pattern)
    ([A], C, 0),  # a worker with LOCAL_RANK=1 too
    ([B], A, None),  # rank 0 saved nothing: never another writer's
    ([B], C, None),
    ([A, B, C], C, 2),
    ([A, B, C], B, 1),
    (["s"], B, 0),  # sharded: loaded everywhere
    (["s"], A, 0),
    ([B, "s"], B, 1),  # own and sharded: the newest of both
    (["s", B], B, 1),
    (["s", A], B, 1),  # no own: rank 0's and sharded
    ([A, "s"], B, 1),
    ([C, "s", A], C, 1),  # C's own and the sharded one; rank 0's newer one is not C's
    # One old save of its own does not pin a process: node 1's failure save of attempt 0,
    # then rank 0 saved in attempt 1 -> rank 0's (adversarial review r2).
    ([A, B, (A, 1)], B, 2),
    ([A, B, (A, 1), (A, 1)], B, 3),
    ([B, ("s", 1)], B, 1),
    ([A, B, (A, 1), (B, 1)], B, 3),  # every rank saves its own every attempt: its own
    ([A, (B, 1), (A, 1)], B, 1),  # own from the gang's newest attempt: its own
    ([A, B, (A, 1)], C, 2),
    ([(B, 1), (A, 1)], B, 0),  # same attempt, own older: still its own (ranks never cross-load)
    ([A, (B, 1)], B, 1),  # own newer than the gang's, from a later attempt
    ([B, (C, 1)], B, 0),  # the gang saved nothing: its own
]


@pytest.mark.parametrize("saved, process, expected", RULE)
def test_which_checkpoint_a_process_loads(saved, process, expected):
    headers = [_h(n, w) for n, w in enumerate(saved)]
    chosen = policies.newest(headers, within_task=True, position=process)
    assert chosen == (None if expected is None else headers[expected])


def test_eager_takes_a_processs_own_only_from_the_run_of_the_gangs_newest():
    """Across runs (``eager``) the gang's newest, by date, picks the run: node 1's save of
    run 1 is stale once rank 0 saved in run 2, and counts again once node 1 saved in run 2."""
    old, gangs = _h(0, B, run="1"), _h(1, A, run="2")
    assert policies.newest([old, gangs], position=B) == gangs
    again = _h(2, B, run="2")
    assert policies.newest([old, gangs, again], position=B) == again


def test_a_clock_ahead_in_an_old_run_does_not_make_its_save_win_under_eager():
    """Node 1's clock ran 3 h ahead in run 1, where it made a failure save; rank 0 saved in
    run 2.  Dates of different machines never make node 1 load its own run-1 save over the
    gang's (it used to, forever, while node 0 loaded run 2's: the nodes diverged)."""
    ahead = 3 * 3600 * 1000
    skewed = _h(ahead, B, run="1")  # dated after everything of run 2
    gangs = _h(1, A, run="2")
    assert policies.newest([_h(0, A, run="1"), skewed, gangs], position=B) == gangs
    # ... nor over its own save of the gang's run, nor the run's sharded one.
    mine, shard = _h(2, B, run="2"), _h(3, "s", run="2")
    assert policies.newest([skewed, gangs, mine], position=B) == mine
    assert policies.newest([skewed, gangs, mine, shard], position=B) == shard
    # Within a task (a retry orders attempt first) the rule is unchanged.
    retry = [_h(0, A), _h(ahead, B), _h(1, (A, 1))]
    assert policies.newest(retry, within_task=True, position=B) == retry[2]


def test_without_a_position_the_newest_of_any_writer_is_chosen():
    headers = [_h(0, A), _h(1, B), _h(2, C)]
    assert policies.newest(headers) == headers[2]  # a client's, the CLI's, retention's @last


def test_only_latest_checkpoints_count_as_a_processs_own():
    """A process whose own checkpoints are all latest=False loads rank 0's."""
    headers = [_h(0, A), _h(1, B, latest=False)]
    assert policies.newest(headers, within_task=True, position=B) == headers[0]


@PROPS
@given(
    st.lists(
        st.tuples(st.sampled_from([A, B, C, "s"]), st.booleans(), st.integers(0, 2)),
        max_size=12,
    ),
    st.sampled_from([A, B, C]),
)
def test_the_rule_as_stated_in_adr_004(saved, process):
    headers = [_h(n, w, latest, attempt) for n, (w, latest, attempt) in enumerate(saved)]
    latest = [h for h in headers if h.latest]
    order = policies.sort_key(within_task=True)
    own = [h for h in latest if not h.sharded and h.position == process]
    sharded = [h for h in latest if h.sharded]
    gang = sharded + [h for h in latest if not h.sharded and h.position == RANK0]
    counts = bool(own) and (
        not gang
        or max(own, key=order).scope.attempt == max(gang, key=order).scope.attempt
        or order(max(own, key=order)) > order(max(gang, key=order))
    )
    candidates = own + sharded if counts else gang
    expected = max(candidates, key=order) if candidates else None
    assert policies.newest(headers, within_task=True, position=process) == expected


@PROPS
@given(
    st.lists(
        st.tuples(
            st.sampled_from([A, B, C, "s"]),
            st.integers(0, 2),
            st.sampled_from(["1", "2", "3"]),
            st.integers(0, 10**8),
        ),
        max_size=12,
    ),
    st.sampled_from([A, B, C]),
)
def test_the_rule_across_runs_as_stated_in_adr_004(saved, process):
    """``eager``, any clocks: the gang's newest by date picks the run; the process's own
    count only from that run (by the within-task rule there), never by date from another."""
    # Distinct dates (any order across runs and attempts): ties would only test tie-breaks.
    headers = [_h(t * 100 + n, w, True, a, run) for n, (w, a, run, t) in enumerate(saved)]
    order = policies.sort_key(within_task=True)
    date = policies.sort_key(within_task=False)
    gang = [h for h in headers if h.sharded or h.position == RANK0]
    own = [h for h in headers if not h.sharded and h.position == process]
    run = max(gang, key=date).scope.run if gang else None
    if gang and process != RANK0:
        own = [h for h in own if h.scope.run == run]
    ran = [h for h in gang if h.scope.run == run]
    counts = bool(own) and (
        not gang
        or process == RANK0
        or max(own, key=order).scope.attempt == max(ran, key=order).scope.attempt
        or order(max(own, key=order)) > order(max(ran, key=order))
    )
    sharded = [h for h in headers if h.sharded and (run is None or h.scope.run == run)]
    candidates = own + (sharded if process != RANK0 else [h for h in headers if h.sharded])
    candidates = candidates if counts else gang
    expected = max(candidates, key=date) if candidates else None
    assert policies.newest(headers, position=process) == expected


def test_a_retry_of_each_node_resolves_by_the_rule(store, tmp_path):
    """The retry of a gang: node 1 saved its own, node 2 did not: each resolves accordingly."""
    src = str(tiny(tmp_path))
    rank0 = store.save(src, SCOPE)
    node1 = store.save(src, SCOPE, position=Position(1, 0))
    retry = make_scope(attempt=1)
    picked = {
        n: store.resolve("fresh", retry, position=Position(n, 0)).header.key for n in range(3)
    }
    assert picked == {0: rank0.key, 1: node1.key, 2: rank0.key}


def test_one_old_save_of_a_node_does_not_pin_it_to_that_save(store, tmp_path):
    """Rank-0-only training with save_on_failure (adversarial review r2): attempt 0 ends with
    each node's failure save; in attempt 1 rank 0 saves again and node 1 dies without one.
    Attempt 2 resumes both nodes from rank 0's newest, not node 1 from its attempt-0 save."""
    src = str(tiny(tmp_path))
    first, retry, third = (make_scope(attempt=a) for a in range(3))
    store.save(src, first, metadata={"epoch": 1})
    store.save(src, first, metadata={"epoch": 2}, position=Position(1, 0))
    store.save(src, first, metadata={"epoch": 2})
    assert store.resolve("fresh", retry, position=Position(1, 0)).header.position == Position(1, 0)
    newest = store.save(src, retry, metadata={"epoch": 6})
    picked = {n: store.resolve("fresh", third, position=Position(n, 0)).header.key for n in (0, 1)}
    assert picked == {0: newest.key, 1: newest.key}
