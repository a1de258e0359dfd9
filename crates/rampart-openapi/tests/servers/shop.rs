//! The shop API's server, as a user of `rampart openapi codegen` writes it: the generated
//! crate's `Api` trait implemented, its router served. The schemathesis test
//! (crates/rampart/tests/openapi_schemathesis.rs) copies this file into the generated crate as
//! `src/bin/shop-server.rs`. Every answer is the status the spec documents, with
//! `x-served-by: shop-server`, so a client can tell the server's answers from the gateway's.

use std::future::Future;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shop_api::params::{GetOrderPath, ListOrdersQuery, ReplaceOrderPath};
use shop_api::server::{Api, router};
use shop_api::types::NewOrder;

struct Shop;

fn answer(status: StatusCode) -> Response {
    (status, [("x-served-by", "shop-server")]).into_response()
}

impl Api for Shop {
    fn list_orders(
        &self,
        _query: ListOrdersQuery,
        _headers: HeaderMap,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::OK) }
    }

    fn create_order(
        &self,
        _headers: HeaderMap,
        _body: NewOrder,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::CREATED) }
    }

    fn get_order(
        &self,
        _path: GetOrderPath,
        _headers: HeaderMap,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::OK) }
    }

    fn replace_order(
        &self,
        _path: ReplaceOrderPath,
        _headers: HeaderMap,
        _body: axum::body::Bytes,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::OK) }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    axum::serve(listener, router(Arc::new(Shop))).await.unwrap();
}
