"""The "floor": a plain-Python authorizer hand-specialised to bench/workload.py.

It knows the exact policy shapes of the workload, so it skips everything a
general engine must do (parsing, generic expression evaluation, type checks it
can prove away): an index `action -> principal-or-ancestor -> resource-or-ancestor
-> [(policy id, python lambda)]` plus, per action, one generated function that
evaluates all that action's forbids, and entities
held as `uid string -> (attrs, tags, ancestors)`. It still follows Cedar's
semantics for this workload: every candidate policy is evaluated (so the full
set of determining and erroring policies is known), a satisfied forbid wins,
a condition that raises is skipped and reported as an error, default deny.

It is a lower bound for a Python-callable engine on this workload, not an engine:
it cannot evaluate any other policy.
"""
from __future__ import annotations

try:
    from .workload import ACTION_PARENTS, LEAF_ACTIONS, uid
except ImportError:  # run as a script from bench/
    from workload import ACTION_PARENTS, LEAF_ACTIONS, uid


def _leaf_actions(a: str) -> list:
    """Leaf actions that are `in` Action::a (including a itself)."""
    out = []
    for leaf in LEAF_ACTIONS:
        todo, seen = [leaf], set()
        while todo:
            x = todo.pop()
            if x == a:
                out.append(leaf)
                break
            if x in seen:
                continue
            seen.add(x)
            todo.extend(ACTION_PARENTS[x])
    return out


# conditions: Python expressions over P (principal attrs), R (resource attrs),
# RT (resource tags) and c (context). A raised exception is a Cedar evaluation
# error (missing attribute / tag / context key), as in Cedar.
def _cond_src(kind: str, par: dict) -> str:
    if kind == "F_EXT_CONF":
        return '"external" in RT and c["data_sensitivity"] == "confidential"'
    if kind == "F_PROD_MUT":
        return 'c["env"] == "prod" and "ticket" not in c'
    if kind == "F_SUSPENDED":
        return 'P["suspended"]'
    if kind == "F_CLEARANCE":
        return 'R["sensitivity"] > P["clearance"] + 1'
    if kind == "F_PII":
        return '"pii" in RT and c["data_sensitivity"] == "restricted" and not P["level"] == "lead"'
    if kind == "P_READ_SMALL":
        return 'c["task"]["tools_used"] < 3 and R["sensitivity"] == 0'
    if kind == "P_LIST_DEV":
        return 'c["env"] == "dev"'
    if kind == "K1":
        return f'c["env"] == {par["env"]!r} and R["sensitivity"] <= P["clearance"]'
    if kind == "K2":
        return '"ticket" in c'
    if kind == "K3":
        return ('(c["env"] != "prod" or ("ticket" in c and c["ticket"].startswith("CHG-")))'
                ' and "readonly" not in RT')
    if kind == "K4":
        return 'R["owner_team"] == P["team"] and c["data_sensitivity"] in ("public", "internal")'
    if kind == "K5":
        return f'("triage" in c["tags"] or "oncall" in c["tags"]) and P["level"] == {par["level"]!r}'
    if kind == "K6":
        return f'c["task"]["writes"] < {par["limit"]!r} and RT["cost_tier"] <= P["budget_tier"]'
    raise ValueError(kind)


_LAMBDAS = {}


def _cond(kind: str, par: dict):
    src = _cond_src(kind, par)
    fn = _LAMBDAS.get(src)
    if fn is None:
        fn = _LAMBDAS[src] = eval("lambda P, R, RT, c: " + src)  # noqa: S307 (our own text)
    return fn


def _forbid_fn(rules):
    """One generated function evaluating all of an action's forbids (one call, not one per forbid)."""
    lines = ["def f(P, R, RT, c, hits, errs):"]
    for pid, kind, par in rules:
        lines += ["    try:",
                  f"        if {_cond_src(kind, par)}:",
                  f"            hits.append({pid!r})",
                  "    except Exception:",
                  f"        errs.append({pid!r})"]
    if not rules:
        lines.append("    pass")
    ns = {}
    exec("\n".join(lines), ns)  # noqa: S102 (our own text)
    return ns["f"]


