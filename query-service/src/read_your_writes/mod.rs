//! Read-your-writes for every `/v1` route. A request may carry the `position` that a
//! command returned, as the `X-Min-Position` header or the `min_position` query parameter.
//! The middleware [`wait_for_min_position`] then delays the request until the read-models
//! projection has processed the event at that position, for at most the configured wait.
//! When the wait runs out it returns 503 `not_yet_consistent` with `Retry-After`.
//!
//! - [`progress`]: the PostgreSQL check and the polling loop.
//! - [`openapi`]: adds the header, the parameter and the 503 to every `/v1` operation.

pub mod openapi;
pub mod progress;

use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use meridian_event_log::settings::var_or;

use crate::error::ApiError;
use crate::{AppState, REQUEST_TIMEOUT};

/// Header that carries the position to wait for.
pub const MIN_POSITION_HEADER: &str = "X-Min-Position";
/// Query parameter that carries the position to wait for.
pub const MIN_POSITION_PARAMETER: &str = "min_position";
/// Environment variable of the maximum wait, in milliseconds.
pub const READ_WAIT_VARIABLE: &str = "MERIDIAN_READ_WAIT_MAX_MS";
/// Maximum wait when [`READ_WAIT_VARIABLE`] is unset.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_millis(2000);
/// Largest accepted maximum wait. It leaves one second of [`REQUEST_TIMEOUT`] for the
/// handler, so a request that waited gets the handler's response rather than the timeout.
pub const MAX_READ_WAIT: Duration = REQUEST_TIMEOUT.saturating_sub(Duration::from_secs(1));

/// Reads the maximum wait from [`READ_WAIT_VARIABLE`], or returns [`DEFAULT_READ_WAIT`]
/// when it is unset or empty.
pub fn read_wait_from_env() -> anyhow::Result<Duration> {
    let default = DEFAULT_READ_WAIT.as_millis().to_string();
    parse_read_wait(&var_or(READ_WAIT_VARIABLE, &default))
}

/// Parses a maximum wait in whole milliseconds, from 0 to [`MAX_READ_WAIT`]. With 0 a
/// request checks the read models once and does not wait.
pub fn parse_read_wait(raw: &str) -> anyhow::Result<Duration> {
    let max = MAX_READ_WAIT.as_millis();
    let millis: u64 = raw.trim().parse().with_context(|| {
        format!("{READ_WAIT_VARIABLE} must be a whole number of milliseconds from 0 to {max}, got {raw:?}")
    })?;
    if u128::from(millis) > max {
        anyhow::bail!(
            "{READ_WAIT_VARIABLE} must be at most {max} ms, below the request timeout of {} s, \
             got {millis}",
            REQUEST_TIMEOUT.as_secs()
        );
    }
    Ok(Duration::from_millis(millis))
}

/// Middleware that waits until the read models have processed the event at the requested
/// minimum position. Requests without one pass through without a query.
pub async fn wait_for_min_position(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(min_position) = requested_min_position(&request)? else {
        return Ok(next.run(request).await);
    };

    progress::wait_until_processed(&state.pool, min_position, state.read_wait).await?;
    Ok(next.run(request).await)
}

/// Reads the minimum position from the header and the query string. Every value given
/// must parse, and all of them must name the same position.
fn requested_min_position(request: &Request) -> Result<Option<i64>, ApiError> {
    let mut found = None;

    for value in request.headers().get_all(MIN_POSITION_HEADER) {
        let raw = value.to_str().map_err(|_| {
            ApiError::invalid_field(MIN_POSITION_HEADER, "is not an integer in visible ASCII")
        })?;
        let position = parse_position(MIN_POSITION_HEADER, raw)?;
        merge_position(&mut found, MIN_POSITION_HEADER, position)?;
    }

    if request.uri().query().is_some() {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(request.uri())
            .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))?;
        for (_, raw) in pairs
            .iter()
            .filter(|(name, _)| name == MIN_POSITION_PARAMETER)
        {
            let position = parse_position(MIN_POSITION_PARAMETER, raw)?;
            merge_position(&mut found, MIN_POSITION_PARAMETER, position)?;
        }
    }

    Ok(found.map(|(_, position)| position))
}

