//! Property tests of the parser: every topic and user statement round-trips through `Display`
//! and the parser, and no input (random token sequences, mutations of valid statements) makes
//! `parse_sql` panic. Case counts are set per property (see the note in `PROPTEST_CASES`).

use proptest::prelude::*;

use crate::parser::{Statement, parse_sql};

/// Cases per property; the sum is reported in the issue notes.
const CASES: u32 = 2000;

fn ident() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,8}".prop_filter("not a keyword", |s| {
            datafusion_sql::sqlparser::keywords::ALL_KEYWORDS.binary_search(&s.to_ascii_uppercase().as_str()).is_err()
        }),
        "[A-Za-z .'\"-]{1,8}".prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
    ]
}

fn name() -> impl Strategy<Value = String> {
    (proptest::option::of(ident()), ident()).prop_map(|(s, n)| match s {
        Some(s) => format!("{s}.{n}"),
        None => n,
    })
}

fn string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ']{1,12}".prop_map(|s| format!("'{}'", s.replace('\'', "''")))
}

fn start() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("EARLIEST".to_owned()),
        Just("LATEST".to_owned()),
        any::<u64>().prop_map(|n| format!("OFFSET {n}")),
        Just("TIMESTAMP '2026-01-01T00:00:00Z'".to_owned()),
    ]
}

/// Identifiers inside expressions: no quote character inside quotes (some such names are
/// refused, see `parse_row_expr`).
fn expr_ident() -> impl Strategy<Value = String> {
    ident().prop_filter("no quote inside", |s| !(s.starts_with('"') && s[1..s.len() - 1].contains('"')))
}

/// String literals inside expressions: no consecutive quotes inside (refused, see
/// `parse_row_expr`).
fn expr_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ']{1,12}"
        .prop_filter("no consecutive quotes", |s| !s.contains("''"))
        .prop_map(|s| format!("'{}'", s.replace('\'', "''")))
}

fn expr() -> impl Strategy<Value = String> {
    let leaf =
        prop_oneof![expr_ident(), any::<i32>().prop_map(|n| n.to_string()), expr_string(), Just("NULL".to_owned()),];
    leaf.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop_oneof![Just("="), Just("<"), Just(">="), Just("+"), Just("AND"), Just("OR")],
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.prop_map(|a| format!("{a} IS NULL")),
        ]
    })
}

