//! Rules for `http` tasks: a known method, an absolute http or https URL, headers that cannot
//! inject others, a bounded body, and success statuses that are http statuses.

use super::SpecError;
use crate::limits::*;
use crate::text::quoted;
use crate::v1::HttpTask;

/// Methods an http task may use; empty means GET.
const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The fields of the http task of `steps[i]`, named `name` in messages.
pub(super) fn check_http(i: usize, name: &str, http: &HttpTask) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].http.{field}");
    if !http.method.is_empty() && !HTTP_METHODS.contains(&http.method.as_str()) {
        return Err(SpecError::new(
            at("method"),
            format!(
                "step {name} http method {} is not one of {}",
                quoted(&http.method),
                HTTP_METHODS.join(", ")
            ),
        ));
    }
    if http.url.len() > URL_LEN_MAX {
        return Err(SpecError::new(
            at("url"),
            format!(
                "step {name} url is {} bytes long, more than {URL_LEN_MAX}",
                http.url.len()
            ),
        ));
    }
    if let Err(reason) = check_url(&http.url) {
        return Err(SpecError::new(
            at("url"),
            format!("step {name} url {} {reason}", quoted(&http.url)),
        ));
    }
    if http.headers.len() > HTTP_HEADERS_MAX {
        return Err(SpecError::new(
            at("headers"),
            format!(
                "step {name} has {} http headers, more than {HTTP_HEADERS_MAX}",
                http.headers.len()
            ),
        ));
    }
    for (header, value) in &http.headers {
        let field = at(&format!("headers[{}]", quoted(header)));
        check_header(&field, name, header, value)?;
        super::secrets::check_secret_references(&field, name, value)?;
    }
    if http.body.len() > HTTP_BODY_BYTES_MAX {
        return Err(SpecError::new(
            at("body"),
            format!(
                "step {name} http body is {} bytes, more than {HTTP_BODY_BYTES_MAX}",
                http.body.len()
            ),
        ));
    }
    super::secrets::check_secret_references(&at("url"), name, &http.url)?;
    super::secrets::check_secret_references(&at("body"), name, &http.body)?;
    if http.success_statuses.len() > HTTP_SUCCESS_STATUSES_MAX {
        return Err(SpecError::new(
            at("success_statuses"),
            format!(
                "step {name} lists {} success statuses, more than {HTTP_SUCCESS_STATUSES_MAX}",
                http.success_statuses.len()
            ),
        ));
    }
    for (k, status) in http.success_statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            return Err(SpecError::new(
                at(&format!("success_statuses[{k}]")),
                format!("step {name} success status {status} is not an http status (100..=599)"),
            ));
        }
    }
    Ok(())
}

