"""The documentation site builds in strict mode (no broken links or missing pages), and every test a
page cites exists."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_strictly(tmp_path):
    """`make docs` succeeds: every page in the nav exists and every link resolves."""
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "index.html").exists()


#: Every page that makes claims: the docs site (ADRs included), the READMEs.
CITING_PAGES = sorted(
    [*REPO.glob("docs/**/*.md"), REPO / "README.md", *REPO.glob("benchmarks/*.md")]
)


def test_every_test_a_page_cites_exists():
    """Each ``test_x.py::test_name`` (and bare ``test_x.py``) a page cites is a test that exists:
    a renamed or removed test would leave the claim it proves unproven."""
    tests: dict[str, str] = {}  # file name -> the text of every test file of that name
    for p in (REPO / "tests").rglob("test_*.py"):
        tests[p.name] = tests.get(p.name, "") + p.read_text()
    missing = []
    for path in CITING_PAGES:
        text = path.read_text()
        page = path.relative_to(REPO)
        for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", text):
            if file not in tests or not re.search(r"def %s\b" % name, tests[file]):
                missing.append("%s: %s::%s" % (page, file, name))
        for file in re.findall(r"\b(test_\w+\.py)\b", text):
            if file not in tests:
                missing.append("%s: %s" % (page, file))
    assert len(CITING_PAGES) > 20  # the glob found the site
    assert not missing, "cited tests that do not exist:\n" + "\n".join(sorted(set(missing)))
