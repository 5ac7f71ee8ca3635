"""The console's index of the decision log: a SQLite file beside the log (DATA_DIR/console-index.sqlite),
brought up to date incrementally from where it stopped, and the searches the console runs on it.

The index remembers the log file's inode and the byte offset it has read to; each `catch_up()` reads
the whole lines appended since (at most `max_lines` a step, in one transaction: workers that catch up at
the same time serialize on SQLite's write lock and each reads from the offset the previous one left).
A rotated log (decisions.jsonl -> decisions.jsonl.1) is finished from `.1` first; a truncated or
replaced log is read again from its start. Each decision is one row: the columns a search filters on
(time, agent, task, resource, action, decision, reason, approval, decision id, and the shadow policies'
decision where it differed), each indexed, and the line itself for the detail view. Rows are kept up to
`max_rows`, the oldest dropped first. Searches are exact matches and a time range, newest first,
paginated by row id (keyset): an indexed lookup whatever the size of the log. A per-task summary
(calls, denies, first and last time) is kept as rows arrive.
"""
from __future__ import annotations

import json
import os
import sqlite3

FILE = "console-index.sqlite"
PAGE = 50
MAX_ROWS = 1_000_000  # ~0.8 KB each on disk (the line is kept for the detail view)
FILTERS = ("principal", "task", "resource", "action", "decision", "reason", "approval", "decision_id", "shadow")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS d (
  id INTEGER PRIMARY KEY, time TEXT, decision_id TEXT, api TEXT, principal TEXT, action TEXT, resource TEXT,
  decision TEXT, reason TEXT, task TEXT, approval TEXT, shadow TEXT, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS d_time ON d(time);
CREATE INDEX IF NOT EXISTS d_decision_id ON d(decision_id);
CREATE INDEX IF NOT EXISTS d_principal ON d(principal);
CREATE INDEX IF NOT EXISTS d_task ON d(task);
CREATE INDEX IF NOT EXISTS d_resource ON d(resource);
CREATE INDEX IF NOT EXISTS d_action ON d(action);
CREATE INDEX IF NOT EXISTS d_decision ON d(decision);
CREATE INDEX IF NOT EXISTS d_reason ON d(reason);
CREATE INDEX IF NOT EXISTS d_approval ON d(approval);
CREATE INDEX IF NOT EXISTS d_shadow ON d(shadow);
CREATE TABLE IF NOT EXISTS tasks (
  task TEXT PRIMARY KEY, first_time TEXT, last_time TEXT, last_id INTEGER, calls INTEGER, denies INTEGER,
  principal TEXT);
CREATE INDEX IF NOT EXISTS tasks_last ON tasks(last_id);
"""


def _row(line: str):
    """The indexed columns of one log line, or None for a line that is not a decision."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if type(d) is not dict or "decision_id" not in d:
        return None
    token = d.get("token") if type(d.get("token")) is dict else {}
    approval = d.get("approval") if type(d.get("approval")) is dict else {}
    shadow = d.get("shadow") if type(d.get("shadow")) is dict else {}
    ctx_task = None
    ctx = d.get("context")
    if type(ctx) is dict and type(ctx.get("task")) is dict:
        ctx_task = ctx["task"].get("id")
    task = token.get("task") or ctx_task

    def text(v):
        return v if type(v) is str else None
    return (text(d.get("time")), text(d.get("decision_id")), text(d.get("api")), text(d.get("principal")),
            text(d.get("action")), text(d.get("resource")), text(d.get("decision")), text(d.get("reason")),
            text(task), text(approval.get("id")), text(shadow.get("decision")), line)


class DecisionIndex:
    """The index of one decision log (`log_path`) in `db_path`."""

    def __init__(self, db_path: str, log_path: str, max_rows: int = MAX_ROWS):
        self.db_path, self.log_path, self.max_rows = db_path, log_path, max_rows
        os.makedirs(os.path.dirname(db_path) or ".", exist_ok=True)
        self.db = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes' pages stay cached while rows arrive
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- reading the log --------------------------------------------------------------------------

    def _meta(self) -> tuple:
        got = dict(self.db.execute("SELECT k, v FROM meta").fetchall())
        return int(got.get("ino", "0")), int(got.get("offset", "0"))

    def _read(self, path: str, offset: int, max_bytes: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
        end = data.rfind(b"\n")
        return data[:end + 1] if end >= 0 else b""

    def catch_up(self, max_lines: int = 100_000, chunk_bytes: int = 8 * 1024 * 1024) -> int:
        """Index what the log gained since the last call (at most about `max_lines` lines); returns how many
        lines were read. Missing log: nothing to do."""
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ino, offset = self._meta()
            path = self.log_path
            if ino != st.st_ino:
                try:
                    old = os.stat(self.log_path + ".1")
                except FileNotFoundError:
                    old = None
                if ino and old is not None and old.st_ino == ino and old.st_size > offset:
                    path = self.log_path + ".1"  # finish the rotated file first
                else:
                    ino, offset = st.st_ino, 0
            elif st.st_size < offset:
                offset = 0  # truncated in place
            lines = 0
            while lines < max_lines:
                data = self._read(path, offset, chunk_bytes)
                if not data:
                    if path != self.log_path:  # the rotated file is done: go on in the current one
                        path, ino, offset = self.log_path, st.st_ino, 0
                        continue
                    break
                rows = [r for r in map(_row, data.decode("utf-8", "replace").splitlines()) if r is not None]
                self._insert(rows)
                lines += data.count(b"\n")
                offset += len(data)
            db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                           (("ino", str(ino)), ("offset", str(offset))))
            self._trim()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return lines

    def _insert(self, rows: list) -> None:
        db = self.db
        first = db.execute("SELECT COALESCE(MAX(id), 0) FROM d").fetchone()[0] + 1
        db.executemany("INSERT INTO d (time, decision_id, api, principal, action, resource, decision, reason, task,"
                       " approval, shadow, line) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        summary: dict = {}
        for n, r in enumerate(rows):
            if r[8] is None:
                continue
            s = summary.get(r[8])
            if s is None:
                s = summary[r[8]] = [r[0], r[0], first + n, 0, 0, r[3]]
            s[1], s[2], s[5] = r[0], first + n, r[3]
            s[3] += 1
            s[4] += r[6] != "allow"
        db.executemany(
            "INSERT INTO tasks (task, first_time, last_time, last_id, calls, denies, principal) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(task) DO UPDATE SET last_time=excluded.last_time, "
            "last_id=excluded.last_id, calls=calls+excluded.calls, denies=denies+excluded.denies, "
            "principal=excluded.principal",
            [(task, *s) for task, s in summary.items()])

    def _trim(self) -> None:
        count = self.db.execute("SELECT COALESCE(MAX(id), 0) - COALESCE(MIN(id), 0) + 1 FROM d").fetchone()[0]
        if count > self.max_rows:
            self.db.execute("DELETE FROM d WHERE id < (SELECT MAX(id) FROM d) - ?", (self.max_rows - 1,))

    def behind_bytes(self) -> int:
        """How many bytes of the current log are not indexed yet (0 when unknown)."""
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return 0
        ino, offset = self._meta()
        return st.st_size - offset if ino == st.st_ino else st.st_size

    # -- searching --------------------------------------------------------------------------------

    def search(self, filters: dict, since: str = "", until: str = "", before: int = 0, limit: int = PAGE) -> list:
        """Rows (dicts without the line) matching every filter (exact values), time in [since, until],
        with id < `before` (0: from the newest), newest first, at most `limit`."""
        where, args = [], []
        for k in FILTERS:
            v = filters.get(k)
            if v:
                where.append(f"{k} = ?")
                args.append(v)
        if since:
            where.append("time >= ?")
            args.append(since)
        if until:
            where.append("time <= ?")
            args.append(until)
        if before:
            where.append("id < ?")
            args.append(int(before))
        sql = ("SELECT id, time, decision_id, api, principal, action, resource, decision, reason, task, approval, "
               "shadow FROM d" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        cur = self.db.execute(sql, [*args, max(1, min(int(limit), 500))])
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def line(self, row_id: int) -> dict | None:
        got = self.db.execute("SELECT line FROM d WHERE id = ?", (int(row_id),)).fetchone()
        return json.loads(got[0]) if got else None

    def by_decision_id(self, decision_id: str) -> dict | None:
        got = self.db.execute("SELECT line FROM d WHERE decision_id = ? ORDER BY id DESC LIMIT 1",
                              (decision_id,)).fetchone()
        return json.loads(got[0]) if got else None

    def asked_by(self, approval_id: str) -> dict | None:
        """The logged decision that asked for (or was allowed by) an approval, the first one."""
        got = self.db.execute("SELECT line FROM d WHERE approval = ? ORDER BY id LIMIT 1", (approval_id,)).fetchone()
        return json.loads(got[0]) if got else None

    def tasks(self, limit: int = PAGE) -> list:
        cur = self.db.execute("SELECT task, first_time, last_time, calls, denies, principal FROM tasks "
                              "ORDER BY last_id DESC LIMIT ?", (max(1, min(int(limit), 500)),))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
