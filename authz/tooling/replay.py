"""`authz replay`: decides the requests of a decision log again against other policies (compiled with the real
compiler into a temporary index, decided by the real Engine) and reports every decision that would change:
allow -> deny, deny -> allow, or the same decision for other determining policies, grouped by policy.

A line is replayed with its `principal`, `action`, `resource`, `context` and request `entities` as recorded
(for a request made with a task token that context holds the task state it was decided with). Lines that cannot be replayed are
counted by cause: no recorded context (a log written before requests were recorded, or a request the server
could not read), a context too large to record (`request_truncated`), a decision the policies did not make
(a line with a `reason`: a malformed request, an unavailable index or task state, a revoked or suspended
task, an approval asked for) or a call allowed by a human's approval (`approval` with an `approver`).
"""

import datetime
import json
import os
import re
import shutil
import tempfile

from ..compiler import compile_sources
from ..engine import Engine
from ..errors import AuthzError, CompileError

MAX_LINE_BYTES = 1 << 20  # a longer line is counted as unreadable (the log's own lines are far shorter)
MAX_KEPT = 100000  # changed decisions kept for the report; beyond it they are counted only
ALLOW_TO_DENY, DENY_TO_ALLOW, POLICIES_CHANGED = "allow->deny", "deny->allow", "policies changed"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_RELATIVE_RE = re.compile(r"^(\d{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReplayError(AuthzError):
    """The replay cannot run: a log that cannot be read, a bad --since, policies that do not compile."""

    code = "replay_error"


def parse_since(text, now=None):
    """An aware UTC datetime from `--since`: an ISO 8601 time (UTC when it names no offset) or a duration
    back from now (`90s`, `15m`, `2h`, `7d`)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    m = _RELATIVE_RE.match(text)
    if m:
        return now - datetime.timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"--since `{text}`: expected an ISO 8601 time (2026-12-06T10:00:00Z) or a "
                          "duration back from now (90s, 15m, 2h, 7d)") from None
    return t.replace(tzinfo=datetime.timezone.utc) if t.tzinfo is None else t.astimezone(datetime.timezone.utc)


def parse_time(text):
    """The aware UTC datetime of a log line's `time`, or None."""
    try:
        return datetime.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


def parse_uid(text):
    """{"type", "id"} of a logged uid `Type::"id"` (its id a JSON string); ValueError if it is not one."""
    if type(text) is not str:
        raise ValueError("not a uid")
    at = text.find('::"')
    if at <= 0:
        raise ValueError("not a uid")
    uid = json.loads(text[at + 2:])
    if type(uid) is not str:
        raise ValueError("not a uid")
    return {"type": text[:at], "id": uid}


class Change:
    """A decision that would change: the log line's fields and the decision the policies give now."""

    __slots__ = ("decision_id", "time", "principal", "action", "resource", "before", "before_policies",
                 "after", "after_policies", "errors", "kind", "policies")

    def __init__(self, line, decision, kind):
        self.decision_id, self.time = line.get("decision_id"), line.get("time")
        self.principal, self.action, self.resource = line["principal"], line["action"], line["resource"]
        self.before, self.before_policies = line["decision"], list(line.get("policies") or ())
        self.after, self.after_policies, self.errors = decision.decision, list(decision.policies), decision.errors
        self.kind = kind
        # the policies that account for the change: determining before or now, not both
        old, new = set(self.before_policies), set(self.after_policies)
        self.policies = sorted(old ^ new)

    def to_dict(self):
        return {"decision_id": self.decision_id, "time": self.time, "principal": self.principal,
                "action": self.action, "resource": self.resource, "change": self.kind,
                "before": {"decision": self.before, "policies": self.before_policies},
                "after": {"decision": self.after, "policies": self.after_policies, "errors": self.errors},
                "policies": self.policies}


class Report:
    """What a replay found: counts, the changed decisions (at most MAX_KEPT) and why lines were not replayed."""

    def __init__(self):
        self.lines = self.replayed = self.unchanged = self.before_since = 0
        self.changed = {ALLOW_TO_DENY: 0, DENY_TO_ALLOW: 0, POLICIES_CHANGED: 0}
        self.not_replayable = {}
        self.changes = []
        self.dropped = 0  # changes counted but not kept

    @property
    def total_changed(self):
        return sum(self.changed.values())

    def skip(self, cause):
        self.not_replayable[cause] = self.not_replayable.get(cause, 0) + 1

    def by_policy(self):
        """{policy id: [Change]} over the kept changes, policies in id order."""
        groups = {}
        for change in self.changes:
            for pid in change.policies:
                groups.setdefault(pid, []).append(change)
        return dict(sorted(groups.items()))

    def to_dict(self):
        return {"lines": self.lines, "replayed": self.replayed, "unchanged": self.unchanged,
                "changed": self.total_changed, "allow_to_deny": self.changed[ALLOW_TO_DENY],
                "deny_to_allow": self.changed[DENY_TO_ALLOW], "policies_changed": self.changed[POLICIES_CHANGED],
                "before_since": self.before_since, "not_replayable": dict(sorted(self.not_replayable.items())),
                "changes_not_listed": self.dropped,
                "by_policy": {pid: [c.decision_id for c in changes] for pid, changes in self.by_policy().items()},
                "changes": [c.to_dict() for c in self.changes]}


def _not_replayable(line):
    """Why a decoded log line cannot be replayed, or None."""
    if line.get("request_truncated"):
        return "request_truncated"
    if line.get("reason"):
        return "decided_without_policies"
    approval = line.get("approval")
    if type(approval) is dict and "approver" in approval:
        return "allowed_by_approval"
    if "context" not in line or type(line["context"]) is not dict:
        return "no_context"
    if line.get("decision") not in ("allow", "deny"):
        return "no_decision"
    return None


def replay_line(engine, line, report):
    """Replays one decoded log line into `report`."""
    cause = _not_replayable(line)
    if cause is not None:
        report.skip(cause)
        return
    try:
        principal, action, resource = (parse_uid(line[k]) for k in ("principal", "action", "resource"))
    except (KeyError, ValueError):
        report.skip("no_uids")
        return
    entities = line.get("entities")
    if entities is not None and type(entities) is not list:
        report.skip("request_error")
        return
    try:
        decision = engine.check(principal, action, resource, line["context"], entities=entities or None)
    except AuthzError:
        report.skip("request_error")
        return
    report.replayed += 1
    if decision.decision != line["decision"]:
        kind = ALLOW_TO_DENY if line["decision"] == "allow" else DENY_TO_ALLOW
    elif set(decision.policies) != set(line.get("policies") or ()):
        kind = POLICIES_CHANGED
    else:
        report.unchanged += 1
        return
    report.changed[kind] += 1
    if len(report.changes) < MAX_KEPT:
        report.changes.append(Change(line, decision, kind))
    else:
        report.dropped += 1


def _lines(path):
    """The log's lines (bytes), each at most MAX_LINE_BYTES (None for a longer one, read past)."""
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = fh.readline(MAX_LINE_BYTES + 1)
                yield None
                continue
            yield raw


def replay(logs, srcs, since=None):
    """The Report of replaying the decision logs at `logs` against the policy sources `srcs` (what
    `authz compile` takes); `since`: an aware datetime, earlier lines are left out. Raises ReplayError."""
    work = tempfile.mkdtemp(prefix="authz-replay-")
    engine = None
    try:
        try:
            compile_sources(list(srcs), os.path.join(work, "index"))
            engine = Engine(os.path.join(work, "index"), poll_interval_s=3600.0)
        except CompileError as err:
            raise ReplayError("the policies do not compile:\n" + "\n".join(err.diagnostics)) from None
        report = Report()
        for path in logs:
            try:
                for raw in _lines(path):
                    if raw is not None and not raw.strip():
                        continue
                    report.lines += 1
                    try:
                        line = json.loads(raw) if raw is not None else None
                    except (ValueError, RecursionError):
                        line = None
                    if type(line) is not dict:
                        report.skip("unreadable")
                        continue
                    if since is not None:
                        t = parse_time(line.get("time"))
                        if t is None:
                            report.skip("no_time")
                            continue
                        if t < since:
                            report.before_since += 1
                            continue
                    replay_line(engine, line, report)
            except OSError as err:
                raise ReplayError(f"cannot read decision log `{path}`: {err.strerror}") from None
        return report
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(work, ignore_errors=True)


def _change_line(c):
    before, after = (json.dumps(p, ensure_ascii=False) for p in (c.before_policies, c.after_policies))
    return f"  {c.time} {c.decision_id} {c.principal} {c.action} {c.resource}: {c.before} -> {c.after} " \
           f"{before} -> {after}"


def render_text(report):
    """The human report: changes grouped by policy, then counts."""
    out = []
    for pid, changes in report.by_policy().items():
        kinds = {}
        for c in changes:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
        out.append(f"policy `{pid}`: {len(changes)} decision{'s' if len(changes) != 1 else ''} would change ("
                   + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")")
        out += [_change_line(c) for c in changes]
        out.append("")
    if report.dropped:
        out.append(f"({report.dropped} more changed decisions counted, not listed)")
    skipped = sum(report.not_replayable.values())
    out.append(f"{report.lines} log lines: {report.replayed} replayed, {skipped} not replayable"
               + (" (" + ", ".join(f"{k}: {n}" for k, n in sorted(report.not_replayable.items())) + ")"
                  if skipped else "")
               + (f", {report.before_since} before --since" if report.before_since else ""))
    out.append(f"{report.total_changed} decisions would change: {report.changed[ALLOW_TO_DENY]} allow->deny, "
               f"{report.changed[DENY_TO_ALLOW]} deny->allow, {report.changed[POLICIES_CHANGED]} with other "
               "determining policies")
    return "\n".join(out) + "\n"
