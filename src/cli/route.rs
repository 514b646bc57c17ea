//! `sluice route DOMAIN [--json]`: what sluice would do for a recipient
//! domain, without sending anything (as Postfix operators use
//! `posttls-finger`): the next hops in order with their addresses, and the
//! TLS policy of each host with where it came from (DANE TLSA records, the
//! MTA-STS policy, `[tls_policy]`, `delivery.tls`).
//!
//! The MTA-STS policy is fetched live; the server's cache in the spool is
//! not read (the running server holds the spool).

use clap::Args;
use serde_json::json;

use crate::config::Config;
use crate::delivery::requiretls;
use crate::delivery::route::Router;
use crate::delivery::secure::{HostPolicy, Secure};
use crate::delivery::tls::{TlsClients, TlsMode};

/// `sluice route` arguments.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The recipient domain.
    pub domain: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Prints the route and TLS policy of `args.domain`; exit code 0, or 1 when
/// no next hop can be found.
pub fn run(args: &RouteArgs, config: &Config) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(report(&args.domain, config))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report["error"].is_null() { 0 } else { 1 })
}

/// The route as JSON (the `--json` output).
async fn report(domain: &str, config: &Config) -> anyhow::Result<serde_json::Value> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let router = Router::new(config);
    let tls = TlsClients::from_config(config)?;
    let secure = Secure::from_config(config, None);
    let static_policy = config.tls_policy_for(&domain);
    let static_source = if config
        .tls_policy
        .keys()
        .any(|name| name.eq_ignore_ascii_case(&domain))
    {
        "tls_policy"
    } else {
        "delivery.tls"
    };
    let static_tls = json!({
        "policy": format!("{static_policy:?}").to_ascii_lowercase(),
        "source": static_source,
    });
    let hop = match router.next_hop(&domain).await {
        Ok(hop) => hop,
        Err(error) => {
            return Ok(json!({
                "domain": domain,
                "error": error.to_string(),
                "hosts": [],
                "static_tls": static_tls,
            }));
        }
    };
    let security = secure
        .for_domain(&domain, &hop, router.resolver(), &tls.verified)
        .await;
    let with_auth = config.delivery.relay_auth.is_some();
    let mut hosts = Vec::new();
    for host in &hop.hosts {
        let addresses = match router.addresses(&hop, host).await {
            Ok(addresses) => json!(
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
            Err(error) => json!({ "error": error.to_string() }),
        };
        let policy = security.for_host(host).await;
        let mode = policy.mode(TlsMode::choose(
            static_policy,
            hop.kind,
            host.port,
            with_auth,
        ));
        let tls = match &policy {
            HostPolicy::Dane(records) => json!({
                "policy": "dane",
                "source": format!("TLSA _{}._tcp.{}", host.port, host.name),
                "records": records.iter().map(|r| r.presentation()).collect::<Vec<_>>(),
            }),
            HostPolicy::Refused { policy, reason } => json!({
                "policy": "refused",
                "source": policy,
                "reason": reason,
            }),
            HostPolicy::MtaStsEnforce => {
                json!({ "policy": "mta-sts", "source": "MTA-STS enforce" })
            }
            HostPolicy::MtaStsTesting => json!({
                "policy": policy.kind(mode),
                "source": "MTA-STS testing (reported, not enforced)",
            }),
            HostPolicy::Static => json!({
                "policy": static_word(mode),
                "source": static_source,
            }),
        };
        // RFC 8689: what a REQUIRETLS message would do here.
        let requiretls =
            match requiretls::host_rule(hop.kind, &policy, mode, security.mx_secure, &host.name) {
                requiretls::HostRule::Tls(mode) => json!({
                    "outcome": "deliver",
                    "tls": static_word(mode),
                    "condition": "if the host offers REQUIRETLS and its certificate verifies",
                }),
                requiretls::HostRule::Refused(reason) => json!({
                    "outcome": "bounce",
                    "status": requiretls::STATUS.to_string(),
                    "reason": reason,
                }),
            };
        hosts.push(json!({
            "name": host.name,
            "port": host.port,
            "addresses": addresses,
            "tls": tls,
            "requiretls": requiretls,
        }));
    }
    let mta_sts = security.mta_sts.as_ref().map(|active| {
        json!({
            "mode": active.cached.policy.mode.to_string(),
            "id": active.cached.id,
            "mx": active.cached.policy.mx,
            "max_age": active.cached.policy.max_age,
            "expires_at": active.cached.expires_at.to_rfc3339(),
        })
    });
    Ok(json!({
        "domain": domain,
        "error": null,
        "kind": format!("{:?}", hop.kind).to_ascii_lowercase(),
        "protocol": if hop.transport.is_lmtp() { "lmtp" } else { "smtp" },
        "hosts": hosts,
        "dane": {
            "enabled": secure.dane.enabled(),
            "disabled_reason": secure.dane.disabled_reason(),
            "mx_secure": security.mx_secure,
        },
        "mta_sts": mta_sts,
        "static_tls": static_tls,
    }))
}

