//! Describes read-your-writes in the OpenAPI document: the `X-Min-Position` header, the
//! `min_position` query parameter, and their 400 and 503 responses on every `/v1` path, so
//! that a path added later is described without repeating them in its annotation.

use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Content, Ref, Required, ResponseBuilder};
use utoipa::Modify;

use super::{MIN_POSITION_HEADER, MIN_POSITION_PARAMETER};

/// Adds the minimum-position header, parameter and responses to every `/v1` operation.
#[derive(Debug, Clone, Copy)]
pub struct MinPositionDocs;

impl Modify for MinPositionDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                describe_min_position(operation);
            }
        }
    }
}

fn describe_min_position(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    parameters.push(position_parameter(MIN_POSITION_HEADER, ParameterIn::Header));
    parameters.push(position_parameter(
        MIN_POSITION_PARAMETER,
        ParameterIn::Query,
    ));

    let responses = &mut operation.responses.responses;
    responses.entry("400".to_owned()).or_insert_with(|| {
        error_response(
            "X-Min-Position or min_position is not a positive integer, or the two differ",
        )
    });
    responses.entry("503".to_owned()).or_insert_with(|| {
        error_response(
            "not_yet_consistent: the read models did not reach the minimum position in time; \
             the response has Retry-After",
        )
    });
}

fn position_parameter(name: &str, location: ParameterIn) -> Parameter {
    let schema = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1));
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(Required::False)
        .description(Some(
            "Position returned by a command. The request waits until the read models have \
             processed that event, up to MERIDIAN_READ_WAIT_MAX_MS. The header and the \
             parameter may both be given only with the same value.",
        ))
        .schema(Some(schema))
        .build()
}

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}
