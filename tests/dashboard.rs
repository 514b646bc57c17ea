//! The queue dashboard in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver, through fantoccini), against a running sluice
//! with queued, deferred and held mail. Checks what the overview and the
//! list show, runs actions end to end (one cancelled, one confirmed, one by
//! filter), proves that a `<script>` in a sender, a subject and a remote
//! reply is shown as text, and saves screenshots of the overview and of a
//! message to `target/dashboard.png` and `target/dashboard-message.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them): without them this test fails, saying so.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::http;
use common::destination::{Destination, Options};
use common::spool::{Seed, enqueue_offline, fill};
use common::{DEADLINE, Sluice, routed_config_text, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "dash-Token-7";

/// What the remote server answers every recipient but those at ok.test.
const REMOTE_REPLY: &str = "451 4.7.1 <script>window.pwned=3</script> greylisted, try later";
const EVIL_SENDER: &str = "<script>window.pwned=1</script>@evil.test";
/// The subject as sent (an RFC 2047 encoded word at the end) and as shown.
const EVIL_SUBJECT: &str = "<script>window.pwned=2</script> =?UTF-8?Q?h=C3=A9llo?=";
const EVIL_SUBJECT_SHOWN: &str = "<script>window.pwned=2</script> héllo";

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str], also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    also.iter().map(PathBuf::from).find(|path| path.is_file())
}

fn missing(what: &str) -> ! {
    panic!(
        "the dashboard test needs {what}: install Debian's `chromium` and `chromium-driver` \
         packages (.ci/run installs them when missing)"
    )
}