fn static_word(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disabled => "plaintext",
        TlsMode::Opportunistic => "opportunistic",
        TlsMode::Required | TlsMode::Dane => "required",
        TlsMode::Implicit => "implicit",
    }
}

/// The human-readable form of [`report`].
fn text(report: &serde_json::Value) -> String {
    let mut out = String::new();
    let string = |value: &serde_json::Value| value.as_str().unwrap_or("").to_string();
    out.push_str(&format!("domain: {}\n", string(&report["domain"])));
    if !report["error"].is_null() {
        out.push_str(&format!("error: {}\n", string(&report["error"])));
        return out;
    }
    out.push_str(&format!(
        "next hop: {} ({})\n",
        string(&report["kind"]),
        string(&report["protocol"])
    ));
    for (index, host) in report["hosts"].as_array().into_iter().flatten().enumerate() {
        let addresses = match host["addresses"].as_array() {
            Some(list) => list.iter().map(string).collect::<Vec<_>>().join(", "),
            None => string(&host["addresses"]["error"]),
        };
        out.push_str(&format!(
            "  {}. {} port {}: {}\n",
            index + 1,
            string(&host["name"]),
            host["port"],
            addresses
        ));
        let tls = &host["tls"];
        let mut line = format!("     tls: {}", string(&tls["policy"]));
        if let Some(source) = tls["source"].as_str() {
            line.push_str(&format!(" ({source})"));
        }
        if let Some(reason) = tls["reason"].as_str() {
            line.push_str(&format!(": {reason}"));
        }
        out.push_str(&line);
        out.push('\n');
        for record in tls["records"].as_array().into_iter().flatten() {
            out.push_str(&format!("       TLSA {}\n", string(record)));
        }
        let requiretls = &host["requiretls"];
        if requiretls["outcome"] == "deliver" {
            out.push_str(&format!(
                "     requiretls: delivered over {} TLS {}\n",
                string(&requiretls["tls"]),
                string(&requiretls["condition"])
            ));
        } else {
            out.push_str(&format!(
                "     requiretls: bounced at once ({}): {}\n",
                string(&requiretls["status"]),
                string(&requiretls["reason"])
            ));
        }
    }
    let dane = &report["dane"];
    out.push_str(&format!(
        "dane: {}{}\n",
        if dane["enabled"].as_bool() == Some(true) {
            if dane["mx_secure"].as_bool() == Some(true) {
                "on, MX records DNSSEC-secure"
            } else {
                "on, MX records not DNSSEC-secure"
            }
        } else {
            "off"
        },
        dane["disabled_reason"]
            .as_str()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default()
    ));
    match report["mta_sts"].as_object() {
        Some(policy) => out.push_str(&format!(
            "mta-sts: mode {}, id {}, expires {}, mx: {}\n",
            string(&policy["mode"]),
            string(&policy["id"]),
            string(&policy["expires_at"]),
            policy["mx"]
                .as_array()
                .into_iter()
                .flatten()
                .map(string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => out.push_str("mta-sts: no policy\n"),
    }
    out.push_str(&format!(
        "static tls: {} ({})\n",
        string(&report["static_tls"]["policy"]),
        string(&report["static_tls"]["source"])
    ));
    out
}
