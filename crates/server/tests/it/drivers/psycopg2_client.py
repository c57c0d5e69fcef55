"""psycopg2 against topicfusion's PostgreSQL protocol (run by tests/it/postgres.rs): parameters
interpolated into the SQL text (psycopg2's way: floats as repr, bytes as '\\x..'::bytea, NaN as
'NaN'::float), results in text, COPY with copy_expert/copy_from/copy_to, named (server-side)
cursors, a pool, and the topic flow.

Usage: psycopg2_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import io
import sys

import psycopg2
import psycopg2.errors
import psycopg2.pool

from values import COLUMNS, EXACT_DOUBLES, ROWS, TABLE, check_rows

host, port = sys.argv[1].rsplit(":", 1)
root_password = sys.argv[2]


def connect(user, password):
    return psycopg2.connect(host=host, port=port, user=user, password=password, dbname="topicfusion", connect_timeout=10)


try:
    connect("u_service", "wrong")
    raise SystemExit("a wrong password logged in")
except psycopg2.OperationalError as e:
    assert "password authentication failed" in str(e), e

root = connect("root", root_password)
cur = root.cursor()
cur.execute("SELECT version()")
assert cur.fetchone()[0].startswith("PostgreSQL 15.0 (topicfusion ")

# Every type both ways: literals in the text, results in text; in a driver transaction.
cur.execute(TABLE.format(name="app.vals"))
cur.executemany(f"INSERT INTO app.vals VALUES ({', '.join(['%s'] * len(COLUMNS))})", ROWS)
root.commit()
cur.execute(f"SELECT {', '.join(COLUMNS)} FROM app.vals ORDER BY id")
check_rows(cur.fetchall(), "psycopg2 text")
# Floats written as Python's repr are stored as exactly that double, in a table and in a query.
cur.execute("CREATE TABLE app.doubles (id INT PRIMARY KEY, d DOUBLE)")
for i, v in enumerate(EXACT_DOUBLES):
    cur.execute("INSERT INTO app.doubles VALUES (%s, %s)", (i, v))
    cur.execute("SELECT %s::float8, %s = d FROM app.doubles WHERE id = %s", (v, v, i))
    assert cur.fetchone() == (v, True), v
# A mixed VALUES list: decimals with 'NaN'::float unify as double.
cur.execute("CREATE TABLE app.mixed AS VALUES ('a', %s, %s), ('b', %s, %s)", (1.25, 2.5, 2.0, float("nan")))
cur.execute("SELECT column2, column3 FROM app.mixed ORDER BY column1")
got = cur.fetchall()
assert got[0] == (1.25, 2.5) and got[1][0] == 2.0 and got[1][1] != got[1][1], got
cur.execute("SELECT 1e30, n0 FROM app.vals WHERE id = 2")
assert cur.fetchone() == (10**30, -(10**38 - 1))
root.commit()

# COPY in and out: csv with a header, psycopg2's text format, a query out.
cur.execute("CREATE TABLE copied (id BIGINT PRIMARY KEY, t TEXT, d DOUBLE, by BYTEA)")
cur.copy_expert("COPY copied FROM STDIN WITH CSV HEADER",
                io.StringIO('id,t,d,by\n1,"a,""b""",1.5,\\x00ff\n2,,,\n3,"",2e300,\\x\n'))
assert cur.rowcount == 3, cur.rowcount
cur.copy_from(io.StringIO("4\tt\\tab\\\\\t0.5\t\\\\x01\n5\t\\N\t\\N\t\\N\n"), "copied", columns=("id", "t", "d", "by"))
root.commit()
cur.execute("SELECT id, t, d, by FROM copied ORDER BY id")
got = [(r[0], r[1], r[2], None if r[3] is None else bytes(r[3])) for r in cur.fetchall()]
assert got == [(1, 'a,"b"', 1.5, b"\x00\xff"), (2, None, None, None), (3, "", 2e300, b""),
               (4, "t\tab\\", 0.5, b"\x01"), (5, None, None, None)], got
out = io.StringIO()
cur.copy_expert("COPY (SELECT id, t FROM copied ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)", out)
assert out.getvalue() == 'id,t\n1,"a,""b"""\n2,\n3,""\n4,t\tab\\\n5,\n', repr(out.getvalue())
out = io.StringIO()
cur.copy_to(out, "copied", columns=("id", "t"))
assert out.getvalue() == '1\ta,"b"\n2\t\\N\n3\t\n4\tt\\tab\\\\\n5\t\\N\n', repr(out.getvalue())
# A COPY row that does not fit fails the COPY with a clear error; the connection goes on.
try:
    cur.copy_expert("COPY copied (id, d) FROM STDIN WITH CSV", io.StringIO("9,not a number\n"))
    raise SystemExit("a bad COPY row was accepted")
