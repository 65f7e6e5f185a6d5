//! An HTTP/2 (prior knowledge) client that sends a request as HEADERS, DATA and a trailing
//! HEADERS block carrying END_STREAM: the way gRPC and some webhook senders end a request,
//! and what curl cannot send.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::net::TcpStream;

use super::Response;

/// Sends `POST path` with `headers`, `body` and then `trailers` over h2c; the answer's status,
/// headers and body (trailers of the answer are dropped).
pub fn send_with_trailers(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> Response {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.expect("h2 ready");
        let mut request = Request::post(format!("http://127.0.0.1:{port}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("request");
        let (answer, mut stream) = client.send_request(request, false).expect("send headers");
        stream
            .send_data(Bytes::copy_from_slice(body), false)
            .expect("send data");
        let mut map = HeaderMap::new();
        for (name, value) in trailers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("trailer name"),
                HeaderValue::from_str(value).expect("trailer value"),
            );
        }
        stream.send_trailers(map).expect("send trailers");
        let answer = answer.await.expect("answer");
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = answer.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("answer body");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Response {
            status,
            headers,
            body: bytes,
        }
    })
}

/// Serves h2c on a free port until the process ends, answering every request `200` with
/// `content-type: application/json`, `body` and a trailer; returns the port.
pub fn serve_with_trailers(body: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        let answer = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(())
                            .expect("answer");
                        let Ok(mut stream) = respond.send_response(answer, false) else {
                            continue;
                        };
                        let _ = stream.send_data(Bytes::from_static(body), false);
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-run-digest", HeaderValue::from_static("abc"));
                        let _ = stream.send_trailers(trailers);
                    }
                });
            }
        });
    });
    port
}
