//! The controller's API client. By default kube's own stack, which speaks HTTP/1.1: each request
//! in flight has a connection of its own, opened (with a TLS handshake) when the idle ones are
//! all busy. With `--http2`, kube's own layers (base URI, credentials, extra headers) over a
//! connector that offers HTTP/2 by ALPN: every request is a stream on one connection to the
//! apiserver, and a burst of requests (a status write and a Job create of many batches at once)
//! opens no new connections. An apiserver that does not offer HTTP/2 gets HTTP/1.1 as before.

use http::{Request, Response};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The service under a client built by [`http2_builder`] (the same type kube's default stack
/// has, so the same layers fit on it).
pub type Stack = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// A client builder for `config` that offers HTTP/2 (and falls back to HTTP/1.1).
pub fn http2_builder(config: &kube::Config) -> anyhow::Result<ClientBuilder<Stack>> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let mut https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name.clone().try_into().map_err(|e| anyhow::anyhow!("tls-server-name {name:?}: {e}"))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = https.enable_http1().enable_http2().wrap_connector(http);
    let client: HyperClient<_, Body> = HyperClient::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .map_response(boxed_body)
        .service(client)
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace.clone()))
}

fn boxed_body(response: Response<hyper::body::Incoming>) -> Response<Box<DynBody>> {
    response.map(|body| Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>)
}
