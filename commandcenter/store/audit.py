"""The audit log: a durable record of who did what (`_audit` writes one entry inside a caller's
transaction), and reading it back page by page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..domain import parse_rfc3339, rfc3339
from ..engine import Conn
from .base import StoreBase
from .records import AuditEntry


class AuditLog(StoreBase):
    async def audit(
        self, *, actor: str, action: str, now: datetime, target: str | None = None, detail: dict[str, Any] | None = None
    ) -> None:
        async def work(db: Conn) -> None:
            await _audit(db, rfc3339(now), actor, action, target, detail)

        await self._write(work)

    async def audit_many(self, entries: Sequence[tuple[str, str, str, str | None, dict[str, Any] | None]]) -> None:
        """Several audit entries (at, actor, action, target, detail) in one transaction."""
        if not entries:
            return

        async def work(db: Conn) -> None:
            for at, actor, action, target, detail in entries:
                await _audit(db, at, actor, action, target, detail)

        await self._write(work)

    async def audit_entries(self, *, limit: int = 200, before_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first; `before_id` pages back."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                "SELECT * FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id if before_id is not None else 2**63 - 1, limit),
            )
        return [
            AuditEntry(
                id=r["id"],
                at=parse_rfc3339(r["at"]),
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                detail=json.loads(r["detail"]) if r["detail"] else None,
            )
            for r in rows
        ]


async def _audit(
    db: Conn, at: str, actor: str, action: str, target: str | None, detail: dict[str, Any] | None
) -> None:
    await db.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (at, actor, action, target, json.dumps(detail, ensure_ascii=False) if detail else None),
    )
