//! STUB — to be written: the one HTTP client wrapper (ureq 3 + rustls/ring).
use crate::providers::ProviderError;
use std::time::Duration;

pub struct Http {}

/// A partner's answer, body already read (size-capped).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
    pub date: Option<i64>,
    pub content_type: Option<String>,
}

impl Http {
    pub fn new(_timeout: Duration, _extra_ca_pem: Option<&[u8]>) -> Result<Http, String> {
        todo!()
    }
    pub fn post_form(
        &self,
        _url: &str,
        _basic: Option<(&str, &str)>,
        _form: &[(&str, &str)],
    ) -> Result<Response, ProviderError> {
        todo!()
    }
    pub fn post_json(
        &self,
        _url: &str,
        _bearer: Option<&str>,
        _body: &serde_json::Value,
    ) -> Result<Response, ProviderError> {
        todo!()
    }
}

/// Checks that a PEM file holds at least one certificate; returns how many.
pub fn check_ca_pem(_pem: &[u8]) -> Result<usize, String> {
    todo!()
}
