//! `GET /v1/audit`: filters, paging, parameter errors, and entries of erased users.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use meridian_auth::Role;
use meridian_command_service::commands::Actor;
use serde_json::{json, Value};

use crate::common::{assert_error, report, TestApp};

const USER_AGENT: &str = "meridian-audit-test/1.0";

impl TestApp {
    /// Returns the entries of `GET /v1/audit?<query>`, failing unless the status is 200.
    async fn audit(&self, query: &str) -> (Vec<Value>, Value) {
        let response = self.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        let entries = response.body["entries"]
            .as_array()
            .expect("entries is an array")
            .clone();
        (entries, response.body["next_after"].clone())
    }

    /// Records one location report of `user_id` with a user agent.
    async fn record(&self, user_id: &str, seconds: i64) {
        let response = self
            .send(
                Method::POST,
                &format!("/v1/users/{user_id}/locations"),
                &report(seconds, 40.6401, -74.0745),
                &[("user-agent", USER_AGENT)],
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    }

    /// Sends a command with an access token of `actor`.
    async fn send_by(&self, actor: &Actor, method: Method, path: &str, body: &Value) {
        let role = actor.role.parse::<Role>().expect("a role name");
        let token = self.token_for(&actor.user_id, role);
        let response = self.send_as(Some(&token), method, path, body).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    }

    /// Returns the database clock, which sets `stored_at`.
    async fn database_now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn positions(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .map(|entry| entry["position"].as_i64().expect("position is an integer"))
        .collect()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[tokio::test]
async fn audit_lists_events_of_one_user() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-1@ais.example").await;
    let other_id = app.register("audit-2@ais.example").await;
    app.record(&user_id, 0).await;
    app.record(&other_id, 0).await;
    let response = app
        .put(
            &format!("/v1/users/{user_id}/profile"),
            &json!({"settings": {"units": "metric"}}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);

    let (entries, next_after) = app.audit(&format!("user_id={user_id}")).await;

    let types: Vec<&str> = entries
        .iter()
        .map(|entry| entry["aggregate_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["User", "LocationTrack", "Profile"]);
    for entry in &entries {
        assert_eq!(entry["user_id"], user_id.as_str(), "{entry}");
        assert!(entry["request_id"].is_string(), "{entry}");
        assert_eq!(entry["personal_data"], "readable", "{entry}");
    }
    let location = &entries[1];
    assert_eq!(location["event_type"], "LocationRecorded");
    assert_eq!(location["user_agent"], USER_AGENT);
    assert_eq!(location["client_addr"], Value::Null, "oneshot has no peer");
    assert_eq!(location["actor_id"], app.admin_id.as_str());
    assert_eq!(next_after, Value::Null);
    let sorted = {
        let mut sorted = positions(&entries);
        sorted.sort_unstable();
        sorted
    };
    assert_eq!(positions(&entries), sorted, "ordered by position");
    app.finish().await;
}

#[tokio::test]
async fn audit_filters_by_actor() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-3@ais.example").await;
    let admin = Actor {
        user_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned(),
        role: "admin".to_owned(),
    };
    app.send_by(
        &admin,
        Method::PATCH,
        &format!("/v1/users/{user_id}"),
        &json!({"name": "Renamed By Admin"}),
    )
    .await;
    app.record(&user_id, 0).await;

    let (entries, _) = app.audit(&format!("actor_id={}", admin.user_id)).await;

    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["event_type"], "NameChanged");
    assert_eq!(entries[0]["actor_id"], admin.user_id.as_str());
    assert_eq!(entries[0]["actor_role"], "admin");
    assert_eq!(entries[0]["user_id"], user_id.as_str());
    app.finish().await;
}

#[tokio::test]
async fn audit_filters_by_time_range() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-4@ais.example").await;
    let start = app.database_now().await;
    app.record(&user_id, 0).await;
    app.record(&user_id, 10).await;
    let end = app.database_now().await;
    app.record(&user_id, 20).await;
    let (all, _) = app.audit(&format!("user_id={user_id}")).await;
    assert_eq!(all.len(), 4);

    let (between, _) = app
        .audit(&format!("from={}&to={}", rfc3339(start), rfc3339(end)))
        .await;
    let (before, _) = app.audit(&format!("to={}", rfc3339(start))).await;
    let (after, _) = app.audit(&format!("from={}", rfc3339(end))).await;

    let all = positions(&all);
    assert_eq!(positions(&before), all[..1], "registration only");
    assert_eq!(positions(&between), all[1..3], "the first two reports");
    assert_eq!(positions(&after), all[3..], "the last report");
    app.finish().await;
}

#[tokio::test]
async fn audit_pages_with_after() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-5@ais.example").await;
    for seconds in [0, 10, 20, 30] {
        app.record(&user_id, seconds).await;
    }
    let (all, _) = app.audit("").await;
    assert_eq!(all.len(), 5);

    let mut paged = Vec::new();
    let mut pages = 0;
    let mut query = "limit=2".to_owned();
    loop {
        let (entries, next_after) = app.audit(&query).await;
        pages += 1;
        assert!(entries.len() <= 2, "{entries:?}");
        paged.extend(positions(&entries));
        match next_after.as_i64() {
            Some(after) => query = format!("limit=2&after={after}"),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }

    assert_eq!(paged, positions(&all));
    assert_eq!(pages, 3);
    app.finish().await;
}

#[tokio::test]
async fn exact_last_page_has_no_next() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-6@ais.example").await;
    app.record(&user_id, 0).await;

    let (entries, next_after) = app.audit("limit=2").await;

    assert_eq!(entries.len(), 2);
    assert_eq!(next_after, Value::Null);
    app.finish().await;
}

#[tokio::test]
async fn audit_rejects_each_bad_parameter() {
    let app = TestApp::start().await;

    for (query, field) in [
        ("user_id=not-a-uuid", "user_id"),
        ("actor_id=42", "actor_id"),
        ("from=yesterday", "from"),
        ("to=2020-12-01", "to"),
        ("from=2020-12-02T00:00:00Z&to=2020-12-01T00:00:00Z", "to"),
        ("after=-5", "after"),
        ("after=first", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("limit=5&limit=6", "limit"),
        ("user=7c9e6679-7425-40de-944b-e07fc1f90ae7", "user"),
    ] {
        let response = app.get(&format!("/v1/audit?{query}")).await;

        assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(response.body["field"], field, "query {query}");
        assert!(
            response.body["reason"].is_string(),
            "query {query}: {}",
            response.body
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn audit_hides_erased_personal_data() {
    let app = TestApp::start().await;
    let user_id = app.register("audit-7@ais.example").await;
    let other_id = app.register("audit-8@ais.example").await;
    app.record(&user_id, 0).await;
    app.record(&other_id, 0).await;
    let (before, _) = app.audit(&format!("user_id={user_id}")).await;
    assert_eq!(before[1]["user_agent"], USER_AGENT);

    let response = app
        .raw(
            Method::DELETE,
            &format!("/v1/users/{user_id}"),
            None,
            Body::empty(),
            &[("user-agent", USER_AGENT)],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let (after, _) = app.audit(&format!("user_id={user_id}")).await;

    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after[2]["event_type"], "UserErased");
    for (entry, earlier) in after.iter().zip(&before) {
        assert_eq!(entry["position"], earlier["position"]);
        assert_eq!(entry["event_type"], earlier["event_type"]);
        assert_eq!(entry["stored_at"], earlier["stored_at"]);
        assert_eq!(entry["request_id"], earlier["request_id"]);
    }
    for entry in &after {
        assert_eq!(entry["personal_data"], "erased", "{entry}");
        assert_eq!(entry["user_agent"], Value::Null, "{entry}");
        assert_eq!(entry["client_addr"], Value::Null, "{entry}");
    }
    let (others, _) = app.audit(&format!("user_id={other_id}")).await;
    assert_eq!(others[1]["personal_data"], "readable");
    assert_eq!(others[1]["user_agent"], USER_AGENT);
    app.finish().await;
}
