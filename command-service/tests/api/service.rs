use axum::http::{Method, StatusCode};
use meridian_command_service::serve;
use serde_json::Value;

use crate::common::{assert_error, TestApp};

#[tokio::test]
async fn healthz_is_ok() {
    let app = TestApp::start().await;

    let response = app.get("/healthz").await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body["status"], "ok");
    assert!(response.header("x-request-id").is_some());
    app.finish().await;
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = TestApp::start().await;

    let response = app.get("/openapi.json").await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body["openapi"], "3.1.0");
    let paths = &response.body["paths"];
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/users/{id}", "patch"),
        ("/v1/users/{id}/profile", "put"),
        ("/v1/users/{id}/locations", "post"),
        ("/v1/audit", "get"),
        ("/healthz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is missing"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn unknown_route_is_not_found_json() {
    let app = TestApp::start().await;

    let response = app.get("/v1/nothing").await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}

#[tokio::test]
async fn wrong_method_is_json_error() {
    let app = TestApp::start().await;

    let response = app.get("/v1/users").await;

    assert_error(
        &response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    app.finish().await;
}

#[tokio::test]
async fn request_id_is_echoed_in_errors() {
    let app = TestApp::start().await;

    let response = app
        .raw(
            Method::POST,
            "/v1/users",
            Some("application/json"),
            "{",
            &[("x-request-id", "client-chosen-id")],
        )
        .await;

    assert_eq!(response.header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(response.body["request_id"], "client-chosen-id");
    app.finish().await;
}

#[tokio::test]
async fn serve_answers_on_real_socket() {
    let app = TestApp::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app.state.clone(), async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut raw)
        .await
        .unwrap();

    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    app.finish().await;
}
