//! A headless Chromium driven through WebDriver (chromedriver + the
//! fantoccini client), for the QA-facing browser tests. Each [`Browser`]
//! is its own chromedriver process and Chromium profile; both are removed
//! when it drops. Assertions are on DOM text, never on pixels.
#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Map, Value};

use crate::common::{eventually, free_port};

/// The Chromium and chromedriver binaries (Debian's `chromium` and
/// `chromium-driver`, installed by `scripts/test.sh`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a headless Chromium with the flags a reproducible test needs
    /// plus `extra` (e.g. `--host-resolver-rules=...`, `--proxy-pac-url=...`).
    pub async fn start(extra: &[String]) -> Browser {
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver; scripts/test.sh installs it)");
        let up = eventually(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let _ = driver.kill();
            panic!("chromedriver did not listen on port {port}");
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra.iter().cloned());
        let mut caps = Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill();
                panic!("cannot start a Chromium session: {e}");
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// The text of the whole page (`document.body.innerText`).
    pub async fn text(&self) -> String {
        let v = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .expect("page text");
        v.as_str().unwrap_or_default().to_string()
    }

    /// The text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// The first element matching `css`; a test failure naming the page
    /// text when there is none.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) => panic!("no element {css}: {e}\npage:\n{}", self.text().await),
        }
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current url")
            .to_string()
    }

    /// Clicks the first element matching `css` and waits for the page it
    /// loads.
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        self.settle().await;
    }

    /// Sets a form field (input, textarea or select) by CSS selector.
    pub async fn fill(&self, css: &str, value: &str) {
        let done = self
            .client
            .execute(
                "const el = document.querySelector(arguments[0]); \
                 if (!el) return false; el.value = arguments[1]; return true;",
                vec![Value::from(css), Value::from(value)],
            )
            .await
            .expect("fill");
        assert_eq!(done, Value::Bool(true), "no form field {css}");
    }

    /// Waits until the document has loaded.
    pub async fn settle(&self) {
        for _ in 0..200 {
            let state = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .ok();
            if state.as_ref().and_then(Value::as_str) == Some("complete") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // close() is the normal path; this covers a panicking test, whose
        // Chromium is found by its profile directory
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self._profile.path())
            .status();
    }
}