/// Valid topic and user statements, in any letter case the grammar allows.
fn statement() -> impl Strategy<Value = String> {
    let topic_option = prop_oneof![
        proptest::option::of(1..=crate::MAX_RETENTION_SECONDS)
            .prop_map(|v| format!("retention_seconds = {}", v.map_or("NULL".into(), |v| v.to_string()))),
        proptest::option::of(1..=crate::MAX_RETENTION_BYTES)
            .prop_map(|v| format!("retention_max_bytes = {}", v.map_or("NULL".into(), |v| v.to_string()))),
        string().prop_map(|s| format!("alias = {s}")),
    ];
    let op = prop_oneof![Just("INSERT"), Just("UPDATE"), Just("DELETE")];
    prop_oneof![
        (any::<bool>(), name(), proptest::option::of(1..1000u64), proptest::option::of(topic_option)).prop_map(
            |(ine, n, p, o)| {
                let mut s = format!("CREATE TOPIC {}{n}", if ine { "IF NOT EXISTS " } else { "" });
                if let Some(p) = p {
                    s += &format!(" PARTITIONS {p}");
                }
                if let Some(o) = o {
                    s += &format!(" WITH ({o})");
                }
                s
            }
        ),
        (any::<bool>(), name()).prop_map(|(ie, n)| format!("DROP TOPIC {}{n}", if ie { "IF EXISTS " } else { "" })),
        name().prop_map(|n| format!("CLEAR TOPIC {n}")),
        (
            name(),
            name(),
            op.clone(),
            proptest::option::of(expr()),
            proptest::option::of(expr()),
            proptest::option::of(prop_oneof![Just("key"), Just("full"), Just("diff")])
        )
            .prop_map(|(t, table, op, w, p, payload)| {
                let mut s = format!("ALTER TOPIC {t} ADD SOURCE {table} ON {op}");
                if let Some(w) = w {
                    s += &format!(" WHERE {w}");
                }
                if let Some(p) = p {
                    s += &format!(" PARTITION BY ({p})");
                }
                if let Some(m) = payload {
                    s += &format!(" WITH (payload = '{m}')");
                }
                s
            }),
        (name(), name(), op).prop_map(|(t, table, op)| format!("ALTER TOPIC {t} DROP SOURCE {table} ON {op}")),
        (name(), 1..1000u64).prop_map(|(t, n)| format!("ALTER TOPIC {t} SET PARTITIONS {n}")),
        (
            name(),
            proptest::option::of(string()),
            proptest::option::of(0..100u64),
            proptest::option::of(start()),
            proptest::option::of(0..10_000u64),
            proptest::option::of(0..100_000u64)
        )
            .prop_map(|(t, g, p, st, l, timeout)| {
                let mut s = format!("CONSUME FROM {t}");
                if let Some(g) = g {
                    s += &format!(" GROUP {g}");
                }
                if let Some(p) = p {
                    s += &format!(" PARTITION {p}");
                }
                if let Some(st) = st {
                    s += &format!(" FROM {st}");
                }
                if let Some(l) = l {
                    s += &format!(" LIMIT {l}");
                }
                if let Some(t) = timeout {
                    s += &format!(" WITH (timeout_ms = {t})");
                }
                s
            }),
        (
            name(),
            string(),
            proptest::option::of(0..100u64),
            prop_oneof![
                any::<u64>().prop_map(|n| format!("UPTO OFFSET {n}")),
                proptest::collection::vec(any::<u64>(), 1..5)
                    .prop_map(|v| format!("OFFSETS ({})", v.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))),
            ]
        )
            .prop_map(|(t, g, p, target)| {
                let part = p.map(|p| format!(" PARTITION {p}")).unwrap_or_default();
                format!("ACK {t} GROUP {g}{part} {target}")
            }),
        (string(), name(), start()).prop_map(|(g, t, s)| format!("RESET CONSUMER GROUP {g} ON {t} TO {s}")),
        (string(), name()).prop_map(|(g, t)| format!("DROP CONSUMER GROUP {g} ON {t}")),
        (ident(), string(), prop_oneof![Just("USER"), Just("SERVICE"), Just("DBA"), Just("SYSTEM")])
            .prop_map(|(u, p, r)| format!("CREATE USER {u} WITH PASSWORD {p} ROLE {r}")),
        (ident(), string()).prop_map(|(u, p)| format!("ALTER USER {u} SET PASSWORD {p}")),
        (any::<bool>(), ident()).prop_map(|(ie, u)| format!("DROP USER {}{u}", if ie { "IF EXISTS " } else { "" })),
    ]
}

/// Words and symbols the statements are made of, for random sequences.
const VOCABULARY: &[&str] = &[
    "CREATE",
    "DROP",
    "ALTER",
    "CLEAR",
    "TOPIC",
    "TOPICS",
    "SHOW",
    "CONSUME",
    "ACK",
    "RESET",
    "CONSUMER",
    "GROUP",
    "FROM",
    "PARTITION",
    "PARTITIONS",
    "OFFSET",
    "OFFSETS",
    "UPTO",
    "EARLIEST",
    "LATEST",
    "TIMESTAMP",
    "LIMIT",
    "WITH",
    "WHERE",
    "ADD",
    "SOURCE",
    "ON",
    "INSERT",
    "UPDATE",
    "DELETE",
    "SET",
    "RETENTION",
    "BY",
    "IF",
    "NOT",
    "EXISTS",
    "USER",
    "PASSWORD",
    "ROLE",
    "EXPLAIN",
    "VERBOSE",
    "SELECT",
    "TABLE",
    "TO",
    "(",
    ")",
    ",",
    ";",
    "=",
    "'g'",
    "''",
    "\"q\"",
    "0",
    "1",
    "18446744073709551615",
    "99999999999999999999999",
    "-1",
    "x",
    "t.x",
    "NULL",
    "timeout_ms",
    "payload",
    "alias",
    "'full'",
    "*",
    "+",
    "OR",
    ".",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Parse, print, reparse: the same AST, and printing is stable.
    #[test]
    fn statements_round_trip(sql in statement()) {
        let first = parse_sql(&sql);
        prop_assert!(first.is_ok(), "{sql}: {:?}", first.err());
        let mut first = first.unwrap();
        prop_assert_eq!(first.len(), 1);
        let stmt = first.remove(0).statement;
        prop_assert!(matches!(stmt, Statement::Topic(_) | Statement::User(_)), "{sql} parsed as {stmt:?}");
        let printed = stmt.to_string();
        let again = parse_sql(&printed);
        prop_assert!(again.is_ok(), "{sql} printed as {printed}: {:?}", again.err());
        let again = again.unwrap().remove(0).statement;
        prop_assert_eq!(&again, &stmt, "{} printed as {}", sql, printed);
        prop_assert_eq!(again.to_string(), printed);
    }

    /// A route expression that sqlparser would print as different text (a quoted identifier
    /// with consecutive quote characters inside) is refused, not stored as text that reads back
    /// differently.
    #[test]
    fn unprintable_route_identifiers_are_refused(name in "[a-z]{0,3}\"\"[a-z]{0,3}") {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!("ALTER TOPIC t ADD SOURCE s ON INSERT WHERE {quoted} > 1");
        let err = parse_sql(&sql).unwrap_err().to_string();
        prop_assert!(err.contains("cannot be stored as written"), "{}", err);
    }

    /// Random token sequences never panic.
    #[test]
    fn random_tokens_never_panic(words in proptest::collection::vec(proptest::sample::select(VOCABULARY), 0..24)) {
        let _ = parse_sql(&words.join(" "));
    }

    /// Mutations of valid statements (a token dropped, duplicated or replaced, bytes inserted)
    /// never panic.
    #[test]
    fn mutated_statements_never_panic(
        sql in statement(),
        at in any::<prop::sample::Index>(),
        kind in 0..4u8,
        junk in "[\\x00-\\x7f]{1,4}",
        word in proptest::sample::select(VOCABULARY),
    ) {
        let mut tokens: Vec<String> = sql.split(' ').map(str::to_owned).collect();
        let i = at.index(tokens.len());
        match kind {
            0 => { tokens.remove(i); }
            1 => { let t = tokens[i].clone(); tokens.insert(i, t); }
            2 => tokens[i] = word.to_owned(),
            _ => tokens[i].push_str(&junk),
        }
        let _ = parse_sql(&tokens.join(" "));
    }
}

