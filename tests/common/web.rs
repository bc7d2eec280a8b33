//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs) for the web page tests, with blocking helpers around fantoccini.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    driver: Child,
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    pub base: String,
}

/// Where the test runs save their screenshots (listed in the README).
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Res<T> = Result<T, fantoccini::error::CmdError>;

impl Browser {
    /// A fresh browser for pages under `base`, or `None` (with the reason printed) when
    /// chromium or chromedriver is not installed here.
    pub fn start(base: &str) -> Option<Browser> {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            if !Path::new(bin).exists() {
                eprintln!(
                    "SKIPPED: {bin} is not installed (apt-get install chromium chromium-driver; .ci/run does)"
                );
                return None;
            }
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                         "--disable-background-networking", "--disable-sync", "--metrics-recording-only"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let attempt = rt.block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url),
            );
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Some(Browser {
            driver,
            client: Some(client),
            rt,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn run<T>(&self, f: impl std::future::Future<Output = Res<T>>) -> T {
        self.rt
            .block_on(f)
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    /// Opens `path` (relative to the server) or a full URL.
    pub fn goto(&self, path: &str) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.run(self.c().goto(&url));
    }

    pub fn url(&self) -> String {
        self.run(self.c().current_url()).to_string()
    }

    pub fn source(&self) -> String {
        self.run(self.c().source())
    }

    /// Runs JavaScript in the page and returns its value.
    pub fn js(&self, script: &str) -> Value {
        self.run(self.c().execute(script, vec![]))
    }

    fn try_text(&self, css: &str) -> Option<String> {
        let c = self.c();
        self.rt.block_on(async {
            let e = c.find(Locator::Css(css)).await.ok()?;
            e.text().await.ok()
        })
    }

    /// The visible text of the first element matching `css` (panics when there is none).
    pub fn text(&self, css: &str) -> String {
        self.try_text(css)
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()))
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.run(self.c().find_all(Locator::Css(css))).len()
    }

    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let c = self.c();
        self.rt.block_on(async {
            let e = c.find(Locator::Css(css)).await.ok()?;
            e.attr(name).await.ok().flatten()
        })
    }

    pub fn click(&self, css: &str) {
        let c = self.c();
        self.run(async { c.find(Locator::Css(css)).await?.click().await });
    }

    pub fn fill(&self, css: &str, value: &str) {
        let c = self.c();
        self.run(async {
            let e = c.find(Locator::Css(css)).await?;
            e.clear().await?;
            e.send_keys(value).await
        });
    }

    pub fn select(&self, css: &str, value: &str) {
        let c = self.c();
        self.run(async {
            c.find(Locator::Css(css))
                .await?
                .select_by_value(value)
                .await
        });
    }

    /// Waits (up to `secs`) until `cond` holds, re-checking every 200 ms; panics naming `what`.
    pub fn wait_until(&self, secs: u64, what: &str, mut cond: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond(self) {
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!("timed out waiting for {what} on {}", self.url());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until an element matching `css` has text containing `needle`.
    pub fn wait_text(&self, css: &str, needle: &str, secs: u64) -> String {
        let mut last = String::new();
        self.wait_until(secs, &format!("{css} to show {needle}"), |b| {
            last = b.try_text(css).unwrap_or_default();
            last.contains(needle)
        });
        last
    }

    /// Saves a PNG of the page as `target/screenshots/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run(self.c().screenshot());
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Logs in through the form with the given credentials.
    pub fn login(&self, key: &str, secret: &str) {
        self.goto("/login");
        self.fill("#access_key", key);
        self.fill("#secret_key", secret);
        self.click("#login-submit");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
