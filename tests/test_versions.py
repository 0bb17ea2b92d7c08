"""Version ranges and CI pins agree: setup.py states what users may install, constraints.txt the
exact versions ``make test`` installs, and the Makefile holds every pip install to the pins.

A pin outside its declared range would mean CI tests a combination no user can install; an exact
``torch==`` in an extra would replace a user's CUDA build of torch; a pip install without
``-c`` would let CI drift to whatever was released last night.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _setup_requirements() -> dict[str, list[Requirement]]:
    """setup.py's ``install_requires`` (key ``""``) and each extra, as parsed requirements."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"
    )
    wanted = ("install_requires", "extras_require")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in wanted}
    out = {"": [Requirement(r) for r in kw["install_requires"]]}
    for extra, reqs in kw["extras_require"].items():
        out[extra] = [Requirement(r) for r in reqs]
    return out


def _pins() -> dict[str, Version]:
    """constraints.txt as {canonical name: pinned version}; every entry an exact ``==`` pin."""
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier per pin
        assert spec.operator == "==" and "*" not in spec.version, line
        name = canonicalize_name(req.name)
        assert name not in pins, "%s is pinned twice" % req.name
        pins[name] = Version(spec.version)
    return pins


def _declared(name: str) -> list[tuple[str, Requirement]]:
    return [
        (extra or "install_requires", r)
        for extra, reqs in _setup_requirements().items()
        for r in reqs
        if canonicalize_name(r.name) == canonicalize_name(name)
    ]


def test_every_pin_lies_in_every_range_setup_py_declares_for_it():
    pins = _pins()
    assert {"metaflow", "torch"} <= set(pins), "constraints.txt must pin metaflow and torch"
    for name, version in pins.items():
        for where, req in _declared(name):
            assert req.specifier.contains(version, prereleases=True), (
                "constraints.txt pins %s==%s, outside setup.py's %s (%s)"
                % (name, version, req, where)
            )


def test_torch_extra_is_an_open_range_admitting_the_ci_wheel():
    """The torch extra keeps a user's own torch build: a range, never an exact version."""
    (req,) = [r for r in _setup_requirements()["torch"] if r.name == "torch"]
    assert all(s.operator in (">=", ">", "<", "<=", "!=") for s in req.specifier), str(req)
    assert req.specifier.contains("2.1.0") and req.specifier.contains(_pins()["torch"])
    assert req.specifier.contains("2.13.0+cu121")  # a local CUDA build satisfies it too


def test_no_requirement_in_setup_py_is_an_exact_pin():
    for extra, reqs in _setup_requirements().items():
        for r in reqs:
            assert not any(s.operator in ("==", "===") for s in r.specifier), (extra, str(r))


def _metaflow_range() -> tuple[Version, Version]:
    (req,) = [r for r in _setup_requirements()[""] if r.name == "metaflow"]
    ops = {s.operator: Version(s.version) for s in req.specifier}
    assert set(ops) == {">=", "<"}, str(req)
    return ops[">="], ops["<"]


def test_metaflow_range_is_floor_to_next_major_and_documented():
    """install_requires: metaflow from the lowest version `make test-lowest` passed on to <3;
    docs/development.md records that version, and every page quoting the range quotes it."""
    floor, cap = _metaflow_range()
    assert cap == Version("3")
    assert floor < _pins()["metaflow"]
    dev = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    assert re.search(r"lowest tested Metaflow[^\n]*`%s`" % re.escape(str(floor)), dev, re.I), (
        "docs/development.md must name the floor %s as the lowest tested Metaflow" % floor
    )
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for quoted in re.findall(r"metaflow>=[0-9][^`\s\"']*", page.read_text(encoding="utf-8")):
            assert quoted == "metaflow>=%s,<3" % floor, "%s quotes %s" % (page.name, quoted)


def test_installed_metaflow_is_in_the_declared_range():
    """Holds in both venvs: make test's (the pin) and make test-lowest's (the floor)."""
    floor, cap = _metaflow_range()
    assert floor <= Version(metadata.version("metaflow")) < cap


def _make_dry_run(target: str) -> list[str]:
    # -n prints the recipes without running them; -B prints every prerequisite's too.
    out = subprocess.run(
        ["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return out.replace("\\\n", " ").splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_pip_install_of_the_makefile_uses_the_constraints():
    installs = [
        line
        for target in ("test", "demo", "test-lowest")
        for line in _make_dry_run(target)
        if re.search(r"\bpip install\b", line)
    ]
    assert len(installs) >= 4, installs
    for line in installs:
        assert re.search(r"-c (\S+/)?constraints\.txt\b", line), line
    test_lines = _make_dry_run("test")
    assert any('pip install -q -c constraints.txt -e ".[torch,s3,test]"' in x for x in test_lines)
    # test-lowest: the same pins less metaflow's, and metaflow at setup.py's floor.
    lowest = " ".join(_make_dry_run("test-lowest"))
    floor, _ = _metaflow_range()
    assert "grep -v '^metaflow==' constraints.txt > .venv-lowest/constraints.txt" in lowest
    assert '"metaflow==%s"' % floor in lowest
    assert ".venv-lowest/bin/python -m pytest -n 2 -q tests" in lowest
