//! Bound parameters of the extended protocol: each `$n` value, in text or binary form, as a
//! value for the engine ([`ParamValue`]), read by its PostgreSQL type as PostgreSQL would read it.

use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::types::FromSqlText;
use topicfusion_engine::ParamValue;

use super::copy::numeric_text;
use super::query::Prepared;

fn bad(i: usize, what: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "22P02".into(),
        format!("parameter ${}: {what}", i + 1),
    )))
}

/// Whether text is a PostgreSQL numeric literal (`-1.5`, `1E-10`, `.5`, `NaN`).
fn is_numeric_text(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s.eq_ignore_ascii_case("nan") || s.eq_ignore_ascii_case("infinity") {
        return true;
    }
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    (!int.is_empty() || !frac.is_empty())
        && digits(int)
        && digits(frac)
        && exp.is_none_or(|e| {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        })
}

/// Whether a binary date (4 bytes) or timestamp (8 bytes) is PostgreSQL's infinity or
/// -infinity (the type's largest or smallest value).
fn is_infinity(raw: &[u8]) -> bool {
    match raw.len() {
        4 => [i32::MIN, i32::MAX].contains(&i32::from_be_bytes(raw.try_into().expect("4 bytes"))),
        8 => [i64::MIN, i64::MAX].contains(&i64::from_be_bytes(raw.try_into().expect("8 bytes"))),
        _ => false,
    }
}

/// The elements of a one-dimensional array parameter in PostgreSQL's binary array format.
fn binary_array(raw: &[u8], elem: &Type, i: usize) -> PgWireResult<ParamValue> {
    let malformed = || bad(i, "malformed binary array");
    let int = |at: usize| raw.get(at..at + 4).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
    let ndim = int(0).ok_or_else(malformed)?;
    if ndim == 0 {
        return Ok(ParamValue::Array(Vec::new()));
    }
    if ndim != 1 {
        return Err(bad(i, "only one-dimensional arrays are supported"));
    }
    let len = int(12).ok_or_else(malformed)?;
    let mut at = 20;
    let mut items = Vec::with_capacity(len.clamp(0, 1 << 16) as usize);
    for _ in 0..len {
        let n = int(at).ok_or_else(malformed)?;
        at += 4;
        if n < 0 {
            items.push(ParamValue::Null);
            continue;
        }
        let bytes = raw.get(at..at + n as usize).ok_or_else(malformed)?;
        at += n as usize;
        items.push(decode_value(bytes, true, elem, i)?);
    }
    Ok(ParamValue::Array(items))
}

/// The elements of a one-dimensional array parameter in text (`{1,2,"a b",NULL}`).
fn text_array(text: &str, elem: &Type, i: usize) -> PgWireResult<ParamValue> {
    let inner = text.trim();
    let inner =
        inner.strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or_else(|| bad(i, "malformed array literal"))?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.extend(chars.next()),
                    '"' => break,
                    c => item.push(c),
                }
            }
        }
        for c in chars.by_ref() {
            if c == ',' {
                break;
            }
            if !quoted {
                item.push(c);
            }
        }
        if !quoted && item.trim().eq_ignore_ascii_case("null") {
            items.push(ParamValue::Null);
        } else {
            let text = if quoted { item } else { item.trim().to_owned() };
            items.push(decode_value(text.as_bytes(), false, elem, i)?);
        }
    }
    Ok(ParamValue::Array(items))
}

/// Parameter `i` of a portal as a value for the engine, by its type.
pub fn decode_parameter(portal: &Portal<Prepared>, i: usize, ty: &Type) -> PgWireResult<ParamValue> {
    let Some(raw) = portal.parameters.get(i).cloned().flatten() else { return Ok(ParamValue::Null) };
    decode_value(&raw, portal.parameter_format.is_binary(i), ty, i)
}

