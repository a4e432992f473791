//! The OpenAPI 3.1 document served at `/openapi.json`.

use utoipa::OpenApi;

use crate::auth::openapi::BearerDocs;
use crate::error::{ErrorBody, ReadProgress};
use crate::read_your_writes::openapi::MinPositionDocs;
use crate::routes::{events, health, location_snapshot, locations, stats, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meridian query API",
        description = "Read models of Meridian: users, profiles, locations, projection lag and \
                       the stored events. Every error has the body ErrorBody and every response an \
                       x-request-id header. Every /v1 route needs an access token of the command \
                       service and accepts X-Min-Position or min_position to read its own writes."
    ),
    paths(
        health::healthz,
        users::get_user,
        users::find_users_by_email,
        users::get_profile,
        users::get_profile_image,
        locations::get_latest_location,
        locations::list_locations,
        location_snapshot::get_latest_locations,
        stats::get_stats,
        events::list_events,
        openapi_json,
    ),
    components(schemas(ErrorBody, ReadProgress)),
    modifiers(&MinPositionDocs, &BearerDocs),
    tags(
        (name = "users", description = "Users and profiles"),
        (name = "locations", description = "Latest location and location history"),
        (name = "stats", description = "Counts and projection lag"),
        (name = "events", description = "The stored events in position order, for replaying history"),
        (name = "health", description = "Liveness and the API description"),
    )
)]
pub struct ApiDoc;

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
