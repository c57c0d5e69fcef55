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
    // More decimals than the column's scale round half away from zero (as PostgreSQL and the
    // text form do); more digits than its precision is an error, not a different number.
    let binary = |unscaled: i128, scale: i8| {
        let mut buf = BytesMut::new();
        Numeric { unscaled, scale }.to_sql(&postgres_types::Type::NUMERIC, &mut buf).unwrap();
        buf
    };
    let buf = binary(12345, 3);
    assert_eq!(binary_numeric(&buf, 10, 2).unwrap(), 1235);
    assert_eq!(binary_numeric(&binary(-12345, 3), 10, 2).unwrap(), -1235);
    assert_eq!(binary_numeric(&binary(12344, 3), 10, 2).unwrap(), 1234);
    assert_eq!(binary_numeric(&binary(99_999, 4), 10, 0).unwrap(), 10);
    assert_eq!(binary_numeric(&binary(4_9999, 5), 10, 0).unwrap(), 0);
    assert!(binary_numeric(&buf, 3, 3).unwrap_err().contains("overflow"));
    assert_eq!(binary_numeric(&buf, 10, 5).unwrap(), 1_234_500);
    // Digits a client crafted past i128 are an error, whichever group carries them over.
    let groups = |weight: i16, digits: &[i16]| {
        let mut b = Vec::new();
        for v in [digits.len() as i16, weight, 0, 0].into_iter().chain(digits.iter().copied()) {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    };
    assert!(binary_numeric(&groups(9, &[9999; 11]), 38, 0).unwrap_err().contains("out of range"));
    // 17014118346046923173168730371588410572.75 at scale 1: i128::MAX tenths from the whole
    // groups and the straddling one, then the rounding carries it past.
    let straddling = groups(9, &[17, 141, 1834, 6046, 9231, 7316, 8730, 3715, 8841, 572, 7500]);
    assert!(binary_numeric(&straddling, 38, 1).unwrap_err().contains("out of range"));
    let fits = groups(9, &[17, 141, 1834, 6046, 9231, 7316, 8730, 3715, 8841, 572, 7400]);
    assert!(binary_numeric(&fits, 38, 1).unwrap_err().contains("overflow"));
    let near_max = binary(i128::MAX, 1);
    assert!(binary_numeric(&near_max, 38, 1).unwrap_err().contains("overflow"));
    // Truncated or malformed input is an error.
    for bad in [&buf[..5], &buf[..buf.len() - 1]] {
        assert!(numeric_text(bad).is_err());
    }
}

/// The rows a decoder produces for `data` fed in pieces cut at `cuts`.
fn decode_in_pieces(
    format: topicfusion_engine::CopyFormat,
    options: &topicfusion_engine::CopyOptions,
    data: &[u8],
    cuts: &[usize],
) -> Vec<Vec<Option<String>>> {
    use topicfusion::pg::copy::CopyDecoder;
    use topicfusion_engine::catalog::types::ColumnType;
    use topicfusion_engine::write::copy::CopyRows;
    let mut decoder = CopyDecoder::new(format, options, vec![ColumnType::Text, ColumnType::Text]);
    let mut batches = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([data.len()].iter()) {
        decoder.push(&data[at..cut]);
        while let Some(batch) = decoder.next_batch().unwrap() {
            batches.push(batch);
        }
        at = cut;
    }
    batches.extend(decoder.finish().unwrap());
    batches
        .into_iter()
        .flat_map(|b| match b {
            CopyRows::Text(rows) => rows,
            CopyRows::Values(_) => panic!("text rows expected"),
        })
        .collect()
}

#[test]
fn csv_with_an_escape_character_reads_the_same_wherever_the_chunks_split() {
    let options = topicfusion_engine::CopyOptions { escape: Some('\\'), ..Default::default() };
    // A quote escaped inside quotes, an escaped escape, a newline inside quotes, an empty
    // unquoted field (NULL) and an empty quoted one.
    let data = b"\"a\\\"b\",\"c\\\\\"\n\"two\nlines\",\n,\"\"\n";
    let expected = vec![
        vec![Some("a\"b".to_owned()), Some("c\\".to_owned())],
        vec![Some("two\nlines".to_owned()), None],
        vec![None, Some(String::new())],
    ];
    let format = topicfusion_engine::CopyFormat::Csv;
    assert_eq!(decode_in_pieces(format, &options, data, &[]), expected);
    for cut in 1..data.len() {
        assert_eq!(decode_in_pieces(format, &options, data, &[cut]), expected, "cut at {cut}");
    }
    let every_byte: Vec<usize> = (1..data.len()).collect();
    assert_eq!(decode_in_pieces(format, &options, data, &every_byte), expected);
}

#[test]
fn copy_rows_are_handed_out_by_size_as_well_as_by_count() {
    use topicfusion::pg::copy::CopyDecoder;
    use topicfusion_engine::catalog::types::ColumnType;
    use topicfusion_engine::write::copy::CopyRows;
    let options = topicfusion_engine::CopyOptions::default();
    let format = topicfusion_engine::CopyFormat::Text;
    let mut decoder = CopyDecoder::new(format, &options, vec![ColumnType::Text]);
    // 1 MiB rows, one message each: a write's worth of rows goes out well before 4,096 rows.
    let row = format!("{}\n", "x".repeat(1 << 20));
    let mut handed_out = 0;
    for i in 0..10 {
        decoder.push(row.as_bytes());
        while let Some(batch) = decoder.next_batch().unwrap() {
            let CopyRows::Text(rows) = batch else { panic!("text rows expected") };
            assert!(rows.len() <= 4, "{} rows of 1 MiB held at once", rows.len());
            handed_out += rows.len();
        }
        assert!(i + 1 - handed_out <= 4, "row {i}: {} rows pending", i + 1 - handed_out);
    }
    for batch in decoder.finish().unwrap() {
        let CopyRows::Text(rows) = batch else { panic!("text rows expected") };
        handed_out += rows.len();
    }
    assert_eq!(handed_out, 10);
    // One message of a million short rows is decoded a batch at a time, none over the bounds.
    let mut decoder = CopyDecoder::new(format, &options, vec![ColumnType::Text]);
    decoder.push("a\n".repeat(1_000_000).as_bytes());
    let mut batches = 0;
    let mut total = 0;
    while let Some(batch) = decoder.next_batch().unwrap() {
        let CopyRows::Text(rows) = batch else { panic!("text rows expected") };
        assert!(rows.len() <= 4096);
        total += rows.len();
        batches += 1;
    }
    for batch in decoder.finish().unwrap() {
        let CopyRows::Text(rows) = batch else { panic!("text rows expected") };
        total += rows.len();
    }
    assert_eq!(total, 1_000_000);
    assert!(batches >= 1_000_000 / 4096, "{batches} batches");
    // A line of a million delimiters is refused without splitting it all.
    let mut decoder = CopyDecoder::new(format, &options, vec![ColumnType::Text, ColumnType::Text]);
    decoder.push(format!("{}\n", "\t".repeat(1_000_000)).as_bytes());
    let e = decoder.next_batch().unwrap_err();
    assert!(e.to_string().contains("extra data after last expected column"), "{e}");
}
