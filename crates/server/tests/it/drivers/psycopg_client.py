"""psycopg 3 against topicfusion's PostgreSQL protocol (run by tests/it/postgres.rs).

Usage: psycopg_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import sys
import threading
import time

import psycopg
from psycopg import errors

host, port = sys.argv[1].rsplit(":", 1)
root_password = sys.argv[2]


def connect(user, password, autocommit=True):
    return psycopg.connect(host=host, port=port, user=user, password=password, dbname="topicfusion",
                           autocommit=autocommit, connect_timeout=10)


# Wrong password: refused.
try:
    connect("u_service", "wrong")
    raise SystemExit("a wrong password logged in")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), e

root = connect("root", root_password)
root.execute("CREATE TABLE app.items (id BIGINT PRIMARY KEY, name TEXT, price DECIMAL(10, 2), weight DOUBLE, at TIMESTAMP)")
root.execute("CREATE TOPIC app.item_events")
root.execute("ALTER TOPIC app.item_events ADD SOURCE app.items ON INSERT")

# Server-side parameters of several types, in a driver transaction (BEGIN ... COMMIT).
import datetime, decimal
tx = connect("u_user", "pw", autocommit=False)
with tx.cursor() as cur:
    cur.execute("INSERT INTO app.items VALUES (%s, %s, %s, %s, %s)",
                (1, "it's a pen", decimal.Decimal("1.25"), 0.5, datetime.datetime(2026, 1, 2, 3, 4, 5)))
    assert cur.rowcount == 1, cur.rowcount
    cur.executemany("INSERT INTO app.items (id, name) VALUES (%s, %s)", [(2, "ink"), (3, "paper")])
tx.commit()
rows = root.execute("SELECT id, name, price, weight, at FROM app.items WHERE id = %s", (1,)).fetchall()
assert rows == [(1, "it's a pen", decimal.Decimal("1.25"), 0.5, datetime.datetime(2026, 1, 2, 3, 4, 5))], rows
assert root.execute("SELECT count(*) FROM app.items WHERE name LIKE %s", ("%p%",)).fetchone() == (2,)

# Constraint errors map to psycopg's exception classes by SQLSTATE.
try:
    root.execute("INSERT INTO app.items (id, name) VALUES (%s, %s)", (1, "dup"))
    raise SystemExit("a duplicate key was accepted")
except errors.UniqueViolation:
    pass
try:
    root.execute("SELECT * FROM app.nothing")
    raise SystemExit("an unknown table was accepted")
except errors.UndefinedTable:
    pass
user = connect("u_user", "pw")
try:
    user.execute("CONSUME FROM app.item_events GROUP 'g'")
    raise SystemExit("role user consumed")
except errors.InsufficientPrivilege:
    pass

# A long-polling CONSUME is woken by an INSERT from another connection; then ACK.
service = connect("u_service", "pw")
drained = service.execute("CONSUME FROM app.item_events GROUP 'g' FROM EARLIEST LIMIT 100").fetchall()
assert len(drained) == 3, drained
last = max(r[2] for r in drained)
service.execute(f"ACK app.item_events GROUP 'g' PARTITION 0 UPTO OFFSET {last}")


def insert_later():
    time.sleep(0.5)
    connect("u_user", "pw").execute("INSERT INTO app.items (id, name) VALUES (%s, %s)", (4, "late"))


threading.Thread(target=insert_later).start()
started = time.monotonic()
woken = service.execute("CONSUME FROM app.item_events GROUP 'g' LIMIT 10 WITH (timeout_ms = 20000)").fetchall()
assert time.monotonic() - started < 15, "not woken by the INSERT"
assert len(woken) == 1 and '"late"' in woken[0][7], woken
ack = service.execute(f"ACK app.item_events GROUP 'g' PARTITION 0 UPTO OFFSET {woken[0][2]}").fetchone()
assert f"up to offset {woken[0][2]}" in ack[0], ack

# An empty wait returns no rows at its timeout.
assert service.execute("CONSUME FROM app.item_events GROUP 'g' WITH (timeout_ms = 200)").fetchall() == []
print("psycopg: all checks passed")
