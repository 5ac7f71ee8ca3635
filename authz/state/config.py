"""StateConfig: where the state store lives, how durable its commits are, and the bound of every field.

Built by the server from `[state]` and `[approvals]` of authz.toml (coming with the integration);
every field has a default, so `authz serve` with no arguments needs none of them.
"""
from __future__ import annotations

import dataclasses
import os

LONG_MAX = (1 << 63) - 1
ON_REJECT = ("resume", "revoke_task")
_MAX_KEY_ID_BYTES = 400  # LMDB keys are at most 511 bytes; ids are keys (grant keys add 33 bytes)


def state_path(data_dir: str) -> str:
    """The state store's LMDB environment: its own folder in data_dir, apart from the policy index."""
    return os.path.join(os.fspath(data_dir), "state")


@dataclasses.dataclass(frozen=True)
class StateConfig:
    path: str
    map_size: int = 1 << 31          # address space reserved; the file grows as needed; past it: Full
    durable: bool = False            # True: fsync every commit (see docs/tasks.md, "Durability")
    redis: object = None             # RedisSettings (redis_config.py): the shared backend; None = LMDB
    index_path: str = ""             # LMDB: the policy index whose environment holds the revocation set
                                     # ("" = the state store's own environment)
    # bounds of one task's state
    max_id_bytes: int = 256          # task and agent ids (UTF-8)
    max_uid_bytes: int = 512         # a tool's entity type + id (UTF-8)
    max_tools: int = 1000            # distinct tools; then `overflow` is true and the set stops growing
    max_labels: int = 256            # distinct labels of a task; a call adding more is refused (Full)
    max_call_labels: int = 64        # labels of one call
    max_label_bytes: int = 128
    # bounds of the store
    max_tasks: int = 1_000_000
    max_agents: int = 1_000_000
    max_approvals: int = 100_000     # records kept, pending or decided
    task_ttl_s: int = 86_400         # a task with no call for this long is forgotten
    # approvals
    approval_ttl_s: int = 900        # a pending approval expires (= rejected, reason "expired")
    grant_ttl_s: int = 300           # an approval's single-use grant expires
    on_reject: str = "resume"        # or "revoke_task"
    approval_keep_s: int = 86_400    # a decided approval stays readable (list/get) this long
    feed_keep: int = 10_000          # approval changes kept for changes_since()
    max_chain: int = 16              # delegation chain entries of an approval
    max_policies: int = 64           # policy ids that asked for an approval
    max_text_bytes: int = 1024       # queue, approver, reason, chain entry, policy id (UTF-8)

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("state path must be a non-empty string")
        if not isinstance(self.durable, bool):
            raise ValueError("state durable must be true or false")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (type(value) is not int or value < 1 or value > LONG_MAX):
                raise ValueError(f"state {field.name} must be a positive integer, not {value!r}")
        if self.map_size < 1 << 16:
            raise ValueError("state map_size must be at least 65536 bytes")
        if self.max_id_bytes > _MAX_KEY_ID_BYTES:
            raise ValueError(f"state max_id_bytes must be at most {_MAX_KEY_ID_BYTES} (LMDB key size)")
        if self.on_reject not in ON_REJECT:
            raise ValueError(f"approvals on_reject must be one of {', '.join(ON_REJECT)}, not {self.on_reject!r}")
