//! Attachments parsed at the edge: a safe file name, decoded bytes, a content type (sniffed from
//! the bytes, then the name, when absent) and an optional Content-ID for inline images.
//! Executables and scripts are refused by name and by content.

use base64::Engine;
use std::sync::Arc;

/// Extensions mail clients may run or that commonly carry malware; refused in any case.
const DANGEROUS: &[&str] = &[
    "exe", "com", "bat", "cmd", "scr", "pif", "cpl", "msi", "msp", "mst", "dll", "js", "jse",
    "vbs", "vbe", "wsf", "wsh", "ws", "ps1", "psm1", "hta", "jar", "lnk", "reg", "sh", "app",
    "gadget", "inf", "scf", "sct", "vb", "iso", "img",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    #[error(
        "filename must be 1 to 255 characters without control characters, quotes or path separators"
    )]
    Filename,
    #[error("content is not valid base64")]
    Base64,
    #[error("content is empty")]
    Empty,
    #[error("content_type is not a valid MIME type")]
    ContentType,
    #[error("content_id must be 1 to 200 printable characters without spaces, '<' or '>'")]
    ContentId,
    #[error("{0} files are not allowed (executable or script)")]
    Dangerous(String),
}

/// A validated attachment. The bytes are shared, so copies (batch items, retries) cost nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub data: Arc<[u8]>,
}

fn valid_mime(s: &str) -> bool {
    let Some((t, sub)) = s.split_once('/') else {
        return false;
    };
    let token = |x: &str| {
        !x.is_empty()
            && x.len() <= 127
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    token(t) && token(sub.split(';').next().unwrap_or("").trim())
}

impl Attachment {
    pub fn parse(
        filename: &str,
        content_b64: &str,
        content_type: Option<&str>,
        content_id: Option<&str>,
    ) -> Result<Self, AttachmentError> {
        let filename = filename.trim();
        if filename.is_empty()
            || filename.chars().count() > 255
            || filename
                .chars()
                .any(|c| c.is_control() || matches!(c, '/' | '\\' | '"'))
        {
            return Err(AttachmentError::Filename);
        }
        let ext = filename
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        if DANGEROUS.contains(&ext.as_str()) {
            return Err(AttachmentError::Dangerous(format!(".{ext}")));
        }
        // Base64 as JSON clients send it: standard alphabet, padding optional, line breaks allowed.
        let cleaned: String = content_b64
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(cleaned.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(cleaned.trim_end_matches('='))
            })
            .map_err(|_| AttachmentError::Base64)?;
        if data.is_empty() {
            return Err(AttachmentError::Empty);
        }
        let sniffed = infer::get(&data);
        if let Some(kind) = sniffed
            && matches!(kind.matcher_type(), infer::MatcherType::App)
            && matches!(
                kind.mime_type(),
                "application/vnd.microsoft.portable-executable"
                    | "application/x-executable"
                    | "application/x-mach-binary"
                    | "application/java-archive"
                    | "application/x-msdownload"
                    | "application/x-shellscript"
            )
        {
            return Err(AttachmentError::Dangerous(kind.extension().to_string()));
        }
        if data.starts_with(b"#!") {
            return Err(AttachmentError::Dangerous("script".into()));
        }
        let content_type = match content_type.map(str::trim) {
            Some(ct) if valid_mime(ct) => ct.to_ascii_lowercase(),
            Some(_) => return Err(AttachmentError::ContentType),
            None => sniffed
                .map(|k| k.mime_type().to_string())
                .or_else(|| {
                    mime_guess::from_path(filename)
                        .first()
                        .map(|m| m.to_string())
                })
                .unwrap_or_else(|| "application/octet-stream".into()),
        };
        let content_id =
            match content_id.map(|c| c.trim().trim_start_matches('<').trim_end_matches('>')) {
                None => None,
                Some(c)
                    if !c.is_empty()
                        && c.len() <= 200
                        && c.chars()
                            .all(|ch| ch.is_ascii_graphic() && ch != '<' && ch != '>') =>
                {
                    Some(c.to_string())
                }
                Some(_) => return Err(AttachmentError::ContentId),
            };
        Ok(Self {
            filename: filename.to_string(),
            content_type,
            content_id,
            data: data.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

    #[test]
    fn sniffs_content_type_from_bytes_then_name() {
        let a = Attachment::parse("pixel", PNG, None, Some("<logo>")).unwrap();
        assert_eq!(a.content_type, "image/png");
        assert_eq!(a.content_id.as_deref(), Some("logo"));
        let b = Attachment::parse("notes.txt", "aGVsbG8", None, None).unwrap();
        assert_eq!(b.content_type, "text/plain");
        assert_eq!(&*b.data, b"hello");
    }

    #[test]
    fn refuses_dangerous_files_by_name_and_content() {
        assert!(matches!(
            Attachment::parse("setup.EXE", "aGVsbG8=", None, None),
            Err(AttachmentError::Dangerous(_))
        ));
        // "MZ" PE header disguised as a PDF.
        let pe = base64::engine::general_purpose::STANDARD
            .encode([b"MZ".as_slice(), &[0x90; 64], b"PE\0\0"].concat());
        assert!(Attachment::parse("invoice.pdf", &pe, None, None).is_err());
        let sh = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\nrm -rf /");
        assert!(matches!(
            Attachment::parse("run.txt", &sh, None, None),
            Err(AttachmentError::Dangerous(_))
        ));
    }

    #[test]
    fn refuses_bad_names_and_base64() {
        assert_eq!(
            Attachment::parse("../etc/passwd", "aGVsbG8=", None, None),
            Err(AttachmentError::Filename)
        );
        assert_eq!(
            Attachment::parse("a.txt", "***", None, None),
            Err(AttachmentError::Base64)
        );
        assert_eq!(
            Attachment::parse("a.txt", "aGVsbG8=", Some("text"), None),
            Err(AttachmentError::ContentType)
        );
    }
}
