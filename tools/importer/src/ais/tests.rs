use super::*;

use std::path::PathBuf;

fn now() -> DateTime<Utc> {
    "2024-01-01T00:00:00Z".parse().unwrap()
}

fn time(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn parse_text(text: &str) -> Result<ParsedFile, ParseError> {
    parse(text.as_bytes(), now(), |_| {}, |_| {})
}

fn parse_ok(text: &str) -> ParsedFile {
    parse_text(text).unwrap()
}

/// Returns the reason of the only skipped row of a file whose header is
/// `MMSI,BaseDateTime,LAT,LON` and whose single data row is `row`.
fn skip_reason(row: &str) -> SkipReason {
    let parsed = parse_ok(&format!("MMSI,BaseDateTime,LAT,LON\n{row}\n"));
    assert_eq!(parsed.skipped.len(), 1, "{parsed:?}");
    assert_eq!(parsed.skipped[0].line, 2);
    parsed.skipped[0].reason.clone()
}

fn header(fields: &[&str]) -> ByteRecord {
    ByteRecord::from(fields.to_vec())
}

#[test]
fn header_found_in_any_order() {
    let columns = Columns::from_header(&header(&[
        "LON",
        "VesselName",
        "LAT",
        "BaseDateTime",
        "SOG",
        "MMSI",
    ]))
    .unwrap();
    assert_eq!(columns.longitude, 0);
    assert_eq!(columns.vessel_name, Some(1));
    assert_eq!(columns.latitude, 2);
    assert_eq!(columns.base_date_time, 3);
    assert_eq!(columns.mmsi, 5);
    assert_eq!(columns.count, 6);
}

#[test]
fn header_ignores_case_and_whitespace() {
    let columns = Columns::from_header(&header(&[
        " mmsi ",
        "basedatetime",
        "Lat",
        "lon\t",
        " vesselname",
    ]))
    .unwrap();
    assert_eq!(columns.mmsi, 0);
    assert_eq!(columns.base_date_time, 1);
    assert_eq!(columns.latitude, 2);
    assert_eq!(columns.longitude, 3);
    assert_eq!(columns.vessel_name, Some(4));
}

#[test]
fn header_with_byte_order_mark() {
    let parsed = parse_ok("\u{feff}MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,1,2\n");
    assert_eq!(parsed.vessels.len(), 1);
}

#[test]
fn vessel_name_column_is_optional() {
    let columns = Columns::from_header(&header(&["MMSI", "BaseDateTime", "LAT", "LON"])).unwrap();
    assert_eq!(columns.vessel_name, None);
}

#[test]
fn missing_column_is_named() {
    let error = Columns::from_header(&header(&["MMSI", "BaseDateTime", "LON", "SOG"])).unwrap_err();
    let HeaderError::MissingColumns { missing, found } = &error else {
        panic!("expected MissingColumns, got {error:?}");
    };
    assert_eq!(missing, &vec!["LAT"]);
    assert_eq!(found, &vec!["MMSI", "BaseDateTime", "LON", "SOG"]);
    assert_eq!(
        error.to_string(),
        "missing required column LAT; the header has: MMSI, BaseDateTime, LON, SOG"
    );
}

#[test]
fn every_missing_column_is_named() {
    let error = Columns::from_header(&header(&["VesselName", "SOG"])).unwrap_err();
    let HeaderError::MissingColumns { missing, .. } = error else {
        panic!("expected MissingColumns");
    };
    assert_eq!(missing, vec!["MMSI", "BaseDateTime", "LAT", "LON"]);
}

#[test]
fn missing_column_stops_parse() {
    let result = parse_text("MMSI,BaseDateTime,LAT\n1,2020-06-30T00:00:00,1\n");
    assert!(matches!(
        result,
        Err(ParseError::Header(HeaderError::MissingColumns { .. }))
    ));
}

#[test]
fn duplicate_column_is_rejected() {
    let error =
        Columns::from_header(&header(&["MMSI", "LAT", "BaseDateTime", "lat", "LON"])).unwrap_err();
    assert_eq!(
        error,
        HeaderError::DuplicateColumn {
            column: "LAT",
            first: 2,
            second: 4
        }
    );
}

#[test]
fn empty_file_is_rejected() {
    assert!(matches!(
        parse_text(""),
        Err(ParseError::Header(HeaderError::Empty))
    ));
}

#[test]
fn header_without_rows_has_no_vessels() {
    let parsed = parse_ok("MMSI,BaseDateTime,LAT,LON\n");
    assert_eq!(parsed.rows_read, 0);
    assert!(parsed.vessels.is_empty());
}

#[test]
fn valid_row_is_parsed() {
    let parsed = parse_ok(
        "BaseDateTime,LON,LAT,MMSI,VesselName\n2020-06-30T00:00:00,-74.07157,40.64409,367000140,SAMUEL I NEWHOUSE\n",
    );
    assert_eq!(parsed.rows_read, 1);
    assert!(parsed.skipped.is_empty());
    let vessel = &parsed.vessels[0];
    assert_eq!(vessel.mmsi, 367_000_140);
    assert_eq!(vessel.user_name(), "SAMUEL I NEWHOUSE");
    assert_eq!(vessel.email(), "vessel-367000140@ais.example");
    assert_eq!(vessel.lines, vec![2]);
    assert_eq!(
        vessel.reports[0],
        LocationReport {
            latitude: 40.64409,
            longitude: -74.07157,
            recorded_at: time("2020-06-30T00:00:00Z"),
        }
    );
}

#[test]
fn wrong_field_count_is_skipped() {
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,1"),
        SkipReason::FieldCount {
            found: 3,
            expected: 4
        }
    );
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,1,2,5"),
        SkipReason::FieldCount {
            found: 5,
            expected: 4
        }
    );
}