/// Parses one position. Positions start at 1, so 0 and negative numbers are rejected.
fn parse_position(field: &str, raw: &str) -> Result<i64, ApiError> {
    let position: i64 = raw.parse().map_err(|_| {
        ApiError::invalid_field(
            field,
            format!(
                "{raw:?} is not an integer from 1 to {}; send the position a command returned",
                i64::MAX
            ),
        )
    })?;
    if position < 1 {
        return Err(ApiError::invalid_field(
            field,
            format!("must be at least 1, got {position}"),
        ));
    }
    Ok(position)
}

/// Records `position` from `field`, or rejects it when an earlier value differs.
fn merge_position(
    found: &mut Option<(&'static str, i64)>,
    field: &'static str,
    position: i64,
) -> Result<(), ApiError> {
    match *found {
        Some((first_field, first)) if first != position => Err(ApiError::invalid_field(
            field,
            format!("{first_field} is {first} but {field} is {position}; send one position"),
        )),
        Some(_) => Ok(()),
        None => {
            *found = Some((field, position));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(uri: &str, headers: &[&str]) -> Request {
        let mut builder = Request::builder().uri(uri);
        for value in headers {
            builder = builder.header(MIN_POSITION_HEADER, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    fn rejected_field(request: &Request) -> String {
        match requested_min_position(request) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn read_wait_defaults_to_two_seconds() {
        let default = DEFAULT_READ_WAIT.as_millis().to_string();
        assert_eq!(parse_read_wait(&default).unwrap(), DEFAULT_READ_WAIT);
        assert_eq!(DEFAULT_READ_WAIT, Duration::from_secs(2));
    }

    #[test]
    fn read_wait_accepts_zero_and_maximum() {
        assert_eq!(parse_read_wait("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_read_wait("9000").unwrap(), MAX_READ_WAIT);
    }

    #[test]
    fn read_wait_rejects_bad_values() {
        for raw in ["9001", "-1", "2s", "", "1.5"] {
            let error = parse_read_wait(raw).unwrap_err().to_string();
            assert!(error.contains(READ_WAIT_VARIABLE), "{raw:?}: {error}");
        }
    }

    #[test]
    fn read_wait_stays_below_request_timeout() {
        assert!(MAX_READ_WAIT < REQUEST_TIMEOUT);
    }

    #[test]
    fn no_header_or_parameter_means_no_wait() {
        let request = request("/v1/stats?limit=5", &[]);
        assert_eq!(requested_min_position(&request).unwrap(), None);
    }

    #[test]
    fn header_and_parameter_are_read() {
        let from_header = request("/v1/stats", &["42"]);
        let from_parameter = request("/v1/stats?min_position=42", &[]);
        assert_eq!(requested_min_position(&from_header).unwrap(), Some(42));
        assert_eq!(requested_min_position(&from_parameter).unwrap(), Some(42));
    }

    #[test]
    fn equal_header_and_parameter_are_accepted() {
        let request = request("/v1/stats?min_position=7", &["7"]);
        assert_eq!(requested_min_position(&request).unwrap(), Some(7));
    }

    #[test]
    fn bad_header_names_header() {
        for value in ["abc", "0", "-3", "", "1.0", "99999999999999999999"] {
            assert_eq!(
                rejected_field(&request("/v1/stats", &[value])),
                MIN_POSITION_HEADER
            );
        }
    }

    #[test]
    fn bad_parameter_names_parameter() {
        for value in ["abc", "0", "-3", "", "1e3"] {
            let uri = format!("/v1/stats?min_position={value}");
            assert_eq!(rejected_field(&request(&uri, &[])), MIN_POSITION_PARAMETER);
        }
    }

    #[test]
    fn differing_header_and_parameter_are_rejected() {
        let request = request("/v1/stats?min_position=8", &["7"]);
        assert_eq!(rejected_field(&request), MIN_POSITION_PARAMETER);
    }

    #[test]
    fn differing_repeated_parameters_are_rejected() {
        let request = request("/v1/stats?min_position=8&min_position=9", &[]);
        assert_eq!(rejected_field(&request), MIN_POSITION_PARAMETER);
    }
}
