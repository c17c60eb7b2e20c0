use crate::http::Http;
use crate::providers::{Grant, Provider, ProviderError};
use crate::secret::Secret;
pub struct AutoLeap {}
impl AutoLeap {
    pub fn new(_base_url: String, _partner_id: String, _auth_key: Secret) -> AutoLeap {
        todo!()
    }
}
impl Provider for AutoLeap {
    fn login(&self, _http: &Http) -> Result<Grant, ProviderError> {
        todo!()
    }
}