/// Pieces of `INSERT ... VALUES` texts: the forms the VALUES scanner reads and many it must
/// leave to sqlparser.
fn insert_word() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-zA-Z_][a-zA-Z0-9_]{0,6}",
        1 => proptest::sample::select(datafusion_sql::sqlparser::keywords::ALL_KEYWORDS).prop_map(|k| k.to_lowercase()),
        1 => "[a-zA-Z ._$#@é\"]{1,6}".prop_map(|s| format!("\"{s}\"")),
        1 => "[a-z]{1,3}[$#@é][a-z]{0,2}",
    ]
}

fn insert_cell() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<i64>().prop_map(|n| n.to_string()),
        3 => "-?[0-9]{1,20}(\\.[0-9]{0,6})?",
        1 => "-? ?\\.?[0-9]{1,4}(e-?[0-9])?",
        3 => "[a-zA-Z0-9 '\\\\é\"(),;-]{0,8}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
        1 => "'[a-z']{0,6}'",
        2 => proptest::sample::select(&["NULL", "null", "TRUE", "False"][..]).prop_map(str::to_owned),
        1 => proptest::sample::select(&["DEFAULT", "1 + 1", "DATE '2020-01-01'", "E'x'", "x'00'", "'a' 'b'", "-'1'",
            "--c\n1", "/*c*/1", "+1", "(1)", "1a", "0x1f", "1_000"][..])
            .prop_map(str::to_owned),
    ]
}

fn insert_statement() -> impl Strategy<Value = String> {
    let space = proptest::sample::select(&["", " ", "  ", "\n", "\t", " \r\n"][..]);
    (
        proptest::collection::vec(insert_word(), 1..4),
        proptest::option::of(proptest::collection::vec(insert_word(), 1..4)),
        proptest::collection::vec(proptest::collection::vec(insert_cell(), 1..4), 1..4),
        proptest::collection::vec(space, 8),
        proptest::sample::select(&["", "", "", ";", ";", " ; ", ";;", " RETURNING id", " ON CONFLICT DO NOTHING"][..]),
    )
        .prop_map(|(name, columns, rows, sp, tail)| {
            let columns =
                columns.map_or(String::new(), |c| format!("{}({}){}", sp[0], c.join(&format!(",{}", sp[1])), sp[2]));
            let rows: Vec<String> =
                rows.iter().map(|r| format!("({}{}{})", sp[3], r.join(&format!("{},", sp[4])), sp[5])).collect();
            format!("{}InSeRt into {}{columns} {}values{}{}{tail}", sp[6], name.join("."), sp[7], sp[3], rows.join(","))
        })
}

proptest! {
    // About one generated text in six is one the scanner reads; the rest check it declines.
    #![proptest_config(ProptestConfig { cases: 3 * CASES, ..ProptestConfig::default() })]

    /// Where the VALUES scanner answers, sqlparser parses the same text into one INSERT with the
    /// same table, columns, literal cells and statement text.
    #[test]
    fn the_values_scanner_agrees_with_sqlparser(sql in insert_statement()) {
        scanner_agrees_with_sqlparser(&sql)?;
    }
}