#[test]
fn empty_mmsi_is_skipped() {
    assert_eq!(
        skip_reason(" ,2020-06-30T00:00:00,1,2"),
        SkipReason::Empty { column: "MMSI" }
    );
}

#[test]
fn non_numeric_mmsi_is_skipped() {
    for value in ["36700014O", "-367000140", "3.67e8", "367000140.0", "+1"] {
        assert_eq!(
            skip_reason(&format!("{value},2020-06-30T00:00:00,1,2")),
            SkipReason::InvalidMmsi {
                value: value.to_owned()
            },
            "{value}"
        );
    }
}

#[test]
fn mmsi_too_large_is_skipped() {
    let value = "99999999999999999999999";
    assert_eq!(
        skip_reason(&format!("{value},2020-06-30T00:00:00,1,2")),
        SkipReason::InvalidMmsi {
            value: value.to_owned()
        }
    );
}

#[test]
fn unparsable_time_is_skipped() {
    for value in [
        "yesterday",
        "2020-06-31T00:00:00",
        "2020-06-30",
        "30/06/2020 00:00:00",
    ] {
        assert_eq!(
            skip_reason(&format!("1,{value},1,2")),
            SkipReason::InvalidTime {
                value: value.to_owned()
            },
            "{value}"
        );
    }
}

#[test]
fn empty_time_is_skipped() {
    assert_eq!(
        skip_reason("1,,1,2"),
        SkipReason::Empty {
            column: "BaseDateTime"
        }
    );
}

#[test]
fn future_time_is_skipped() {
    let reason = skip_reason("1,2024-01-01T00:05:01,1,2");
    assert_eq!(
        reason,
        SkipReason::FutureTime {
            value: time("2024-01-01T00:05:01Z"),
            now: now()
        }
    );
}

#[test]
fn time_before_epoch_is_skipped() {
    let reason = skip_reason("1,1969-12-31T23:59:59,1,2");
    assert_eq!(
        reason,
        SkipReason::EarlyTime {
            value: time("1969-12-31T23:59:59Z")
        }
    );
}

#[test]
fn time_five_minutes_ahead_is_kept() {
    let parsed = parse_ok("MMSI,BaseDateTime,LAT,LON\n1,2024-01-01T00:05:00,1,2\n");
    assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
}

#[test]
fn latitude_out_of_range_is_skipped() {
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,95.5,2"),
        SkipReason::OutOfRange {
            column: "LAT",
            value: 95.5,
            min: -90.0,
            max: 90.0
        }
    );
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,-90.01,2"),
        SkipReason::OutOfRange {
            column: "LAT",
            value: -90.01,
            min: -90.0,
            max: 90.0
        }
    );
}

#[test]
fn longitude_out_of_range_is_skipped() {
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,1,-181"),
        SkipReason::OutOfRange {
            column: "LON",
            value: -181.0,
            min: -180.0,
            max: 180.0
        }
    );
}

#[test]
fn coordinates_on_range_edges_are_kept() {
    let parsed = parse_ok(
        "MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,90,-180\n1,2020-06-30T00:00:01,-90,180\n",
    );
    assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
    assert_eq!(parsed.valid_rows(), 2);
}

