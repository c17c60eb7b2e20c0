//! STUB — to be written: time formatting and parsing.
pub fn now_unix() -> i64 {
    todo!()
}
pub fn format_rfc3339(_unix: i64) -> String {
    todo!()
}
pub fn parse_timestamp(_s: &str) -> Option<i64> {
    todo!()
}
pub fn parse_http_date(_s: &str) -> Option<i64> {
    todo!()
}
pub fn parse_duration(_s: &str) -> Result<std::time::Duration, String> {
    todo!()
}
