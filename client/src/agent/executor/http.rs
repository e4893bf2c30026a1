//! The `http` executor: one request; the status decides success, the body is the output.

use baton_proto::limits::OUTPUT_BYTES_MAX;
use reqwest::header::{HeaderName, HeaderValue};

use crate::agent::executor::TaskResult;
use crate::agent::handler::AttemptControl;
use crate::agent::tail::head_str;

/// An http task with its templates filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpJob {
    /// Empty = GET.
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Empty = 200..=299.
    pub success_statuses: Vec<u32>,
}

/// Whether `status` counts as success for `job`.
pub(crate) fn is_success(success_statuses: &[u32], status: u16) -> bool {
    if success_statuses.is_empty() {
        (200..=299).contains(&status)
    } else {
        success_statuses.contains(&u32::from(status))
    }
}

/// The HTTP client every http step of an agent shares (one connection pool). Uses rustls with
/// the ring provider, installed process-wide unless the application installed one first.
pub(crate) fn new_client() -> Result<reqwest::Client, reqwest::Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .user_agent(concat!("baton-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends the request and reads at most [`OUTPUT_BYTES_MAX`] of the answer; stops (dropping
/// the connection) when `control` fires, which is how the execution timeout applies here.
pub(crate) async fn run(
    client: &reqwest::Client,
    job: &HttpJob,
    control: &AttemptControl,
) -> TaskResult {
    let method_name = if job.method.trim().is_empty() {
        "GET".to_string()
    } else {
        job.method.trim().to_ascii_uppercase()
    };
    let Ok(method) = reqwest::Method::from_bytes(method_name.as_bytes()) else {
        return TaskResult::failed(format!("http.method {method_name:?} is not a valid method"));
    };
    let url = match reqwest::Url::parse(&job.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        // Not the url itself: filled in, it may hold a secret in a form masking cannot see.
        Ok(_) => return TaskResult::failed("http.url: not an http or https url"),
        Err(error) => return TaskResult::failed(format!("http.url: {error}")),
    };
    let mut request = client.request(method, url);
    for (name, value) in &job.headers {
        let Ok(name_value) = HeaderName::from_bytes(name.as_bytes()) else {
            return TaskResult::failed(format!(
                "http.headers: {name:?} is not a valid header name"
            ));
        };
        let Ok(header_value) = HeaderValue::from_str(value) else {
            return TaskResult::failed(format!("http.headers.{name}: not a valid header value"));
        };
        request = request.header(name_value, header_value);
    }
    if !job.body.is_empty() {
        request = request.body(job.body.clone());
    }
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        let mut body: Vec<u8> = Vec::new();
        // Chunk by chunk, so that a huge answer is cut off rather than buffered whole.
        while body.len() <= OUTPUT_BYTES_MAX {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    };
    let (status, body) = tokio::select! {
        answer = exchange => match answer {
            Ok(answer) => answer,
            // Without the url (percent-encoded, a secret in it would pass the mask).
            Err(error) => return TaskResult::failed(format!("http request failed: {}", error_chain(&error.without_url()))),
        },
        _ = control.stopped() => return TaskResult::failed("http request abandoned"),
    };
    let text = String::from_utf8_lossy(&body);
    let output = head_str(&text, OUTPUT_BYTES_MAX).to_string();
    if is_success(&job.success_statuses, status.as_u16()) {
        TaskResult::succeeded(output)
    } else {
        TaskResult {
            success: false,
            output,
            error: format!("http status {status} is not a success status for this step"),
            exit_code: None,
        }
    }
}

/// `error sending request: connection refused`: reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