except psycopg2.DataError as e:
    assert "column d" in str(e), e
root.rollback()

# A named (server-side) cursor: DECLARE ... FETCH FORWARD n ... CLOSE, in the transaction.
named = root.cursor("big_scan")
named.itersize = 2
named.execute("SELECT id FROM app.vals ORDER BY id")
assert [r[0] for r in named] == [1, 2, 3, 4, 5, 6, 7]
named.close()
root.commit()

# A pool hands connections out and takes them back.
pool = psycopg2.pool.SimpleConnectionPool(1, 2, host=host, port=port, user="u_user", password="pw", dbname="x")
c = pool.getconn()
with c.cursor() as pc:
    pc.execute("INSERT INTO app.t VALUES (%s, %s)", (200, "from psycopg2"))
c.commit()
pool.putconn(c)
c = pool.getconn()
c.autocommit = True  # as pgbouncer resets a server connection: outside a transaction block
with c.cursor() as pc:
    pc.execute("DISCARD ALL")
c.autocommit = False
pool.putconn(c)
pool.closeall()
# COPY FROM STDIN feeds the topic like any INSERT: one message per row, in the same commit.
cur.copy_expert("COPY app.t FROM STDIN WITH CSV", io.StringIO('201,from copy\n202,"second, copied"\n'))
root.commit()

# The topic flow as role service, and role user refused with its SQLSTATE.
service = connect("u_service", "pw")
service.autocommit = True
sc = service.cursor()
sc.execute("CONSUME FROM app.ev GROUP 'psycopg2' FROM EARLIEST LIMIT 10")
messages = sc.fetchall()
assert len(messages) == 3 and '"from psycopg2"' in messages[0][7], messages
assert '"from copy"' in messages[1][7] and '"second, copied"' in messages[2][7], messages
assert [m[2] for m in messages] == [messages[0][2], messages[0][2] + 1, messages[0][2] + 2], messages
sc.execute(f"ACK app.ev GROUP 'psycopg2' PARTITION 0 UPTO OFFSET {messages[2][2]}")
assert f"up to offset {messages[2][2]}" in sc.fetchone()[0]
user = connect("u_user", "pw")
try:
    user.cursor().execute("CONSUME FROM app.ev GROUP 'g'")
    raise SystemExit("role user consumed")
except psycopg2.errors.InsufficientPrivilege:
    pass

# A live query read through a named cursor (DECLARE ... CURSOR FOR SUBSCRIBE, then FETCH FORWARD
# n): a FETCH waits for the first row, then returns what is ready, so a fetch returns the
# snapshot, then each commit's rows as it happens.
root.autocommit = True
cur.execute("INSERT INTO app.t VALUES (300, 'before')")
watcher = connect("u_user", "pw")
live = watcher.cursor("live_t")
live.execute("SUBSCRIBE SELECT id, v FROM app.t WHERE id >= 300")
snapshot = live.fetchmany(100)
assert [(r[0], r[2], r[3]) for r in snapshot] == [("snapshot", 300, "before")], snapshot
cur.execute("INSERT INTO app.t VALUES (301, 'a'), (302, 'b'), (3, 'not matching')")
inserted = live.fetchmany(100)
assert [(r[0], r[2], r[3]) for r in inserted] == [("insert", 301, "a"), ("insert", 302, "b")], inserted
assert inserted[0][1] == inserted[1][1] > snapshot[0][1], (snapshot, inserted)
cur.execute("UPDATE app.t SET v = 'c' WHERE id = 301")
updated = live.fetchone()
assert (updated[0], updated[2], updated[3]) == ("update", 301, "c"), updated
# A FETCH waiting for a change ends at a cancel request (psycopg2's cancel(), as Ctrl-C).
import threading
threading.Timer(0.3, watcher.cancel).start()
try:
    live.fetchone()
    raise SystemExit("a FETCH with no change returned")
except psycopg2.errors.QueryCanceled:
    pass
watcher.rollback()
# The transaction ended: so did its cursor and the subscription.
import time
for _ in range(100):
    cur.execute("SELECT count(*) FROM system.live_queries")
    if cur.fetchone()[0] == 0:
        break
    time.sleep(0.05)
else:
    raise SystemExit("the subscription outlived its cursor")
# Outside a transaction block a cursor needs WITH HOLD, as in PostgreSQL.
watcher.autocommit = True
try:
    watcher.cursor().execute("DECLARE c CURSOR FOR SUBSCRIBE SELECT id FROM app.t")
    raise SystemExit("DECLARE outside a transaction block was accepted")
except psycopg2.errors.NoActiveSqlTransaction:
    pass
print("psycopg2: all checks passed")
