"""Hand-written Cedar corner cases (tests/corpus/*.json), checked against BOTH cedarpy and authz.

Scenario format (after Cedar's own integration tests), one scenario per file:

    {"description": "...",
     "policies": "<cedar text, written to policies.cedar>",
     (or "policy_files": [["policies.cedar", "<text>"], ["more.cedar", "<text>"]] for several files)
     "entities": [<Cedar JSON entities>],
     "compile_error": true,            # optional: cedarpy rejects the entities/policies, authz.compile must refuse
     "requests": [{"description": "...", "principal": ..., "action": ..., "resource": ..., "context": {...},
                   "decision": "allow" | "deny" | "error",   # "error": cedarpy rejects the request -> RequestError
                   "reasons": [policy ids], "errors": [policy ids whose evaluation errored]}]}

Policy ids are authz's: `@id("...")` when present, else `policies.cedar:N`.
The expected values are cedarpy's answers, frozen into the files with

    python3 tests/test_corpus.py --freeze tests/corpus/NAME.json ...

(which rewrites decision/reasons/errors/compile_error from cedarpy; review the diff).
"""

import json
import pathlib
import sys

import pytest

import cedar_gen as cg

CORPUS = pathlib.Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*.json"))
REQ_KEYS = ("principal", "action", "resource", "context")


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _requests(sc):
    return [{k: r[k] for k in REQ_KEYS if k in r} for r in sc["requests"]]


def _expected(req):
    if req["decision"] == "error":
        return "error"
    return cg.outcome(req["decision"], req.get("reasons", []), req.get("errors", []))


def _policy_files(sc):
    if "policy_files" in sc:
        return [tuple(pf) for pf in sc["policy_files"]]
    return [(cg.POLICY_FILE, sc["policies"])]


def _cedarpy(sc):
    """cedarpy's answers: "compile_error" or a list of outcome dicts / "error"."""
    text, entities, layout = cg.combine(_policy_files(sc), [(cg.ENTITY_FILE, sc["entities"])])
    outs = cg.cedarpy_outcomes(text, entities, _requests(sc), layout)
    refused = [o.kind for o in outs if isinstance(o, cg.NoDecision) and o.kind != "request"]
    if refused:
        return "compile_error"
    return ["error" if isinstance(o, cg.NoDecision) else o for o in outs]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_cedarpy_agrees_with_corpus(path):
    sc = _load(path)
    got = _cedarpy(sc)
    if sc.get("compile_error"):
        assert got == "compile_error"
        return
    assert got != "compile_error", "cedarpy rejects the scenario's entities/policies"
    assert len(got) == len(sc["requests"])
    for req, out in zip(sc["requests"], got):
        assert out == _expected(req), req.get("description", req)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_authz_agrees_with_corpus(path, authz_harness):
    from authz.errors import CompileError, RequestError

    sc = _load(path)
    if sc.get("compile_error"):
        with pytest.raises(CompileError):
            authz_harness.load(_policy_files(sc), sc["entities"])
        return
    authz_harness.load(_policy_files(sc), sc["entities"])
    failures = []
    for req in sc["requests"]:
        rq = {k: req[k] for k in REQ_KEYS if k in req}
        exp = _expected(req)
        try:
            got = cg.decision_outcome(authz_harness.check(rq))
        except RequestError as e:
            got = "error"
            if exp != "error":
                got = "error (RequestError: %s)" % e
        if got != exp:
            failures.append("%s\n   request:  %s\n   expected: %s\n   authz:    %s" % (
                req.get("description", ""), json.dumps(rq, ensure_ascii=False), exp, got))
    # Batch evaluation must agree with one-by-one evaluation.
    ok = [r for r in sc["requests"] if r["decision"] != "error"]
    if ok:
        try:
            batch = authz_harness.outcomes([{k: r[k] for k in REQ_KEYS if k in r} for r in ok])
        except RequestError as e:
            failures.append("check_batch raised RequestError: %s" % e)
            batch = []
        else:
            if len(batch) != len(ok):
                failures.append("check_batch answered %d of %d requests" % (len(batch), len(ok)))
        for req, got in zip(ok, batch):
            if got != _expected(req):
                failures.append("check_batch: %s: expected %s, got %s" % (req.get("description", ""), _expected(req), got))
    assert not failures, "\n" + "\n".join(failures)


def test_corpus_is_big_enough():
    assert len(FILES) >= 40
    assert sum(len(_load(p)["requests"]) for p in FILES) >= 80


def freeze(paths):
    """Fill decision/reasons/errors (and compile_error) of each scenario from cedarpy."""
    for p in map(pathlib.Path, paths):
        sc = _load(p)
        got = _cedarpy(sc)
        if got == "compile_error":
            sc["compile_error"] = True
            for req in sc["requests"]:
                for k in ("decision", "reasons", "errors"):
                    req.pop(k, None)
                req["decision"] = "error"
        else:
            sc.pop("compile_error", None)
            for req, out in zip(sc["requests"], got):
                for k in ("decision", "reasons", "errors"):
                    req.pop(k, None)
                if out == "error":
                    req["decision"] = "error"
                else:
                    req.update(out)
        p.write_text(json.dumps(sc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print("froze", p)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--freeze":
        sys.exit("usage: python3 tests/test_corpus.py --freeze tests/corpus/NAME.json ...")
    freeze(sys.argv[2:])
