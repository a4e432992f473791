//! Describes authentication in the OpenAPI document: the bearer scheme, and on every `/v1`
//! operation the security requirement and the 401 and 429 responses, so that a path added
//! later is described without repeating them. Each operation lists its own 403.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, Content, Ref, ResponseBuilder};
use utoipa::Modify;

/// Name of the security scheme in `components.securitySchemes`.
pub const SCHEME: &str = "bearer";

/// Adds the bearer scheme and, to every `/v1` operation, its requirement and responses.
#[derive(Debug, Clone, Copy)]
pub struct BearerDocs;

impl Modify for BearerDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An access token from POST /v1/auth/login or /v1/auth/refresh of the command \
                 service, sent as Authorization: Bearer <token>.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Components::new)
            .add_security_scheme(SCHEME, SecurityScheme::Http(scheme));

        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation
                    .security
                    .get_or_insert_with(Vec::new)
                    .push(SecurityRequirement::new(SCHEME, Vec::<String>::new()));
                let responses = &mut operation.responses.responses;
                responses.entry("401".to_owned()).or_insert_with(|| {
                    error_response(
                        "unauthenticated, invalid_token or token_expired: the access token is \
                         missing or not valid; the response has WWW-Authenticate. On \
                         token_expired, refresh the token and retry.",
                    )
                });
                responses.entry("429".to_owned()).or_insert_with(|| {
                    error_response(
                        "rate_limited: too many requests from this address or by this user; \
                         the response has Retry-After in seconds",
                    )
                });
            }
        }
    }
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
