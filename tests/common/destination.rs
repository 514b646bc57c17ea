//! A real SMTP destination server for delivery tests: std sockets, one
//! thread per connection, optional STARTTLS / implicit TLS (rustls) and
//! AUTH PLAIN/LOGIN. Scriptable per recipient and per attempt, and it
//! records every transaction: envelope, body bytes (un-stuffed), whether TLS
//! was used, and the final reply it gave. [`Sink`] is the same server
//! with a switch between accepting and deferring every recipient.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use super::server::{DEADLINE, wait_for};

/// A rule: given (address, how many times this address was seen at this
/// stage, 1-based), `Some(reply line)` overrides the default reply.
///
/// A reply (or the greeting, or `Options::ehlo_reply`) is sent as given,
/// so it may hold several lines joined by CRLF; these special values act
/// instead of replying: [`DROP`], [`HANG`], [`FLOOD`].
pub type Rule = Arc<dyn Fn(&str, u32) -> Option<String> + Send + Sync>;

/// Close the connection instead of replying.
pub const DROP: &str = "<drop>";
/// Never reply (until the client gives up or the destination stops).
pub const HANG: &str = "<hang>";
/// Send `250-` continuation lines without end (until the client gives up).
pub const FLOOD: &str = "<flood>";

/// How the server behaves.
#[derive(Clone)]
pub struct Options {
    pub greeting: String,
    /// Answer EHLO (else 502, so the client must use HELO).
    pub ehlo: bool,
    pub pipelining: bool,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    /// Advertised SIZE limit.
    pub size: Option<u64>,
    /// Offer STARTTLS with this configuration.
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (port 465 style).
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Require AUTH (offered only under TLS) with this user and password.
    pub auth: Option<(String, String)>,
    /// Offer STARTTLS, answer 220, then send garbage instead of a handshake.
    pub broken_starttls: bool,
    /// The AUTH mechanisms advertised (when `auth` is set).
    pub auth_mechanisms: String,
    /// Recipients accepted per transaction; more get `too_many_reply`.
    pub max_recipients: Option<usize>,
    /// The reply to a RCPT over `max_recipients`.
    pub too_many_reply: String,
    /// Sent instead of the usual EHLO reply (raw lines, or a special value).
    pub ehlo_reply: Option<String>,
    /// Offer STARTTLS and answer it with this (then close the connection).
    pub starttls_reply: Option<String>,
    /// Advertise DSN (RFC 3461).
    pub dsn: bool,
    /// Advertise CHUNKING and take BDAT (RFC 3030).
    pub chunking: bool,
    /// Advertise REQUIRETLS (RFC 8689), under TLS only.
    pub requiretls: bool,
    /// Refuse a message with a line longer than this (CRLF not counted)
    /// with `500 5.5.2 Line too long`, as RFC 5321 §4.5.3.1.6 allows and
    /// aiosmtpd does.
    pub max_line_length: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            greeting: "220 dest.test ESMTP test destination".into(),
            ehlo: true,
            pipelining: true,
            smtputf8: true,
            eight_bit_mime: true,
            size: None,
            starttls: None,
            implicit_tls: None,
            auth: None,
            broken_starttls: false,
            auth_mechanisms: "PLAIN LOGIN".into(),
            max_recipients: None,
            too_many_reply: "452 4.5.3 Too many recipients".into(),
            ehlo_reply: None,
            starttls_reply: None,
            dsn: false,
            chunking: false,
            requiretls: false,
            max_line_length: None,
        }
    }
}

thread_local! {
    /// Set on a connection's thread once its client sent QUIT (and so was
    /// no longer counted as open).
    static QUIT_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One mail transaction as the destination saw it.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Which connection (0-based, in accept order) carried it.
    pub connection: usize,
    pub helo: String,
    pub mail_from: String,
    /// Parameters after the MAIL FROM address (SIZE=, BODY=, SMTPUTF8).
    pub mail_params: Vec<String>,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// Refused recipients.
    pub rejected: Vec<String>,
    /// Every RCPT of the transaction: the address and the parameters after it.
    pub rcpt_params: Vec<(String, Vec<String>)>,
    /// The body, dot-stuffing removed, terminator excluded.
    pub body: Vec<u8>,
    /// TLS protocol version when TLS was in use.
    pub tls: Option<String>,
    /// AUTH user, when authenticated.
    pub auth: Option<String>,
    /// The reply to the end of data.
    pub final_reply: String,
    /// The sizes of the BDAT chunks that carried the body; empty for DATA.
    pub chunks: Vec<usize>,
}