fn start_driver() -> (Driver, PathBuf) {
    let chromium = find_program(
        &["chromium", "chromium-browser", "google-chrome"],
        &["/usr/lib/chromium/chromium"],
    )
    .unwrap_or_else(|| missing("Chromium"));
    let chromedriver = find_program(&["chromedriver"], &["/usr/lib/chromium/chromedriver"])
        .unwrap_or_else(|| missing("chromedriver"));
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", chromedriver.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("chromedriver to listen", DEADLINE, || {
        TcpStream::connect_timeout(&address, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
    (driver, chromium)
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({
            "binary": chromium.display().to_string(),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1150",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|error| panic!("cannot start headless Chromium: {error}"))
}

/// Polls the page with `script` (its `return` value) until `check` accepts it.
async fn wait_js(
    client: &Client,
    what: &str,
    script: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < DEADLINE {
        match client.execute(script, vec![]).await {
            Ok(value) if check(&value) => return value,
            Ok(value) => last = value,
            Err(error) => last = Value::String(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {DEADLINE:?} waiting for {what}; last: {last}");
}

async fn text(client: &Client, selector: &str) -> String {
    let script = format!(
        "const e = document.querySelector({}); return e ? e.textContent : null;",
        json!(selector)
    );
    match client.execute(&script, vec![]).await.expect("run script") {
        Value::String(text) => text,
        other => panic!("no element {selector}: {other}"),
    }
}

async fn wait_text(client: &Client, selector: &str, wanted: &str) -> String {
    let script = format!(
        "const e = document.querySelector({}); return e ? e.textContent : null;",
        json!(selector)
    );
    let value = wait_js(
        client,
        &format!("{wanted:?} in {selector}"),
        &script,
        |value| value.as_str().is_some_and(|text| text.contains(wanted)),
    )
    .await;
    value.as_str().unwrap_or_default().to_string()
}

async fn click(client: &Client, selector: &str) {
    client
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("no {selector}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {selector}: {error}"));
}

/// Nothing any `<script>` from mail would have set, and no script element
/// but the page's own.
async fn assert_no_injection(client: &Client) {
    let value = client
        .execute(
            "return [typeof window.pwned, document.scripts.length, document.scripts[0].src];",
            vec![],
        )
        .await
        .expect("run script");
    assert_eq!(value[0], "undefined", "a script from mail ran: {value}");
    assert_eq!(value[1], 1, "only the page's own script: {value}");
    assert!(
        value[2].as_str().unwrap_or("").ends_with("/assets/app.js"),
        "{value}"
    );
}

fn held(sluice: &Sluice, id: &str) -> bool {
    let reply = http("GET", sluice.admin, &format!("/v1/queue/{id}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["held"].as_bool().expect("held")
}

#[test]
fn the_dashboard_shows_the_queue_and_acts_on_it_in_a_real_browser() {
    let started = Instant::now();
    let (driver, chromium) = start_driver();

    // The queue before the server starts: a message whose sender and subject
    // carry scripts, deferred ones to two domains, a held one, and one that
    // will be delivered.
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let body = format!(
        "From: <x@evil.test>\r\nTo: <victim@defer.test>\r\nSubject: {EVIL_SUBJECT}\r\n\
         Message-ID: <evil@client.test>\r\n\r\nHello.\r\n"
    );
    let evil = enqueue_offline(&spool, EVIL_SENDER, &["victim@defer.test"], body.as_bytes());
    let ids = fill(
        &spool,
        &[
            Seed {
                sender: "alice@example.org",
                recipients: &["bob@defer.test"],
                held: false,
            },
            Seed {
                sender: "carol@example.org",
                recipients: &["dave@slow.test", "erin@slow.test"],
                held: false,
            },
            Seed {
                sender: "frank@example.org",
                recipients: &["gina@parked.test"],
                held: true,
            },
            Seed {
                sender: "hal@example.org",
                recipients: &["ivy@ok.test"],
                held: false,
            },
        ],
    );
    let (bob, carol, frank) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    let destination = Destination::start(Options::default());
    destination.on_rcpt(|recipient, _| {
        (!recipient.contains("@ok.test")).then(|| REMOTE_REPLY.to_string())
    });
    let config = routed_config_text(
        dir.path(),
        destination.addr,
        &format!("token = \"{TOKEN}\""),
        "",
    );
    let sluice = Sluice::start_with(dir, &config);
    let admin = sluice.admin;
    // Three messages deferred with the remote reply, one delivered.
    wait_for("the deferrals", DEADLINE, || {
        let list = http("GET", admin, "/v1/queue?status=deferred", Some(TOKEN)).json();
        let all = http("GET", admin, "/v1/queue", Some(TOKEN)).json();
        (list.as_array()?.len() == 3 && all.as_array()?.len() == 4).then_some(())
    });

    // A destination suspended by hand, as an operator would after a
    // throttling reply.
    let suspended = http("POST", admin, "/v1/suspensions/slow.test", Some(TOKEN));
    assert_eq!(
        suspended.status, 200,
        "suspend slow.test: {}",
        suspended.body
    );

    // The page and its assets carry the policy; data needs the token; a
    // state change without the custom header is refused even with it.
    // A connection per request: the API closes one whose request it
    // refused before reading the body, and a pooled one may be reused just
    // then.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .max_idle_connections(0)
        .build();
    let page = agent
        .get(&format!("http://{admin}/"))
        .call()
        .expect("GET /");
    let policy = page
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.into_string().expect("page");
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "inline script or style in the page"
    );
    assert_eq!(
        http("GET", admin, "/v1/dashboard/state", None).status,
        401,
        "the dashboard's data needs the token"
    );
    let cookie = format!(
        "sluice_token={}",
        TOKEN
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let forged = agent
        .post(&format!("http://{admin}/v1/queue/{bob}/hold"))
        .set("Cookie", &cookie)
        .set("Origin", &format!("http://{admin}"))
        .send_bytes(&[]);
    match forged {
        Err(ureq::Error::Status(403, _)) => {}
        other => panic!("a POST with only the cookie must be refused (CSRF): {other:?}"),
    }
    assert!(!held(&sluice, &bob));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let profile = tempfile::tempdir().expect("profile dir");
    runtime.block_on(async {
        let client = browser(&driver, &chromium, profile.path()).await;
        let base = format!("http://{admin}");
        client.goto(&format!("{base}/")).await.expect("open the dashboard");

        // Login: a wrong token is refused, the right one kept in an
        // HttpOnly cookie that the page's script cannot read.
        wait_js(&client, "the login form", "return !document.getElementById('login').hidden;", |v| {
            v == &Value::Bool(true)
        })
        .await;
        let field = client.find(Locator::Id("login-token")).await.expect("token field");
        field.send_keys("wrong").await.expect("type");
        click(&client, "#login-submit").await;
        wait_text(&client, "#login-error", "Wrong token").await;
        field.clear().await.expect("clear");
        field.send_keys(TOKEN).await.expect("type");
        click(&client, "#login-submit").await;

        // The overview.
        wait_text(&client, "#stat-queued", "4").await;
        assert_eq!(text(&client, "#stat-held").await, "1");
        assert_eq!(text(&client, "#stat-deferred").await, "4", "four deferred recipients");
        assert_eq!(text(&client, "#stat-delivery").await, "running");
        let cookies = client.execute("return document.cookie;", vec![]).await.expect("cookie");
        assert_eq!(cookies, "", "the token cookie must be HttpOnly");
        let heatmap = wait_text(&client, "#heatmap", "slow.test").await;
        assert!(heatmap.contains("defer.test") && heatmap.contains("parked.test"), "{heatmap}");
        let first_row = text(&client, "#heatmap tr:nth-child(3) td.domain").await;
        assert_eq!(first_row, "defer.test", "destinations by message count");
        let reasons = wait_text(&client, "#reasons", REMOTE_REPLY).await;
        assert!(reasons.contains("defer.test") && reasons.contains("slow.test"), "{reasons}");
        let reason_count = text(&client, "#reasons tr:nth-child(2) td.num").await;
        assert_eq!(reason_count, "4", "four recipients deferred with that reply");
        let suspensions = wait_text(&client, "#suspensions", "slow.test").await;
        assert!(suspensions.contains("suspended by the operator"), "{suspensions}");
        wait_js(
            &client,
            "the suspended badge on slow.test's row",
            "return Array.from(document.querySelectorAll('#heatmap tr')).filter((row) => \
             row.textContent.includes('slow.test') && row.querySelector('.badge')).length;",
            |v| v == &json!(1),
        )
        .await;
        let listeners = wait_text(&client, "#listeners", "relay").await;
        assert!(listeners.contains(&sluice.smtp.to_string()), "the bound address: {listeners}");
        let totals = wait_text(&client, "#stat-totals", "1 sent").await;
        assert!(totals.contains("4 deferred"), "{totals}");
        let paths = client
            .execute(
                "return [document.querySelectorAll('#chart-queue path.line').length, \
                 document.querySelectorAll('#chart-outcomes path.line').length];",
                vec![],
            )
            .await
            .expect("charts");
        assert_eq!(paths, json!([2, 3]), "one line per series");
        assert_no_injection(&client).await;

        // The screenshot, for people and for the README.
        let png = client.screenshot().await.expect("screenshot");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("dashboard.png");
        std::fs::write(&target, &png).expect("save the screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        eprintln!("screenshot: {}", target.display());

        // The list: every message, the sender as text.
        click(&client, "#tab-messages").await;
        wait_js(
            &client,
            "four rows",
            "return document.querySelectorAll('#message-list tbody tr[data-id]').length;",
            |v| v == &json!(4),
        )
        .await;
        let sender = text(&client, &format!("tr[data-id='{evil}'] td.sender")).await;
        assert_eq!(sender, EVIL_SENDER);
        let reply = text(&client, &format!("tr[data-id='{evil}'] td.reply")).await;
        assert_eq!(reply, REMOTE_REPLY);
        assert_eq!(text(&client, &format!("tr[data-id='{frank}'] td.state")).await, "held");

        // A filter.
        client
            .find(Locator::Id("filter-domain"))
            .await
            .expect("domain filter")
            .send_keys("slow.test")
            .await
            .expect("type");
        click(&client, "#filter-apply").await;
        wait_js(
            &client,
            "the filtered list",
            "return Array.from(document.querySelectorAll('#message-list tbody tr[data-id]'), r => r.dataset.id);",
            |v| v == &json!([carol]),
        )
        .await;
        client
            .find(Locator::Id("filter-domain"))
            .await
            .expect("domain filter")
            .clear()
            .await
            .expect("clear");
        click(&client, "#filter-apply").await;
        wait_js(
            &client,
            "the whole list again",
            "return document.querySelectorAll('#message-list tbody tr[data-id]').length;",
            |v| v == &json!(4),
        )
        .await;

        // The detail: subject, attempts and headers as text.
        click(&client, &format!("tr[data-id='{evil}'] button.link")).await;
        wait_text(&client, "#detail-id", &evil).await;
        let subject = wait_text(&client, "#detail-envelope dd.subject", "llo").await;
        assert_eq!(subject, EVIL_SUBJECT_SHOWN);
        assert_eq!(text(&client, "#detail-envelope dd.sender").await, EVIL_SENDER);
        let attempts = wait_text(&client, "#detail-attempts", REMOTE_REPLY).await;
        assert!(attempts.contains("victim@defer.test"), "{attempts}");
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(target.with_file_name("dashboard-message.png"), &png)
            .expect("save the screenshot");
        let headers = text(&client, "#detail-headers").await;
        assert!(headers.contains(&format!("Subject: {EVIL_SUBJECT}")), "{headers}");
        assert_no_injection(&client).await;

        // An action cancelled does nothing; confirmed, it is done.
        click(&client, &format!("tr[data-id='{bob}'] button.link")).await;
        wait_text(&client, "#detail-id", &bob).await;
        click(&client, "#detail [data-action='hold']").await;
        wait_text(&client, "#confirm-text", &format!("Hold message {bob}?")).await;
        click(&client, "#confirm-no").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held(&sluice, &bob), "cancelled");
        click(&client, "#detail [data-action='hold']").await;
        wait_text(&client, "#confirm-text", &format!("Hold message {bob}?")).await;
        click(&client, "#confirm-yes").await;
        wait_text(&client, "#notice", &format!("Message {bob} held.")).await;
        assert!(held(&sluice, &bob), "held through the dashboard");
        wait_text(&client, "#detail-envelope dd.held-flag", "yes").await;
        wait_text(&client, &format!("tr[data-id='{bob}'] td.state"), "held").await;

        // A bulk action by filter.
        client
            .find(Locator::Id("filter-domain"))
            .await
            .expect("domain filter")
            .send_keys("slow.test")
            .await
            .expect("type");
        client
            .execute("document.getElementById('bulk-action').value = 'hold';", vec![])
            .await
            .expect("choose hold");
        click(&client, "#bulk-apply").await;
        wait_text(&client, "#confirm-text", "Hold every message matching domain=slow.test?").await;
        click(&client, "#confirm-yes").await;
        wait_text(&client, "#notice", "1 messages held.").await;
        assert!(held(&sluice, &carol), "held by filter");
        assert!(!held(&sluice, &evil), "only the filter's messages");

        // Every view has an address: opened by URL, kept by a reload,
        // reached again with back and forward.
        let hidden = |id: &str| format!("return document.getElementById('{id}').hidden;");
        client
            .goto(&format!("{base}/#/messages"))
            .await
            .expect("open #/messages");
        wait_js(&client, "the list by its address", &hidden("messages"), |v| {
            v == &Value::Bool(false)
        })
        .await;
        wait_js(
            &client,
            "the whole list at #/messages",
            "return document.querySelectorAll('#message-list tbody tr[data-id]').length;",
            |v| v == &json!(4),
        )
        .await;
        assert_eq!(
            client.execute(&hidden("overview"), vec![]).await.expect("overview"),
            Value::Bool(true),
            "#/messages shows the list, not the overview"
        );
        client
            .goto(&format!("{base}/#/messages?domain=slow.test"))
            .await
            .expect("open a filtered list");
        wait_js(
            &client,
            "the filtered list by its address",
            "return Array.from(document.querySelectorAll('#message-list tbody tr[data-id]'), r => r.dataset.id);",
            |v| v == &json!([carol]),
        )
        .await;
        let typed = client
            .execute("return document.getElementById('filter-domain').value;", vec![])
            .await
            .expect("filter field");
        assert_eq!(typed, json!("slow.test"), "the address fills the filter");
        click(&client, &format!("tr[data-id='{carol}'] button.link")).await;
        wait_text(&client, "#detail-id", &carol).await;
        let address = client.current_url().await.expect("url");
        assert_eq!(
            address.fragment(),
            Some(format!("/messages/{carol}?domain=slow.test").as_str()),
            "the detail's address keeps the list's filter"
        );
        client.refresh().await.expect("reload the detail");
        wait_text(&client, "#detail-id", &carol).await;
        wait_js(&client, "the detail after a reload", &hidden("detail"), |v| {
            v == &Value::Bool(false)
        })
        .await;
        client.back().await.expect("back");
        wait_js(&client, "the detail closed by back", &hidden("detail"), |v| {
            v == &Value::Bool(true)
        })
        .await;
        client.forward().await.expect("forward");
        wait_js(&client, "the detail again by forward", &hidden("detail"), |v| {
            v == &Value::Bool(false)
        })
        .await;
        wait_text(&client, "#detail-id", &carol).await;
        client
            .goto(&format!("{base}/#/overview?range=6"))
            .await
            .expect("open the overview over 6 hours");
        wait_js(&client, "the overview by its address", &hidden("overview"), |v| {
            v == &Value::Bool(false)
        })
        .await;
        wait_text(&client, ".range-title", "last 6 hours").await;
        click(&client, "[data-range='1']").await;
        wait_js(&client, "the range in the address", "return location.hash;", |v| {
            v == &json!("#/overview?range=1")
        })
        .await;
        client.refresh().await.expect("reload the overview");
        wait_text(&client, ".range-title", "last hour").await;
        client.back().await.expect("back to 6 hours");
        wait_text(&client, ".range-title", "last 6 hours").await;

        // Logging out forgets the token.
        click(&client, "#logout").await;
        wait_js(&client, "the login form again", "return !document.getElementById('login').hidden;", |v| {
            v == &Value::Bool(true)
        })
        .await;
        client.goto(&format!("{base}/")).await.expect("reload");
        wait_js(&client, "the login form after reload", "return !document.getElementById('login').hidden;", |v| {
            v == &Value::Bool(true)
        })
        .await;
        client.close().await.expect("close the browser");
    });
    drop(destination);
    let elapsed = started.elapsed();
    eprintln!("dashboard test took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
}

/// Sends one request; any status is an answer.
fn call(request: ureq::Request, body: Option<&str>) -> ureq::Response {
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("no answer: {error}"),
    }
}

/// A server with `admin_extra` in `[admin]` and mail going nowhere.
fn quiet_server(admin_extra: &str) -> Sluice {
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = SocketAddr::from(([127, 0, 0, 1], 9));
    let config = routed_config_text(dir.path(), dead, admin_extra, "");
    Sluice::start_with(dir, &config)
}

#[test]
fn the_login_cookie_is_http_only_strict_and_stands_for_the_token() {
    let sluice = quiet_server(&format!("token = \"{TOKEN}\""));
    let base = format!("http://{}", sluice.admin);
    // A connection per request: the API closes one whose request it
    // refused before reading the body, and a pooled one may be reused just
    // then.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .max_idle_connections(0)
        .build();
    let login = |token: &str, headers: &[(&str, &str)]| {
        let mut request = agent.post(&format!("{base}/login"));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        call(request, Some(&json!({ "token": token }).to_string()))
    };
    let own = [
        ("X-Sluice-Request", "1"),
        ("Content-Type", "application/json"),
    ];

    // Refused: a wrong token; a form another page could post (no custom
    // header); a request from another origin.
    assert_eq!(login("wrong", &own).status(), 401);
    assert_eq!(
        login(TOKEN, &[("Content-Type", "text/plain")]).status(),
        403
    );
    let foreign = [("X-Sluice-Request", "1"), ("Origin", "http://evil.example")];
    assert_eq!(login(TOKEN, &foreign).status(), 403);

    let response = login(TOKEN, &own);
    assert_eq!(response.status(), 204);
    let set_cookie = response.header("set-cookie").expect("a cookie").to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    let hex_token: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !cookie.contains(TOKEN) && !cookie.contains(&hex_token),
        "the cookie holds a session ID, never the token: {cookie}"
    );
    assert!(
        set_cookie.contains("Max-Age="),
        "the session expires: {set_cookie}"
    );

    // The cookie opens the API and the dashboard's data.
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = agent.get(&format!("{base}{path}"));
        if let Some(cookie) = cookie {
            request = request.set("Cookie", cookie);
        }
        call(request, None)
    };
    assert_eq!(get("/v1/queue", None).status(), 401);
    assert_eq!(get("/v1/queue", Some(&cookie)).status(), 200);
    assert_eq!(get("/v1/queue", Some("sluice_token=00")).status(), 401);
    let forged = format!("sluice_session={}", "0".repeat(64));
    assert_eq!(get("/v1/queue", Some(&forged)).status(), 401);
    let history: Value = get("/v1/dashboard/history", Some(&cookie))
        .into_json()
        .expect("history JSON");
    assert_eq!(history["interval_seconds"], 10, "{history}");
    let minute = &history["minutes"][0];
    for key in [
        "at",
        "queued",
        "held",
        "deferred_recipients",
        "received",
        "sent",
        "deferred",
        "bounced",
    ] {
        assert!(
            minute[key].is_u64() || minute[key].is_i64(),
            "{key} in {minute}"
        );
    }
    let state: Value = get("/v1/dashboard/state", Some(&cookie))
        .into_json()
        .expect("state JSON");
    assert_eq!(state["delivery"], "running", "{state}");
    assert_eq!(state["queue"]["messages"], 0, "{state}");
    let overview: Value = get("/v1/dashboard/overview", Some(&cookie))
        .into_json()
        .expect("overview JSON");
    assert_eq!(overview["summary"]["total"]["messages"], 0, "{overview}");
    assert_eq!(overview["reasons"], json!([]), "{overview}");
    assert_eq!(overview["reasons_other"], 0, "{overview}");

    // The page itself needs no token and holds no data.
    let page = get("/", None);
    assert_eq!(page.status(), 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(get("/assets/app.js", None).status(), 200);

    let out = call(
        agent
            .post(&format!("{base}/logout"))
            .set("X-Sluice-Request", "1")
            .set("Cookie", &cookie),
        None,
    );
    assert_eq!(out.status(), 204);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "logout expires the cookie"
    );
    assert_eq!(
        get("/v1/queue", Some(&cookie)).status(),
        401,
        "the session ended at logout"
    );

    // Logins are rate limited: after 5 wrong tokens in a minute (one above),
    // even the right one is refused for a while.
    for _ in 0..4 {
        assert_eq!(login("wrong", &own).status(), 401);
    }
    let throttled = login(TOKEN, &own);
    assert_eq!(throttled.status(), 429);
    assert!(throttled.header("retry-after").is_some());
}

#[test]
fn without_a_token_the_dashboard_needs_the_generated_one() {
    let sluice = quiet_server("");
    let session = http("GET", sluice.admin, "/v1/dashboard/session", None).json();
    assert_eq!(session["token_required"], true);
    // Loopback is not trust.
    assert_eq!(
        common::admin::http_anonymous("GET", sluice.admin, "/v1/dashboard/state").status,
        401
    );
    // `http` sends the token sluice generated into <spool>/admin.token.
    assert_eq!(
        http("GET", sluice.admin, "/v1/dashboard/state", None).status,
        200
    );
}
