"""The Policies page's facts: the served generation (its number and the policy set's content digest, the
one the decision log and `authz status` show) and the policies of the policies folder with their ids and annotations (the ids
as the compiler gives them: `@id`, else `<file>:<index>`; annotations as the served generation holds them)."""
from __future__ import annotations

import re

from authz.compiler import find_sources
from authz.compiler.source import parse_policy_text

_ID = re.compile(r'@id\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
MAX_POLICIES = 5000
MAX_TEXT = 4000


def served_policies(decider, policies_dir: str, shadow_dir: str = "") -> dict:
    engine = decider.engine
    # The policy set's content digest, as the decision log, authz_policy_set_info and `authz status` show it.
    number, digest = (int(engine.generation), engine.policy_digest) if engine is not None else (0, "")
    policies, problems = [], []
    if policies_dir:
        files, _ = find_sources([policies_dir])
        for path, shown, name in files:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                sources = parse_policy_text(text, shown, name)
            except Exception as e:  # noqa: BLE001 - the folder may hold what failed to compile
                problems.append(f"{shown}: {e}")
                continue
            for s in sources:
                m = _ID.search(s.text)
                pid = m.group(1) if m else f"{name}:{s.index}"
                annotations = dict(engine.annotations(pid)) if engine is not None else {}
                policies.append({"id": pid, "where": s.where, "annotations": annotations,
                                 "text": s.text[:MAX_TEXT]})
                if len(policies) >= MAX_POLICIES:
                    break
    return {"generation": number, "digest": digest, "policies": policies, "problems": problems,
            "folder": policies_dir, "shadow_folder": shadow_dir}
