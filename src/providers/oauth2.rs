use crate::http::Http;
use crate::providers::{ClientAuth, Grant, OAuth2Grant, Provider, ProviderError};
use crate::secret::Secret;
pub struct OAuth2 {}
impl OAuth2 {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        _token_url: String,
        _client_id: String,
        _client_secret: Option<Secret>,
        _grant: OAuth2Grant,
        _client_auth: ClientAuth,
        _scope: Option<String>,
        _extra: Vec<(String, String)>,
    ) -> OAuth2 {
        todo!()
    }
}
impl Provider for OAuth2 {
    fn login(&self, _http: &Http) -> Result<Grant, ProviderError> {
        todo!()
    }
}
