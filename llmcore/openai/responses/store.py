"""`ResponseStore`: stored responses and the conversation that led to each, in an
embedded SQLite database (a file, so that `previous_response_id` works across a
restart, or memory, the default).

Each row holds one response (its JSON) and its conversation's input items (the
previous response's items and output, then this request's input; the
instructions are not carried, as OpenAI's), so continuing a response reads one row.

Invariants: a row older than `max_age` seconds is never returned and is deleted
by the next write; at most `max_items` rows are kept (the oldest go first); every
database call runs on a worker thread, one at a time (a lock), so the event loop
never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from llmcore.openai.options import RESPONSES_STORE_MAX_AGE, RESPONSES_STORE_MAX_ITEMS
from llmcore.openai.responses.wire import RESPONSE_DECODER, Item, Response

_ITEMS = msgspec.json.Decoder(list[Item])
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    stored_at REAL NOT NULL,
    response BLOB NOT NULL,
    input BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_stored_at ON responses (stored_at);
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: Response
    input: list[Item]  # the conversation's items before this response's output


class ResponseStore:
    def __init__(
        self,
        path: str | None = None,
        *,
        max_items: int = RESPONSES_STORE_MAX_ITEMS,
        max_age: float = RESPONSES_STORE_MAX_AGE,
    ) -> None:
        """`path`: the database file (created if missing); None: in memory."""
        if max_items < 1 or max_age <= 0:
            raise ValueError("the response store needs max_items >= 1 and max_age > 0")
        self.path = path
        self.max_items = max_items
        self.max_age = max_age
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path or ":memory:", check_same_thread=False)
        with self._lock:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()

    # ---- async API (the service's) --------------------------------------------------------

    async def put(self, response: Response, items: list[Item]) -> None:
        await asyncio.to_thread(self.put_sync, response, items)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self.get_sync, response_id)

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self.delete_sync, response_id)

    # ---- blocking calls -------------------------------------------------------------------

    def put_sync(self, response: Response, items: list[Item]) -> None:
        """Store (or replace) `response` and prune what is too old or too many."""
        now = time.time()
        row = (response.id, now, msgspec.json.encode(response), msgspec.json.encode(items))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", row)
            self._prune(now)
            self._db.commit()

    def get_sync(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, input FROM responses WHERE id = ? AND stored_at >= ?",
                (response_id, time.time() - self.max_age),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(RESPONSE_DECODER.decode(row[0]), _ITEMS.decode(row[1]))

    def delete_sync(self, response_id: str) -> bool:
        """Whether a (live) response was there to delete."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM responses WHERE id = ? AND stored_at >= ?",
                (response_id, time.time() - self.max_age),
            )
            self._db.commit()
        return cursor.rowcount > 0

    def __len__(self) -> int:
        with self._lock:
            count: Any = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM responses WHERE stored_at < ?", (now - self.max_age,))
        self._db.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
            "ORDER BY stored_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
            (self.max_items,),
        )
