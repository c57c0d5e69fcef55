//! Values on the PostgreSQL wire, unit by unit: floats in text as PostgreSQL writes them,
//! numerics in text and binary over the whole decimal range, and the binary numeric a client
//! sends read back exactly.

use bytes::BytesMut;
use postgres_types::ToSql;
use topicfusion::pg::copy::{binary_numeric, numeric_text};
use topicfusion::pg::encode::{Float, Float32, Numeric};

#[test]
fn floats_in_text_as_postgresql_writes_them() {
    for (v, text) in [
        (123456789.12345679, "123456789.12345679"),
        (1e39, "1e+39"),
        (6.02214076e23, "6.02214076e+23"),
        (1.5e300, "1.5e+300"),
        (2.5e-300, "2.5e-300"),
        (0.1, "0.1"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e15, "1e+15"),
        (1e14, "100000000000000"),
        (-2.5, "-2.5"),
        (0.0, "0"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(Float(v).text(), text, "{v:e}");
        if v.is_finite() {
            assert_eq!(text.parse::<f64>().unwrap(), v, "{text} reads back");
        }
    }
    assert_eq!(Float32(1e6).text(), "1e+06");
    assert_eq!(Float32(123456.0).text(), "123456");
    assert_eq!(Float32(0.1).text(), "0.1");
}

#[test]
fn numeric_in_text_and_binary_for_the_whole_decimal128_range() {
    let max = 10i128.pow(38) - 1;
    for (unscaled, scale, text) in [
        (max, 0, "99999999999999999999999999999999999999"),
        (-max, 10, "-9999999999999999999999999999.9999999999"),
        (1, -30, "1000000000000000000000000000000"),
        (5, 3, "0.005"),
        (0, 2, "0.00"),
        (120, 1, "12.0"),
        (-1, 0, "-1"),
    ] {
        let n = Numeric { unscaled, scale };
        assert_eq!(n.to_string(), text);
        // The binary form reads back as the same text (PostgreSQL's own decoding rules).
        let mut buf = BytesMut::new();
        n.to_sql(&postgres_types::Type::NUMERIC, &mut buf).unwrap();
        assert_eq!(numeric_text(&buf).unwrap(), text, "binary of {text}");
        // And into a DECIMAL column of the same scale, exactly.
        if scale >= 0 {
            assert_eq!(binary_numeric(&buf, 38, scale).unwrap(), unscaled, "{text}");
        }
    }
    // A value with more decimals than the column's scale, or more digits than its precision,
    // is an error, not a silently different number.
    let mut buf = BytesMut::new();
    Numeric { unscaled: 12345, scale: 3 }.to_sql(&postgres_types::Type::NUMERIC, &mut buf).unwrap();
    assert!(binary_numeric(&buf, 10, 2).unwrap_err().contains("decimal places"));
    assert!(binary_numeric(&buf, 3, 3).unwrap_err().contains("overflow"));
    assert_eq!(binary_numeric(&buf, 10, 5).unwrap(), 1_234_500);
    // Truncated or malformed input is an error.
    for bad in [&buf[..5], &buf[..buf.len() - 1]] {
        assert!(numeric_text(bad).is_err());
    }
}
