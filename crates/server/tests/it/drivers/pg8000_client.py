"""pg8000 against topicfusion's PostgreSQL protocol (run by tests/it/postgres.rs): the extended
protocol with text parameters (Decimals as str(), exponent forms like 1E-10), COPY through
`stream=` both ways, and the topic flow.

Usage: pg8000_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import decimal
import io
import sys

import pg8000.dbapi
import pg8000.native

from values import COLUMNS, EXACT_DOUBLES, ROWS, TABLE, check_rows

host, port = sys.argv[1].rsplit(":", 1)
root_password = sys.argv[2]


def connect(user, password):
    return pg8000.native.Connection(user=user, password=password, host=host, port=int(port), database="topicfusion")


try:
    connect("u_service", "wrong")
    raise SystemExit("a wrong password logged in")
except pg8000.native.InterfaceError as e:
    assert "password authentication failed" in str(e), e
except pg8000.native.DatabaseError as e:
    assert "password authentication failed" in str(e), e

root = connect("root", root_password)
assert root.run("SELECT version()")[0][0].startswith("PostgreSQL 15.0 (topicfusion ")
root.run(TABLE.format(name="app.vals"))
names = ", ".join(f":{c}" for c in COLUMNS)
for row in ROWS:
    root.run(f"INSERT INTO app.vals VALUES ({names})", **dict(zip(COLUMNS, row)))
check_rows(root.run(f"SELECT {', '.join(COLUMNS)} FROM app.vals ORDER BY id"), "pg8000")
for v in EXACT_DOUBLES:
    assert root.run("SELECT CAST(:v AS DOUBLE PRECISION)", v=v)[0][0] == v, v
# Decimals in exponent form (str(Decimal) of small values) are numerics like any other.
root.run("CREATE TABLE app.small (id INT PRIMARY KEY, n DECIMAL(30, 12))")
root.run("INSERT INTO app.small VALUES (1, :n), (2, :m)", n=decimal.Decimal("1E-10"), m=decimal.Decimal("-2.5E+3"))
assert root.run("SELECT n FROM app.small ORDER BY id") == [[decimal.Decimal("1E-10")], [decimal.Decimal("-2500")]]

# COPY through streams, both ways (the extended protocol's copy).
root.run("CREATE TABLE app.copied (id BIGINT PRIMARY KEY, t TEXT)")
root.run("COPY app.copied FROM STDIN WITH (FORMAT csv)", stream=io.BytesIO(b"1,one\n2,\n3,\"\"\n"))
out = io.BytesIO()
root.run("COPY (SELECT id, t FROM app.copied ORDER BY id) TO STDOUT WITH (FORMAT csv)", stream=out)
assert out.getvalue() == b'1,one\n2,\n3,""\n', out.getvalue()

# The topic flow.
user = connect("u_user", "pw")
user.run("INSERT INTO app.t VALUES (:id, :v)", id=300, v="from pg8000")
service = connect("u_service", "pw")
messages = service.run("CONSUME FROM app.ev GROUP 'pg8000' FROM EARLIEST LIMIT 10")
assert len(messages) == 1 and '"from pg8000"' in messages[0][7], messages
ack = service.run(f"ACK app.ev GROUP 'pg8000' PARTITION 0 UPTO OFFSET {messages[0][2]}")
assert f"up to offset {messages[0][2]}" in ack[0][0], ack
for c in (root, user, service):
    c.close()
print("pg8000: all checks passed")
