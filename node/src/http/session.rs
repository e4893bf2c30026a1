//! Credentials on the HTTP listener: a bearer token in the `Authorization` header (scripts), or
//! the console's session cookie, which holds the token a viewer pasted at `/login` (HttpOnly, so
//! page scripts cannot read it; SameSite=Strict, so other sites' pages do not send it; Secure
//! over HTTPS). A request authenticated by the cookie that changes something must also carry the
//! session's CSRF token (a form field, or the `X-Baton-CSRF` header): a value derived from the
//! session's token, which a page of another site cannot know. Any node checks either, since both
//! are the replicated tokens.

use crate::security::auth::TokenScope;
use axum::http::HeaderMap;
use baton_security::token::{self, PresentedToken};
use sha2::{Digest, Sha256};

use super::Api;

pub const SESSION_COOKIE: &str = "baton_session";
/// The login form's own CSRF cookie (a random value the form repeats), before any session.
pub const LOGIN_COOKIE: &str = "baton_login";
pub const CSRF_HEADER: &str = "x-baton-csrf";
/// How long a console session lasts in the browser (the token itself may outlive it).
const SESSION_SECONDS: u64 = 12 * 3600;

/// A presented token and where it came from.
pub struct Credential {
    pub presented: PresentedToken,
    /// `baton_ID_SECRET`.
    pub text: String,
    pub by_cookie: bool,
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// The request's token: the `Authorization: Bearer` header, else the session cookie.
pub fn credential(headers: &HeaderMap) -> Option<Credential> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let presented = token::from_bearer(text)?;
        let text = text.split_once(' ')?.1.trim().to_string();
        return Some(Credential {
            presented,
            text,
            by_cookie: false,
        });
    }
    let text = cookie(headers, SESSION_COOKIE)?;
    Some(Credential {
        presented: token::parse(text)?,
        text: text.to_string(),
        by_cookie: true,
    })
}

/// The live token's scope and name, digests compared in constant time.
pub fn lookup(api: &Api, presented: &PresentedToken) -> Option<(TokenScope, String)> {
    api.node.replica.read(|applied| {
        applied
            .state
            .live_token(&presented.id)
            .filter(|record| token::digest_matches(&record.digest, &presented.digest))
            .map(|record| (TokenScope::of(record), record.name.clone()))
    })
}

/// The CSRF token of a session holding `token_text`.
pub fn csrf_for(token_text: &str) -> String {
    let digest = Sha256::digest(format!("baton-console-csrf\0{token_text}").as_bytes());
    hex::encode(&digest[..16])
}

/// Whether `given` is `expected`, in time independent of where they differ.
pub fn same(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(token_text: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token_text}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that ends cookie `name`.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    format!(
        "{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` for the login form's CSRF value.
pub fn login_cookie(value: &str, secure: bool) -> String {
    format!(
        "{LOGIN_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_cookie_and_both_parse() {
        let token = token::generate().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("a=1; {SESSION_COOKIE}={}; b=2", token.text)
                .parse()
                .unwrap(),
        );
        let from_cookie = credential(&headers).unwrap();
        assert!(from_cookie.by_cookie);
        assert_eq!(from_cookie.text, token.text);
        assert_eq!(from_cookie.presented.id, token.id);
        let other = token::generate().unwrap();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {}", other.text).parse().unwrap(),
        );
        let from_header = credential(&headers).unwrap();
        assert!(!from_header.by_cookie);
        assert_eq!(from_header.text, other.text);
        // A session's CSRF token is its own, and compared whole.
        assert_ne!(csrf_for(&token.text), csrf_for(&other.text));
        assert!(same(&csrf_for(&token.text), &csrf_for(&token.text)));
        assert!(!same(&csrf_for(&token.text), &csrf_for(&token.text)[..31]));
        assert!(session_cookie("t", true).contains("HttpOnly; SameSite=Strict"));
        assert!(session_cookie("t", true).ends_with("; Secure"));
    }
}