/// Where `scan_values_insert` answers for `sql`, sqlparser parses `sql` into one INSERT with the
/// same table, columns, literal cells and statement text.
fn scanner_agrees_with_sqlparser(sql: &str) -> Result<(), TestCaseError> {
    use datafusion_sql::sqlparser::ast::{SetExpr, Statement as SqlStatement, TableObject};
    let Some(fast) = crate::values::scan_values_insert(sql) else { return Ok(()) };
    let parsed = parse_sql(sql);
    prop_assert!(parsed.is_ok(), "scanned but does not parse: {sql:?}: {:?}", parsed.err());
    let mut parsed = parsed.unwrap();
    prop_assert_eq!(parsed.len(), 1, "{:?}", sql);
    let parsed = parsed.remove(0);
    prop_assert_eq!(parsed.sql.as_str(), fast.sql);
    let Statement::DataFusion(df) = parsed.statement else { panic!("{sql:?} is not a DataFusion statement") };
    let datafusion_sql::parser::Statement::Statement(st) = *df else { panic!("{sql:?}: not sqlparser's") };
    let SqlStatement::Insert(insert) = *st else { panic!("{sql:?} is not an INSERT") };
    prop_assert_eq!(&insert.table, &TableObject::TableName(fast.table.clone()), "{:?}", sql);
    let columns: Vec<_> =
        fast.columns.iter().map(|c| datafusion_sql::sqlparser::ast::ObjectName::from(vec![c.clone()])).collect();
    prop_assert_eq!(&insert.columns, &columns, "{:?}", sql);
    prop_assert!(insert.table_alias.is_none() && insert.returning.is_none() && insert.on.is_none(), "{:?}", sql);
    let source = insert.source.expect("VALUES");
    prop_assert!(source.with.is_none() && source.order_by.is_none() && source.limit_clause.is_none());
    let SetExpr::Values(values) = *source.body else { panic!("{sql:?}: not VALUES") };
    let cells: Vec<_> = values.rows.iter().flat_map(|r| r.content.iter()).map(crate::values::literal_of).collect();
    let expected: Vec<_> = fast.cells.iter().cloned().map(Some).collect();
    prop_assert_eq!(cells, expected, "{:?}", sql);
    prop_assert!(values.rows.iter().all(|r| r.content.len() == fast.width));
    Ok(())
}

/// Keywords are where sqlparser reads names differently (`INSERT INTO local ...` starts Hive's
/// `INSERT INTO LOCAL DIRECTORY`): every sqlparser keyword, in every place of a name or column
/// list, and before and after the rows, either is declined by the scanner or read as sqlparser does.
#[test]
fn the_values_scanner_agrees_with_sqlparser_on_every_keyword() {
    let mut failures = Vec::new();
    for keyword in datafusion_sql::sqlparser::keywords::ALL_KEYWORDS {
        for k in [keyword.to_lowercase(), keyword.to_string()] {
            for sql in [
                format!("INSERT INTO {k} VALUES (0)"),
                format!("INSERT INTO {k}(a) VALUES(0)"),
                format!("INSERT INTO {k} (a) VALUES (0)"),
                format!("INSERT INTO s.{k} VALUES (0)"),
                format!("INSERT INTO {k}.t VALUES (0)"),
                format!("INSERT INTO c.s.{k} (a) VALUES (0)"),
                format!("INSERT INTO t ({k}) VALUES (0)"),
                format!("INSERT INTO t (a, {k}) VALUES (0, 1)"),
                format!("INSERT INTO t VALUES (0) {k}"),
                format!("INSERT INTO t {k} VALUES (0)"),
                format!("INSERT INTO t VALUES ({k})"),
            ] {
                if let Err(e) = scanner_agrees_with_sqlparser(&sql) {
                    failures.push(e.to_string());
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}

/// The property above returns early where the scanner declines: its generator must reach the
/// scanner often enough for the property to say something (about one text in six does).
#[test]
fn the_insert_generator_reaches_the_values_scanner() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = insert_statement();
    let texts: Vec<String> = (0..1000).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();
    let scanned = texts.iter().filter(|t| crate::values::scan_values_insert(t).is_some()).count();
    let parsed = texts.iter().filter(|t| parse_sql(t).is_ok()).count();
    assert!(scanned >= 100, "only {scanned} of 1000 generated INSERTs reach the scanner");
    assert!(parsed > scanned, "the generator should also make texts only the parser reads");
}
