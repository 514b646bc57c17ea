//! `sluice queue` through the running server's admin socket (blocking
//! HTTP/1.1 over a UNIX socket, `socket_http`; the listing is read and
//! printed element by element). Never over TCP: a port can be taken by
//! any local user while the server is down, the socket's directory cannot.

use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use sluice_queue::QueueId;

use super::Access;
use super::socket_http::{self, Response};
use crate::admin::bulk::Action;
use crate::admin::error::ErrorBody;
use crate::admin::summary::Summary;
use crate::admin::suspensions::{SuspensionList, SuspensionView};
use crate::admin::view::{ListFilter, MessageView};

/// How long to wait for `/health`: the server is local, so one that does
/// not answer within this is not going to.
const PING_TIMEOUT: Duration = Duration::from_secs(4);

/// IDs sent per bulk request (each at most 64 characters, so the JSON stays
/// under the API's 16 KiB body limit).
const IDS_PER_REQUEST: usize = 200;

/// How long a single read may stall (bulk actions on a big queue take a while).
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// A client of one running server's admin socket.
pub struct Remote {
    socket: PathBuf,
}

impl Remote {
    /// A client for the API on the admin socket at `socket`.
    pub fn new(socket: PathBuf) -> Remote {
        Remote { socket }
    }

    /// Whether a server answers `GET /health`; the error says why not.
    pub fn ping(&self) -> Result<(), String> {
        match socket_http::request(&self.socket, "GET", "/health", &[], None, PING_TIMEOUT) {
            Ok(response) if response.status == 200 => Ok(()),
            Ok(response) => Err(format!("/health answered HTTP {}", response.status)),
            Err(error) => Err(format!("{}: {error}", self.socket.display())),
        }
    }

    /// `GET path`, its JSON answer (`sluice events status`).
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.call("GET", path)?;
        Ok(serde_json::from_reader(response.into_reader())?)
    }

    fn call(&self, method: &str, path: &str) -> anyhow::Result<Response> {
        self.call_with(method, path, None)
    }

    /// A request with an optional JSON body.
    fn call_with(&self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Response> {
        // Shows the API this is no cross-site request (`admin::browser`).
        let mut headers = vec![(crate::admin::browser::REQUEST_HEADER, "1")];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let response =
            socket_http::request(&self.socket, method, path, &headers, body, READ_TIMEOUT)
                .map_err(|error| {
                    anyhow::anyhow!("admin socket {}: {error}", self.socket.display())
                })?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        let code = response.status;
        let message = response
            .into_json::<ErrorBody>()
            .map(|body| body.error)
            .unwrap_or_else(|_| format!("HTTP {code}"));
        anyhow::bail!("{message}")
    }

    fn list_path(filter: &ListFilter) -> String {
        Self::with_filter("/v1/queue", filter)
    }

    /// `path` with `filter` as its query.
    fn with_filter(path: &str, filter: &ListFilter) -> String {
        let pairs: Vec<String> = filter
            .query_pairs()
            .into_iter()
            .map(|(key, value)| format!("{key}={}", encode(&value)))
            .collect();
        if pairs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", pairs.join("&"))
        }
    }
}

/// Percent-encodes a query value (RFC 3986: unreserved characters stay).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

impl Access for Remote {
    fn each(
        &mut self,
        filter: &ListFilter,
        visit: &mut dyn FnMut(MessageView) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let response = self.call("GET", &Self::list_path(filter))?;
        let reader = BufReader::with_capacity(64 * 1024, response.into_reader());
        for_each_element(reader, visit)
    }

    fn json_list(&mut self, filter: &ListFilter, out: &mut dyn Write) -> anyhow::Result<()> {
        let response = self.call("GET", &Self::list_path(filter))?;
        // The server writes exactly what the offline command writes; pass
        // it through as it arrives. A body cut short is an error (exit 1).
        io::copy(&mut response.into_reader(), out)?;
        Ok(())
    }

    fn show(&mut self, id: &QueueId) -> anyhow::Result<MessageView> {
        let response = self.call("GET", &format!("/v1/queue/{id}"))?;
        response
            .into_json::<MessageView>()
            .context("reading the admin API's answer")
    }

    fn act(&mut self, action: Action, id: &QueueId) -> anyhow::Result<Option<MessageView>> {
        let response = match action {
            Action::Delete => {
                self.call("DELETE", &format!("/v1/queue/{id}"))?;
                return Ok(None);
            }
            Action::Retry => self.call("POST", &format!("/v1/queue/{id}/retry"))?,
            Action::Hold => self.call("POST", &format!("/v1/queue/{id}/hold"))?,
            Action::Release => self.call("POST", &format!("/v1/queue/{id}/release"))?,
            Action::Bounce => self.call("POST", &format!("/v1/queue/{id}/bounce"))?,
        };
        let view = response
            .into_json::<MessageView>()
            .context("reading the admin API's answer")?;
        Ok(Some(view))
    }