# scope of each kind: (principal key, actions, resource key); None = any
def _scope(kind: str, par: dict):
    if kind in ("F_EXT_CONF",):
        return None, ["call"], None
    if kind == "F_PROD_MUT":
        return None, _leaf_actions("mutate"), None
    if kind in ("F_SUSPENDED", "F_CLEARANCE"):
        return None, list(LEAF_ACTIONS), None
    if kind == "F_PII":
        return None, ["call", "read"], None
    if kind == "P_LIST_DEV":
        return None, ["list"], None
    if kind == "P_READ_SMALL":
        return None, ["read"], None
    if "agent" in par:
        p = uid("Agent", f"a{par['agent']}")
    elif "division" in par:
        p = uid("Group", f"d{par['division']}")
    else:
        p = uid("Group", f"g{par['group']}")
    r = uid("Tool", f"t{par['tool']}") if "tool" in par else uid("ToolSet", f"s{par['toolset']}")
    acts = {"K1": ["call"], "K2": ["call", "read"], "K3": _leaf_actions("mutate"),
            "K4": ["read"], "K5": ["call", "list"], "K6": ["call"]}[kind]
    return p, acts, r


class Floor:
    def __init__(self, workload):
        # entities: uid string -> (attrs, tags, ancestors incl. itself, then None)
        parents = {}
        data = {}
        for e in workload.entities:
            u = uid(e["uid"]["type"], e["uid"]["id"])
            parents[u] = [uid(p["type"], p["id"]) for p in e.get("parents", [])]
            data[u] = (e.get("attrs", {}), e.get("tags", {}))

        def ancestors(u):
            out, todo = [u], list(parents.get(u, []))
            while todo:
                x = todo.pop()
                if x not in out:
                    out.append(x)
                    todo.extend(parents.get(x, []))
            out.append(None)
            return tuple(out)

        self.ent = {u: (a, t, ancestors(u)) for u, (a, t) in data.items()}
        self.permits = {}   # action uid -> pkey -> rkey -> [(pid, fn)]
        forbids = {}        # action uid -> [(pid, kind, par)]
        for pid, eff, kind, par in workload.floor_rules:
            p, acts, r = _scope(kind, par)
            for a in acts:
                au = uid("Action", a)
                if eff == "forbid":
                    assert p is None and r is None
                    forbids.setdefault(au, []).append((pid, kind, par))
                else:
                    fn = _cond(kind, par)
                    self.permits.setdefault(au, {}).setdefault(p, {}).setdefault(r, []).append((pid, fn))
        nothing = _forbid_fn([])
        self.forbids = {uid("Action", a): _forbid_fn(forbids.get(uid("Action", a), []))
                        for a in LEAF_ACTIONS}
        self._nothing = nothing
        self._empty = {}

    def check(self, principal, action, resource, context):
        """Returns (allowed, determining policy ids, errored policy ids)."""
        P, _, pan = self.ent[principal]
        R, RT, ran = self.ent[resource]
        forbid_hits = []
        errors = []
        self.forbids.get(action, self._nothing)(P, R, RT, context, forbid_hits, errors)
        permit_hits = []
        by_p = self.permits.get(action, self._empty)
        for pk in pan:
            by_r = by_p.get(pk)
            if by_r is not None:
                for rk in ran:
                    lst = by_r.get(rk)
                    if lst is not None:
                        for pid, fn in lst:
                            try:
                                if fn(P, R, RT, context):
                                    permit_hits.append(pid)
                            except Exception:
                                errors.append(pid)
        if forbid_hits:
            return False, forbid_hits, errors
        if permit_hits:
            return True, permit_hits, errors
        return False, permit_hits, errors
