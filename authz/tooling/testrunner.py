"""`authz test`: runs policy test files offline, compiling each policy set into a temporary index with the real
compiler and deciding every case with the real Engine; reports pytest-like text and, on request, JUnit XML.

A case passes when the decision is the one expected and, when the case says them, the determining policies
(compared as a set) and the deny reason are too. A case that cannot run (a malformed request, entities
Cedar refuses) is an error, as is a file that cannot be read or whose policies do not compile.
"""

import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

from ..compiler import compile_sources, shown_path
from ..engine import Engine
from ..errors import AuthzError, CompileError
from .testfile import TestFileError, load_test_file

TEST_SUFFIXES = (".test.yaml", ".test.yml", ".test.json")  # the test files a folder's search picks up
PASSED, FAILED, ERROR = "passed", "failed", "error"
_MARK = {PASSED: ".", FAILED: "F", ERROR: "E"}


def find_test_files(paths):
    """(test files as (path, shown), problems): files as given, folders searched recursively for *.test.yaml,
    *.test.yml and *.test.json (hidden files and folders skipped)."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    found, problems = [], []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and name.endswith(TEST_SUFFIXES):
                        full = os.path.join(root, name)
                        found.append((full, shown_path(full, cwd)))
        elif os.path.isfile(path):
            found.append((path, shown_path(path, cwd)))
        else:
            problems.append(f"{path}: no such file or folder")
    return found, problems


class CaseResult:
    """The outcome of one case: `status` (passed, failed, error), the `actual` decision dict (None when it
    could not be decided), `diff` (the lines that explain a failure or an error) and `seconds`."""

    __slots__ = ("case", "status", "actual", "diff", "seconds")

    def __init__(self, case, status, actual=None, diff=(), seconds=0.0):
        self.case, self.status, self.actual, self.diff, self.seconds = case, status, actual, list(diff), seconds


class FileResult:
    """The outcome of one test file: its case results, or `error` (diagnostics) when the file could not run."""

    __slots__ = ("shown", "cases", "error", "seconds")

    def __init__(self, shown, cases=(), error=None, seconds=0.0):
        self.shown, self.cases, self.error, self.seconds = shown, list(cases), error, seconds


def deny_reason(decision):
    """The reason code of a deny the policies made, as the server's decision log writes it."""
    return "forbidden_by_policy" if decision.policies else "no_permitting_policy"


def _show(value):
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def compare(case, decision):
    """(status, diff lines) of a decided case: `- ` lines say what was expected, `+ ` lines what happened."""
    actual = decision.to_dict()
    diff = []
    if decision.decision != case.expect:
        diff += [f"- decision: {case.expect}", f"+ decision: {decision.decision}"]
    if case.policies is not None and sorted(set(case.policies)) != sorted(set(decision.policies)):
        diff += [f"- policies: {_show(sorted(set(case.policies)))}", f"+ policies: {_show(sorted(decision.policies))}"]
    if case.reason is not None:
        got = deny_reason(decision) if not decision.allowed else ""
        if got != case.reason:
            diff += [f"- reason: {case.reason}", f"+ reason: {got or '(none: allowed)'}"]
    if not diff:
        return PASSED, []
    lines = [f"  request: {_show(case.request)}"]
    if case.entities is not None:
        lines.append(f"  entities: {len(case.entities)} given by the case")
    lines += diff
    if "policies" not in " ".join(diff):
        lines.append(f"  policies: {_show(sorted(decision.policies))}")
    lines.append(f"  errors: {_show(actual['errors'])}")
    return FAILED, lines


