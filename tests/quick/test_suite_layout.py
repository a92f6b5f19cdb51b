"""The suite collects as one pytest session (scripts/test runs quick and VM tests
together).  Without __init__.py files pytest imports each test file by its basename,
so two files of one name in different folders stop the whole run at collection."""
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_file_basenames_are_unique():
    by_name = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        by_name[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"test files share a basename: {clashes}"
