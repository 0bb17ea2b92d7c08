"""Reference spellings parse into one value, before any I/O (``common/refspec.py``).

Every spelling a user can write (docs/api.md, docs/cli.md "References") has one parse; a
malformed one is a ``CheckpointConfigError`` naming the input and the accepted forms.  A
hypothesis property checks that generated specs survive spec -> text -> parse.
"""

from __future__ import annotations

import os
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common import refspec
from metaflow_extensions.checkpointing.plugins.checkpointing.common.refspec import (
    Alias,
    RefSpec,
    Target,
    parse,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import (
    normalize_root,
    same_root,
)

from .helpers import make_scope

KEY = manifest_key(make_scope(), 1_700_000_000_000, 1, True, "0123456789abcdef", "mfchckpt")
TASK = Target("TrainFlow", "100", "train", "7")
ID16 = "0123456789abcdef"


def match(**fields) -> Alias:
    return Alias(where=tuple(fields.items()))


SPELLINGS = [
    # (spelling, expected spec)
    (KEY, RefSpec("key", key=KEY)),
    ("  %s\n" % KEY, RefSpec("key", key=KEY)),
    ("/data/store/" + KEY, RefSpec("key", key=KEY, root="/data/store")),
    ("s3://bucket/ckpt/" + KEY, RefSpec("key", key=KEY, root="s3://bucket/ckpt")),
    # A root with its own "manifests" directory: the key is what parses.
    ("/srv/manifests/x/" + KEY, RefSpec("key", key=KEY, root="/srv/manifests/x")),
    ({"key": KEY}, RefSpec("key", key=KEY)),
    ({"key": KEY, "root": "s3://b/c/"}, RefSpec("key", key=KEY, root="s3://b/c")),
    ({"key": KEY, "root": None}, RefSpec("key", key=KEY)),
    # Every spelling of one root is one value (storage.factory.normalize_root).
    ("/data/store//" + KEY, RefSpec("key", key=KEY, root="/data/store")),
    ("/data/store/./" + KEY, RefSpec("key", key=KEY, root="/data/store")),
    ("/data/x/../store/" + KEY, RefSpec("key", key=KEY, root="/data/store")),
    ("file:///data/store/" + KEY, RefSpec("key", key=KEY, root="/data/store")),
    ("rel/store/" + KEY, RefSpec("key", key=KEY, root=os.path.abspath("rel/store"))),
    ({"key": KEY, "root": "/data/store/"}, RefSpec("key", key=KEY, root="/data/store")),
    ({"key": KEY, "root": "file:///data/store"}, RefSpec("key", key=KEY, root="/data/store")),
    ({"key": KEY, "root": "../store"}, RefSpec("key", key=KEY, root=os.path.abspath("../store"))),
    ("s3://bucket/ckpt//" + KEY, RefSpec("key", key=KEY, root="s3://bucket/ckpt")),
    ({"key": KEY, "root": "s3://b//c//"}, RefSpec("key", key=KEY, root="s3://b/c")),
    ("TrainFlow/100/train/7", RefSpec("task", target=TASK)),
    ("/TrainFlow/100/train/7/", RefSpec("task", target=TASK)),
    (types.SimpleNamespace(pathspec="TrainFlow/100/train/7"), RefSpec("task", target=TASK)),
    ("resnet50", RefSpec("named", name="resnet50")),
    ("resnet50@latest", RefSpec("named", name="resnet50")),
    ("resnet50@1f0c", RefSpec("named", name="resnet50", version="1f0c")),
    ("last@latest", RefSpec("named", name="last")),
    ("last", RefSpec("alias", alias=Alias())),
    ("best:val_loss", RefSpec("alias", alias=Alias("val_loss"))),
    ("best:val_loss:min", RefSpec("alias", alias=Alias("val_loss"))),
    ("best:acc:max", RefSpec("alias", alias=Alias("acc", "max"))),
    ("best:val/loss", RefSpec("alias", alias=Alias("val/loss"))),
    ("resnet50@last", RefSpec("alias", name="resnet50", alias=Alias())),
    ("resnet50@best:acc:max", RefSpec("alias", name="resnet50", alias=Alias("acc", "max"))),
    ("TrainFlow@last", RefSpec("alias", name="TrainFlow", alias=Alias())),
    # A trailing slash: always the flow, never a named checkpoint.
    ("TrainFlow/@last", RefSpec("alias", target=Target("TrainFlow"), alias=Alias())),
    (
        "TrainFlow/@best:x:max",
        RefSpec("alias", target=Target("TrainFlow"), alias=Alias("x", "max")),
    ),
    ("TrainFlow/100@best:x", RefSpec("alias", target=Target("TrainFlow", "100"), alias=Alias("x"))),
    (
        "TrainFlow/100/train@last",
        RefSpec("alias", target=Target("TrainFlow", "100", "train"), alias=Alias()),
    ),
    ("TrainFlow/100/train/7@best:x:max", RefSpec("alias", target=TASK, alias=Alias("x", "max"))),
    # TASK@<id prefix> (issue 15 item 4): 4 to 64 hex digits, any case, read lower-case.
    ("TrainFlow/100/train/7@1a2b3c4d", RefSpec("task", target=TASK, version="1a2b3c4d")),
    ("TrainFlow/100/train/7@1A2B", RefSpec("task", target=TASK, version="1a2b")),
    ("TrainFlow/100/train/7@0123456789abcdef", RefSpec("task", target=TASK, version=ID16)),
    ("resnet50@DEADBEEF", RefSpec("named", name="resnet50", version="deadbeef")),
    # TASK@field=value: a metadata match (JSON values, else text; ',' joins fields).
    ("TrainFlow/100/train/7@epoch=3", RefSpec("alias", target=TASK, alias=match(epoch=3))),
    (
        "TrainFlow/100/train/7@epoch=3,phase=finetune,lr=0.001,ok=true,tag=null",
        RefSpec(
            "alias",
            target=TASK,
            alias=match(epoch=3, phase="finetune", lr=0.001, ok=True, tag=None),
        ),
    ),
    ('TrainFlow/100/train/7@epoch="3"', RefSpec("alias", target=TASK, alias=match(epoch="3"))),
    (
        'TrainFlow/@dims=[1,2],note="a,b=c",at=x@y',
        RefSpec(
            "alias",
            target=Target("TrainFlow"),
            alias=match(dims=[1, 2], note="a,b=c", at="x@y"),
        ),
    ),
    (
        "TrainFlow/100@loss=NaN",
        RefSpec("alias", target=Target("TrainFlow", "100"), alias=match(loss="NaN")),
    ),
    ("resnet50@stage=prod", RefSpec("alias", name="resnet50", alias=match(stage="prod"))),
    ("epoch=3", RefSpec("alias", alias=match(epoch=3))),
    ("last=1", RefSpec("alias", alias=match(last=1))),
]


@pytest.mark.parametrize("spelling,expected", SPELLINGS, ids=[str(s) for s, _ in SPELLINGS])
def test_every_spelling_parses_to_one_spec(spelling, expected):
    assert parse(spelling) == expected
    assert parse(parse(spelling).text()) == expected


MALFORMED = [
    # (input, fragment of the message)
    ("", "it is empty"),
    ("   ", "it is empty"),
    (42, "it is a int"),
    (None, "it is a NoneType"),
    ({"nokey": KEY}, "needs a 'key' entry"),
    ({"key": "manifests/nope.json"}, "needs a 'key' entry"),
    ({"key": KEY, "root": 3}, "its 'root' must be a path or URL"),
    ("manifests/nope.json", "a flow, run or step holds many checkpoints"),
    ("TrainFlow/100", "say which, e.g. 'TrainFlow/100@last'"),
    ("TrainFlow/100/train", "'TrainFlow/100/train@best:<metric>'"),
    ("a/b/c/d/e", "is not a pathspec of 1 to 4 components"),
    ("a//b", "is not a pathspec"),
    ("not a/reference", "is not a checkpoint reference"),
    ("bad name", "Checkpoint name 'bad name' is invalid"),
    ("@last", "nothing before '@'"),
    ("resnet50@", "unknown alias ''"),
    ("resnet50@v-1", "unknown alias 'v-1'"),
    ("resnet50@1@2", "unknown alias '1@2'"),
    ("TrainFlow/100@1f0c", "a version id names a checkpoint of one task"),
    ("TrainFlow/@1f0c", "'<Flow/run_id/step/task_id>@1f0c'"),
    # Typos after '@' are unknown aliases listing what '@' takes (issue 15 item 5), never a
    # missing named checkpoint 'TrainFlow' of version 'lastt'.
    ("TrainFlow@lastt", "unknown alias 'lastt' (did you mean 'last'?)"),
    ("TrainFlow@bset:loss", "unknown alias 'bset:loss' (did you mean 'best:loss'?)"),
    ("TrainFlow/100/train/7@lastest", "unknown alias 'lastest'"),
    ("TrainFlow/@latest", "'latest' is the newest version of a named checkpoint"),
    ("TrainFlow/100/train/7@latest", "a task's newest is 'last'"),
    ("TrainFlow/100/train/7@abc", "'abc' is too short for a version id"),
    ("resnet50@1f0", "give at least 4 of its hex digits"),
    ("TrainFlow/100/train/7@=3", "is not a metadata match"),
    ("TrainFlow/100/train/7@epoch=3,loss", "'epoch=3,loss' is not a metadata match"),
    ("best:", "is not an alias"),
    ("best:acc:median", "is not an alias"),
    ("TrainFlow@best:acc:median", "is not an alias"),
    (types.SimpleNamespace(pathspec="TrainFlow/100"), "is not a task"),
]


@pytest.mark.parametrize("value,fragment", MALFORMED, ids=[repr(v) for v, _ in MALFORMED])
def test_a_malformed_reference_is_a_config_error_naming_it(value, fragment):
    with pytest.raises(CheckpointConfigError) as err:
        parse(value)
    message = err.value.message
    assert fragment in message
    if "is not a checkpoint reference" in message:
        # The accepted forms are spelled out: every reference, or what '@' takes.
        assert "best:<metric>" in message and "<field>=<value>" in message
        if "unknown alias" in message:
            assert "'last'" in message and "hex digits" in message


def test_best_alone_is_a_name_not_an_alias():
    """``best`` without a metric is a valid checkpoint name; ``best:`` is a malformed alias."""
    assert parse("best") == RefSpec("named", name="best")


# ------------------------------------------------------------------------------ round trip
_word = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True).filter(
    lambda w: ".." not in w
)
_component = st.from_regex(r"[^/@\s]{1,12}", fullmatch=True)
_metric = st.from_regex(r"[^:@\s]{1,12}", fullmatch=True)
_field = st.from_regex(r"[^=,@\s\"\[\]{}]{1,10}", fullmatch=True).filter(
    lambda f: not f.startswith("best:")
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
_matches = st.lists(st.tuples(_field, _json_values), min_size=1, max_size=3).map(
    lambda where: Alias(where=tuple(where))
)
_aliases = (
    st.builds(Alias, st.none(), st.just("min"))
    | st.builds(Alias, _metric, st.sampled_from(["min", "max"]))
    | _matches
)
# A flow name (a Python class name) holds no '=': 'a=b/...' is a metadata match.
_flow = st.from_regex(r"[^/@\s=]{1,12}", fullmatch=True)
_targets = st.builds(
    lambda flow, parts, n: Target(flow, *parts[: n - 1]),
    _flow,
    st.lists(_component, min_size=3, max_size=3),
    st.integers(1, 4),
)
_scopes = st.builds(
    make_scope,
    namespace=st.text(min_size=1, max_size=12),
    flow=st.text(min_size=1, max_size=12),
    step=st.text(min_size=1, max_size=12),
    run=st.text(min_size=1, max_size=12),
    task=st.text(min_size=1, max_size=12),
    attempt=st.integers(0, 99),
)
_keys = st.builds(
    lambda scope, ms, latest, id, name: manifest_key(scope, ms, 3, latest, id, name),
    _scopes,
    st.integers(0, 10**13),
    st.booleans(),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    _word,
)
_roots = st.none() | st.from_regex(
    r"(/[a-z0-9_]{1,8}){1,3}|s3://[a-z0-9]{3,8}(/[a-z]{1,6})?", fullmatch=True
)

_versions = st.from_regex(r"[0-9a-f]{4,16}", fullmatch=True)

specs = st.one_of(
    st.builds(lambda k, r: RefSpec("key", key=k, root=r), _keys, _roots),
    st.builds(
        lambda t, v: RefSpec("task", target=t, version=v),
        _targets.filter(lambda t: t.task),
        st.just("") | _versions,
    ),
    st.builds(lambda n, v: RefSpec("named", name=n, version=v), _word, st.just("") | _versions),
    # Alone, a match's first field holds no '/' (else it reads as a pathspec).
    st.builds(
        lambda a: RefSpec("alias", alias=a),
        _aliases.filter(lambda a: not a.where or "/" not in a.where[0][0]),
    ),
    st.builds(lambda t, a: RefSpec("alias", target=t, alias=a), _targets, _aliases),
    st.builds(lambda n, a: RefSpec("alias", name=n, alias=a), _word, _aliases),
)


@settings(max_examples=400, deadline=None)
@given(specs)
def test_a_spec_survives_its_text(spec):
    assert parse(spec.text()) == spec


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_config_error(text):
    """Whatever a user types, the parser answers with a spec or a CheckpointConfigError."""
    try:
        spec = parse(text)
    except CheckpointConfigError:
        return
    assert spec.kind in (refspec.KEY, refspec.TASK, refspec.NAMED, refspec.ALIAS)


# ------------------------------------------------------------------------------ roots
#: Pairs of spellings of one store: a local root by its absolute path, any other URL without
#: empty path components; ``same_root`` is what a task's views compare with.
SAME_ROOT = [
    ("/a/b", "/a/b/"),
    ("/a/b", "/a//b"),
    ("/a/b", "/a/./b"),
    ("/a/b", "/a/c/../b"),
    ("/a/b", "file:///a/b"),
    ("/a/b", "file://localhost/a/b/"),
    ("rel/x", os.path.abspath("rel/x")),
    ("s3://bkt/p", "s3://bkt/p/"),
    ("s3://bkt/p", "s3://bkt//p"),
    ("s3://bkt/p", "S3://bkt/p"),
    ("gs://bkt/p/q", "gs://bkt/p//q/"),
    ("memory://x", "memory://x/"),
]
OTHER_ROOT = [
    ("/a/b", "/a/c"),
    ("/a/b", "/a/b/c"),
    ("s3://bkt/p", "s3://bkt/q"),
    ("s3://bkt/p", "/bkt/p"),
    ("s3://bkt/p", "gs://bkt/p"),
    ("s3://bkt/p/..", "s3://bkt"),  # an object store's key has no '..'
    ("memory://x", "memory://y"),
]


@pytest.mark.parametrize("a,b", SAME_ROOT, ids=["%s=%s" % p for p in SAME_ROOT])
def test_spellings_of_one_root_are_one_store(a, b):
    assert normalize_root(a) == normalize_root(b)
    assert same_root(a, b) and same_root(b, a)


@pytest.mark.parametrize("a,b", OTHER_ROOT, ids=["%s!=%s" % p for p in OTHER_ROOT])
def test_other_roots_are_other_stores(a, b):
    assert not same_root(a, b) and not same_root(b, a)


def test_a_local_root_through_a_symlink_is_the_same_store(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "store")
    assert same_root(str(tmp_path / "link"), str(tmp_path / "store") + "/")
