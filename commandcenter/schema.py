"""The command center's database schema: one entry of single statements per version, for both
engines.

`store._migrate` applies the pending entries at startup in one transaction (docs/commandcenter.md,
"Storage"). The statements are SQLite's; `for_postgresql` turns each into PostgreSQL's. They stay
SQLite text (not per-engine objects) because a released entry is never edited, and tests build old
SQLite databases by running the entries as they are.
"""

from __future__ import annotations

import re

# Version 3 fills device_battery from the fault reports that carried a voltage. The WHERE keeps the
# latest report whatever order the rows come in; "AND 1" resolves the parsing ambiguity SQLite
# documents for an upsert fed by a SELECT.
_BATTERY_FROM_FAULTS = """INSERT INTO device_battery (device_id, battery_mv, at, source)
           SELECT device_id, json_extract(detail, '$.battery_mv'), at, event_id FROM device_faults
           WHERE json_type(detail, '$.battery_mv') = 'integer' AND 1
           ON CONFLICT (device_id) DO UPDATE SET battery_mv = excluded.battery_mv, at = excluded.at,
               source = excluded.source
           WHERE excluded.at >= device_battery.at"""

# Each entry is one schema version: a tuple of single statements (not a script, because
# sqlite3's executescript() commits first, which would break the one-transaction guarantee).
# Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # AUTOINCREMENT: incident ids are public references and must never be reused.
        """CREATE TABLE incidents (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            state           TEXT NOT NULL CHECK (state IN
                                ('new', 'acknowledged', 'dispatched', 'resolved', 'false_alarm')),
            device_id       TEXT NOT NULL,
            kind            TEXT NOT NULL,
            test            INTEGER NOT NULL CHECK (test IN (0, 1)),
            lat             REAL NOT NULL,
            lon             REAL NOT NULL,
            address         TEXT NOT NULL,
            area            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            acknowledged_at TEXT,
            acknowledged_by TEXT,
            dispatched_at   TEXT,
            dispatched_by   TEXT,
            agency          TEXT,
            closed_at       TEXT,
            closed_by       TEXT
        )""",
        "CREATE INDEX incidents_by_state ON incidents (state, id)",
        # One row per alarm event from a gateway. event_id is the idempotency key; incident_id is
        # the event -> incident mapping, kept per event so that incidents can later be merged.
        """CREATE TABLE alarms (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT NOT NULL UNIQUE,
            gateway_id  TEXT NOT NULL,
            device_id   TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            test        INTEGER NOT NULL CHECK (test IN (0, 1)),
            lat         REAL NOT NULL,
            lon         REAL NOT NULL,
            address     TEXT NOT NULL,
            area        TEXT NOT NULL,
            raised_at   TEXT,
            received_at TEXT NOT NULL,
            intake_at   TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            incident_id INTEGER NOT NULL REFERENCES incidents (id)
        )""",
        "CREATE INDEX alarms_by_incident ON alarms (incident_id, id)",
        "CREATE INDEX alarms_by_device ON alarms (device_id, seq)",
        # Audit trail: every state change, including creation (from_state NULL).
        """CREATE TABLE incident_history (
            id          INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            from_state  TEXT,
            to_state    TEXT NOT NULL,
            detail      TEXT
        )""",
        "CREATE INDEX incident_history_by_incident ON incident_history (incident_id, id)",
        # State reports waiting for (or already given to) the gateway. next_attempt_at is Unix time
        # in seconds: it is scheduling state, compared with the clock, not a record for people.
        """CREATE TABLE callback_outbox (
            id              INTEGER PRIMARY KEY,
            event_id        TEXT NOT NULL REFERENCES alarms (event_id),
            gateway_id      TEXT NOT NULL,
            state           TEXT NOT NULL,
            body            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_attempt_at TEXT,
            last_error      TEXT,
            delivered_at    TEXT
        )""",
        "CREATE INDEX callback_outbox_pending ON callback_outbox (event_id, id) WHERE delivered_at IS NULL",
        "CREATE INDEX callback_outbox_due ON callback_outbox (next_attempt_at) WHERE delivered_at IS NULL",
    ),
    (
        # Version 2: the gateway's incident layer (protocol §7: incident_key, press_count, sources)
        # and device faults. Version 1 databases exist, so this only adds; nothing is rewritten.
        "ALTER TABLE incidents ADD COLUMN incident_key TEXT",
        # At most one open incident per key: an event with that key attaches to it. Closing an
        # incident takes it out of this index, so the next event with the key opens a new one.
        """CREATE UNIQUE INDEX incidents_open_by_key ON incidents (incident_key)
           WHERE incident_key IS NOT NULL AND state IN ('new', 'acknowledged', 'dispatched')""",
        # What the gateway said about its grouping when it sent the event, kept as sent.
        "ALTER TABLE alarms ADD COLUMN incident_key TEXT",
        "ALTER TABLE alarms ADD COLUMN press_count INTEGER",
        "ALTER TABLE alarms ADD COLUMN sources TEXT",  # JSON array of device ids, or NULL
        # The devices of an incident in order of first appearance (rowid order): the union of each
        # event's device and the `sources` it carried.
        """CREATE TABLE incident_sources (
            id          INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            device_id   TEXT NOT NULL,
            UNIQUE (incident_id, device_id)
        )""",
        """INSERT OR IGNORE INTO incident_sources (incident_id, device_id)
           SELECT incident_id, device_id FROM alarms ORDER BY id""",
        # Every fault report from a gateway (the history); event_id is the idempotency key.
        """CREATE TABLE device_faults (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT NOT NULL UNIQUE,
            gateway_id  TEXT NOT NULL,
            device_id   TEXT NOT NULL,
            fault       TEXT NOT NULL,
            active      INTEGER NOT NULL CHECK (active IN (0, 1)),
            at          TEXT NOT NULL,
            detail      TEXT NOT NULL,
            lat         REAL,
            lon         REAL,
            address     TEXT,
            area        TEXT,
            intake_at   TEXT NOT NULL,
            fingerprint TEXT NOT NULL
        )""",
        "CREATE INDEX device_faults_by_device ON device_faults (device_id, fault, at)",
        # The latest report per (device, fault), by the gateway's `at`, so a retried old report
        # that arrives late cannot reopen a fault that has cleared. `since`: when the fault became
        # active (kept while repeated active reports arrive).
        """CREATE TABLE device_fault_state (
            device_id  TEXT NOT NULL,
            fault      TEXT NOT NULL,
            active     INTEGER NOT NULL CHECK (active IN (0, 1)),
            since      TEXT NOT NULL,
            at         TEXT NOT NULL,
            event_id   TEXT NOT NULL REFERENCES device_faults (event_id),
            gateway_id TEXT NOT NULL,
            detail     TEXT NOT NULL,
            lat        REAL,
            lon        REAL,
            address    TEXT,
            area       TEXT,
            intake_at  TEXT NOT NULL,
            PRIMARY KEY (device_id, fault)
        )""",
        "CREATE INDEX device_fault_state_active ON device_fault_state (since) WHERE active = 1",
    ),
    (
        # Version 3: the operator console. Only additions, as in version 2.
        # Escalation (docs/commandcenter.md, "Escalation"): when an incident still `new` after the
        # configured time was escalated; each incident escalates at most once.
        "ALTER TABLE incidents ADD COLUMN escalated_at TEXT",
        """CREATE INDEX incidents_awaiting_escalation ON incidents (created_at)
           WHERE state = 'new' AND escalated_at IS NULL""",
        # Response-time figures and exports select incidents by the time of the first press.
        "CREATE INDEX incidents_by_created ON incidents (created_at)",
        # History rows are state changes (all rows before version 3), notes, or the escalation.
        """ALTER TABLE incident_history ADD COLUMN kind TEXT NOT NULL DEFAULT 'state'
           CHECK (kind IN ('state', 'note', 'escalation'))""",
        # Battery voltage an alarm may carry (optional, protocol §7), and the latest known voltage
        # of each device, from alarms and from fault reports whose detail has `battery_mv`.
        "ALTER TABLE alarms ADD COLUMN battery_mv INTEGER",
        """CREATE TABLE device_battery (
            device_id  TEXT PRIMARY KEY,
            battery_mv INTEGER NOT NULL,
            at         TEXT NOT NULL,
            source     TEXT NOT NULL
        )""",
        _BATTERY_FROM_FAULTS,
        # Webhook events (escalations), delivered by the same store-and-forward sender as the state
        # reports to the gateway; events about one incident go out in order.
        """CREATE TABLE webhook_outbox (
            id              INTEGER PRIMARY KEY,
            incident_id     TEXT NOT NULL,
            kind            TEXT NOT NULL,
            body            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_attempt_at TEXT,
            last_error      TEXT,
            delivered_at    TEXT
        )""",
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (incident_id, id) WHERE delivered_at IS NULL",
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL",
        # Browser sessions. Only a hash of the cookie is stored, so a copy of the database does not
        # let anyone in.
        """CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            operator   TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
        # Who did what and when, for everything besides intake: logins (also failed ones), logouts,
        # incident actions and notes, exports.
        """CREATE TABLE audit_log (
            id     INTEGER PRIMARY KEY,
            at     TEXT NOT NULL,
            actor  TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_log_by_time ON audit_log (at)",
    ),
    (
        # Version 4: a session remembers which token made it (siaga.web.credential_id), so replacing
        # a person's token ends the sessions made with the old one. Sessions from versions 1-3 have
        # none and end at the upgrade: everybody signs in once more.
        "ALTER TABLE sessions ADD COLUMN credential TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Version 5: path supervision of the gateways (commandcenter/plumbing.py). The latest
        # self-report of each gateway instance, as received (`report`, JSON); `received_at` is this
        # command center's clock, what silence is measured from, `reported_at` the gateway's.
        # `silent_at`: when the silence was raised as a room-wide fault; NULL while it reports.
        """CREATE TABLE gateway_reports (
            gateway_id  TEXT NOT NULL,
            instance    TEXT NOT NULL,
            report      TEXT NOT NULL,
            reported_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            first_at    TEXT NOT NULL,
            silent_at   TEXT,
            PRIMARY KEY (gateway_id, instance)
        )""",
    ),
    (
        # Version 6: "not an emergency, referred to a complaint channel". Such an incident is
        # `resolved` with the channel (e.g. LAPOR!) in `referred_to` and its ticket number, if any,
        # in `referral_ref`; both NULL for every other incident.
        "ALTER TABLE incidents ADD COLUMN referred_to TEXT",
        "ALTER TABLE incidents ADD COLUMN referral_ref TEXT",
    ),
    (
        # Version 7: several agencies per incident, each dispatch with its own status, set by the
        # agency's staff (or by the room on its behalf): requested -> accepted -> en_route ->
        # on_scene -> done, or declined with a reason. At most one dispatch per agency and incident
        # that is not declined; a declined agency can be asked again. `escalated_at`: when a dispatch
        # nobody accepted in time was escalated (at most once). `incidents.agency` stays the first
        # agency dispatched, for clients of versions 1-6.
        """CREATE TABLE dispatches (
            id           INTEGER PRIMARY KEY,
            incident_id  INTEGER NOT NULL REFERENCES incidents (id),
            agency       TEXT NOT NULL,
            status       TEXT NOT NULL CHECK (status IN
                             ('requested', 'accepted', 'en_route', 'on_scene', 'done', 'declined')),
            reason       TEXT,
            requested_at TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            accepted_at  TEXT,
            en_route_at  TEXT,
            on_scene_at  TEXT,
            done_at      TEXT,
            declined_at  TEXT,
            updated_at   TEXT NOT NULL,
            updated_by   TEXT NOT NULL,
            escalated_at TEXT
        )""",
        """CREATE UNIQUE INDEX dispatches_one_per_agency ON dispatches (incident_id, agency)
           WHERE status <> 'declined'""",
        "CREATE INDEX dispatches_by_agency ON dispatches (agency, status)",
        # An incident's dispatches, declined ones too, are read with every incident shown.
        "CREATE INDEX dispatches_by_incident ON dispatches (incident_id, id)",
        """CREATE INDEX dispatches_unanswered ON dispatches (requested_at)
           WHERE status = 'requested' AND escalated_at IS NULL""",
        # Every status change of a dispatch, with who and when (the incident's history keeps the
        # incident's own states).
        """CREATE TABLE dispatch_history (
            id          INTEGER PRIMARY KEY,
            dispatch_id INTEGER NOT NULL REFERENCES dispatches (id),
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            from_status TEXT,
            to_status   TEXT NOT NULL,
            reason      TEXT
        )""",
        "CREATE INDEX dispatch_history_by_incident ON dispatch_history (incident_id, id)",
        # Dispatches of versions 1-6 were one agency, taken as accepted by the room when recorded;
        # those of closed incidents are done.
        """INSERT INTO dispatches (incident_id, agency, status, requested_at, requested_by, accepted_at,
               done_at, updated_at, updated_by)
           SELECT id, agency, CASE WHEN state = 'dispatched' THEN 'accepted' ELSE 'done' END,
                  COALESCE(dispatched_at, updated_at), COALESCE(dispatched_by, 'unknown'),
                  COALESCE(dispatched_at, updated_at),
                  CASE WHEN state = 'dispatched' THEN NULL ELSE closed_at END,
                  updated_at, COALESCE(dispatched_by, 'unknown')
           FROM incidents WHERE agency IS NOT NULL ORDER BY id""",
    ),
    (
        # Version 8: shifts, per-person language, a second escalation level, data retention.
        # A shift: an operator or supervisor signed on from `started_at` until the handover
        # (`ended_at`), with the note handed over, to whom, and the incidents still open then
        # (`open_at_handover`, JSON list of ids): they carry over to the next shift.
        """CREATE TABLE shifts (
            id               INTEGER PRIMARY KEY,
            operator         TEXT NOT NULL,
            role             TEXT NOT NULL,
            started_at       TEXT NOT NULL,
            ended_at         TEXT,
            handover_note    TEXT,
            handed_to        TEXT,
            open_at_handover TEXT
        )""",
        "CREATE UNIQUE INDEX shifts_one_open ON shifts (operator) WHERE ended_at IS NULL",
        "CREATE INDEX shifts_by_start ON shifts (started_at)",
        # The language each person reads the console in (`id` unless they chose `en`).
        """CREATE TABLE operator_preferences (
            operator   TEXT PRIMARY KEY,
            language   TEXT NOT NULL CHECK (language IN ('id', 'en')),
            updated_at TEXT NOT NULL
        )""",
        # Second escalation level: an escalated incident still unacknowledged after a further
        # configured time goes to the supervisor on duty (at most once).
        "ALTER TABLE incidents ADD COLUMN escalated2_at TEXT",
        """CREATE INDEX incidents_awaiting_second_escalation ON incidents (escalated_at)
           WHERE state = 'new' AND escalated_at IS NOT NULL AND escalated2_at IS NULL""",
        # Retention: when the personal details (notes, address, exact location) of a closed
        # incident were purged; its figures stay.
        "ALTER TABLE incidents ADD COLUMN purged_at TEXT",
        """CREATE INDEX incidents_awaiting_purge ON incidents (closed_at)
           WHERE closed_at IS NOT NULL AND purged_at IS NULL""",
    ),
)


