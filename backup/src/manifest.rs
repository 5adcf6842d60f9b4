//! `backup_manifest`, version 2, byte for byte as the server's
//! `backup_manifest.c` writes it, so `pg_verifybackup` and `pg_combinebackup`
//! read it (`src/common/parse_manifest.c`):
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 2,
//! "System-Identifier": 7412345678901234567,
//! "Files": [
//! { "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2025-01-01 00:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a1b2c3d4" },
//! …
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
//! ],
//! "Manifest-Checksum": "<SHA-256 of everything before this line>"}
//! ```
//!
//! The writer streams to any `Write`, hashing as it goes: its memory does not
//! grow with the number of files.

use std::io::{self, Write};

use ptrack_core::Lsn;
use sha2::{Digest, Sha256};

/// A manifest being written.
pub struct ManifestWriter<W: Write> {
    out: W,
    hash: Sha256,
    first_file: bool,
}

impl<W: Write> ManifestWriter<W> {
    pub fn new(out: W, system_identifier: u64) -> io::Result<Self> {
        let mut writer = ManifestWriter {
            out,
            hash: Sha256::new(),
            first_file: true,
        };
        writer.append(&format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {system_identifier},\n\"Files\": ["
        ))?;
        Ok(writer)
    }

    fn append(&mut self, text: &str) -> io::Result<()> {
        self.hash.update(text.as_bytes());
        self.out.write_all(text.as_bytes())
    }

    /// One file: `path` relative to the backup's top, with `/` separators;
    /// `crc32c` of its contents; `mtime` in seconds since the epoch.
    pub fn add_file(&mut self, path: &str, size: u64, mtime: i64, crc32c: u32) -> io::Result<()> {
        let separator = if std::mem::take(&mut self.first_file) {
            "\n"
        } else {
            ",\n"
        };
        // pg_checksum_final copies the CRC's bytes in memory order.
        let checksum: String = crc32c
            .to_ne_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let line = format!(
            "{separator}{{ \"Path\": {}, \"Size\": {size}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{checksum}\" }}",
            json_string(path),
            format_gmt(mtime),
        );
        self.append(&line)
    }

    /// Ends the file list, writes the WAL range (one timeline: the tool backs
    /// up a primary, whose timeline does not change during a backup) and the
    /// manifest checksum. Returns the output.
    pub fn finish(mut self, tli: u32, start: Lsn, end: Lsn) -> io::Result<W> {
        self.append("\n],\n")?;
        self.append("\"WAL-Ranges\": [\n")?;
        self.append(&format!(
            "{{ \"Timeline\": {tli}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}"
        ))?;
        self.append("\n],\n")?;
        let digest = std::mem::take(&mut self.hash).finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.out
            .write_all(format!("\"Manifest-Checksum\": \"{hex}\"}}\n").as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A JSON string as PostgreSQL's `escape_json` writes it.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `%Y-%m-%d %H:%M:%S GMT` of seconds since 1970-01-01 UTC.
pub fn format_gmt(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} GMT",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_in_gmt() {
        assert_eq!(format_gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(format_gmt(1_735_689_599), "2024-12-31 23:59:59 GMT");
        assert_eq!(format_gmt(4_102_444_800), "2100-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(-1), "1969-12-31 23:59:59 GMT");
    }

    #[test]
    fn escapes_json_like_postgresql() {
        assert_eq!(json_string("base/5/16384"), "\"base/5/16384\"");
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn manifest_layout_and_checksum() {
        let mut writer = ManifestWriter::new(Vec::new(), 42).unwrap();
        writer.add_file("PG_VERSION", 3, 0, 0x1234_5678).unwrap();
        writer.add_file("global/pg_control", 8192, 60, 0).unwrap();
        let out =
            String::from_utf8(writer.finish(1, Lsn(0x200_0028), Lsn(0x200_0138)).unwrap()).unwrap();
        let checksum_line = out.lines().last().unwrap();
        let body = &out[..out.len() - checksum_line.len() - 1];
        let checksum_of_body: String = Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let crc_hex: String = 0x1234_5678u32
            .to_ne_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected_body = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 42,\n\"Files\": [\n\
{{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{crc_hex}\" }},\n\
{{ \"Path\": \"global/pg_control\", \"Size\": 8192, \"Last-Modified\": \"1970-01-01 00:01:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }}\n\
],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000138\" }}\n],\n"
        );
        assert_eq!(body, expected_body);
        assert_eq!(
            checksum_line,
            format!("\"Manifest-Checksum\": \"{checksum_of_body}\"}}")
        );
        assert!(out.ends_with("}\n"));
    }
}
