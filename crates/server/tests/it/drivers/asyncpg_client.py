"""asyncpg against topicfusion's PostgreSQL protocol (run by tests/it/postgres.rs): the binary
protocol both ways for every type, arrays (asyncpg's type introspection), COPY in binary
(copy_records_to_table) and csv out, portal cursors with forward(), a connection pool's
release (its reset statements), and the topic flow.

Usage: asyncpg_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import asyncio
import datetime
import decimal
import io
import sys

import asyncpg

from values import COLUMNS, EXACT_DOUBLES, ROWS, TABLE, check_rows

host, port = sys.argv[1].rsplit(":", 1)
root_password = sys.argv[2]
DSN = dict(host=host, port=int(port), database="topicfusion")


async def main():
    try:
        await asyncpg.connect(user="u_service", password="wrong", **DSN)
        raise SystemExit("a wrong password logged in")
    except asyncpg.InvalidPasswordError as e:
        assert "password authentication failed" in str(e), e

    root = await asyncpg.connect(user="root", password=root_password, **DSN)
    assert (await root.fetchval("SELECT version()")).startswith("PostgreSQL 15.0 (topicfusion ")

    # Every type both ways, in binary: parameters and results.
    await root.execute(TABLE.format(name="app.vals"))
    placeholders = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
    await root.executemany(f"INSERT INTO app.vals VALUES ({placeholders})", ROWS)
    check_rows(await root.fetch(f"SELECT {', '.join(COLUMNS)} FROM app.vals ORDER BY id"), "asyncpg binary")
    for v in EXACT_DOUBLES:
        assert await root.fetchval("SELECT $1::double precision", v) == v, v
    # Numerics beyond rust_decimal's 28 digits reach the client (this used to loop forever).
    assert await root.fetchval("SELECT 1e30") == 10**30
    assert await root.fetchval("SELECT n0 FROM app.vals WHERE id = 1") == 10**38 - 1
    # DECIMAL beyond 38 digits (Decimal256) reaches the client whole, in binary.
    wide = "12345678901234567890123456789012345678901234.56"
    row = await root.fetchrow(f"SELECT CAST('{wide}' AS DECIMAL(50, 2)) AS a, CAST(-1.5 AS DECIMAL(60, 10)) AS b")
    assert (row["a"], row["b"]) == (decimal.Decimal(wide), decimal.Decimal("-1.5")), row
    # A parameter typed only by its cast is described with the cast's type.
    stmt = await root.prepare("SELECT $1::bigint AS x")
    assert [t.name for t in stmt.get_parameters()] == ["int8"], stmt.get_parameters()
    assert await stmt.fetchval(5) == 5

    # date.min/max and datetime.min/max go over the wire as -infinity/infinity: refused clearly
    # (no DATE or TIMESTAMP here is infinite); the values next to them are ordinary, both ways.
    await root.execute("CREATE TABLE app.edges (id BIGINT PRIMARY KEY, dt DATE, ts TIMESTAMP)")
    for v in (datetime.date.min, datetime.date.max, datetime.datetime.min, datetime.datetime.max):
        row = (1, None, v) if isinstance(v, datetime.datetime) else (1, v, None)
        try:
            await root.execute("INSERT INTO app.edges VALUES ($1, $2, $3)", *row)
            raise SystemExit(f"{v!r} was accepted")
        except asyncpg.DatetimeFieldOverflowError as e:
            assert "infinity is not supported" in str(e), e
    edges = [(1, datetime.date(1, 1, 2), datetime.datetime(1, 1, 1, 0, 0, 1)),
             (2, datetime.date(9999, 12, 30), datetime.datetime(9999, 12, 31, 23, 59, 58, 999999))]
    await root.executemany("INSERT INTO app.edges VALUES ($1, $2, $3)", edges)
    assert [tuple(r) for r in await root.fetch("SELECT * FROM app.edges ORDER BY id")] == edges
    assert await root.fetchval("SELECT $1::date", datetime.date(1, 1, 2)) == datetime.date(1, 1, 2)

    # Arrays: results (asyncpg introspects their types) and parameters.
    assert await root.fetchval("SELECT array_agg(id ORDER BY id) FROM app.vals WHERE id <= 3") == [1, 2, 3]
    assert await root.fetchval("SELECT array_agg(t ORDER BY id) FROM app.vals WHERE id IN (2, 3)") == ["", "x"]
    assert await root.fetchval("SELECT array_agg(d ORDER BY id) FROM app.vals WHERE id IN (2, 3)") == [1e39, 6.02214076e23]
    rows = await root.fetch("SELECT id FROM app.vals WHERE id = ANY($1::bigint[]) ORDER BY id", [2, 3, 99])
    assert [r["id"] for r in rows] == [2, 3], rows
    assert await root.fetchval("SELECT $1::text[]", ["a", "b,c", None]) == ["a", "b,c", None]

    # COPY: records in binary, a query out as csv.
    await root.execute("CREATE TABLE app.copied (id BIGINT PRIMARY KEY, d DOUBLE, t TEXT, by BYTEA)")
    status = await root.copy_records_to_table(
        "copied", schema_name="app", records=[(1, 1.5e300, "a\tb", b"\x00\xff"), (2, None, None, None)])
    assert status == "COPY 2", status
    out = io.BytesIO()
    status = await root.copy_from_query("SELECT id, d, t FROM app.copied ORDER BY id", output=out, format="csv", header=True)
    assert status == "COPY 2", status
    assert out.getvalue() == b'id,d,t\n1,1.5e+300,a\tb\n2,,\n', out.getvalue()
    assert await root.fetchval("SELECT by FROM app.copied WHERE id = 1") == b"\x00\xff"

    # Cursors (portals): fetch, forward (MOVE), fetch again, inside a transaction.
    async with root.transaction():
        cur = await root.cursor("SELECT id FROM app.vals ORDER BY id")
        assert [r["id"] for r in await cur.fetch(2)] == [1, 2]
        await cur.forward(2)
        assert [r["id"] for r in await cur.fetch(10)] == [5, 6, 7]
    async with root.transaction():
        ids = [r["id"] async for r in root.cursor("SELECT id FROM app.vals ORDER BY id", prefetch=3)]
        assert ids == [1, 2, 3, 4, 5, 6, 7], ids

    # A pool: release resets the connection (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    # RESET ALL); a setting made on one acquisition is gone on the next.
    pool = await asyncpg.create_pool(user="u_user", password="pw", min_size=1, max_size=1, **DSN)
    async with pool.acquire() as c:
        await c.execute("SET application_name = 'leased'")
        assert await c.fetchval("SHOW application_name") == "leased"
    async with pool.acquire() as c:
        assert await c.fetchval("SHOW application_name") == "", "RESET ALL did not reset the session"
        await c.execute("INSERT INTO app.t VALUES ($1, $2)", 100, "from the pool")
    await pool.close()

    # The topic flow: CONSUME, then ACK, as role service.
    service = await asyncpg.connect(user="u_service", password="pw", **DSN)
    messages = await service.fetch("CONSUME FROM app.ev GROUP 'asyncpg' FROM EARLIEST LIMIT 10")
    assert len(messages) == 1 and '"from the pool"' in messages[0]["payload"], messages
    offset = messages[0]["offset"]
    ack = await service.fetchval(f"ACK app.ev GROUP 'asyncpg' PARTITION 0 UPTO OFFSET {offset}")
    assert f"up to offset {offset}" in ack, ack
    assert await service.fetch("CONSUME FROM app.ev GROUP 'asyncpg' WITH (timeout_ms = 100)") == []
    for c in (root, service):
        await c.close()
    print("asyncpg: all checks passed")


asyncio.run(main())
