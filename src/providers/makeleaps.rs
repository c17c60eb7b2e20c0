use crate::http::Http;
use crate::providers::{Grant, Provider, ProviderError};
use crate::secret::Secret;
pub struct MakeLeaps {}
impl MakeLeaps {
    pub fn new(
        _token_url: String,
        _client_id: String,
        _client_secret: Secret,
        _scope: Option<String>,
    ) -> MakeLeaps {
        todo!()
    }
}
impl Provider for MakeLeaps {
    fn login(&self, _http: &Http) -> Result<Grant, ProviderError> {
        todo!()
    }
}
