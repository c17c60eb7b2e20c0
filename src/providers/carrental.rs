use crate::http::Http;
use crate::providers::{Grant, Provider, ProviderError};
use crate::secret::Secret;
pub struct Carrental {}
impl Carrental {
    pub fn new(_url: String, _username: String, _password: Secret) -> Carrental {
        todo!()
    }
}
impl Provider for Carrental {
    fn login(&self, _http: &Http) -> Result<Grant, ProviderError> {
        todo!()
    }
}
