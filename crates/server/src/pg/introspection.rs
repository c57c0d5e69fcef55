//! asyncpg's type introspection, answered directly. asyncpg decodes only text[] and oid[] among
//! arrays without help: for any other result or parameter type it does not know (`int8[]` from
//! `array_agg`, say) it runs a recursive query over `pg_type` (`typeinfo_tree`, with correlated
//! subqueries DataFusion does not plan) and needs its columns in exactly PostgreSQL's types
//! (`"char"` kinds, `oid[]` attribute lists), or it introspects those columns in turn, forever.
//!
//! The query is recognized by its text at Parse; its answer is computed from `pg_catalog`:
//! the requested types and, for arrays, their element types, as the recursive query would.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_pg::datatypes::{PG_CHAR_KEY, PG_OID_ALIAS_KEY};
use datafusion::arrow::array::{ArrayRef, Int32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use topicfusion_engine::{Database, Principal, Session};

/// Whether `sql` is asyncpg's type introspection query.
pub fn is_asyncpg_type_query(sql: &str) -> bool {
    sql.contains("typeinfo_tree") && sql.contains("$1::oid[]") && sql.contains("WITH RECURSIVE")
}

/// The metadata key that marks an Int32 list column as `oid[]` on the wire.
pub const PG_OID_ARRAY_KEY: &str = "topicfusion.oid_array";

fn oid_field(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
        .with_metadata(HashMap::from([(PG_OID_ALIAS_KEY.to_owned(), "oid".to_owned())]))
}

fn char_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(PG_CHAR_KEY.to_owned(), "true".to_owned())]))
}

/// The columns of asyncpg's query, in PostgreSQL's types.
pub fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        oid_field("oid"),
        text("ns"),
        text("name"),
        char_field("kind"),
        oid_field("basetype"),
        oid_field("elemtype"),
        char_field("elemdelim"),
        oid_field("range_subtype"),
        Field::new("attrtypoids", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))), true)
            .with_metadata(HashMap::from([(PG_OID_ARRAY_KEY.to_owned(), "true".to_owned())])),
        Field::new("attrnames", DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))), true),
        Field::new("depth", DataType::Int32, true),
        text("basetype_name"),
        text("elemtype_name"),
        text("range_subtype_name"),
    ]))
}

fn failed(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "XX000".into(), message)))
}

/// The oids of asyncpg's `$1::oid[]` parameter (binary or text array).
pub fn oids(raw: Option<&[u8]>, binary: bool) -> PgWireResult<Vec<i64>> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let bad = || failed("asyncpg's type introspection: a malformed oid[] parameter".into());
    if !binary {
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
        return inner
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().map_err(|_| bad()))
            .collect();
    }
    let int = |at: usize| raw.get(at..at + 4).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
    let ndim = int(0).ok_or_else(bad)?;
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if ndim != 1 {
        return Err(bad());
    }
    let len = int(12).ok_or_else(bad)?;
    let mut at = 20;
    // Every element takes at least its 4-byte length: a claimed count beyond what the
    // message holds fails below, and never sizes an allocation.
    let mut out = Vec::with_capacity((len.max(0) as usize).min(raw.len() / 4));
    for _ in 0..len {
        let n = int(at).ok_or_else(bad)?;
        at += 4;
        if n == 4 {
            out.push(u32::from_be_bytes(raw.get(at..at + 4).ok_or_else(bad)?.try_into().expect("4 bytes")) as i64);
            at += 4;
        } else if n >= 0 {
            return Err(bad());
        }
    }
    Ok(out)
}

/// One row of `pg_type`.
struct TypeRow {
    oid: i64,
    ns: String,
    name: String,
    kind: String,
    elem: i64,
    delim: String,
}

async fn type_rows(
    db: &Database,
    session: &mut Session,
    principal: &Principal,
    oids: &[i64],
) -> PgWireResult<Vec<TypeRow>> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let list = oids.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT CAST(t.oid AS BIGINT), n.nspname, t.typname, t.typtype, CAST(t.typelem AS BIGINT), t.typdelim \
         FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid IN ({list})"
    );
    let results = db.execute_in(session, principal, &sql).await.map_err(|e| failed(e.message()))?;
    let mut rows = Vec::new();
    for batch in results.last().map(|r| r.batches.as_slice()).unwrap_or_default() {
        let c = |i: usize| datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let cols = (0..6).map(c).collect::<Result<Vec<_>, _>>().map_err(|e| failed(e.to_string()))?;
        let text = |col: &ArrayRef, row: usize| -> String {
            let a = col.as_any().downcast_ref::<StringArray>().expect("cast to text");
            if datafusion::arrow::array::Array::is_null(a, row) { String::new() } else { a.value(row).to_owned() }
        };
        for row in 0..batch.num_rows() {
            rows.push(TypeRow {
                oid: text(&cols[0], row).parse().unwrap_or(0),
                ns: text(&cols[1], row),
                name: text(&cols[2], row),
                kind: text(&cols[3], row),
                elem: text(&cols[4], row).parse().unwrap_or(0),
                delim: text(&cols[5], row),
            });
        }
    }
    Ok(rows)
}

/// The answer to asyncpg's query for `oids`: each type at depth 0, the element types of arrays
/// at depth 1, deepest first.
pub async fn answer(
    db: &Database,
    session: &mut Session,
    principal: &Principal,
    oids: &[i64],
) -> PgWireResult<RecordBatch> {
    let top = type_rows(db, session, principal, oids).await?;
    let elems: Vec<i64> = top.iter().map(|t| t.elem).filter(|e| *e != 0).collect();
    let elem_rows = type_rows(db, session, principal, &elems).await?;
    let names: HashMap<i64, String> = top.iter().chain(&elem_rows).map(|t| (t.oid, t.name.clone())).collect();
    let rows: Vec<(&TypeRow, i32)> = elem_rows.iter().map(|t| (t, 1)).chain(top.iter().map(|t| (t, 0))).collect();
    let oid_col = |f: &dyn Fn(&TypeRow) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(|(t, _)| f(t).map(|v| v as i32)).collect::<Int32Array>())
    };
    let text_col = |f: &dyn Fn(&TypeRow) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|(t, _)| f(t)).collect::<StringArray>())
    };
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        oid_col(&|t| Some(t.oid)),
        text_col(&|t| Some(t.ns.clone())),
        text_col(&|t| Some(t.name.clone())),
        text_col(&|t| Some(t.kind.clone())),
        oid_col(&|_| None),
        oid_col(&|t| Some(t.elem)),
        text_col(&|t| Some(t.delim.clone())),
        oid_col(&|_| None),
        Arc::new(ListArray::new_null(Arc::new(Field::new_list_field(DataType::Int32, true)), n)),
        Arc::new(ListArray::new_null(Arc::new(Field::new_list_field(DataType::Utf8, true)), n)),
        Arc::new(rows.iter().map(|(_, d)| Some(*d)).collect::<Int32Array>()),
        text_col(&|_| None),
        text_col(&|t| if t.elem == 0 { None } else { names.get(&t.elem).cloned() }),
        text_col(&|_| None),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| failed(e.to_string()))
}
