"""Browser sessions of the console: made at login, looked up by the hash of their cookie, ended at
logout; the login and the logout are audited in the same transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..domain import parse_rfc3339, rfc3339
from ..engine import Conn
from .audit import _audit
from .base import StoreBase
from .records import Session


class Sessions(StoreBase):
    async def create_session(
        self, token_hash: str, *, operator: str, csrf_token: str, credential: str, now: datetime, ttl: timedelta
    ) -> Session:
        expires = now + ttl

        async def work(db: Conn) -> None:
            # Expired sessions are dropped here, so the table stays as small as the active staff.
            await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (rfc3339(now),))
            await db.execute(
                """INSERT INTO sessions (token_hash, operator, csrf_token, created_at, expires_at, credential)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (token_hash, operator, csrf_token, rfc3339(now), rfc3339(expires), credential),
            )
            await _audit(db, rfc3339(now), operator, "login", None, None)

        await self._write(work)
        return Session(operator, csrf_token, expires, credential)

    async def get_session(self, token_hash: str, *, now: datetime) -> Session | None:
        async with self._tx(write=False) as db:
            row = await db.fetchone(
                "SELECT operator, csrf_token, expires_at, credential FROM sessions"
                " WHERE token_hash = ? AND expires_at > ?",
                (token_hash, rfc3339(now)),
            )
        if row is None:
            return None
        return Session(row["operator"], row["csrf_token"], parse_rfc3339(row["expires_at"]), row["credential"])

    async def delete_session(self, token_hash: str, *, actor: str, now: datetime) -> None:
        async def work(db: Conn) -> None:
            await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
            await _audit(db, rfc3339(now), actor, "logout", None, None)

        await self._write(work)
