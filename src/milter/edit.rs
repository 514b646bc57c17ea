//! The message as a milter sees it: header fields one by one and the body,
//! and the milter's edits applied back to the octets (pure: a message in,
//! a message out).

/// One header field of a message: where its octets are and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The whole field, continuation lines and final CRLF included.
    pub start: usize,
    pub end: usize,
    /// The name, before the colon.
    pub name: String,
    /// The value after the colon, with its line breaks as `\n` and
    /// without the final one (libmilter's form).
    pub value: String,
}

/// The header section split into fields, and where the body starts (after
/// the empty line; the message length when there is none). A line that is
/// no field (no colon) ends the header section, as it would for a reader.
pub fn split(message: &[u8]) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let line_end = memchr::memchr(b'\n', &message[at..])
            .map(|i| at + i + 1)
            .unwrap_or(message.len());
        let line = &message[at..line_end];
        let content = trim_line_end(line);
        if content.is_empty() {
            return (fields, line_end);
        }
        if matches!(content[0], b' ' | b'\t') {
            if let Some(field) = fields.last_mut() {
                field.end = line_end;
                field.value.push('\n');
                field.value.push_str(&String::from_utf8_lossy(content));
                at = line_end;
                continue;
            }
            return (fields, at);
        }
        let Some(colon) = memchr::memchr(b':', content) else {
            return (fields, at);
        };
        let name = String::from_utf8_lossy(&content[..colon])
            .trim_end()
            .to_string();
        let value = String::from_utf8_lossy(&content[colon + 1..]).into_owned();
        fields.push(Field {
            start: at,
            end: line_end,
            name,
            value,
        });
        at = line_end;
    }
    (fields, message.len())
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A change a milter asked for at the end of the message. Values carry
/// the space after the colon (the conversation adds it when the milter
/// did not negotiate sending it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field at the end of the header section.
    AddHeader { name: String, value: String },
    /// Insert a field before the `index`th field (0 = at the top); past
    /// the end, append it.
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Replace the value of the `index`th (from 1) field called `name`
    /// (case-insensitively); an empty value deletes it; a field that is not
    /// there is added (Sendmail's rule).
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The new body, every chunk the milter sent, in order.
    ReplaceBody(Vec<u8>),
}

/// The message with `edits` applied in order. Line breaks in new values
/// become CRLF.
pub fn apply(message: &[u8], edits: &[Edit]) -> Vec<u8> {
    let (fields, body_start) = split(message);
    // Working copy: each field's octets; the rest kept as it was.
    let mut header: Vec<(String, Vec<u8>)> = fields
        .iter()
        .map(|field| (field.name.clone(), message[field.start..field.end].to_vec()))
        .collect();
    let separator = &message[fields.last().map_or(0, |field| field.end)..body_start];
    let mut body: Vec<u8> = message[body_start..].to_vec();
    for edit in edits {
        match edit {
            Edit::AddHeader { name, value } => {
                header.push((name.clone(), format_field(name, value)))
            }
            Edit::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(header.len());
                header.insert(at, (name.clone(), format_field(name, value)));
            }
            Edit::ChangeHeader { index, name, value } => {
                let found = header
                    .iter()
                    .enumerate()
                    .filter(|(_, (existing, _))| existing.eq_ignore_ascii_case(name))
                    .nth((*index as usize).saturating_sub(1))
                    .map(|(position, _)| position);
                let deleting = value.trim().is_empty();
                match found {
                    Some(position) if deleting => {
                        header.remove(position);
                    }
                    Some(position) => header[position].1 = format_field(name, value),
                    None if deleting => {}
                    None => header.push((name.clone(), format_field(name, value))),
                }
            }
            Edit::ReplaceBody(new) => body = crlf(new),
        }
    }
    let mut out = Vec::with_capacity(message.len() + 256);
    for (_, field) in &header {
        out.extend_from_slice(field);
    }
    if separator.is_empty() {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(separator);
    }
    out.extend_from_slice(&body);
    out
}

fn format_field(name: &str, value: &str) -> Vec<u8> {
    let mut field = Vec::with_capacity(name.len() + value.len() + 4);
    field.extend_from_slice(name.as_bytes());
    field.push(b':');
    field.extend_from_slice(&crlf(value.as_bytes()));
    field.extend_from_slice(b"\r\n");
    field
}

/// Bare LF and bare CR become CRLF (a milter writes `\n`; the queue keeps
/// the wire form).
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Spam: old\r\nx-spam: older\r\n\r\nbody\r\n";

    #[test]
    fn split_unfolds_fields_and_finds_the_body() {
        let (fields, body) = split(MESSAGE);
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Received", "Subject", "X-Spam", "x-spam"]);
        assert_eq!(fields[0].value, " from a\n\tby b");
        assert_eq!(fields[1].value, " hi");
        assert_eq!(&MESSAGE[body..], b"body\r\n");
        let (fields, body) = split(b"Subject: only\r\n");
        assert_eq!(fields.len(), 1);
        assert_eq!(body, 15);
    }

    #[test]
    fn added_and_inserted_fields() {
        let edits = [
            Edit::AddHeader {
                name: "X-Added".into(),
                value: " yes".into(),
            },
            Edit::InsertHeader {
                index: 0,
                name: "X-Top".into(),
                value: " 1\n\tfolded".into(),
            },
            Edit::InsertHeader {
                index: 99,
                name: "X-End".into(),
                value: " 2".into(),
            },
        ];
        let out = apply(MESSAGE, &edits);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Top: 1\r\n\tfolded\r\nReceived: from a\r\n\tby b\r\nSubject: hi\r\nX-Spam: old\r\nx-spam: older\r\nX-Added: yes\r\nX-End: 2\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn changed_and_deleted_fields_count_by_name() {
        let edits = [
            Edit::ChangeHeader {
                index: 2,
                name: "X-SPAM".into(),
                value: " new".into(),
            },
            Edit::ChangeHeader {
                index: 1,
                name: "subject".into(),
                value: String::new(),
            },
            Edit::ChangeHeader {
                index: 1,
                name: "X-Missing".into(),
                value: " added".into(),
            },
            Edit::ChangeHeader {
                index: 3,
                name: "X-Spam".into(),
                value: String::new(),
            },
        ];
        let out = apply(MESSAGE, &edits);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from a\r\n\tby b\r\nX-Spam: old\r\nX-SPAM: new\r\nX-Missing: added\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn body_replacement_keeps_the_header() {
        let out = apply(MESSAGE, &[Edit::ReplaceBody(b"new\nlines\r\n".to_vec())]);
        assert!(out.ends_with(b"x-spam: older\r\n\r\nnew\r\nlines\r\n"));
        // A message with no empty line gets one before the new body.
        let out = apply(b"Subject: x\r\n", &[Edit::ReplaceBody(b"b\r\n".to_vec())]);
        assert_eq!(out, b"Subject: x\r\n\r\nb\r\n");
    }

    #[test]
    fn no_edits_give_the_message_back() {
        assert_eq!(apply(MESSAGE, &[]), MESSAGE);
    }
}
