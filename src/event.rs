//! An outbox event ([`Event`]: what every sink sends), a claimed one ([`Claimed`]: the event
//! with the relay's progress on it), and the JSON envelope receivers get.

use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// One outbox row as a sink sends it (read by [`crate::db::claims`]): what SSE streams and
/// what a webhook's envelope carries. Columns the app may leave NULL stay optional here;
/// [`Event::validate`] decides whether the row can be delivered at all.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The id as text (uuid, text and bigint ids all render losslessly).
    pub id: String,
    pub event_type: Option<String>,
    pub org_id: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// The payload's JSON text, passed through to receivers without re-encoding.
    pub payload: Option<String>,
    /// created_at in microseconds since the Unix epoch.
    pub created_us: i64,
}

/// An event this relay claimed for delivery: the event, how far delivery got, and the claim's
/// fencing token.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: Event,
    /// Failed attempts so far; this attempt is number `retry_count + 1`.
    pub retry_count: i32,
    /// Endpoints that already accepted this event.
    pub delivered_to: Vec<String>,
    /// The fencing token of this claim: its outcome is written only while it still holds.
    pub token: Uuid,
}

impl Claimed {
    /// The attempt this delivery is, counting from 1.
    pub fn attempt(&self) -> u32 {
        u32::try_from(self.retry_count)
            .unwrap_or(0)
            .saturating_add(1)
    }
}

/// Why a row cannot be delivered. Recorded as the row's error_message, and the row is FAILED.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidEvent {
    #[error("event_type is NULL: every event needs a type (e.g. PROJECT.UPDATED)")]
    NoType,
    #[error("payload is not valid JSON: {0}")]
    BadPayload(String),
}

/// The envelope of contract section 4. `attempt` is omitted for SSE.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    pub timestamp: String,
    pub org_id: Option<&'a str>,
    pub entity_type: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub data: &'a RawValue,
}

/// A JSON `null`, for rows whose payload column is NULL.
fn json_null() -> &'static RawValue {
    static NULL: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| RawValue::from_string("null".into()).expect("null is JSON"))
}

impl Event {
    /// Checks the row is deliverable: it has a type and its payload parses as JSON. A payload
    /// that is an array, a string or a number is delivered as it is.
    ///
    /// The payload is checked as a [`RawValue`], never built into a `serde_json::Value`:
    /// serde_json skips over a raw value with a loop rather than recursion, so it has no
    /// depth limit, and a payload jsonb accepted (10 000 levels of arrays, say) is delivered
    /// byte for byte. A `Value` would stop at serde_json's recursion limit of 128 and
    /// dead-letter a valid event. Text that is not JSON (from a `text` column) is refused.
    pub fn validate(&self) -> Result<(&str, Box<RawValue>), InvalidEvent> {
        let event_type = self.event_type.as_deref().ok_or(InvalidEvent::NoType)?;
        let data = match &self.payload {
            Some(text) => RawValue::from_string(text.clone())
                .map_err(|e| InvalidEvent::BadPayload(e.to_string()))?,
            None => json_null().to_owned(),
        };
        Ok((event_type, data))
    }

    /// The serialised envelope for one attempt (`attempt: None` for SSE).
    pub fn envelope(&self, event_type: &str, data: &RawValue, attempt: Option<u32>) -> Vec<u8> {
        let env = Envelope {
            id: &self.id,
            event_type,
            timestamp: format_timestamp(self.created_us),
            org_id: self.org_id.as_deref(),
            entity_type: self.entity_type.as_deref(),
            entity_id: self.entity_id.as_deref(),
            attempt,
            data,
        };
        serde_json::to_vec(&env).expect("an envelope of strings and raw JSON always serialises")
    }
}

/// RFC 3339 in UTC with microseconds: `2026-11-22T12:00:00.123456Z`. (Once per delivery:
/// `to_rfc3339_opts` writes it directly, where `format` parses a pattern each time.)
pub fn format_timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: Option<&str>, event_type: Option<&str>) -> Event {
        Event {
            id: "evt_1".into(),
            event_type: event_type.map(Into::into),
            org_id: Some("org_1".into()),
            entity_type: Some("Project".into()),
            entity_id: Some("p_42".into()),
            payload: payload.map(Into::into),
            created_us: 1_795_867_200_123_456,
        }
    }

    #[test]
    fn envelope_matches_the_contract() {
        let e = event(Some(r#"{"name": "x", "n": 1}"#), Some("PROJECT.UPDATED"));
        let (t, data) = e.validate().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.envelope(t, &data, Some(3))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "evt_1", "type": "PROJECT.UPDATED",
                "timestamp": "2026-11-28T12:00:00.123456Z",
                "org_id": "org_1", "entity_type": "Project", "entity_id": "p_42",
                "attempt": 3, "data": {"name": "x", "n": 1}
            })
        );
        let sse: serde_json::Value = serde_json::from_slice(&e.envelope(t, &data, None)).unwrap();
        assert!(sse.get("attempt").is_none());
    }

    #[test]
    fn timestamps_always_carry_six_fractional_digits() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_timestamp(1_795_867_200_000_001),
            "2026-11-28T12:00:00.000001Z"
        );
    }

    #[test]
    fn odd_payloads_are_delivered_as_they_are() {
        for p in ["[1,2]", "\"text\"", "42", "null", "{\"deep\":[[[[{}]]]]}"] {
            let e = event(Some(p), Some("T"));
            let (t, data) = e.validate().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&e.envelope(t, &data, None)).unwrap();
            assert_eq!(
                v["data"],
                serde_json::from_str::<serde_json::Value>(p).unwrap()
            );
        }
        let e = event(None, Some("T"));
        assert_eq!(e.validate().unwrap().1.get(), "null");
    }

    #[test]
    fn undeliverable_rows_say_why() {
        assert_eq!(
            event(Some("{}"), None).validate().unwrap_err(),
            InvalidEvent::NoType
        );
        assert!(matches!(
            event(Some("{not json"), Some("T")).validate().unwrap_err(),
            InvalidEvent::BadPayload(_)
        ));
    }
}
