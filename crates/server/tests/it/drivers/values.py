"""The values every driver test writes and reads back: each column type of topicfusion, at
its edges, and the values PostgreSQL drivers got wrong before (floats one step off, numerics
beyond 28 digits, bytea as hex text)."""
import datetime
import decimal
import math

# CREATE TABLE for the values (one column per type).
TABLE = """CREATE TABLE {name} (
    id BIGINT PRIMARY KEY, si SMALLINT, i INT, bi BIGINT, r REAL, d DOUBLE, n DECIMAL(38, 10),
    n0 DECIMAL(38, 0), b BOOLEAN, t TEXT, dt DATE, ts TIMESTAMP, by BYTEA)"""
COLUMNS = ["id", "si", "i", "bi", "r", "d", "n", "n0", "b", "t", "dt", "ts", "by"]

ROWS = [
    (1, -32768, -2147483648, -9223372036854775808, 0.5, 123456789.12345679,
     decimal.Decimal("1234567890123456789012345678.0123456789"), decimal.Decimal(10**38 - 1), True,
     "it's \\ a \"text\"\nwith ünïcode ✓", datetime.date(2026, 1, 2),
     datetime.datetime(2026, 1, 2, 3, 4, 5, 123456), bytes(range(256))),
    (2, 32767, 2147483647, 9223372036854775807, -1.25, 1e39, decimal.Decimal("-0.0000000001"),
     decimal.Decimal(-(10**38 - 1)), False, "", datetime.date(1970, 1, 1),
     datetime.datetime(1970, 1, 1, 0, 0, 0), b""),
    (3, 0, 0, 0, 3.0, 6.02214076e23, decimal.Decimal("0E-10"), decimal.Decimal(0), True, "x",
     datetime.date(2000, 2, 29), datetime.datetime(2000, 2, 29, 23, 59, 59, 999999), b"\x00"),
    (4, None, None, None, None, 1.5e300, None, None, None, None, None, None, None),
    (5, 1, 1, 1, 1.0, 2.5e-300, decimal.Decimal("1E-10"), decimal.Decimal(1), False, "a", None, None, b"\\x00"),
    (6, None, None, None, float("inf"), float("nan"), None, None, None, None, None, None, None),
    (7, None, None, None, float("-inf"), float("-inf"), None, None, None, None, None, None, None),
]

# Doubles that must arrive as exactly these doubles (written as literals by the drivers that
# interpolate parameters into the SQL text, as parameters by the others).
EXACT_DOUBLES = [123456789.12345679, 1e39, 6.02214076e23, 1.5e300, 2.5e-300, 0.1, 1 / 3]


def same(a, b):
    """Equal, NaN included; a real compared at float4 precision."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    return a == b


def check_rows(got, label):
    """`got` (rows in id order, as the driver returns them) holds exactly ROWS."""
    assert len(got) == len(ROWS), f"{label}: {len(got)} rows: {got}"
    for want, row in zip(ROWS, got):
        row = tuple(row)
        for name, w, g in zip(COLUMNS, want, row):
            if name == "r" and isinstance(w, float) and isinstance(g, float) and not math.isnan(w):
                # float4: the value as a 4-byte float.
                import struct
                w = struct.unpack("f", struct.pack("f", w))[0]
            assert same(w, g), f"{label}: row {want[0]} column {name}: sent {w!r}, got {g!r}"