# ---- PostgreSQL -------------------------------------------------------------------------------------

# Statements whose SQLite text uses SQLite's own functions, and what they are in PostgreSQL. PostgreSQL
# refuses an upsert that meets one key twice in a statement, so only the latest report per device is
# selected (DISTINCT ON) instead of leaving the choice to the WHERE.
_POSTGRESQL_EQUIVALENTS = {
    _BATTERY_FROM_FAULTS: """INSERT INTO device_battery (device_id, battery_mv, at, source)
           SELECT DISTINCT ON (device_id) device_id, (detail::jsonb ->> 'battery_mv')::bigint, at, event_id
           FROM device_faults
           WHERE jsonb_typeof(detail::jsonb -> 'battery_mv') = 'number'
             AND detail::jsonb ->> 'battery_mv' ~ '^-?[0-9]+$'
           ORDER BY device_id, at DESC
           ON CONFLICT (device_id) DO UPDATE SET battery_mv = excluded.battery_mv, at = excluded.at,
               source = excluded.source
           WHERE excluded.at >= device_battery.at""",
}

# SQLite type -> PostgreSQL type. Integers become BIGINT throughout (SQLite's INTEGER holds 64 bits,
# PostgreSQL's 32); REAL becomes DOUBLE PRECISION (PostgreSQL's REAL has 24 bits of mantissa: about
# 2 m at the equator as a latitude); an INTEGER PRIMARY KEY, with or without AUTOINCREMENT, becomes an
# identity column, whose sequence never hands out a number twice, as AUTOINCREMENT promises.
_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY(?: AUTOINCREMENT)?"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO\b")


def for_postgresql(statement: str) -> str:
    """A migration statement as PostgreSQL takes it."""
    if statement in _POSTGRESQL_EQUIVALENTS:
        return _POSTGRESQL_EQUIVALENTS[statement]
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    if _INSERT_OR_IGNORE.match(statement):
        statement = _INSERT_OR_IGNORE.sub("INSERT INTO", statement, count=1) + " ON CONFLICT DO NOTHING"
    return statement
