use crate::http::Http;
use crate::providers::{AutovitGrant, ClientAuth, Grant, Provider, ProviderError};
use crate::secret::Secret;
pub struct Autovit {}
impl Autovit {
    pub fn new(
        _token_url: String,
        _client_id: String,
        _client_secret: Secret,
        _grant: AutovitGrant,
        _client_auth: ClientAuth,
    ) -> Autovit {
        todo!()
    }
}
impl Provider for Autovit {
    fn login(&self, _http: &Http) -> Result<Grant, ProviderError> {
        todo!()
    }
}
