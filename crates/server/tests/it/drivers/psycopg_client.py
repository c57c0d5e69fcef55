"""psycopg 3 against topicfusion's PostgreSQL protocol (run by tests/it/postgres.rs).

Usage: psycopg_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import sys
import threading
import time

import psycopg
from psycopg import errors

from values import COLUMNS, ROWS, TABLE, check_rows

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

# Prepared statements (psycopg 3 prepares a query from its 5th run): a table dropped and created
# again with other column types is refused with SQLSTATE 0A000, not answered with rows the client
# decodes as the old types; DROP makes psycopg clear its cache with DEALLOCATE ALL, and the same
# query then works again.
root.execute("CREATE TABLE app.shape (id BIGINT PRIMARY KEY, v BIGINT)")
root.execute("INSERT INTO app.shape VALUES (1, 10)")
for _ in range(6):
    assert root.execute("SELECT v FROM app.shape WHERE id = %s", (1,)).fetchone() == (10,)
root.execute("DROP TABLE app.shape")
root.execute("CREATE TABLE app.shape (id BIGINT PRIMARY KEY, v TEXT)")
root.execute("INSERT INTO app.shape VALUES (1, 'ten')")
assert root.execute("SELECT v FROM app.shape WHERE id = %s", (1,)).fetchone() == ("ten",)
# Without the DDL in between (another connection changed the table), the stale plan is refused.
other = connect("root", root_password)
for _ in range(6):
    assert other.execute("SELECT v FROM app.shape WHERE id = %s", (1,)).fetchone() == ("ten",)
root.execute("DROP TABLE app.shape")
root.execute("CREATE TABLE app.shape (id BIGINT PRIMARY KEY, v DOUBLE)")
root.execute("INSERT INTO app.shape VALUES (1, 2.5)")
try:
    other.execute("SELECT v FROM app.shape WHERE id = %s", (1,)).fetchone()
    raise SystemExit("a prepared statement returned rows of a changed type")
except errors.FeatureNotSupported as e:
    assert "cached plan must not change result type" in str(e), e
other.execute("DEALLOCATE ALL")
assert other.execute("SELECT v FROM app.shape WHERE id = %s", (1,), prepare=False).fetchone() == (2.5,)

# Execute plans a prepared statement again with its values: a column that widens with them
# (int + a bound integer) is sent as described, in text and binary; a bare parameter too.
root.execute("CREATE TABLE app.ints (id BIGINT PRIMARY KEY, v INT)")
root.execute("INSERT INTO app.ints VALUES (1, 41)")
binary = root.cursor(binary=True)
for _ in range(7):
    assert root.execute("SELECT v + %s FROM app.ints WHERE id = %s", (1, 1)).fetchone() == (42,)
    assert binary.execute("SELECT v + %s FROM app.ints WHERE id = %s", (1, 1)).fetchone() == (42,)
    assert root.execute("SELECT %s", ("bare",)).fetchone() == ("bare",)
    # (A bare parameter in the select list is described as text unless cast, see postgres.md.)
    assert root.execute("SELECT %s AS n", (7,)).fetchone() == ("7",)
    assert root.execute("SELECT %s::int AS n", (7,)).fetchone() == (7,)

# DEALLOCATE of one of psycopg's statements by name (sent with the extended protocol, as
# psycopg sends everything): dropped, then unknown.
dealloc = connect("root", root_password)
for _ in range(6):
    dealloc.execute("SELECT count(*) FROM app.items WHERE id > %s", (0,))
dealloc.execute("DEALLOCATE _pg3_0")
try:
    dealloc.execute("DEALLOCATE _pg3_0")
    raise SystemExit("a deallocated statement was deallocated again")
except errors.InvalidSqlStatementName:
    pass
dealloc.close()

# Nested transactions are savepoints: accepted (every statement still commits on its own).
nested = connect("u_user", "pw", autocommit=False)
with nested.transaction():
    nested.execute("INSERT INTO app.items (id, name) VALUES (%s, %s)", (20, "outer"))
    with nested.transaction():
        nested.execute("INSERT INTO app.items (id, name) VALUES (%s, %s)", (21, "inner"))
nested.commit()
assert root.execute("SELECT count(*) FROM app.items WHERE id IN (20, 21)").fetchone() == (2,)

# Binary COPY: a query of no rows reads as no rows; decimals with more places than the column
# round as in PostgreSQL.
with root.cursor() as cur:
    with cur.copy("COPY (SELECT id FROM app.items WHERE id < 0) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int8"])
        assert list(copy.rows()) == []
    with cur.copy("COPY app.items (id, price) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "numeric"])
        copy.write_row((30, decimal.Decimal("1.255")))
        copy.write_row((31, decimal.Decimal("-1.254")))
prices = root.execute("SELECT id, price FROM app.items WHERE id IN (30, 31) ORDER BY id").fetchall()
assert prices == [(30, decimal.Decimal("1.26")), (31, decimal.Decimal("-1.25"))], prices

# Binary COPY out of every type (psycopg decodes each field by the type named here).
root.execute(TABLE.format(name="app.vals"))
with root.cursor() as cur:
    cur.executemany(f"INSERT INTO app.vals VALUES ({', '.join(['%s'] * len(COLUMNS))})", ROWS)
    with cur.copy(f"COPY (SELECT {', '.join(COLUMNS)} FROM app.vals ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "int2", "int4", "int8", "float4", "float8", "numeric", "numeric", "bool", "text",
                        "date", "timestamp", "bytea"])
        check_rows(list(copy.rows()), "psycopg binary COPY TO STDOUT")

# A live query through a server-side cursor: psycopg 3 declares it, describes it as a portal,
# then fetches with FETCH FORWARD n in the extended protocol; FETCH returns the rows that are
# ready once the first one is.
watcher = connect("u_user", "pw", autocommit=False)
with watcher.cursor("live_items") as live:
    live.execute("SUBSCRIBE SELECT id, name FROM app.items WHERE id = %s", (2,))
    assert [d.name for d in live.description] == ["op", "position", "id", "name"], live.description
    snapshot = live.fetchmany(50)
    assert [(r[0], r[2], r[3]) for r in snapshot] == [("snapshot", 2, "ink")], snapshot
    root.execute("UPDATE app.items SET name = 'blue ink' WHERE id IN (2, 3)")
    changed = live.fetchmany(50)
    assert [(r[0], r[2], r[3]) for r in changed] == [("update", 2, "blue ink")], changed
    # Waiting with nothing to come: a cancel request ends the FETCH.
    threading.Timer(0.3, watcher.cancel).start()
    try:
        live.fetchone()
        raise SystemExit("a FETCH with no change returned")
    except errors.QueryCanceled:
        pass
watcher.rollback()

print("psycopg: all checks passed")