#[test]
fn non_finite_coordinate_is_skipped() {
    for value in ["NaN", "inf", "-infinity"] {
        assert_eq!(
            skip_reason(&format!("1,2020-06-30T00:00:00,{value},2")),
            SkipReason::NotFinite {
                column: "LAT",
                value: value.to_owned()
            },
            "{value}"
        );
    }
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,1,NaN"),
        SkipReason::NotFinite {
            column: "LON",
            value: "NaN".to_owned()
        }
    );
}

#[test]
fn non_numeric_coordinate_is_skipped() {
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,forty,2"),
        SkipReason::InvalidNumber {
            column: "LAT",
            value: "forty".to_owned()
        }
    );
    assert_eq!(
        skip_reason("1,2020-06-30T00:00:00,1,"),
        SkipReason::Empty { column: "LON" }
    );
}

#[test]
fn invalid_utf8_mmsi_is_skipped() {
    let mut bytes = b"MMSI,BaseDateTime,LAT,LON\n".to_vec();
    bytes.extend_from_slice(b"36\xff7,2020-06-30T00:00:00,1,2\n");
    let parsed = parse(bytes.as_slice(), now(), |_| {}, |_| {}).unwrap();
    assert_eq!(
        parsed.skipped[0].reason,
        SkipReason::NotUtf8 { column: "MMSI" }
    );
}

#[test]
fn timestamp_forms_are_utc() {
    let expected = time("2020-06-30T12:34:56Z");
    for text in [
        "2020-06-30T12:34:56",
        "2020-06-30 12:34:56",
        "2020-06-30T12:34:56Z",
        "2020-06-30 12:34:56Z",
        "2020-06-30T14:34:56+02:00",
        "2020-06-30T07:34:56-05:00",
    ] {
        assert_eq!(parse_timestamp(text), Some(expected), "{text}");
    }
}

#[test]
fn timestamp_fraction_is_truncated_to_microseconds() {
    assert_eq!(
        parse_timestamp("2020-06-30T12:34:56.123456789"),
        Some(time("2020-06-30T12:34:56.123456Z"))
    );
}

#[test]
fn skipped_rows_carry_line_numbers() {
    let text = "\
MMSI,BaseDateTime,LAT,LON
1,2020-06-30T00:00:00,1,2
,2020-06-30T00:00:00,1,2
1,2020-06-30T00:00:01,1,2
1,yesterday,1,2
1,2020-06-30T00:00:02,1,2
";
    let parsed = parse_ok(text);
    let lines: Vec<u64> = parsed.skipped.iter().map(|row| row.line).collect();
    assert_eq!(lines, vec![3, 5]);
    assert_eq!(parsed.vessels[0].lines, vec![2, 4, 6]);
    assert_eq!(parsed.rows_read, 5);
}

#[test]
fn line_numbers_count_quoted_newlines() {
    let text = "\
MMSI,BaseDateTime,LAT,LON,VesselName
1,2020-06-30T00:00:00,1,2,\"TWO
LINES\"
1,2020-06-30T00:00:01,95,2,X
";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].lines, vec![2]);
    assert_eq!(parsed.skipped[0].line, 4);
}

#[test]
fn skipped_row_message_names_line_and_reason() {
    let row = SkippedRow {
        line: 31,
        reason: SkipReason::OutOfRange {
            column: "LAT",
            value: 95.5,
            min: -90.0,
            max: 90.0,
        },
    };
    assert_eq!(
        row.to_string(),
        "line 31: row skipped: LAT 95.5 is outside [-90, 90]"
    );
}

#[test]
fn skip_callback_sees_each_row() {
    let mut seen = Vec::new();
    let text = "MMSI,BaseDateTime,LAT,LON\nx,2020-06-30T00:00:00,1,2\n1,2020-06-30T00:00:00,1,2\n1,now,1,2\n";
    parse(text.as_bytes(), now(), |row| seen.push(row.line), |_| {}).unwrap();
    assert_eq!(seen, vec![2, 4]);
}

#[test]
fn vessels_keep_first_appearance_order() {
    let text = "\
MMSI,BaseDateTime,LAT,LON
30,2020-06-30T00:00:00,1,2
10,2020-06-30T00:00:00,1,2
30,2020-06-30T00:00:01,1,2
20,2020-06-30T00:00:00,1,2
";
    let parsed = parse_ok(text);
    let order: Vec<u64> = parsed.vessels.iter().map(|vessel| vessel.mmsi).collect();
    assert_eq!(order, vec![30, 10, 20]);
    assert_eq!(parsed.vessels[0].lines, vec![2, 4]);
}

