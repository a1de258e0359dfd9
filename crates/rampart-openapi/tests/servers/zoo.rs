//! The zoo API's server on its generated crate (see shop.rs): every operation answers the
//! status the spec documents, with `x-served-by`. The schemathesis test runs it to check that
//! the generated types take every body the spec allows (unions told apart by `kind`,
//! recursive recipes, tuples).

use std::future::Future;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use zoo_api::params::{ClearPlanPath, ListAnimalsQuery, SetPlanPath};
use zoo_api::server::{Api, router};
use zoo_api::types::{Animal, SetPlanBody};

struct Zoo;

fn answer(status: StatusCode) -> Response {
    (status, [("x-served-by", "zoo-server")]).into_response()
}

impl Api for Zoo {
    fn list_animals(
        &self,
        _query: ListAnimalsQuery,
        _headers: HeaderMap,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::OK) }
    }

    fn add_animal(&self, _headers: HeaderMap, _body: Animal) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::CREATED) }
    }

    fn set_plan(
        &self,
        _path: SetPlanPath,
        _headers: HeaderMap,
        _body: Option<SetPlanBody>,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::NO_CONTENT) }
    }

    fn clear_plan(
        &self,
        _path: ClearPlanPath,
        _headers: HeaderMap,
    ) -> impl Future<Output = Response> + Send {
        async { answer(StatusCode::NO_CONTENT) }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    axum::serve(listener, router(Arc::new(Zoo))).await.unwrap();
}
