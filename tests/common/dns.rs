//! A real DNS server for tests: hickory-server in-process on 127.0.0.1, UDP
//! and TCP on the same free port, answering from a table each test fills
//! (MX, A, AAAA, TXT, null MX, NXDOMAIN, or any error RCODE such as SERVFAIL or
//! REFUSED). Unknown names are NXDOMAIN; a known name without records of the
//! asked type is an empty NOERROR. TLSA records can be served, and names
//! marked [`DnsServer::secure`] answer with the AD bit set, as a local
//! validating resolver does for DNSSEC-signed data (DANE tests).
//! [`SilentNameserver`] is the other kind:
//! it reads queries and never answers.
//!
//! Point sluice at it with `[dns] nameservers = ["<addr>"]`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Header, Metadata, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, AAAA, MX, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// How a name answers.
#[derive(Debug, Clone)]
enum Entry {
    Records(HashMap<RecordType, Vec<RData>>),
    NxDomain,
    /// An error RCODE (SERVFAIL, REFUSED, NOTIMP, FORMERR…) for every query.
    Error(ResponseCode),
}

#[derive(Default)]
struct Zone {
    names: HashMap<String, Entry>,
    /// Error RCODEs for one record type of a name, before `names`.
    type_errors: HashMap<(String, RecordType), ResponseCode>,
    queries: Vec<(String, RecordType)>,
    /// Names whose answers carry the AD bit (DNSSEC-authenticated).
    secure: std::collections::HashSet<String>,
}

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    /// UDP and TCP, same port.
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn key(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{name}.")
}

impl DnsServer {
    /// Starts a server with an empty zone.
    pub fn start() -> DnsServer {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("udp local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let handler = Handler { zone: zone.clone() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("dns runtime");
            runtime.block_on(async move {
                udp.set_nonblocking(true).expect("nonblocking udp");
                tcp.set_nonblocking(true).expect("nonblocking tcp");
                let mut server = Server::new(handler);
                server.register_socket(tokio::net::UdpSocket::from_std(udp).expect("udp"));
                server.register_listener(
                    tokio::net::TcpListener::from_std(tcp).expect("tcp"),
                    Duration::from_secs(5),
                    64 * 1024,
                );
                let _ = ready_tx.send(());
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("dns server started");
        DnsServer {
            addr,
            zone,
            stop: Some(stop),
        }
    }

    fn add(&self, name: &str, rdata: RData) {
        let mut zone = self.zone.lock().expect("zone lock");
        let entry = zone
            .names
            .entry(key(name))
            .or_insert_with(|| Entry::Records(HashMap::new()));
        if !matches!(entry, Entry::Records(_)) {
            *entry = Entry::Records(HashMap::new());
        }
        if let Entry::Records(records) = entry {
            records.entry(rdata.record_type()).or_default().push(rdata);
        }
    }

    /// Adds MX records `(preference, exchange)` for `domain`.
    pub fn mx(&self, domain: &str, records: &[(u16, &str)]) {
        for (preference, exchange) in records {
            let exchange = Name::from_str(&key(exchange)).expect("valid MX host name");
            self.add(domain, RData::MX(MX::new(*preference, exchange)));
        }
    }

    /// Adds a null MX (RFC 7505: preference 0, exchange ".").
    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RData::MX(MX::new(0, Name::root())));
    }

    /// Adds A records.
    pub fn a(&self, name: &str, addresses: &[Ipv4Addr]) {
        for address in addresses {
            self.add(name, RData::A(A::from(*address)));
        }
    }

    /// Adds AAAA records.
    pub fn aaaa(&self, name: &str, addresses: &[Ipv6Addr]) {
        for address in addresses {
            self.add(name, RData::AAAA(AAAA::from(*address)));
        }
    }

    /// Adds a TXT record holding `text`, split into character-strings of at
    /// most 255 bytes as RFC 1035 §3.3 requires (long DKIM keys need it);
    /// readers join them back (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    pub fn txt(&self, name: &str, text: &str) {
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
        self.add(name, RData::TXT(TXT::from_bytes(chunks)));
    }

