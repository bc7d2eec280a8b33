//! Preemption notices from the cloud metadata service: AWS spot (`instance-action`, IMDSv2 token
//! first), GCP (`instance/preempted`) and Azure scheduled events (`Preempt`). A watcher thread polls
//! every few seconds; a notice goes to the daemon's [`Controls`], which the daemon (stop pulling)
//! and the runner (journal a requeue, then terminate; or detach) act on. The base URL is
//! configurable so tests serve the endpoints on loopback.
//!
//! `auto` decides from local facts first: the machine's DMI vendor says which cloud it is on
//! (Amazon EC2, Google, Microsoft); a machine on no known cloud never sends a packet to the
//! metadata address.

use super::controls::Controls;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Vec<Provider>> {
        match s {
            "auto" | "" => Some(vec![Provider::Aws, Provider::Gcp, Provider::Azure]),
            "aws" => Some(vec![Provider::Aws]),
            "gcp" => Some(vec![Provider::Gcp]),
            "azure" => Some(vec![Provider::Azure]),
            _ => None,
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("an HTTP client builds")
}

/// One check of one provider: `Some(description)` when a preemption is announced.
pub fn check(http: &reqwest::blocking::Client, base: &str, provider: Provider) -> Option<String> {
    match provider {
        Provider::Aws => {
            let token = http
                .put(format!("{base}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .and_then(|r| r.text().ok());
            let mut req = http.get(format!("{base}/latest/meta-data/spot/instance-action"));
            if let Some(t) = token {
                req = req.header("X-aws-ec2-metadata-token", t.trim());
            }
            let resp = req.send().ok().filter(|r| r.status().is_success())?;
            let body: serde_json::Value = resp.json().ok()?;
            let action = body["action"].as_str()?;
            Some(format!(
                "aws spot instance-action {action} at {}",
                body["time"].as_str().unwrap_or("?")
            ))
        }
        Provider::Gcp => {
            let resp = http
                .get(format!("{base}/computeMetadata/v1/instance/preempted"))
                .header("Metadata-Flavor", "Google")
                .send()
                .ok()
                .filter(|r| r.status().is_success())?;
            (resp.text().ok()?.trim() == "TRUE").then(|| "gcp instance preempted".to_string())
        }
        Provider::Azure => {
            let resp = http
                .get(format!(
                    "{base}/metadata/scheduledevents?api-version=2020-07-01"
                ))
                .header("Metadata", "true")
                .send()
                .ok()
                .filter(|r| r.status().is_success())?;
            let body: serde_json::Value = resp.json().ok()?;
            body["Events"]
                .as_array()?
                .iter()
                .find(|e| e["EventType"] == "Preempt")
                .map(|e| {
                    format!(
                        "azure scheduled event Preempt at {}",
                        e["NotBefore"].as_str().unwrap_or("?")
                    )
                })
        }
    }
}

/// The cloud this machine runs on, from its DMI vendor and product name (no network).
pub fn local_cloud(dmi_dir: &Path) -> Option<Provider> {
    let read = |name: &str| {
        std::fs::read_to_string(dmi_dir.join(name))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let (vendor, product) = (read("sys_vendor"), read("product_name"));
    if vendor.contains("Amazon EC2") || product.contains("EC2") {
        Some(Provider::Aws)
    } else if vendor.contains("Google") || product.contains("Google Compute Engine") {
        Some(Provider::Gcp)
    } else if vendor.contains("Microsoft Corporation") && product.contains("Virtual Machine") {
        Some(Provider::Azure)
    } else {
        None
    }
}

/// Which providers to watch: `enabled` is `agent.preemption.enabled` (`None` = auto),
/// `configured` the parsed `agent.preemption.provider`. Auto watches only the cloud the DMI
/// facts name (and only if it is among the configured ones); none otherwise.
pub fn providers_to_watch(
    enabled: Option<bool>,
    configured: &[Provider],
    local: Option<Provider>,
) -> Vec<Provider> {
    match (enabled, local) {
        (Some(false), _) => vec![],
        (None, None) => vec![],
        (_, Some(p)) if configured.contains(&p) => vec![p],
        (None, Some(_)) => vec![],
        (Some(true), _) => configured.to_vec(),
    }
}

/// One round over the providers; true when a notice was found (and handed to `controls`).
fn check_all(
    http: &reqwest::blocking::Client,
    base: &str,
    providers: &[Provider],
    controls: &Controls,
) -> bool {
    for p in providers {
        if let Some(what) = check(http, base, *p) {
            tracing::warn!("preemption notice: {what}");
            controls.preempt(what);
            return true;
        }
    }
    false
}

/// Checks once now (a notice that is already out stops the daemon before it pulls anything),
/// then keeps watching from a thread.
pub fn start(base: String, providers: Vec<Provider>, every: Duration, controls: Arc<Controls>) {
    let http = client();
    if check_all(&http, &base, &providers, &controls) {
        return;
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        if check_all(&http, &base, &providers, &controls) {
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_needs_a_cloud_vendor_and_never_guesses() {
        let dir = std::env::temp_dir().join(format!("dmi-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let all = Provider::parse("auto").unwrap();
        for (vendor, product, expect) in [
            ("Amazon EC2", "m5.large", Some(Provider::Aws)),
            ("Google", "Google Compute Engine", Some(Provider::Gcp)),
            (
                "Microsoft Corporation",
                "Virtual Machine",
                Some(Provider::Azure),
            ),
            ("QEMU", "Standard PC (i440FX + PIIX, 1996)", None),
            ("Microsoft Corporation", "Surface Laptop", None),
        ] {
            std::fs::write(dir.join("sys_vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dir.join("product_name"), format!("{product}\n")).unwrap();
            let local = local_cloud(&dir);
            assert_eq!(local, expect, "{vendor} / {product}");
            let watched = providers_to_watch(None, &all, local);
            assert_eq!(watched, expect.into_iter().collect::<Vec<_>>());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(local_cloud(Path::new("/nonexistent")), None);
        assert!(providers_to_watch(Some(false), &all, Some(Provider::Aws)).is_empty());
        assert_eq!(
            providers_to_watch(Some(true), &[Provider::Aws], None),
            vec![Provider::Aws]
        );
        // Auto with a configured provider that is not the local cloud: nothing.
        assert!(providers_to_watch(None, &[Provider::Gcp], Some(Provider::Aws)).is_empty());
    }
}