/// One header of an http task, at `field`: a token name, and a bounded value on one line.
fn check_header(field: &str, name: &str, header: &str, value: &str) -> Result<(), SpecError> {
    if header.is_empty()
        || header.len() > HTTP_HEADER_NAME_LEN_MAX
        || !header.bytes().all(is_header_name_byte)
    {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} http header name {} must be 1..={HTTP_HEADER_NAME_LEN_MAX} token characters",
                quoted(header)
            ),
        ));
    }
    if value.len() > HTTP_HEADER_VALUE_BYTES_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} http header {} is {} bytes, more than {HTTP_HEADER_VALUE_BYTES_MAX}",
                quoted(header),
                value.len()
            ),
        ));
    }
    // A CR or LF would let a value inject headers of its own.
    if value.contains(['\r', '\n', '\0']) {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} http header {} has a line break or nul in its value",
                quoted(header)
            ),
        ));
    }
    Ok(())
}

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An absolute http or https URL with a host; the reason completes "url "..." ...".
///
/// A URL holding a template (`{{ input.host }}`) is only checked for its scheme: the agent
/// checks it again once the template is filled in.
fn check_url(url: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("is not an absolute http or https url");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("must use the http or https scheme");
    }
    if rest.contains("{{") {
        return if rest.is_empty() {
            Err("has no host")
        } else {
            Ok(())
        };
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("has an unterminated ipv6 address");
        };
        if !host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("has an invalid ipv6 address");
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("has characters after its ipv6 address"),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("has a host with a character outside letters, digits, \"-\", \".\" and \"_\"");
    }
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err("has an invalid port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::v1::{WorkflowSpec, step_spec::Task};
    use crate::validate::test_support::*;

    fn with_http(task: HttpTask) -> WorkflowSpec {
        one_step(|s| s.task = Some(Task::Http(task)))
    }

    #[test]
    fn http_url_rules() {
        for url in [
            "http://127.0.0.1:8080/health",
            "https://assets.example/api/orders?x=1#y",
            "HTTPS://user:pw@example.com",
            "http://[::1]:9000/",
            "http://localhost",
            "https://{{ input.host }}/api",
        ] {
            assert_valid(&with_http(http("GET", url)));
        }
        for (url, reason) in [
            ("", "is not an absolute http or https url"),
            ("example.com/path", "is not an absolute http or https url"),
            ("ftp://example.com", "must use the http or https scheme"),
            ("http://", "has no host"),
            ("http:///path", "has no host"),
            ("http://user@:80/", "has no host"),
            (
                "http://exa mple.com",
                "contains whitespace or a control character",
            ),
            (
                "http://ex%61mple.com",
                "has a host with a character outside letters, digits, \"-\", \".\" and \"_\"",
            ),
            ("http://example.com:http/", "has an invalid port"),
            ("http://example.com:99999/", "has an invalid port"),
            ("http://example.com:/", "has an invalid port"),
            ("http://[::1/", "has an unterminated ipv6 address"),
            ("http://[::1]x/", "has characters after its ipv6 address"),
            ("http://[zz]/", "has an invalid ipv6 address"),
        ] {
            assert_invalid(
                &with_http(http("GET", url)),
                "steps[0].http.url",
                &format!("step \"only\" url {} {reason}", quoted(url)),
            );
        }
        let long_url = format!("http://h/{}", "a".repeat(URL_LEN_MAX));
        assert_invalid(
            &with_http(http("GET", &long_url)),
            "steps[0].http.url",
            "step \"only\" url is 8201 bytes long, more than 8192",
        );
    }

    #[test]
    fn http_rules() {
        assert_valid(&with_http(http("", "http://h")));
        assert_invalid(
            &with_http(http("FETCH", "http://h")),
            "steps[0].http.method",
            "step \"only\" http method \"FETCH\" is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        );
        let mut headers = HttpTask {
            headers: BTreeMap::from([("X-Token".to_string(), "abc".to_string())]),
            ..http("POST", "http://h")
        };
        assert_valid(&with_http(headers.clone()));
        headers
            .headers
            .insert("Bad Header".to_string(), "v".to_string());
        assert_invalid(
            &with_http(headers.clone()),
            "steps[0].http.headers[\"Bad Header\"]",
            "step \"only\" http header name \"Bad Header\" must be 1..=256 token characters",
        );
        headers.headers.remove("Bad Header");
        headers
            .headers
            .insert("X-Evil".to_string(), "a\r\nHost: evil".to_string());
        assert_invalid(
            &with_http(headers),
            "steps[0].http.headers[\"X-Evil\"]",
            "step \"only\" http header \"X-Evil\" has a line break or nul in its value",
        );
        assert_invalid(
            &with_http(HttpTask {
                headers: (0..=HTTP_HEADERS_MAX)
                    .map(|i| (format!("h{i}"), String::new()))
                    .collect(),
                ..http("GET", "http://h")
            }),
            "steps[0].http.headers",
            "step \"only\" has 65 http headers, more than 64",
        );
        assert_invalid(
            &with_http(HttpTask {
                body: "b".repeat(HTTP_BODY_BYTES_MAX + 1),
                ..http("POST", "http://h")
            }),
            "steps[0].http.body",
            "step \"only\" http body is 262145 bytes, more than 262144",
        );
        assert_valid(&with_http(HttpTask {
            success_statuses: vec![200, 404],
            ..http("GET", "http://h")
        }));
        assert_invalid(
            &with_http(HttpTask {
                success_statuses: vec![200, 600],
                ..http("GET", "http://h")
            }),
            "steps[0].http.success_statuses[1]",
            "step \"only\" success status 600 is not an http status (100..=599)",
        );
        assert_invalid(
            &with_http(HttpTask {
                success_statuses: vec![200; HTTP_SUCCESS_STATUSES_MAX + 1],
                ..http("GET", "http://h")
            }),
            "steps[0].http.success_statuses",
            "step \"only\" lists 65 success statuses, more than 64",
        );
    }
}
