"""SQLAlchemy 2 (psycopg2 dialect) against topicfusion's PostgreSQL protocol (run by
tests/it/postgres.rs): connecting (version(), SHOW ...), reflection (the catalog queries of
inspect() and autoload), Core and ORM inserts and queries, CONSUME and ACK of the messages an
ORM insert made, the pool's checkout and return.

Usage: sqlalchemy_client.py HOST:PORT ROOT_PASSWORD. Exits non-zero on the first failed check.
"""
import datetime
import decimal
import sys

import sqlalchemy as sa
from sqlalchemy import orm

host, port = sys.argv[1].rsplit(":", 1)
root_password = sys.argv[2]
engine = sa.create_engine(f"postgresql+psycopg2://root:{root_password}@{host}:{port}/topicfusion", pool_size=2)

with engine.connect() as c:
    assert engine.dialect.server_version_info[:1] == (15,), engine.dialect.server_version_info
    c.execute(sa.text(
        "CREATE TABLE app.products (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price DECIMAL(10, 2), "
        "weight DOUBLE, added TIMESTAMP)"))
    c.execute(sa.text("CREATE TABLE app.tags (product BIGINT, tag TEXT NOT NULL, PRIMARY KEY (product, tag))"))
    c.commit()

# Reflection: what inspect() and autoload read from pg_catalog.
insp = sa.inspect(engine)
assert "products" in insp.get_table_names(schema="app"), insp.get_table_names(schema="app")
columns = {c["name"]: c for c in insp.get_columns("products", schema="app")}
assert list(columns) == ["id", "name", "price", "weight", "added"], columns
assert isinstance(columns["id"]["type"], sa.BigInteger) and not columns["id"]["nullable"]
assert isinstance(columns["price"]["type"], sa.Numeric) and columns["price"]["type"].precision == 10
assert columns["price"]["type"].scale == 2 and columns["price"]["nullable"]
assert isinstance(columns["weight"]["type"], sa.Float)
assert isinstance(columns["added"]["type"], sa.DateTime)
assert insp.get_pk_constraint("products", schema="app")["constrained_columns"] == ["id"]
assert insp.get_pk_constraint("tags", schema="app")["constrained_columns"] == ["product", "tag"]
assert insp.get_foreign_keys("products", schema="app") == []
assert insp.get_indexes("products", schema="app") == []
meta = sa.MetaData()
products = sa.Table("products", meta, schema="app", autoload_with=engine)
assert [c.name for c in products.primary_key] == ["id"]

# Core: insert and select through the reflected table.
with engine.begin() as c:
    c.execute(products.insert(), [
        {"id": 1, "name": "pen", "price": decimal.Decimal("1.25"), "weight": 0.1, "added": datetime.datetime(2026, 1, 2)},
        {"id": 2, "name": "ink", "price": None, "weight": 1e39, "added": None},
    ])
with engine.connect() as c:
    rows = c.execute(sa.select(products).order_by(products.c.id)).all()
    assert rows == [(1, "pen", decimal.Decimal("1.25"), 0.1, datetime.datetime(2026, 1, 2)),
                    (2, "ink", None, 1e39, None)], rows


# ORM: a mapped class, a session, insert, query, update, delete.
class Base(orm.DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = {"schema": "app"}
    id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, primary_key=True)
    name: orm.Mapped[str]
    price: orm.Mapped[decimal.Decimal | None] = orm.mapped_column(sa.Numeric(10, 2))
    weight: orm.Mapped[float | None]
    added: orm.Mapped[datetime.datetime | None]


with orm.Session(engine) as session:
    session.add(Product(id=3, name="paper", price=decimal.Decimal("0.05"), weight=2.5e-300))
    session.commit()
    paper = session.scalars(sa.select(Product).where(Product.name == "paper")).one()
    assert (paper.id, paper.price, paper.weight) == (3, decimal.Decimal("0.05"), 2.5e-300)
    paper.price = decimal.Decimal("0.10")
    session.commit()
    assert session.scalars(sa.select(Product.price).where(Product.id == 3)).one() == decimal.Decimal("0.10")
    session.delete(session.get(Product, 1))
    session.commit()
    assert session.scalars(sa.select(sa.func.count()).select_from(Product)).one() == 2

# The topic flow: an ORM insert into a table feeding a topic becomes a message; CONSUME and ACK
# run as text statements and return rows like a query's.
with engine.begin() as c:
    c.execute(sa.text("CREATE TOPIC app.product_events"))
    c.execute(sa.text("ALTER TOPIC app.product_events ADD SOURCE app.products ON INSERT"))
with orm.Session(engine) as session:
    session.add(Product(id=10, name="stapler", price=decimal.Decimal("4.50")))
    session.commit()
with engine.connect() as c:
    consume = "CONSUME FROM app.product_events GROUP 'sqlalchemy' FROM EARLIEST LIMIT 10"
    messages = c.execute(sa.text(consume)).mappings().all()
    assert len(messages) == 1, messages
    assert (messages[0]["op"], messages[0]["source_table"]) == ("insert", "app.products"), messages
    assert '"name":"stapler"' in messages[0]["payload"], messages
    offset = messages[0]["offset"]
    acked = c.execute(sa.text(f"ACK app.product_events GROUP 'sqlalchemy' PARTITION 0 UPTO OFFSET {offset}")).scalar()
    assert f"up to offset {offset}" in acked, acked
    c.commit()
    again = "CONSUME FROM app.product_events GROUP 'sqlalchemy' WITH (timeout_ms = 100)"
    assert c.execute(sa.text(again)).all() == []

# The pool checks connections out and back in (its reset on return: a rollback).
for _ in range(5):
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT 1")).scalar() == 1
print("sqlalchemy: all checks passed")
