"""What each person chose for themselves in the console: today only the language they read it in.

Kept by operator name, not by session, so that the choice follows the person to another desk and
survives signing out. A person with no row reads the console in the language their account
configures, else Bahasa Indonesia (sessions.py decides; this module only stores)."""

from __future__ import annotations

from datetime import datetime

from ..domain import rfc3339
from ..engine import Conn
from .base import StoreBase


class Preferences(StoreBase):
    async def get_language(self, operator: str) -> str | None:
        """The language `operator` chose (`id` or `en`), or None if they never chose."""
        async with self._tx(write=False) as db:
            row = await db.fetchone("SELECT language FROM operator_preferences WHERE operator = ?", (operator,))
        return None if row is None else str(row["language"])

    async def set_language(self, operator: str, language: str, *, now: datetime) -> None:
        """Remember `operator`'s language; the table's CHECK refuses anything but `id` and `en`."""

        async def work(db: Conn) -> None:
            await db.execute(
                """INSERT INTO operator_preferences (operator, language, updated_at) VALUES (?, ?, ?)
                   ON CONFLICT (operator) DO UPDATE SET language = excluded.language,
                                                        updated_at = excluded.updated_at""",
                (operator, language, rfc3339(now)),
            )

        await self._write(work)