/// One value (a parameter, or an element of an array parameter) by its type.
fn decode_value(raw: &[u8], binary: bool, ty: &Type, i: usize) -> PgWireResult<ParamValue> {
    if let postgres_types::Kind::Array(elem) = ty.kind() {
        return if binary {
            binary_array(raw, elem, i)
        } else {
            text_array(std::str::from_utf8(raw).map_err(|_| bad(i, "not UTF-8 text"))?, elem, i)
        };
    }
    macro_rules! get {
        ($t:ty) => {{
            let parsed = if !<$t as postgres_types::FromSql>::accepts(ty) {
                Err(format!("{} is not a {}", ty.name(), stringify!($t)))
            } else if binary {
                <$t as postgres_types::FromSql>::from_sql(ty, raw).map_err(|e| e.to_string())
            } else {
                <$t as FromSqlText>::from_sql_text(ty, raw, &Default::default()).map_err(|e| e.to_string())
            };
            Some(parsed.map_err(|e| bad(i, &format!("invalid {} value: {e}", ty.name())))?)
        }};
    }
    let text = || String::from_utf8(raw.to_vec()).map_err(|_| bad(i, "not UTF-8 text"));
    let raw = raw.to_vec();
    let raw = raw.as_slice();
    let value = match *ty {
        Type::BOOL => get!(bool).map(ParamValue::Bool),
        Type::INT2 => get!(i16).map(|v| ParamValue::Int(v.into())),
        Type::INT4 => get!(i32).map(|v| ParamValue::Int(v.into())),
        Type::INT8 => get!(i64).map(ParamValue::Int),
        Type::OID => get!(u32).map(|v| ParamValue::Int(v.into())),
        Type::FLOAT4 => get!(f32).map(|v| ParamValue::Float(v.into())),
        Type::FLOAT8 => get!(f64).map(ParamValue::Float),
        // Numeric text in any form PostgreSQL reads (exponents: `1E-10`), binary of any size.
        Type::NUMERIC if binary => Some(ParamValue::Numeric(numeric_text(raw).map_err(|e| bad(i, &e))?)),
        Type::NUMERIC => {
            let t = text()?;
            if !is_numeric_text(&t) {
                return Err(bad(i, &format!("invalid input syntax for type numeric: \"{t}\"")));
            }
            Some(ParamValue::Numeric(t.trim().to_owned()))
        }
        // bytea text is PostgreSQL's bytea input (`\x0001ff`), as a bytea literal is.
        Type::BYTEA if !binary => Some(ParamValue::Text(text()?)),
        Type::BYTEA => Some(ParamValue::Bytes(raw.to_vec())),
        // ±infinity (asyncpg sends date.min/max and datetime.min/max so): no DATE or TIMESTAMP
        // value here is infinite, and a finite stand-in would read back as another value.
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ if binary && is_infinity(raw) => {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22008".into(),
                format!(
                    "parameter ${}: {} {}infinity is not supported: topicfusion's {} has no infinite values",
                    i + 1,
                    ty.name(),
                    if raw[0] & 0x80 != 0 { "-" } else { "" },
                    if *ty == Type::DATE { "DATE" } else { "TIMESTAMP" }
                ),
            ))));
        }
        Type::DATE => get!(chrono::NaiveDate).map(|d| ParamValue::Text(d.to_string())),
        Type::TIMESTAMP => {
            get!(chrono::NaiveDateTime).map(|t| ParamValue::Text(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()))
        }
        Type::TIMESTAMPTZ => get!(chrono::DateTime<chrono::FixedOffset>).map(|t| ParamValue::Text(t.to_rfc3339())),
        Type::JSON | Type::JSONB if binary => get!(serde_json::Value).map(|v| ParamValue::Text(v.to_string())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON | Type::JSONB
            if !binary =>
        {
            Some(ParamValue::Text(text()?))
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => get!(String).map(ParamValue::Text),
        // Other types sent as text go in as text literals, cast by their context.
        _ if !binary => Some(ParamValue::Text(text()?)),
        _ => return Err(bad(i, &format!("type {} is not supported in binary format; send it as text", ty.name()))),
    };
    Ok(value.unwrap_or(ParamValue::Null))
}