impl Transaction {
    /// True when the final reply was 2xx.
    pub fn accepted(&self) -> bool {
        self.final_reply.starts_with('2')
    }
}

#[derive(Default)]
struct State {
    transactions: Vec<Transaction>,
    rcpt_seen: HashMap<String, u32>,
    rcpt_times: HashMap<String, Vec<std::time::Instant>>,
    mail_seen: HashMap<String, u32>,
    data_seen: u32,
    data_command_seen: u32,
    connections: usize,
    /// Connections open now, and the most open at once.
    open: usize,
    max_open: usize,
    /// When each transaction reached the end of data.
    transaction_times: Vec<std::time::Instant>,
    tls_failures: usize,
    commands: Vec<String>,
}

#[derive(Default)]
struct Rules {
    mail: Option<Rule>,
    rcpt: Option<Rule>,
    /// Called with the first accepted recipient and the data attempt count.
    data: Option<Rule>,
    /// The reply to the DATA command: (first accepted recipient, attempt).
    data_command: Option<Rule>,
}

/// A running destination; stops accepting when dropped.
pub struct Destination {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    rules: Arc<Mutex<Rules>>,
    /// While set, the server holds the reply to the end of data.
    pub stall_data: Arc<AtomicBool>,
    /// Bodies received whose final reply is being held.
    pub stalled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Destination {
    /// Listens on 127.0.0.1, a free port.
    pub fn start(options: Options) -> Destination {
        Destination::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), options)
    }

    /// Listens on `addr` (port 0 for a free one).
    pub fn start_on(addr: SocketAddr, options: Options) -> Destination {
        let listener = TcpListener::bind(addr).expect("bind destination");
        Destination::with_listener(listener, options)
    }

    /// Listens on `ip` at the given port, when free; `None` if taken.
    pub fn try_start_at(ip: IpAddr, port: u16, options: Options) -> Option<Destination> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).ok()?;
        Some(Destination::with_listener(listener, options))
    }

    fn with_listener(listener: TcpListener, options: Options) -> Destination {
        let addr = listener.local_addr().expect("destination addr");
        let state = Arc::new(Mutex::new(State::default()));
        let rules = Arc::new(Mutex::new(Rules::default()));
        let stall_data = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            options: Arc::new(options),
            state: state.clone(),
            rules: rules.clone(),
            stall_data: stall_data.clone(),
            stalled: stalled.clone(),
            stop: stop.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                let number = {
                    let mut state = shared.state.lock().expect("state lock");
                    state.connections += 1;
                    state.open += 1;
                    state.max_open = state.max_open.max(state.open);
                    state.connections - 1
                };
                std::thread::spawn(move || {
                    let _ = serve(stream, number, &shared);
                    if !QUIT_SEEN.with(|seen| seen.get()) {
                        shared.state.lock().expect("state lock").open -= 1;
                    }
                });
            }
        });
        Destination {
            addr,
            state,
            rules,
            stall_data,
            stalled,
            stop,
        }
    }

    /// Overrides the RCPT reply: `rule(recipient, attempt)`.
    pub fn on_rcpt(&self, rule: impl Fn(&str, u32) -> Option<String> + Send + Sync + 'static) {
        self.rules.lock().expect("rules lock").rcpt = Some(Arc::new(rule));
    }

    /// Overrides the MAIL reply: `rule(sender, attempt)`.
    pub fn on_mail(&self, rule: impl Fn(&str, u32) -> Option<String> + Send + Sync + 'static) {
        self.rules.lock().expect("rules lock").mail = Some(Arc::new(rule));
    }

    /// Overrides the reply to the end of data: `rule(first recipient, attempt)`.
    pub fn on_data(&self, rule: impl Fn(&str, u32) -> Option<String> + Send + Sync + 'static) {
        self.rules.lock().expect("rules lock").data = Some(Arc::new(rule));
    }

    /// Overrides the reply to the DATA command (354 by default, 554 when no
    /// recipient was accepted): `rule(first accepted recipient or "",
    /// attempt)`.
    pub fn on_data_command(
        &self,
        rule: impl Fn(&str, u32) -> Option<String> + Send + Sync + 'static,
    ) {
        self.rules.lock().expect("rules lock").data_command = Some(Arc::new(rule));
    }

    /// Every transaction that reached the end of data, in order.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.state.lock().expect("state lock").transactions.clone()
    }

    /// Transactions the server accepted (2xx after the data).
    pub fn delivered(&self) -> Vec<Transaction> {
        self.transactions()
            .into_iter()
            .filter(Transaction::accepted)
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().expect("state lock").connections
    }

    /// The most connections that were open at once.
    pub fn max_open(&self) -> usize {
        self.state.lock().expect("state lock").max_open
    }

    /// When each transaction reached the end of data, in order.
    pub fn transaction_times(&self) -> Vec<std::time::Instant> {
        self.state
            .lock()
            .expect("state lock")
            .transaction_times
            .clone()
    }

    /// TLS handshakes that failed.
    pub fn tls_failures(&self) -> usize {
        self.state.lock().expect("state lock").tls_failures
    }

    /// Every command line received (AUTH payloads included), in order.
    pub fn commands(&self) -> Vec<String> {
        self.state.lock().expect("state lock").commands.clone()
    }

    /// When each RCPT naming `recipient` arrived.
    pub fn rcpt_times(&self, recipient: &str) -> Vec<std::time::Instant> {
        self.state
            .lock()
            .expect("state lock")
            .rcpt_times
            .get(&recipient.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Whether a message to `recipient` was accepted.
    pub fn got_mail_for(&self, recipient: &str) -> bool {
        self.delivered()
            .iter()
            .any(|transaction| transaction.recipients.iter().any(|to| to == recipient))
    }

    /// How many RCPT commands named `recipient`.
    pub fn rcpt_attempts(&self, recipient: &str) -> u32 {
        self.state
            .lock()
            .expect("state lock")
            .rcpt_seen
            .get(&recipient.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stall_data.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

#[derive(Clone)]
struct Shared {
    options: Arc<Options>,
    state: Arc<Mutex<State>>,
    rules: Arc<Mutex<Rules>>,
    stall_data: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

struct Conn {
    stream: Box<dyn ReadWrite>,
    buffer: Vec<u8>,
    tls: Option<String>,
}

impl Conn {
    fn read_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(line));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Exactly `size` bytes (a BDAT chunk); `None` when the client closes.
    fn read_exact(&mut self, size: usize) -> std::io::Result<Option<Vec<u8>>> {
        while self.buffer.len() < size {
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok(Some(self.buffer.drain(..size).collect()))
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(line.as_bytes())?;
        self.stream.write_all(b"\r\n")?;
        self.stream.flush()
    }

    /// Sends a scripted reply; `Ok(false)` when the connection must end
    /// ([`DROP`], or a [`HANG`] / [`FLOOD`] the client gave up on).
    fn answer(&mut self, reply: &str, stop: &AtomicBool) -> std::io::Result<bool> {
        match reply {
            DROP => Ok(false),
            HANG => {
                let started = std::time::Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(false)
            }
            FLOOD => {
                let line = format!("250-{}\r\n", "x".repeat(70));
                let started = std::time::Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                    if self.stream.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                Ok(false)
            }
            _ => self.send(reply).map(|()| true),
        }
    }
}

fn tls_accept(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    shared: &Shared,
) -> Option<(Box<dyn ReadWrite>, String)> {
    let mut connection = rustls::ServerConnection::new(config.clone()).ok()?;
    let mut tcp = tcp;
    while connection.is_handshaking() {
        if connection.complete_io(&mut tcp).is_err() {
            shared.state.lock().expect("state lock").tls_failures += 1;
            return None;
        }
    }
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    Some((Box::new(rustls::StreamOwned::new(connection, tcp)), version))
}

fn serve(tcp: TcpStream, number: usize, shared: &Shared) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = tcp.set_nodelay(true);
    let options = shared.options.clone();
    let plain = tcp.try_clone()?;
    let mut conn = match &options.implicit_tls {
        Some(config) => {
            let Some((stream, version)) = tls_accept(tcp, config, shared) else {
                return Ok(());
            };
            Conn {
                stream,
                buffer: Vec::new(),
                tls: Some(version),
            }
        }
        None => Conn {
            stream: Box::new(tcp),
            buffer: Vec::new(),
            tls: None,
        },
    };
    if !conn.answer(&options.greeting, &shared.stop)? || !options.greeting.starts_with("220") {
        return Ok(());
    }
    let mut helo = String::new();
    let mut authenticated: Option<String> = None;
    let mut mail: Option<(String, Vec<String>)> = None;
    let mut accepted: Vec<String> = Vec::new();
    let mut rejected: Vec<String> = Vec::new();
    let mut rcpt_params: Vec<(String, Vec<String>)> = Vec::new();
    let mut bdat_body: Vec<u8> = Vec::new();
    let mut bdat_chunks: Vec<usize> = Vec::new();
    while let Some(line) = conn.read_line()? {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        shared
            .state
            .lock()
            .expect("state lock")
            .commands
            .push(text.clone());
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" if options.ehlo && options.ehlo_reply.is_some() => {
                helo = text[4..].trim().to_string();
                let reply = options.ehlo_reply.clone().unwrap_or_default();
                if !conn.answer(&reply, &shared.stop)? {
                    return Ok(());
                }
            }
            "EHLO" if options.ehlo => {
                helo = text[4..].trim().to_string();
                let mut lines = vec!["dest.test hello".to_string()];
                if options.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(size) = options.size {
                    lines.push(format!("SIZE {size}"));
                }
                if options.eight_bit_mime {
                    lines.push("8BITMIME".into());
                }
                if options.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if (options.starttls.is_some()
                    || options.broken_starttls
                    || options.starttls_reply.is_some())
                    && conn.tls.is_none()
                {
                    lines.push("STARTTLS".into());
                }
                if options.auth.is_some() && conn.tls.is_some() {
                    lines.push(format!("AUTH {}", options.auth_mechanisms));
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                if options.dsn {
                    lines.push("DSN".into());
                }
                if options.chunking {
                    lines.push("CHUNKING".into());
                }
                if options.requiretls && conn.tls.is_some() {
                    lines.push("REQUIRETLS".into());
                }
                let last = lines.len() - 1;
                let mut reply = String::new();
                for (index, line) in lines.iter().enumerate() {
                    let separator = if index == last { ' ' } else { '-' };
                    reply.push_str(&format!("250{separator}{line}\r\n"));
                }
                conn.stream.write_all(reply.as_bytes())?;
                conn.stream.flush()?;
            }
            "EHLO" => conn.send("502 5.5.2 EHLO not implemented")?,
            "HELO" => {
                helo = text[4..].trim().to_string();
                conn.send("250 dest.test")?;
            }
            "STARTTLS" if options.starttls_reply.is_some() => {
                let reply = options.starttls_reply.clone().unwrap_or_default();
                conn.answer(&reply, &shared.stop)?;
                return Ok(());
            }
            "STARTTLS" if options.broken_starttls && conn.tls.is_none() => {
                conn.send("220 2.0.0 go ahead")?;
                conn.stream.write_all(b"this is not TLS\r\n")?;
                shared.state.lock().expect("state lock").tls_failures += 1;
                return Ok(());
            }
            "STARTTLS" => {
                let Some(config) = options.starttls.clone().filter(|_| conn.tls.is_none()) else {
                    conn.send("502 5.5.1 no STARTTLS here")?;
                    continue;
                };
                conn.send("220 2.0.0 go ahead")?;
                // RFC 3207 §4.2: discard anything pipelined before TLS.
                conn.buffer.clear();
                let Some((stream, version)) = tls_accept(plain.try_clone()?, &config, shared)
                else {
                    return Ok(());
                };
                conn.stream = stream;
                conn.tls = Some(version);
                helo.clear();
                mail = None;
                accepted.clear();
                rejected.clear();
                rcpt_params.clear();
            }
            "AUTH" => {
                let Some((user, password)) = options.auth.clone() else {
                    conn.send("502 5.5.1 no AUTH")?;
                    continue;
                };
                let words: Vec<&str> = text.split_whitespace().collect();
                let mechanism = words.get(1).map(|m| m.to_ascii_uppercase());
                let ok = match mechanism.as_deref() {
                    Some("PLAIN") => {
                        let token = match words.get(2) {
                            Some(token) => token.to_string(),
                            None => {
                                conn.send("334 ")?;
                                read_text(&mut conn)?
                            }
                        };
                        let decoded = base64::engine::general_purpose::STANDARD
                            .decode(token.trim())
                            .unwrap_or_default();
                        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                        parts.len() == 3
                            && parts[1] == user.as_bytes()
                            && parts[2] == password.as_bytes()
                    }
                    Some("LOGIN") => {
                        conn.send("334 VXNlcm5hbWU6")?;
                        let name = decode(&read_text(&mut conn)?);
                        conn.send("334 UGFzc3dvcmQ6")?;
                        let secret = decode(&read_text(&mut conn)?);
                        name == user && secret == password
                    }
                    _ => {
                        conn.send("504 5.5.4 unknown mechanism")?;
                        continue;
                    }
                };
                if ok && conn.tls.is_some() {
                    authenticated = Some(user.clone());
                    conn.send("235 2.7.0 Authentication successful")?;
                } else {
                    conn.send("535 5.7.8 Authentication credentials invalid")?;
                }
            }
            "MAIL" => {
                if options.auth.is_some() && authenticated.is_none() {
                    conn.send("530 5.7.0 Authentication required")?;
                    continue;
                }
                let (address, params) = parse_path(&text, "MAIL FROM:");
                let attempt = bump(&shared.state, |s| &mut s.mail_seen, &address);
                let rule = shared.rules.lock().expect("rules lock").mail.clone();
                match rule.and_then(|rule| rule(&address, attempt)) {
                    Some(reply) => {
                        if !conn.answer(&reply, &shared.stop)? {
                            return Ok(());
                        }
                    }
                    None => {
                        mail = Some((address, params));
                        accepted.clear();
                        rejected.clear();
                        rcpt_params.clear();
                        conn.send("250 2.1.0 Ok")?;
                    }
                }
            }
            "RCPT" => {
                if mail.is_none() {
                    conn.send("503 5.5.1 need MAIL")?;
                    continue;
                }
                let (address, params) = parse_path(&text, "RCPT TO:");
                rcpt_params.push((address.clone(), params));
                let attempt = bump(&shared.state, |s| &mut s.rcpt_seen, &address);
                shared
                    .state
                    .lock()
                    .expect("state lock")
                    .rcpt_times
                    .entry(address.to_ascii_lowercase())
                    .or_default()
                    .push(std::time::Instant::now());
                if options
                    .max_recipients
                    .is_some_and(|max| accepted.len() >= max)
                {
                    rejected.push(address);
                    conn.send(&options.too_many_reply)?;
                    continue;
                }
                let rule = shared.rules.lock().expect("rules lock").rcpt.clone();
                match rule.and_then(|rule| rule(&address, attempt)) {
                    Some(reply) => {
                        if !reply.starts_with('2') {
                            rejected.push(address);
                        } else {
                            accepted.push(address);
                        }
                        if !conn.answer(&reply, &shared.stop)? {
                            return Ok(());
                        }
                    }
                    None => {
                        accepted.push(address);
                        conn.send("250 2.1.5 Ok")?;
                    }
                }
            }
            "DATA" => {
                let Some((mail_from, mail_params)) = mail.clone() else {
                    conn.send("503 5.5.1 need MAIL")?;
                    continue;
                };
                let attempt = {
                    let mut state = shared.state.lock().expect("state lock");
                    state.data_command_seen += 1;
                    state.data_command_seen
                };
                let rule = shared
                    .rules
                    .lock()
                    .expect("rules lock")
                    .data_command
                    .clone();
                let first = accepted.first().map(String::as_str).unwrap_or("");
                if let Some(reply) = rule.and_then(|rule| rule(first, attempt)) {
                    if !conn.answer(&reply, &shared.stop)? {
                        return Ok(());
                    }
                    if !reply.starts_with("354") || accepted.is_empty() {
                        continue;
                    }
                } else if accepted.is_empty() {
                    conn.send("554 5.5.1 no valid recipients")?;
                    continue;
                } else {
                    conn.send("354 End data with <CR><LF>.<CR><LF>")?;
                }
                let mut body = Vec::new();
                let mut too_long = false;
                loop {
                    let Some(line) = conn.read_line()? else {
                        return Ok(());
                    };
                    if line == b".\r\n" {
                        break;
                    }
                    let content = line.strip_suffix(b"\r\n").unwrap_or(&line).len();
                    too_long |= options.max_line_length.is_some_and(|max| content > max);
                    // RFC 5321 §4.5.2: remove one leading dot.
                    body.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                if shared.stall_data.load(Ordering::SeqCst) {
                    shared.stalled.fetch_add(1, Ordering::SeqCst);
                    while shared.stall_data.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    // The client is gone (killed); nothing was accepted.
                    return Ok(());
                }
                let attempt = {
                    let mut state = shared.state.lock().expect("state lock");
                    state.data_seen += 1;
                    state.data_seen
                };
                let rule = shared.rules.lock().expect("rules lock").data.clone();
                let reply = if too_long {
                    "500 5.5.2 Line too long".to_string()
                } else {
                    rule.and_then(|rule| rule(&accepted[0], attempt))
                        .unwrap_or_else(|| "250 2.0.0 Ok: queued".to_string())
                };
                let mut state = shared.state.lock().expect("state lock");
                state.transaction_times.push(std::time::Instant::now());
                state.transactions.push(Transaction {
                    connection: number,
                    helo: helo.clone(),
                    mail_from,
                    mail_params,
                    recipients: std::mem::take(&mut accepted),
                    rejected: std::mem::take(&mut rejected),
                    rcpt_params: std::mem::take(&mut rcpt_params),
                    body,
                    tls: conn.tls.clone(),
                    auth: authenticated.clone(),
                    final_reply: reply.clone(),
                    chunks: Vec::new(),
                });
                drop(state);
                mail = None;
                if !conn.answer(&reply, &shared.stop)? {
                    return Ok(());
                }
            }
            "BDAT" if options.chunking => {
                // RFC 3030 §2: BDAT <size> [LAST], then exactly <size> bytes.
                let mut words = upper.split(' ').skip(1);
                let size: Option<usize> = words.next().and_then(|size| size.parse().ok());
                let last = words.next() == Some("LAST");
                let Some(size) = size else {
                    conn.send("501 5.5.4 bad BDAT")?;
                    continue;
                };
                let Some(chunk) = conn.read_exact(size)? else {
                    return Ok(());
                };
                bdat_body.extend_from_slice(&chunk);
                bdat_chunks.push(size);
                let Some((mail_from, mail_params)) = mail.clone() else {
                    conn.send("503 5.5.1 need MAIL")?;
                    continue;
                };
                if accepted.is_empty() {
                    conn.send("554 5.5.1 no valid recipients")?;
                    continue;
                }
                if !last {
                    conn.send(&format!("250 2.0.0 {size} octets received"))?;
                    continue;
                }
                let attempt = {
                    let mut state = shared.state.lock().expect("state lock");
                    state.data_seen += 1;
                    state.data_seen
                };
                let rule = shared.rules.lock().expect("rules lock").data.clone();
                let reply = rule
                    .and_then(|rule| rule(&accepted[0], attempt))
                    .unwrap_or_else(|| "250 2.0.0 Ok: queued".to_string());
                let mut state = shared.state.lock().expect("state lock");
                state.transaction_times.push(std::time::Instant::now());
                state.transactions.push(Transaction {
                    connection: number,
                    helo: helo.clone(),
                    mail_from,
                    mail_params,
                    recipients: std::mem::take(&mut accepted),
                    rejected: std::mem::take(&mut rejected),
                    rcpt_params: std::mem::take(&mut rcpt_params),
                    body: std::mem::take(&mut bdat_body),
                    tls: conn.tls.clone(),
                    auth: authenticated.clone(),
                    final_reply: reply.clone(),
                    chunks: std::mem::take(&mut bdat_chunks),
                });
                drop(state);
                mail = None;
                if !conn.answer(&reply, &shared.stop)? {
                    return Ok(());
                }
            }
            "RSET" => {
                mail = None;
                bdat_body.clear();
                bdat_chunks.clear();
                accepted.clear();
                rejected.clear();
                rcpt_params.clear();
                conn.send("250 2.0.0 Ok")?;
            }
            "NOOP" => conn.send("250 2.0.0 Ok")?,
            "QUIT" => {
                // The session is over once the client quits: it no longer
                // counts as open (the socket may linger a moment).
                shared.state.lock().expect("state lock").open -= 1;
                QUIT_SEEN.with(|seen| seen.set(true));
                conn.send("221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => conn.send("500 5.5.2 unknown command")?,
        }
    }
    Ok(())
}

fn read_text(conn: &mut Conn) -> std::io::Result<String> {
    Ok(conn
        .read_line()?
        .map(|line| String::from_utf8_lossy(&line).trim().to_string())
        .unwrap_or_default())
}

fn decode(text: &str) -> String {
    String::from_utf8_lossy(
        &base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap_or_default(),
    )
    .into_owned()
}

fn bump(
    state: &Arc<Mutex<State>>,
    map: impl Fn(&mut State) -> &mut HashMap<String, u32>,
    key: &str,
) -> u32 {
    let mut state = state.lock().expect("state lock");
    let counter = map(&mut state).entry(key.to_ascii_lowercase()).or_insert(0);
    *counter += 1;
    *counter
}

/// "MAIL FROM:<a@b> SIZE=1" → ("a@b", ["SIZE=1"]).
fn parse_path(text: &str, prefix: &str) -> (String, Vec<String>) {
    let rest = text.get(prefix.len()..).unwrap_or("").trim_start();
    let (path, params) = match rest.find('>') {
        Some(end) => (&rest[..=end], &rest[end + 1..]),
        None => (rest, ""),
    };
    let address = path
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    (
        address,
        params.split_whitespace().map(str::to_string).collect(),
    )
}

/// A test CA and a server certificate it signed for `names` (DNS names or
/// IP addresses). `ca_pem` goes in `delivery.tls_ca`.
pub struct TestCerts {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// The server certificate (DER), for TLSA records.
    pub leaf_der: Vec<u8>,
    /// The server certificate's SubjectPublicKeyInfo (DER).
    pub leaf_spki: Vec<u8>,
    /// The CA certificate's SubjectPublicKeyInfo (DER).
    pub ca_spki: Vec<u8>,
}

impl TestCerts {
    /// Generates the CA and a certificate for `names`.
    pub fn new(names: &[&str]) -> TestCerts {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("server params");
        let certificate = params.signed_by(&key, &ca, &ca_key).expect("server cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        TestCerts {
            ca_pem: ca.pem(),
            server: Arc::new(server),
            leaf_der: certificate.der().to_vec(),
            leaf_spki: key.public_key_der(),
            ca_spki: ca_key.public_key_der(),
        }
    }

    /// Writes the CA to `dir/ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA file");
        path
    }
}

/// Waits until the destination accepted `count` transactions; returns all
/// it accepted.
pub fn wait_delivered(destination: &Destination, count: usize) -> Vec<Transaction> {
    wait_for(
        &format!("{count} accepted transaction(s) at the destination"),
        DEADLINE,
        || {
            let delivered = destination.delivered();
            (delivered.len() >= count).then_some(delivered)
        },
    )
}

/// Waits for the DSN (null sender) to `sender`: (transaction, body text).
pub fn wait_dsn(destination: &Destination, sender: &str) -> (Transaction, String) {
    wait_for(&format!("a DSN to {sender}"), DEADLINE, || {
        destination
            .delivered()
            .into_iter()
            .find(|t| t.mail_from.is_empty() && t.recipients == [sender.to_string()])
            .map(|t| {
                let text = String::from_utf8_lossy(&t.body).into_owned();
                (t, text)
            })
    })
}

/// What a [`Sink`] answers to RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// 250 to everything.
    Accept,
    /// 451 to every RCPT: the recipient is deferred.
    TempFail,
}

/// A message a [`Sink`] accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The body, dot-stuffing removed.
    pub data: String,
}

/// A [`Destination`] with default options on a loopback port that accepts
/// or defers every recipient, as set: the destination of every delivery in
/// the queue-management tests.
pub struct Sink {
    pub address: SocketAddr,
    destination: Destination,
}

impl Sink {
    /// Starts a sink on 127.0.0.1, port 0.
    pub fn start(mode: SinkMode) -> Sink {
        let destination = Destination::start(Options::default());
        let sink = Sink {
            address: destination.addr,
            destination,
        };
        sink.set_mode(mode);
        sink
    }

    /// Changes what the sink answers from the next RCPT on.
    pub fn set_mode(&self, mode: SinkMode) {
        self.destination.on_rcpt(move |_, _| {
            (mode == SinkMode::TempFail).then(|| "451 4.3.0 sink says try later".to_string())
        });
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.destination
            .delivered()
            .into_iter()
            .map(|transaction| Received {
                from: transaction.mail_from,
                to: transaction.recipients,
                data: String::from_utf8_lossy(&transaction.body).into_owned(),
            })
            .collect()
    }

    /// Whether a message to `recipient` has arrived.
    pub fn got_mail_for(&self, recipient: &str) -> bool {
        self.destination.got_mail_for(recipient)
    }
}
