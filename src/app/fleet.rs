//! `keyturn fleet status`: the fleet's view of each policy's secret, from `[fleet]`'s
//! Prometheus (see [`crate::fleet`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use super::AppError;
use super::build::{self, load};
use crate::clock::rfc3339;
use crate::config::Policy;
use crate::fleet::SecretView;

/// Prints, per secret the policies name: the versions reporting nodes hold, the nodes that lag
/// behind the newest, and the nodes that stopped reporting. Exits 1 while a reporting node lags.
pub async fn status(path: &Path, policy: Option<&str>, json: bool) -> Result<(), AppError> {
    let config = load(path)?;
    let client = build::fleet(&config).await?.ok_or_else(|| {
        AppError::Usage(format!(
            "{}: no [fleet] section: add [fleet] prometheus = \"URL\" (the Prometheus that scrapes every agent's /metrics)",
            path.display()
        ))
    })?;
    let policies: Vec<&Policy> = match policy {
        Some(name) => vec![super::commands::named_policy(&config, name)?],
        None => config.policies.iter().collect(),
    };
    // One view per secret, however many policies name it.
    let mut secrets: BTreeMap<(String, String), (Vec<String>, Option<SecretView>)> = BTreeMap::new();
    for policy in &policies {
        let entry = secrets.entry((policy.store.clone(), policy.secret.to_string())).or_default();
        entry.0.push(policy.name.clone());
    }
    for ((store, secret), (_, view)) in &mut secrets {
        *view = Some(client.secret(store, secret).await.map_err(AppError::Fleet)?);
    }
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let views: Vec<(Vec<String>, SecretView)> =
        secrets.into_values().filter_map(|(policies, view)| Some((policies, view?))).collect();
    let lagging: Vec<String> = views
        .iter()
        .flat_map(|(_, view)| view.lagging().map(|h| format!("{} ({} {})", h.node, view.secret, h.version)))
        .collect();
    if json {
        let secrets: Vec<serde_json::Value> = views.iter().map(|(policies, view)| as_json(policies, view)).collect();
        let answer = serde_json::json!({ "prometheus": client.shown(), "secrets": secrets, "lagging": lagging.len() });
        println!("{}", serde_json::to_string_pretty(&answer).expect("json serializes"));
    } else {
        println!("fleet view from {}", client.shown());
        for (policies, view) in &views {
            print!("{}", table(policies, view, now));
        }
    }
    if lagging.is_empty() { Ok(()) } else { Err(AppError::Lagging { nodes: lagging }) }
}

fn as_json(policies: &[String], view: &SecretView) -> serde_json::Value {
    let versions: BTreeMap<String, usize> = view.versions().into_iter().collect();
    serde_json::json!({
        "policies": policies,
        "store": view.store,
        "secret": view.secret,
        "newest": view.newest,
        "newest_since": view.newest_since.map(rfc3339),
        "versions": versions,
        "lagging": view.lagging().collect::<Vec<_>>(),
        "silent": view.silent().collect::<Vec<_>>(),
        "nodes": view.holdings,
    })
}

fn table(policies: &[String], view: &SecretView, now: SystemTime) -> String {
    let ago = |at: SystemTime| {
        let seconds = now.duration_since(at).unwrap_or_default().as_secs();
        format!("{}, {} ago", rfc3339(at), humantime::format_duration(std::time::Duration::from_secs(seconds)))
    };
    let mut out = format!("\n{}  (store {}, secret {})\n", policies.join(", "), view.store, view.secret);
    match (&view.newest, view.newest_since) {
        (Some(newest), Some(since)) => out.push_str(&format!("  newest    {newest}, first delivered {}\n", ago(since))),
        _ => {
            out.push_str("  no node has reported this secret\n");
            return out;
        }
    }
    let versions: Vec<String> = view
        .versions()
        .iter()
        .map(|(version, n)| format!("{version} on {n} node{}", if *n == 1 { "" } else { "s" }))
        .collect();
    out.push_str(&format!("  in use    {}\n", if versions.is_empty() { "-".into() } else { versions.join("; ") }));
    for holding in view.lagging() {
        let since = view.newest_since.map_or_else(|| "-".to_string(), ago);
        out.push_str(&format!(
            "  LAGGING   {} ({}) holds {}, behind since {since}\n",
            holding.node, holding.policy, holding.version
        ));
    }
    for holding in view.silent() {
        let seen = holding.silent_since.map_or_else(|| "-".to_string(), ago);
        out.push_str(&format!(
            "  SILENT    {} ({}) held {}; last reported {seen}\n",
            holding.node, holding.policy, holding.version
        ));
    }
    out
}
