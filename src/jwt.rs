//! STUB — to be written: JWT claim reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claims {
    pub exp: Option<i64>,
    pub iat: Option<i64>,
}
pub fn claims(_token: &str) -> Option<Claims> {
    todo!()
}
pub fn encode_unsigned(_claims: &serde_json::Value) -> String {
    todo!()
}
