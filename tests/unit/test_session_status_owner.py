"""A session's status (created -> active -> parked) has one owner: the KV parking.

DESIGN.md's session lifecycle follows where the session's KV cache is, which only
appliance.sessions.parking.KvParking knows. So only that module may write the status: through
`store.sessions.set_status` (the store's one way to change it), never `sessions.update(status=...)`
nor SQL of its own. This test reads every module under appliance/ and names any other writer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNER = "appliance/sessions/parking.py"
STORE = "appliance/store/sessions.py"
"""Where the status column is written: set_status and the rows it creates."""
STATUS_SQL = re.compile(r"\b(UPDATE|INSERT\s+INTO)\s+sessions\b.*\bstatus\b", re.I | re.S)


def _dotted(node: ast.AST) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def status_writers(source: str, where: str) -> list[str]:
    """The places in `source` (module path `where`) that write a session's status."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr == "set_status" and where != OWNER:
            found.append(f"{where}:{line}: {_dotted(node)}")
        elif isinstance(node, ast.Call) and any(kw.arg == "status" for kw in node.keywords):
            named = [_dotted(n) for n in [node.func, *node.args]]
            if any(n.endswith("sessions.update") for n in named):
                found.append(f"{where}:{line}: sessions.update(status=...)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and STATUS_SQL.search(node.value)
            and where != STORE
        ):
            found.append(f"{where}:{line}: SQL writing sessions.status")
    return found


def test_only_the_kv_parking_writes_a_session_status() -> None:
    offenders: list[str] = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        offenders += status_writers(path.read_text(encoding="utf-8"), where)
    assert offenders == [], (
        "only appliance/sessions/parking.py (KvParking) may write a session's status; "
        "ask KvParking (e.g. `activate`) instead:\n" + "\n".join(offenders)
    )


def test_the_check_sees_each_way_of_writing_a_status() -> None:
    source = """
async def f(store, sid):
    await store.run(store.sessions.set_status, sid, "active")
    await store.run(store.sessions.update, sid, status="parked")
    store.sessions.update(sid, status="parked")
    con.execute("UPDATE sessions SET status = ? WHERE id = ?", ("parked", sid))
"""
    found = status_writers(source, "appliance/sessions/service.py")
    assert len(found) == 4, found
    assert status_writers(source.splitlines()[2].strip(), OWNER) == []
    assert status_writers('"UPDATE sessions SET title = ?"', "appliance/x.py") == []