    fn act_on_ids(
        &mut self,
        action: Action,
        ids: &mut dyn Iterator<Item = String>,
        refused: &mut dyn FnMut(String),
    ) -> anyhow::Result<u64> {
        let path = format!("/v1/queue/{}", action.name());
        let mut count = 0;
        loop {
            // Bodies are limited to 16 KiB: a few hundred IDs per request.
            let batch: Vec<String> = (&mut *ids).take(IDS_PER_REQUEST).collect();
            if batch.is_empty() {
                return Ok(count);
            }
            let body = serde_json::to_vec(&serde_json::json!({ "ids": batch }))?;
            let answer: serde_json::Value = self
                .call_with("POST", &path, Some(&body))?
                .into_json()
                .context("reading the admin API's answer")?;
            count += answer[action.done_key()].as_u64().with_context(|| {
                format!(
                    "the admin API's answer has no {:?} count: {answer}",
                    action.done_key()
                )
            })?;
            for error in answer["errors"].as_array().into_iter().flatten() {
                refused(error.as_str().unwrap_or_default().to_string());
            }
        }
    }

    fn act_on_selection(&mut self, action: Action, filter: &ListFilter) -> anyhow::Result<u64> {
        let path = Self::with_filter(&format!("/v1/queue/{}", action.name()), filter);
        count_field(self.call("POST", &path)?, action.done_key())
    }

    fn summary(&mut self) -> anyhow::Result<Summary> {
        self.call("GET", "/v1/queue/summary")?
            .into_json::<Summary>()
            .context("reading the admin API's answer")
    }

    fn cat(&mut self, id: &QueueId, headers: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let path = if headers {
            format!("/v1/queue/{id}/message?headers=true")
        } else {
            format!("/v1/queue/{id}/message")
        };
        let response = self.call("GET", &path)?;
        // A body cut short (the server failed midway) is an error (exit 1).
        io::copy(&mut response.into_reader(), out)?;
        Ok(())
    }

    fn suspend(
        &mut self,
        destination: &str,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<SuspensionView> {
        let body = duration.map(|duration| {
            serde_json::json!({ "for": crate::config::format_duration(duration) }).to_string()
        });
        let path = format!("/v1/suspensions/{destination}");
        self.call_with(
            "POST",
            &path,
            Some(body.as_deref().unwrap_or("").as_bytes()),
        )?
        .into_json::<SuspensionView>()
        .context("reading the admin API's answer")
    }

    fn resume(&mut self, destination: &str) -> anyhow::Result<bool> {
        let path = format!("/v1/suspensions/{destination}");
        let request = self.call("DELETE", &path);
        match request {
            Ok(_) => Ok(true),
            Err(error) if error.to_string().ends_with("is not suspended") => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn suspensions(&mut self) -> anyhow::Result<SuspensionList> {
        self.call("GET", "/v1/suspensions")?
            .into_json::<SuspensionList>()
            .context("reading the admin API's answer")
    }

    fn close(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn count_field(response: Response, key: &str) -> anyhow::Result<u64> {
    let value: serde_json::Value = response
        .into_json()
        .context("reading the admin API's answer")?;
    value[key]
        .as_u64()
        .with_context(|| format!("the admin API's answer has no {key:?} count: {value}"))
}

/// Parses a JSON array of message objects from `reader`, calling `visit` for
/// each element as soon as it is complete, so output starts at once and
/// memory does not grow with the queue.
pub fn for_each_element<R: Read>(
    reader: R,
    visit: &mut dyn FnMut(MessageView) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut visit_error = None;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let parsed = EachElement {
        visit,
        error: &mut visit_error,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    if let Some(error) = visit_error {
        return Err(error.into());
    }
    parsed.context("reading the queue listing from the admin API")
}

struct EachElement<'a> {
    visit: &'a mut dyn FnMut(MessageView) -> io::Result<()>,
    error: &'a mut Option<io::Error>,
}

impl<'de> DeserializeSeed<'de> for EachElement<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EachElement<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON array of message objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(message) = seq.next_element::<MessageView>()? {
            if let Err(error) = (self.visit)(message) {
                *self.error = Some(error);
                return Err(serde::de::Error::custom("output failed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::view::JsonArrayWriter;

    fn sample(id: &str) -> MessageView {
        serde_json::from_value(serde_json::json!({
            "id": id, "sender": "", "size": 10, "received_at": "2026-11-25T09:00:00Z",
            "held": false, "recipients": []
        }))
        .unwrap()
    }

    #[test]
    fn elements_are_visited_in_order() {
        let mut writer = JsonArrayWriter::new(Vec::new()).unwrap();
        for id in ["A1", "B2", "C3"] {
            writer.push(&sample(id)).unwrap();
        }
        let bytes = writer.finish().unwrap();
        let mut seen = Vec::new();
        for_each_element(&bytes[..], &mut |message| {
            seen.push(message.id);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["A1", "B2", "C3"]);
    }

    #[test]
    fn a_truncated_listing_is_an_error_after_the_complete_elements() {
        let mut writer = JsonArrayWriter::new(Vec::new()).unwrap();
        writer.push(&sample("A1")).unwrap();
        writer.push(&sample("B2")).unwrap();
        let bytes = writer.finish().unwrap();
        let cut = &bytes[..bytes.len() - 10];
        let mut seen = 0;
        let result = for_each_element(cut, &mut |_| {
            seen += 1;
            Ok(())
        });
        assert!(result.is_err());
        assert_eq!(seen, 1);
    }

    #[test]
    fn an_output_error_is_returned_as_such() {
        let bytes = serde_json::to_vec(&[sample("A1")]).unwrap();
        let error = for_each_element(&bytes[..], &mut |_| {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        })
        .unwrap_err();
        let io_error = error.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io_error.kind(), io::ErrorKind::BrokenPipe);
    }
}