    /// Adds a TLSA record (RFC 6698) at `name` (e.g. `_25._tcp.mx.test`).
    pub fn tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) {
        self.add(
            name,
            RData::TLSA(TLSA::new(
                CertUsage::from(usage),
                Selector::from(selector),
                Matching::from(matching),
                data.to_vec(),
            )),
        );
    }

    /// Answers about `name` carry the AD bit from now on, as a validating
    /// resolver's answers for DNSSEC-signed data do.
    pub fn secure(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .secure
            .insert(key(name));
    }

    /// Removes every record of `name` of `record_type`.
    pub fn clear(&self, name: &str, record_type: RecordType) {
        if let Some(Entry::Records(records)) = self
            .zone
            .lock()
            .expect("zone lock")
            .names
            .get_mut(&key(name))
        {
            records.remove(&record_type);
        }
    }

    /// Makes `name` exist with no records at all (NOERROR, empty answer).
    pub fn empty(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .names
            .insert(key(name), Entry::Records(HashMap::new()));
    }

    /// Answers NXDOMAIN for `name` (also the default for unknown names).
    pub fn nxdomain(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .names
            .insert(key(name), Entry::NxDomain);
    }

    /// Answers SERVFAIL for every query about `name`.
    pub fn servfail(&self, name: &str) {
        self.error(name, ResponseCode::ServFail);
    }

    /// Answers REFUSED for every query about `name`, as a resolver does
    /// that will not serve us.
    pub fn refused(&self, name: &str) {
        self.error(name, ResponseCode::Refused);
    }

    /// Answers `code` (an error RCODE) for every query about `name`.
    pub fn error(&self, name: &str, code: ResponseCode) {
        self.zone
            .lock()
            .expect("zone lock")
            .names
            .insert(key(name), Entry::Error(code));
    }

    /// Answers `code` (an error RCODE) to queries for `record_type` records
    /// of `name`; other types answer as before.
    pub fn error_for(&self, name: &str, record_type: RecordType, code: ResponseCode) {
        self.zone
            .lock()
            .expect("zone lock")
            .type_errors
            .insert((key(name), record_type), code);
    }

    /// Forgets everything about `name` (it becomes NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.zone
            .lock()
            .expect("zone lock")
            .names
            .remove(&key(name));
    }

    /// Every query received so far: (name with trailing dot, type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.zone.lock().expect("zone lock").queries.clone()
    }

    /// The `[dns]` table pointing sluice here.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            self.addr
        )
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A nameserver that never answers: UDP and TCP bound on one loopback port,
/// queries read (UDP) or left in the accept backlog (TCP) and ignored. It
/// notes when the first query arrived, so a test can time what follows.
pub struct SilentNameserver {
    /// UDP and TCP, same port.
    pub addr: SocketAddr,
    first_query: Arc<Mutex<Option<std::time::Instant>>>,
    _tcp: TcpListener,
}

impl SilentNameserver {
    /// Binds the sockets and starts reading (and ignoring) UDP queries. The
    /// reader thread lives as long as the test process; it holds only a
    /// socket on loopback.
    pub fn start() -> SilentNameserver {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("udp local addr");
        let first_query = Arc::new(Mutex::new(None));
        let seen = first_query.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while udp.recv_from(&mut buffer).is_ok() {
                seen.lock()
                    .expect("first query lock")
                    .get_or_insert_with(std::time::Instant::now);
            }
        });
        SilentNameserver {
            addr,
            first_query,
            _tcp: tcp,
        }
    }

    /// When the first query arrived, if one did.
    pub fn first_query(&self) -> Option<std::time::Instant> {
        *self.first_query.lock().expect("first query lock")
    }

    /// The `[dns]` table pointing sluice here, with `timeout`.
    pub fn config(&self, timeout: &str) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"{timeout}\"\n",
            self.addr
        )
    }
}

/// UDP and TCP sockets on the same free loopback port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no free port for both UDP and TCP");
}

struct Handler {
    zone: Arc<Mutex<Zone>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let failed = |metadata: &Metadata| {
            let mut metadata = Metadata::response_from_request(metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: Default::default(),
            })
        };
        let Ok(info) = request.request_info() else {
            return failed(&request.metadata);
        };
        let name = key(&info.query.name().to_string());
        let record_type = info.query.query_type();
        let (entry, secure) = {
            let mut zone = self.zone.lock().expect("zone lock");
            zone.queries.push((name.clone(), record_type));
            let secure = zone.secure.contains(&name);
            let entry = match zone.type_errors.get(&(name.clone(), record_type)) {
                Some(code) => Some(Entry::Error(*code)),
                None => zone.names.get(&name).cloned(),
            };
            (entry, secure)
        };
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        metadata.authentic_data = secure;
        let owner = Name::from_str(&name).unwrap_or_else(|_| Name::root());
        let result = match entry {
            Some(Entry::Error(code)) => {
                let response = builder.error_msg(&request.metadata, code);
                response_handle.send_response(response).await
            }
            None | Some(Entry::NxDomain) => {
                metadata.response_code = ResponseCode::NXDomain;
                let response = builder.build_no_records(metadata);
                response_handle.send_response(response).await
            }
            Some(Entry::Records(records)) => {
                let answers: Vec<Record> = records
                    .get(&record_type)
                    .map(|list| {
                        list.iter()
                            .map(|rdata| Record::from_rdata(owner.clone(), 60, rdata.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                metadata.response_code = ResponseCode::NoError;
                let response = builder.build(metadata, answers.iter(), &[], &[], &[]);
                response_handle.send_response(response).await
            }
        };
        result.unwrap_or_else(|_| failed(&request.metadata))
    }
}