#[test]
fn first_non_empty_name_is_used() {
    let text = "\
MMSI,BaseDateTime,LAT,LON,VesselName
1,2020-06-30T00:00:00,1,2,
1,2020-06-30T00:00:01,1,2,  FIRST NAME  
1,2020-06-30T00:00:02,1,2,SECOND NAME
";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].user_name(), "FIRST NAME");
}

#[test]
fn name_of_skipped_row_is_ignored() {
    let text = "\
MMSI,BaseDateTime,LAT,LON,VesselName
1,2020-06-30T00:00:00,95,2,BAD ROW
1,2020-06-30T00:00:01,1,2,GOOD ROW
";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].user_name(), "GOOD ROW");
}

#[test]
fn invalid_name_falls_back_to_next() {
    let long = "N".repeat(201);
    let text = format!(
        "MMSI,BaseDateTime,LAT,LON,VesselName\n7,2020-06-30T00:00:00,1,2,{long}\n7,2020-06-30T00:00:01,1,2,SHORT\n"
    );
    let parsed = parse_ok(&text);
    assert_eq!(parsed.vessels[0].user_name(), "SHORT");
}

#[test]
fn vessel_without_name_is_named_after_mmsi() {
    let parsed =
        parse_ok("MMSI,BaseDateTime,LAT,LON,VesselName\n367000140,2020-06-30T00:00:00,1,2,\n");
    assert_eq!(parsed.vessels[0].user_name(), "MMSI 367000140");
}

#[test]
fn sha256_covers_whole_file() {
    let text = "MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,1,2\n";
    let parsed = parse_ok(text);
    let expected = format!("{:x}", Sha256::digest(text.as_bytes()));
    assert_eq!(parsed.sha256, expected);
}

#[test]
fn sha256_differs_by_content() {
    let first = parse_ok("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,1,2\n");
    let second = parse_ok("MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,1,3\n");
    assert_ne!(first.sha256, second.sha256);
}

#[test]
fn byte_callback_counts_every_byte() {
    let text = "MMSI,BaseDateTime,LAT,LON\n1,2020-06-30T00:00:00,1,2\n";
    let mut total = 0;
    parse(text.as_bytes(), now(), |_| {}, |count| total += count).unwrap();
    assert_eq!(total, text.len());
}

fn report(seconds: i64, latitude: f64) -> LocationReport {
    LocationReport {
        latitude,
        longitude: 0.0,
        recorded_at: time("2020-06-30T00:00:00Z") + TimeDelta::seconds(seconds),
    }
}

#[test]
fn latest_has_greatest_timestamp() {
    let reports = [report(5, 1.0), report(9, 2.0), report(7, 3.0)];
    assert_eq!(expected_latest(&reports, 0..3), Some(1));
}

#[test]
fn latest_on_equal_timestamps_is_later_row() {
    let reports = [
        report(5, 1.0),
        report(9, 2.0),
        report(9, 3.0),
        report(2, 4.0),
    ];
    assert_eq!(expected_latest(&reports, 0..4), Some(2));
}

#[test]
fn latest_ignores_repeated_report() {
    // The third row repeats the first, so it stores nothing and the second row stays latest.
    let reports = [report(9, 1.0), report(9, 2.0), report(9, 1.0)];
    assert_eq!(expected_latest(&reports, 0..3), Some(1));
}

#[test]
fn latest_considers_only_given_indices() {
    let reports = [report(5, 1.0), report(9, 2.0), report(7, 3.0)];
    assert_eq!(expected_latest(&reports, [0, 2]), Some(2));
    assert_eq!(expected_latest(&reports, []), None);
}

#[test]
fn latest_from_parsed_file_with_equal_timestamps() {
    let text = "\
MMSI,BaseDateTime,LAT,LON
1,2020-06-30T00:00:09,40.5,-74.1
1,2020-06-30T00:00:09,40.6,-74.2
1,2020-06-30T00:00:03,40.7,-74.3
";
    let parsed = parse_ok(text);
    let vessel = &parsed.vessels[0];
    let latest = expected_latest(&vessel.reports, 0..vessel.reports.len()).unwrap();
    assert_eq!(vessel.lines[latest], 3);
}

fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/ais")
        .join(name)
}

