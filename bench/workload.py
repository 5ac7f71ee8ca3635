"""Deterministic agent tool-call workload for the authz benchmarks.

`generate(n_policies, seed)` returns a `Workload` holding:

- `policies_text`: exactly `n_policies` Cedar policies, each with an `@id("...")`
  annotation (so authz ids and cedarpy's `id_annotations_by_reason` line up), in
  one text. Policy i of the text is cedarpy's `policy{i}`.
- `entities`: Cedar JSON entities (agents with clearance/level/team/budget_tier,
  groups nested in divisions, tools with sensitivity/owner_team and Cedar tags,
  tool sets, and Action entities with parents).
- `requests`: request dicts in the cedarpy shape (principal/action/resource as
  Cedar entity-uid strings, context a dict), a mix of requests aimed at a
  policy (most allowed, some denied by a forbid) and random ones (mostly
  default deny).
- `floor_rules`: per scaled policy, the data the hand-written floor needs
  (see floor.py). The floor is specialised to exactly these policy shapes.

The policy mix scales with N; the fixed part (five forbids and two broad permits,
one of which errors when the context has no `task`)
does not. Entity counts scale with N so that each request has a handful of
candidate policies at every size, as in a real deployment.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

ENVS = ["prod", "staging", "dev"]
ENV_W = [0.6, 0.25, 0.15]
SENS = ["public", "internal", "confidential", "restricted"]
SENS_W = [0.35, 0.35, 0.2, 0.1]
TEAMS = ["search", "billing", "infra", "support", "growth", "security"]
LEVELS = ["junior", "senior", "lead"]
CTX_TAGS = ["triage", "oncall", "batch", "interactive", "backfill", "eval"]
TOOL_TAGS = ["external", "write", "pii", "readonly", "billing"]

# leaf actions used in requests, and the action hierarchy
LEAF_ACTIONS = ["call", "read", "list", "write", "delete"]
ACTION_PARENTS = {
    "call": ["any"],
    "read": ["any"],
    "list": ["any"],
    "write": ["mutate"],
    "delete": ["mutate"],
    "mutate": ["any"],
    "any": [],
}


def uid(t: str, i: str) -> str:
    return f'{t}::"{i}"'


@dataclass
class Workload:
    n_policies: int
    seed: int
    policies_text: str
    policy_ids: list          # policy_ids[i] is the @id of cedarpy's policy{i}
    entities: list            # Cedar JSON entity list
    requests: list            # cedarpy-shaped request dicts
    floor_rules: list         # (pid, effect, kind, params) for every policy
    counts: dict = field(default_factory=dict)

    @property
    def entities_json(self) -> str:
        return json.dumps(self.entities)

    def write(self, folder) -> tuple:
        """Writes policies.cedar and entities.json into `folder`; returns both paths."""
        import os
        os.makedirs(folder, exist_ok=True)
        pp = os.path.join(folder, "policies.cedar")
        ep = os.path.join(folder, "entities.json")
        with open(pp, "w") as f:
            f.write(self.policies_text)
        with open(ep, "w") as f:
            f.write(self.entities_json)
        return pp, ep


# ----------------------------------------------------------------------------
# fixed policies (not scaled with N)

FIXED = [
    # (id, effect, kind, cedar)
    ("forbid-external-confidential", "forbid", "F_EXT_CONF",
     'forbid(principal, action == Action::"call", resource)\n'
     '  when { resource.hasTag("external") && context.data_sensitivity == "confidential" };'),
    ("forbid-prod-mutation-without-ticket", "forbid", "F_PROD_MUT",
     'forbid(principal, action in Action::"mutate", resource)\n'
     '  when { context.env == "prod" && !(context has ticket) };'),
    ("forbid-suspended", "forbid", "F_SUSPENDED",
     'forbid(principal is Agent, action, resource)\n'
     '  when { principal.suspended };'),
    ("forbid-over-clearance", "forbid", "F_CLEARANCE",
     'forbid(principal, action, resource is Tool)\n'
     '  when { resource.sensitivity > principal.clearance + 1 };'),
    ("forbid-pii-restricted", "forbid", "F_PII",
     'forbid(principal, action in [Action::"call", Action::"read"], resource)\n'
     '  when { resource.hasTag("pii") && context.data_sensitivity == "restricted" }\n'
     '  unless { principal.level == "lead" };'),
    ("permit-read-small-tasks", "permit", "P_READ_SMALL",
     'permit(principal, action == Action::"read", resource is Tool)\n'
     '  when { context.task.tools_used < 3 && resource.sensitivity == 0 };'),
    ("permit-list-in-dev", "permit", "P_LIST_DEV",
     'permit(principal, action == Action::"list", resource)\n'
     '  when { context.env == "dev" };'),
]

# scaled policy kinds and their weights
KINDS = [("K1", 0.50), ("K2", 0.15), ("K3", 0.10), ("K4", 0.10), ("K5", 0.10), ("K6", 0.05)]


def _sizes(n: int) -> dict:
    # groups x toolsets grows like N, so group-scoped policies per (group, tool set)
    # pair, and hence candidate policies per request, stay about constant with N
    root = int(round(0.5 * n ** 0.5))
    n_groups = max(3, root)
    return {
        "agents": max(8, n // 20),
        "groups": n_groups,
        "divisions": max(1, n_groups // 10),
        "tools": max(10, n // 10),
        "toolsets": max(3, root),
    }


def _entities(rng: random.Random, sz: dict):
    agents, tools = [], []
    ents = []
    agent_groups = {}
    tool_sets = {}
    # actions
    for a, ps in ACTION_PARENTS.items():
        ents.append({"uid": {"type": "Action", "id": a}, "attrs": {},
                     "parents": [{"type": "Action", "id": p} for p in ps]})
    for d in range(sz["divisions"]):
        ents.append({"uid": {"type": "Group", "id": f"d{d}"}, "attrs": {}, "parents": []})
    for g in range(sz["groups"]):
        ents.append({"uid": {"type": "Group", "id": f"g{g}"}, "attrs": {},
                     "parents": [{"type": "Group", "id": f"d{g % sz['divisions']}"}]})
    for s in range(sz["toolsets"]):
        ents.append({"uid": {"type": "ToolSet", "id": f"s{s}"}, "attrs": {}, "parents": []})
    for i in range(sz["agents"]):
        k = 1 if rng.random() < 0.6 else 2
        gs = sorted(rng.sample(range(sz["groups"]), k))
        agent_groups[i] = gs
        attrs = {
            "clearance": rng.randint(0, 4),
            "level": rng.choices(LEVELS, [0.5, 0.35, 0.15])[0],
            "team": rng.choice(TEAMS),
            "budget_tier": rng.randint(0, 3),
            "suspended": rng.random() < 0.02,
        }
        agents.append(attrs)
        ents.append({"uid": {"type": "Agent", "id": f"a{i}"}, "attrs": attrs,
                     "parents": [{"type": "Group", "id": f"g{g}"} for g in gs]})
    for i in range(sz["tools"]):
        s = rng.randrange(sz["toolsets"])
        tool_sets[i] = s
        attrs = {
            "sensitivity": rng.choices(range(5), [0.3, 0.3, 0.2, 0.15, 0.05])[0],
            "owner_team": rng.choice(TEAMS),
        }
        tags = {}
        for t in TOOL_TAGS:
            if rng.random() < 0.15:
                tags[t] = "yes"
        if rng.random() < 0.9:   # 10% of tools lack cost_tier: K6 policies then error
            tags["cost_tier"] = rng.randint(0, 3)
        tools.append((attrs, tags))
        ents.append({"uid": {"type": "Tool", "id": f"t{i}"}, "attrs": attrs,
                     "parents": [{"type": "ToolSet", "id": f"s{s}"}], "tags": tags})
    return ents, agents, tools, agent_groups, tool_sets


def _policy(rng: random.Random, kind: str, sz: dict, pid: str):
    """Returns (cedar_text, params) for one scaled policy."""
    a = rng.randrange(sz["agents"])
    t = rng.randrange(sz["tools"])
    g = rng.randrange(sz["groups"])
    s = rng.randrange(sz["toolsets"])
    if kind == "K1":
        env = rng.choices(["prod", "staging"], [0.8, 0.2])[0]
        txt = (f'permit(principal == Agent::"a{a}", action == Action::"call", resource == Tool::"t{t}")\n'
               f'  when {{ context.env == "{env}" && resource.sensitivity <= principal.clearance }};')
        return txt, {"agent": a, "tool": t, "env": env}
    if kind == "K2":
        # one in ten is granted to a whole division (transitive `in`)
        if rng.random() < 0.1:
            d = rng.randrange(sz["divisions"])
            p = f'Group::"d{d}"'
            par = {"division": d, "toolset": s}
        else:
            p = f'Group::"g{g}"'
            par = {"group": g, "toolset": s}
        txt = (f'permit(principal in {p}, action in [Action::"call", Action::"read"], resource in ToolSet::"s{s}")\n'
               f'  when {{ context has ticket }};')
        return txt, par
    if kind == "K3":
        txt = (f'permit(principal == Agent::"a{a}", action in Action::"mutate", resource == Tool::"t{t}")\n'
               f'  when {{ context.env != "prod" || (context has ticket && context.ticket like "CHG-*") }}\n'
               f'  unless {{ resource.hasTag("readonly") }};')
        return txt, {"agent": a, "tool": t}
    if kind == "K4":
        txt = (f'permit(principal is Agent in Group::"g{g}", action == Action::"read", resource in ToolSet::"s{s}")\n'
               f'  when {{ resource.owner_team == principal.team && ["public", "internal"].contains(context.data_sensitivity) }};')
        return txt, {"group": g, "toolset": s}
    if kind == "K5":
        lvl = rng.choice(["senior", "lead"])
        txt = (f'permit(principal == Agent::"a{a}", action in [Action::"call", Action::"list"], resource in ToolSet::"s{s}")\n'
               f'  when {{ context.tags.containsAny(["triage", "oncall"]) && principal.level == "{lvl}" }};')
        return txt, {"agent": a, "toolset": s, "level": lvl}
    if kind == "K6":
        lim = rng.choice([20, 50, 100])
        txt = (f'permit(principal == Agent::"a{a}", action == Action::"call", resource == Tool::"t{t}")\n'
               f'  when {{ context.task.writes < {lim} && resource.getTag("cost_tier") <= principal.budget_tier }};')
        return txt, {"agent": a, "tool": t, "limit": lim}
    raise ValueError(kind)


def _context(rng: random.Random, bias: float) -> dict:
    """A request context; `bias` in [0, 1] pushes it towards what the permits want."""
    ctx = {
        "env": "prod" if rng.random() < bias else rng.choices(ENVS, ENV_W)[0],
        "data_sensitivity": rng.choices(SENS, SENS_W)[0],
        "tags": sorted(rng.sample(CTX_TAGS, rng.randint(0, 3))),
    }
    if rng.random() < 0.35 + 0.5 * bias:
        ctx["ticket"] = rng.choice(["CHG-", "INC-"]) + str(rng.randint(100, 99999))
    if rng.random() < 0.9:
        ctx["task"] = {"id": f"task-{rng.randint(0, 10**6)}", "writes": rng.randint(0, 120),
                       "tools_used": rng.randint(0, 30)}
    return ctx


def generate(n_policies: int, seed: int = 7, n_requests: int = 4000) -> Workload:
    rng = random.Random(f"{seed}:{n_policies}")
    sz = _sizes(n_policies)
    ents, agents, tools, agent_groups, tool_sets = _entities(rng, sz)

    group_members = {}
    for i, gs in agent_groups.items():
        for g in gs:
            group_members.setdefault(g, []).append(i)
    set_tools = {}
    for i, s in tool_sets.items():
        set_tools.setdefault(s, []).append(i)

    texts, ids, rules = [], [], []
    fixed = FIXED if n_policies >= len(FIXED) else FIXED[:n_policies]
    n_scaled = n_policies - len(fixed)
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    # interleave: fixed policies are spread through the text, not bunched up front
    fixed_at = {int((j + 0.5) * n_policies / max(1, len(fixed))): j for j in range(len(fixed))}
    scaled_i = 0
    scaled_params = []
    for i in range(n_policies):
        if i in fixed_at and fixed_at[i] < len(fixed):
            fid, eff, kind, txt = fixed[fixed_at[i]]
            ids.append(fid)
            texts.append(f'@id("{fid}")\n{txt}')
            rules.append((fid, eff, kind, {}))
            continue
        kind = kinds[scaled_i % len(kinds)] if n_scaled <= len(kinds) else rng.choices(kinds, weights)[0]
        pid = f"{kind.lower()}-{scaled_i}"
        scaled_i += 1
        txt, par = _policy(rng, kind, sz, pid)
        ids.append(pid)
        texts.append(f'@id("{pid}")\n{txt}')
        rules.append((pid, "permit", kind, par))
        scaled_params.append((kind, par))
    assert len(ids) == n_policies, (len(ids), n_policies)

    # requests
    div_groups = {}
    for g in range(sz["groups"]):
        div_groups.setdefault(g % sz["divisions"], []).append(g)

    def member_of_group(g):
        ms = group_members.get(g)
        return rng.choice(ms) if ms else rng.randrange(sz["agents"])

    def tool_of_set(s):
        ts = set_tools.get(s)
        return rng.choice(ts) if ts else rng.randrange(sz["tools"])

    reqs = []
    for _ in range(n_requests):
        if scaled_params and rng.random() < 0.6:
            kind, par = rng.choice(scaled_params)
            if "agent" in par:
                a = par["agent"]
            elif "division" in par:
                a = member_of_group(rng.choice(div_groups[par["division"]]))
            else:
                a = member_of_group(par["group"])
            t = par["tool"] if "tool" in par else tool_of_set(par["toolset"])
            act = {"K1": ["call"], "K2": ["call", "read"], "K3": ["write", "delete"],
                   "K4": ["read"], "K5": ["call", "list"], "K6": ["call"]}[kind]
            act = rng.choice(act)
            ctx = _context(rng, 0.7)
            if kind == "K1":
                ctx["env"] = par["env"] if rng.random() < 0.85 else ctx["env"]
            elif kind == "K3" and "ticket" in ctx and rng.random() < 0.7:
                ctx["ticket"] = "CHG-" + ctx["ticket"][4:]
            elif kind == "K4" and rng.random() < 0.7:
                ctx["data_sensitivity"] = rng.choice(["public", "internal"])
            elif kind == "K5" and rng.random() < 0.7:
                ctx["tags"] = sorted(set(ctx["tags"]) | {rng.choice(["triage", "oncall"])})
        else:
            a = rng.randrange(sz["agents"])
            t = rng.randrange(sz["tools"])
            act = rng.choice(LEAF_ACTIONS)
            ctx = _context(rng, 0.3)
        reqs.append({"principal": uid("Agent", f"a{a}"), "action": uid("Action", act),
                     "resource": uid("Tool", f"t{t}"), "context": ctx})

    text = "\n\n".join(texts) + "\n"
    counts = dict(sz)
    counts["entities"] = len(ents)
    counts["policy_bytes"] = len(text.encode())
    return Workload(n_policies, seed, text, ids, ents, reqs, rules, counts)


_NAMED_UID = re.compile(r'\b(Agent|Group|Tool|ToolSet)::"')


def with_unrelated(base: Workload, n_policies: int, prefix: str = "other-") -> Workload:
    """`base` with policies and entities no request of it touches, up to `n_policies` policies in all.

    The additions are generate(n_policies)'s scaled policies and its agents, groups, tools and tool
    sets, each id prefixed with `prefix` (not its fixed policies: they constrain no principal or
    resource, so they would apply to the base's requests too).
    No request of `base` names a prefixed entity or descends from one, so no added policy can apply
    to one: every decision must be the same as on `base`, and only the cost of a larger index (more
    policies, more entities) shows. `generate(n)` grows the entities its requests reach as well.
    """
    if n_policies <= base.n_policies:
        raise ValueError("with_unrelated adds policies: n_policies must exceed the base's")
    big = generate(n_policies, base.seed, n_requests=0)
    fixed_ids = {fid for fid, _, _, _ in FIXED}
    texts = [t for pid, t in zip(big.policy_ids, big.policies_text.split("\n\n")) if pid not in fixed_ids]
    texts = texts[: n_policies - base.n_policies]
    assert len(texts) == n_policies - base.n_policies, "generate(n) has fewer scaled policies than needed"
    added = [_NAMED_UID.sub(lambda m: f'{m.group(1)}::"{prefix}', t).replace('@id("', f'@id("{prefix}', 1)
             for t in texts]
    ids = base.policy_ids + [re.match(r'@id\("([^"]*)"\)', t).group(1) for t in added]

    def rename(u):
        return u if u["type"] == "Action" else {"type": u["type"], "id": prefix + u["id"]}
    others = [dict(e, uid=rename(e["uid"]), parents=[rename(p) for p in e["parents"]])
              for e in big.entities if e["uid"]["type"] != "Action"]
    text = base.policies_text.rstrip("\n") + "\n\n" + "\n\n".join(added) + "\n"
    counts = dict(base.counts)
    counts["entities"] = len(base.entities) + len(others)
    counts["policy_bytes"] = len(text.encode())
    # The floor knows the base's policies only; the added ones never apply to its requests.
    return Workload(n_policies, base.seed, text, ids, base.entities + others, base.requests,
                    base.floor_rules, counts)


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    w = generate(n)
    print(w.policies_text[:3000])
    print(json.dumps(w.counts))
    print(json.dumps(w.requests[:3], indent=1))
