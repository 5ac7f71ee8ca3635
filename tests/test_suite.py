"""The test suite's own layout."""
import pathlib


def test_test_modules_have_unique_names():
    """The test folders are not packages (pytest's rootdir import mode): two test modules of one name in
    two folders stop the collection of the whole suite."""
    tests = pathlib.Path(__file__).resolve().parent
    names = [p.name for p in tests.rglob("*.py") if p.name != "conftest.py" and "__pycache__" not in p.parts]
    assert sorted({n for n in names if names.count(n) > 1}) == []