fn parse_data_file(name: &str) -> ParsedFile {
    let file = std::fs::File::open(data_file(name)).unwrap();
    parse(std::io::BufReader::new(file), Utc::now(), |_| {}, |_| {}).unwrap()
}

#[test]
fn first_hour_file_parses_without_skips() {
    let parsed = parse_data_file("nyharbor_2020_06_30_first_hour.csv");
    assert_eq!(parsed.rows_read, 8_689);
    assert_eq!(parsed.skipped, vec![]);
    assert_eq!(parsed.valid_rows(), 8_689);
    assert_eq!(parsed.vessels.len(), 295);
    assert_eq!(parsed.vessels[0].mmsi, 367_000_140);
    assert_eq!(parsed.vessels[0].user_name(), "SAMUEL I NEWHOUSE");
}

#[test]
fn first_hour_file_names_most_vessels() {
    let parsed = parse_data_file("nyharbor_2020_06_30_first_hour.csv");
    let unnamed = parsed
        .vessels
        .iter()
        .filter(|vessel| vessel.vessel_name.is_none())
        .count();
    // 804 rows have an empty VesselName; they belong to a minority of the vessels.
    assert!(unnamed > 0, "some vessels never report a name");
    assert!(
        unnamed < parsed.vessels.len() / 2,
        "{unnamed} vessels unnamed"
    );
}

#[test]
fn week_file_parses_without_skips() {
    let parsed = parse_data_file("nyharbor_2020_12_first_week.csv");
    assert_eq!(parsed.rows_read, 172_679);
    assert_eq!(parsed.skipped, vec![]);
    assert_eq!(parsed.valid_rows(), 172_679);
    assert_eq!(parsed.vessels.len(), 140);
    assert!(parsed
        .vessels
        .iter()
        .all(|vessel| vessel.user_name() == format!("MMSI {}", vessel.mmsi)));
}

#[test]
fn week_file_reports_stay_in_file_order() {
    let parsed = parse_data_file("nyharbor_2020_12_first_week.csv");
    for vessel in &parsed.vessels {
        assert!(
            vessel.lines.windows(2).all(|pair| pair[0] < pair[1]),
            "vessel {}",
            vessel.mmsi
        );
    }
}

#[test]
fn crlf_line_endings_are_read() {
    let text =
        "MMSI,BaseDateTime,LAT,LON\r\n1,2020-06-30T00:00:00,1,2\r\n1,2020-06-30T00:00:01,95,2\r\n";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].lines, vec![2]);
    assert_eq!(parsed.skipped[0].line, 3);
}

#[test]
fn blank_lines_are_not_rows_but_count_as_lines() {
    let text =
        "MMSI,BaseDateTime,LAT,LON\n\n1,2020-06-30T00:00:00,1,2\n\n1,2020-06-30T00:00:01,95,2\n";
    let parsed = parse_ok(text);
    assert_eq!(parsed.rows_read, 2);
    assert_eq!(parsed.vessels[0].lines, vec![3]);
    assert_eq!(parsed.skipped[0].line, 5);
}

#[test]
fn carriage_return_line_endings_are_read() {
    let text =
        "MMSI,BaseDateTime,LAT,LON\r1,2020-06-30T00:00:00,1,2\r\r1,2020-06-30T00:00:01,95,2\r";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].lines, vec![2]);
    assert_eq!(parsed.skipped[0].line, 4);
}

#[test]
fn crlf_inside_quotes_counts_as_a_line() {
    let text = "MMSI,BaseDateTime,LAT,LON,VesselName\r\n\r\n1,2020-06-30T00:00:00,1,2,\"A\r\nB\"\r\n1,2020-06-30T00:00:01,95,2,C\r\n";
    let parsed = parse_ok(text);
    assert_eq!(parsed.vessels[0].lines, vec![3]);
    assert_eq!(parsed.skipped[0].line, 5);
}

#[test]
fn lines_stay_right_across_read_buffers() {
    // Enough rows to span many reads of the csv reader's buffer, with blank lines between.
    let mut text = String::from("MMSI,BaseDateTime,LAT,LON\r\n");
    for row in 0..5_000 {
        text.push_str(&format!("1,2020-06-30T00:00:00,{}.5,2\r\n\r\n", row % 80));
    }
    let parsed = parse_ok(&text);
    let expected: Vec<u64> = (0..5_000).map(|row| 2 + 2 * row).collect();
    assert_eq!(parsed.vessels[0].lines, expected);
}
