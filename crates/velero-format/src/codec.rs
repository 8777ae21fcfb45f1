//! Byte-level encodings of the backup files: plain JSON, gzipped JSON and gzipped log text.
//! Decoders take the object key so their errors can name the file that did not parse.

use std::io::{Read, Write};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{FormatError, Result};

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Gunzips a whole object. A truncated stream is an error, not a short read.
pub fn gunzip(data: &[u8], key: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|source| FormatError::Gzip {
            key: key.to_string(),
            source,
        })?;
    Ok(out)
}

/// Serializes `value` as indented JSON (Velero's records are human-read often).
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|error| FormatError::Invalid(format!("cannot serialize record: {error}")))
}

/// Parses JSON from the object `key`; `what` names the record in the error.
pub fn decode_json<T: DeserializeOwned>(data: &[u8], key: &str, what: &'static str) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| FormatError::Json {
        key: key.to_string(),
        what,
        source,
    })
}

/// JSON, gzipped (the `*.json.gz` files).
pub fn encode_json_gz<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    // Velero writes these compact.
    let json = serde_json::to_vec(value)
        .map_err(|error| FormatError::Invalid(format!("cannot serialize record: {error}")))?;
    Ok(gzip(&json))
}

/// Gunzips then parses JSON from the object `key`.
pub fn decode_json_gz<T: DeserializeOwned>(
    data: &[u8],
    key: &str,
    what: &'static str,
) -> Result<T> {
    decode_json(&gunzip(data, key)?, key, what)
}

/// The backup's log text, gzipped (`<name>-logs.gz`).
pub fn encode_logs(text: &str) -> Vec<u8> {
    gzip(text.as_bytes())
}

/// The backup's log text. Invalid UTF-8 is replaced rather than refused: logs are for people.
pub fn decode_logs(data: &[u8], key: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(&gunzip(data, key)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_json_round_trips() {
        let value = serde_json::json!([{"a": 1}, {"b": "two"}]);
        let data = encode_json_gz(&value).unwrap();
        assert_eq!(&data[..2], &[0x1f, 0x8b], "gzip magic");
        let back: serde_json::Value = decode_json_gz(&data, "k", "list").unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn truncated_gzip_names_the_key() {
        let data = encode_json_gz(&serde_json::json!({"field": "x".repeat(1000)})).unwrap();
        let error = decode_json_gz::<serde_json::Value>(
            &data[..data.len() / 2],
            "backups/b/b-podvolumebackups.json.gz",
            "list",
        )
        .unwrap_err();
        assert!(matches!(error, FormatError::Gzip { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("backups/b/b-podvolumebackups.json.gz")
        );
    }

    #[test]
    fn plain_text_is_not_gzip() {
        let error = gunzip(b"[1,2,3]", "k.gz").unwrap_err();
        assert!(matches!(error, FormatError::Gzip { .. }));
    }

    #[test]
    fn bad_json_names_key_and_record() {
        let error = decode_json::<serde_json::Value>(
            b"{not json",
            "backups/b/velero-backup.json",
            "Backup record",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("backups/b/velero-backup.json: not a valid Backup record"),
            "{text}"
        );
        assert_eq!(error.key(), Some("backups/b/velero-backup.json"));
    }

    #[test]
    fn logs_round_trip() {
        let text = "time=\"2022-03-01T02:00:00Z\" level=info msg=\"Setting up backup log\"\n";
        assert_eq!(decode_logs(&encode_logs(text), "k").unwrap(), text);
    }
}
