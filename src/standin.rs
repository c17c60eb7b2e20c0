//! STUB — to be written: loopback stand-ins for the partner APIs (dev mode and tests).
pub struct StandinOptions {
    pub lifetime: std::time::Duration,
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}
impl Default for StandinOptions {
    fn default() -> Self {
        todo!()
    }
}
pub struct Standin {}
impl Standin {
    pub fn start(_o: StandinOptions) -> std::io::Result<Standin> {
        todo!()
    }
    pub fn base_url(&self) -> String {
        todo!()
    }
    pub fn providers_toml(&self) -> String {
        todo!()
    }
    pub fn stop(&self) {}
}
