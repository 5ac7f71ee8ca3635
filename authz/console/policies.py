"""The Policies page's facts: the served generation (its number and the SHA-256 of its compiled blob,
read from the index) and the policies of the policies folder with their ids and annotations (the ids
as the compiler gives them: `@id`, else `<file>:<index>`; annotations as the served generation holds them)."""
from __future__ import annotations

import hashlib
import re
import struct

from authz.compiler import find_sources
from authz.compiler.source import parse_policy_text
from authz.engine.index import CURRENT_KEY, generation_key, open_env, release_env

_ID = re.compile(r'@id\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
MAX_POLICIES = 5000
MAX_TEXT = 4000


def served_digest(db_path: str) -> tuple:
    """(generation number, SHA-256 hex of its blob) of the index's current generation."""
    env = open_env(db_path, create=False)
    try:
        with env.begin(buffers=True) as txn:
            raw = txn.get(CURRENT_KEY)
            number = struct.unpack("<Q", bytes(raw))[0]
            return number, hashlib.sha256(txn.get(generation_key(number))).hexdigest()
    finally:
        release_env(env)


def served_policies(decider, policies_dir: str, shadow_dir: str = "") -> dict:
    number, digest = served_digest(decider.db_path)
    engine = decider.engine
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