class Runner:
    """Runs test files; `policies` / `entities` (lists of paths, or None) replace what each file names.
    Compiled indexes are kept, per policy sources and case entities, until close()."""

    def __init__(self, policies=None, entities=None):
        self.policies, self.entities = policies, entities
        self._dir = tempfile.mkdtemp(prefix="authz-test-")
        self._engines = {}  # (sources, overlay JSON) -> Engine, or CompileError

    def close(self):
        for engine in self._engines.values():
            if isinstance(engine, Engine):
                engine.close()
        self._engines = {}
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _engine(self, srcs, overlay):
        """The Engine for `srcs` compiled with `overlay` (load_entities); raises CompileError."""
        key = (tuple(srcs), None if overlay is None else json.dumps(overlay[1], sort_keys=True))
        found = self._engines.get(key)
        if found is None:
            db = os.path.join(self._dir, f"index-{len(self._engines)}")
            try:
                compile_sources(srcs, db, overlay)
                found = Engine(db, poll_interval_s=3600.0)
            except CompileError as err:
                found = err
            except AuthzError as err:
                found = CompileError([str(err)])
            self._engines[key] = found
        if isinstance(found, CompileError):
            raise found
        return found

    def run_file(self, path, shown):
        """The FileResult of one test file."""
        t0 = time.perf_counter()
        try:
            test_file = load_test_file(path, shown)
        except TestFileError as err:
            return FileResult(shown, error=err.diagnostics, seconds=time.perf_counter() - t0)
        policies = self.policies or test_file.policies
        if not policies:
            return FileResult(shown, error=[f"{shown}: names no policies: add `policies:` to it or pass --policies"],
                              seconds=time.perf_counter() - t0)
        srcs = list(policies) + list(self.entities or test_file.entities or ())
        try:
            self._engine(srcs, None)
        except CompileError as err:
            return FileResult(shown, error=[f"{shown}: its policies do not compile:"] + err.diagnostics,
                              seconds=time.perf_counter() - t0)
        results = [self._run_case(test_file, case, srcs) for case in test_file.cases]
        return FileResult(shown, results, seconds=time.perf_counter() - t0)

    def _run_case(self, test_file, case, srcs):
        t0 = time.perf_counter()
        if case.problem is not None:
            return CaseResult(case, ERROR, diff=[f"  {case.problem}"])
        try:
            overlay = None
            if case.entities is not None:
                overlay = (f"{case.where}: entities of case `{case.name}`", case.entities)
            engine = self._engine(srcs, overlay)
            r = case.request
            decision = engine.check(r["principal"], r["action"], r["resource"], r["context"])
        except CompileError as err:
            return CaseResult(case, ERROR, diff=[f"  {d}" for d in err.diagnostics])
        except AuthzError as err:  # a request the engine cannot decide
            return CaseResult(case, ERROR, diff=[f"  cannot decide: {err}", f"  request: {_show(case.request)}"])
        status, diff = compare(case, decision)
        return CaseResult(case, status, decision.to_dict(), diff, time.perf_counter() - t0)


def run(paths, policies=None, entities=None):
    """(file results, problems finding `paths`) for the test files at `paths`."""
    files, problems = find_test_files(paths)
    with Runner(policies, entities) as runner:
        return [runner.run_file(path, shown) for path, shown in files], problems


def counts(results):
    """{passed, failed, error: number of cases}; a file that could not run counts as one error."""
    out = {PASSED: 0, FAILED: 0, ERROR: 0}
    for f in results:
        if f.error is not None:
            out[ERROR] += 1
        for c in f.cases:
            out[c.status] += 1
    return out


def summary(results):
    """`N passed, M failed` (and `, K errors` when some case or file could not run)."""
    n = counts(results)
    text = f"{n[PASSED]} passed, {n[FAILED]} failed"
    if n[ERROR]:
        text += f", {n[ERROR]} error{'s' if n[ERROR] != 1 else ''}"
    return text


def render_text(results):
    """The pytest-like report: a line per file (a mark per case), the failures and errors, the summary."""
    lines = [f"{f.shown} " + ("E" if f.error is not None else "".join(_MARK[c.status] for c in f.cases))
             for f in results]
    details = []
    for f in results:
        if f.error is not None:
            details += [f"ERROR {f.shown}"] + [f"  {d}" for d in f.error]
        for c in f.cases:
            if c.status != PASSED:
                details += [f"{'FAILED' if c.status == FAILED else 'ERROR'} {f.shown}::{c.case.name} ({c.case.where})"]
                details += c.diff
    if details:
        lines += [""] + details
    lines += ["", summary(results)]
    return "\n".join(lines) + "\n"


def render_junit(results):
    """The results as JUnit XML (one testsuite per file, one testcase per case), as bytes."""
    suites = ET.Element("testsuites")
    total = counts(results)
    suites.set("tests", str(sum(total.values())))
    suites.set("failures", str(total[FAILED]))
    suites.set("errors", str(total[ERROR]))
    for f in results:
        n = counts([f])
        suite = ET.SubElement(suites, "testsuite", name=f.shown, tests=str(sum(n.values())),
                              failures=str(n[FAILED]), errors=str(n[ERROR]), time=f"{f.seconds:.3f}")
        if f.error is not None:
            case = ET.SubElement(suite, "testcase", classname=f.shown, name="(file)", time="0")
            ET.SubElement(case, "error", message=f.error[0]).text = "\n".join(f.error)
        for c in f.cases:
            case = ET.SubElement(suite, "testcase", classname=f.shown, name=c.case.name, time=f"{c.seconds:.6f}")
            if c.status != PASSED:
                first = next((line for line in c.diff if line.startswith("- ")), c.diff[0] if c.diff else c.status)
                ET.SubElement(case, "failure" if c.status == FAILED else "error",
                              message=first.strip()).text = "\n".join(c.diff)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
