//! # The browser harness: the operator console (`/ops/`) in headless Chromium
//!
//! [`Browser::start`] starts `chromedriver --port=<free port>` as a child process (killed on
//! drop after its session is ended, so no Chromium outlives a test), and opens one
//! headless Chromium session over WebDriver ([`fantoccini`], rustls only). The helpers speak the
//! console's HTML contract: [`Browser::sign_in`] with an operator token, [`Browser::goto`] a path
//! of the [`TestApp`], find by CSS, submit a form (accepting its `data-confirm` dialog), read the
//! console cookie and the page's `_csrf` token for requests made outside the browser
//! ([`ConsoleHttp`]), and [`Browser::screenshot`] a page into `docs/dashboard/<name>.png` when
//! `BLEPAY_SCREENSHOTS` is set.
//!
//! Chromium and its driver are Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without `chromedriver` on `PATH` (or at `BLEPAY_CHROMEDRIVER`) a browser test fails and
//! says how to install it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::TestApp;

/// The console's session cookie (docs/dashboard.md, "Signing in").
pub const CONSOLE_COOKIE: &str = "blepay_console";

/// What `BLEPAY_SCREENSHOTS` being set turns on: [`Browser::screenshot`] writes PNGs.
pub const SCREENSHOTS_ENV: &str = "BLEPAY_SCREENSHOTS";

/// How to install what the browser tests need, for the failure message.
pub const INSTALL_HINT: &str = "the console's browser tests need Debian's chromium and \
     chromium-driver: `apt-get update && apt-get install -y chromium chromium-driver` (as .ci/run \
     does), or point BLEPAY_CHROMEDRIVER at a chromedriver and BLEPAY_CHROMIUM at its browser";

/// At most this many browsers at once per test binary: each Chromium is a few hundred MB and the
/// machines have two cores.
const MAX_BROWSERS: usize = 2;

/// The tallest page [`Browser::capture_png`] takes, CSS px.
pub const MAX_SCREENSHOT_HEIGHT: f64 = 6000.0;

/// How long a page element may take to appear.
const WAIT: Duration = Duration::from_secs(15);

/// The window a browser opens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewport {
    /// 1280×900.
    Desktop,
    /// 390×844, a phone held upright.
    Phone,
}

impl Viewport {
    pub const fn size(self) -> (u32, u32) {
        match self {
            Self::Desktop => (1280, 900),
            Self::Phone => (390, 844),
        }
    }
}

/// `path` if it names an executable file, else the first `name` on `PATH`.
fn find_executable(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The chromedriver to run, or a panic saying how to install it.
pub fn chromedriver() -> PathBuf {
    find_executable("BLEPAY_CHROMEDRIVER", &["chromedriver"])
        .unwrap_or_else(|| panic!("chromedriver not found on PATH: {INSTALL_HINT}"))
}

/// The Chromium binary chromedriver should start (Debian's `/usr/bin/chromium`), if found; when
/// `None`, chromedriver looks for Chrome in its own default places.
pub fn chromium() -> Option<PathBuf> {
    find_executable(
        "BLEPAY_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    )
}

fn browser_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(MAX_BROWSERS)))
        .clone()
}

/// A running chromedriver, killed on drop.
#[derive(Debug)]
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let exe = chromedriver();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for chromedriver")
            .port();
        let mut cmd = Command::new(&exe);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", exe.display()));
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait until `/status` says ready.
    async fn ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited at start ({status}); {INSTALL_HINT}");
            }
            let answer = client.get(format!("{}/status", self.url())).send().await;
            if let Ok(r) = answer {
                let body: Value = r.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium itself was quit by ending its WebDriver session (Browser's drop or close).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capabilities of a headless Chromium at `viewport`.
pub fn capabilities(viewport: Viewport) -> serde_json::Map<String, Value> {
    let (w, h) = viewport.size();
    let mut options = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--lang=en-GB",
            format!("--window-size={w},{h}"),
        ],
    });
    if viewport == Viewport::Phone {
        // Headless windows are at least 500 px wide: a phone's width is emulated (a touch screen
        // at 2 device pixels per CSS px, which honours <meta name=viewport>).
        options["mobileEmulation"] = json!({
            "deviceMetrics": {"width": w, "height": h, "pixelRatio": 2.0, "mobile": true, "touch": true},
        });
    }
    if let Some(bin) = chromium() {
        options["binary"] = json!(bin.display().to_string());
    }
    options["prefs"] = json!({"intl.accept_languages": "en-GB,en"});
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": options,
        "pageLoadStrategy": "normal",
    });
    match caps {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// One headless Chromium on its own chromedriver, pointed at a [`TestApp`].
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub base: String,
    pub viewport: Viewport,
    session_url: Option<String>,
    // Dropped after the fields above: the session is ended first, then the driver is killed.
    _driver: Driver,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked never reached `close`: end the WebDriver session (Chromium quits)
        // synchronously; the driver is killed right after either way.
        if let Some(url) = self.session_url.take() {
            let _ = ureq::delete(&url).call();
        }
    }
}

impl Browser {
    /// A desktop-size (1280×900) browser for `app`.
    pub async fn start(app: &TestApp) -> Self {
        Self::start_at(app, Viewport::Desktop).await
    }

    /// A phone-size (390×844) browser for `app`.
    pub async fn phone(app: &TestApp) -> Self {
        Self::start_at(app, Viewport::Phone).await
    }

    pub async fn start_at(app: &TestApp, viewport: Viewport) -> Self {
        Self::start_for(&app.address, viewport).await
    }

    /// A browser for the server at `base` (`http://host:port`).
    pub async fn start_for(base: &str, viewport: Viewport) -> Self {
        let slot = browser_slots()
            .acquire_owned()
            .await
            .expect("the browser semaphore is never closed");
        let mut driver = Driver::start();
        driver.ready().await;
        let client = ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(capabilities(viewport))
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| {
                panic!("cannot open a Chromium session through chromedriver: {e}; {INSTALL_HINT}")
            });
        let session_url = client
            .session_id()
            .await
            .ok()
            .flatten()
            .map(|id| format!("{}/session/{id}", driver.url()));
        let browser = Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            viewport,
            session_url,
            _driver: driver,
            _slot: slot,
        };
        browser
            .client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(30)),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the WebDriver timeouts");
        // British English dates and numbers (Intl's default locale), whatever the machine's.
        browser
            .cdp("Emulation.setLocaleOverride", json!({"locale": "en-GB"}))
            .await;
        browser
    }

    /// End the session (Chromium quits) and stop chromedriver.
    pub async fn close(mut self) {
        self.session_url = None;
        let _ = self.client.clone().close().await;
    }

    /// The absolute URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Load `path` (e.g. `/ops/fleet`) and wait for it.
    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url} in the browser: {e}"));
    }

    /// Reload the current page.
    pub async fn reload(&self) {
        self.client.refresh().await.expect("reload");
    }

    /// The current URL's path and query, e.g. `/ops/fleet?state=IDLE`.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The current URL's path alone, e.g. `/ops/fleet`.
    pub async fn pathname(&self) -> String {
        let url = self.client.current_url().await.expect("current URL");
        url.path().to_owned()
    }

    /// Sign in to the console with an operator `token` (the contract's form#sign-in), and wait for
    /// the signed-in page (its form#sign-out).
    pub async fn sign_in(&self, token: &str) {
        self.goto("/ops/sign-in").await;
        self.find("form#sign-in input#token")
            .await
            .send_keys(token)
            .await
            .expect("type the token");
        self.find("#sign-in-button")
            .await
            .click()
            .await
            .expect("click sign in");
        self.wait_for("form#sign-out").await;
    }

    /// The element `css` matches now, or a panic naming it and the page.
    pub async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no element {css} on {}: {e}\n{}",
                self.path().await,
                self.body_text().await
            ),
        }
    }

    /// Every element `css` matches now (maybe none).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    /// Whether `css` matches anything now.
    pub async fn exists(&self, css: &str) -> bool {
        !self.find_all(css).await.is_empty()
    }

    /// Wait (up to 15 s) for `css` to match, → the element.
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "{css} did not appear on {} within {WAIT:?}: {e}\n{}",
                self.path().await,
                self.body_text().await
            ),
        }
    }

    /// The visible text of the element `css` matches, trimmed.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
            .trim()
            .to_owned()
    }

    /// The page's visible text (for failure messages).
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Run `script` in the page with `args` → its return value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("execute {script}: {e}"))
    }

    /// Set the field `name` of `form_css` to `value` (clearing what it had).
    pub async fn fill(&self, form_css: &str, name: &str, value: &str) {
        let field = self.find(&format!("{form_css} [name='{name}']")).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {form_css} {name}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into {form_css} {name}: {e}"));
    }

    /// Submit `form_css` by clicking its submit button, accept the `data-confirm` dialog if the
    /// console's script asks, and wait for the next page to load.
    pub async fn submit(&self, form_css: &str) {
        let before = self
            .execute("return window.performance.timeOrigin;", vec![])
            .await;
        let button = self
            .find(&format!(
                "{form_css} button[type=submit], {form_css} input[type=submit], {form_css} button:not([type])"
            ))
            .await;
        button
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {form_css}'s submit button: {e}"));
        let deadline = Instant::now() + WAIT;
        loop {
            // A confirm() from data-confirm: accept it; no dialog is an error we ignore.
            let _ = self.client.accept_alert().await;
            let now = self
                .client
                .execute(
                    "return [window.performance.timeOrigin, document.readyState];",
                    vec![],
                )
                .await;
            let loaded = now
                .is_ok_and(|v| v.get(0) != Some(&before) && v.get(1) == Some(&json!("complete")));
            if loaded {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "submitting {form_css} did not load a new page within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The console session cookie's value, if the browser holds one.
    pub async fn console_cookie(&self) -> Option<String> {
        self.client
            .get_named_cookie(CONSOLE_COOKIE)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    /// The page's CSRF token: the `_csrf` of its sign-out form (every signed-in page has one).
    pub async fn csrf(&self) -> String {
        self.find("form#sign-out input[name='_csrf']")
            .await
            .attr("value")
            .await
            .expect("read _csrf")
            .unwrap_or_default()
    }

    /// Where [`Browser::screenshot`] writes: `docs/dashboard/` at the workspace root.
    pub fn screenshot_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root above tests/")
            .join("docs")
            .join("dashboard")
    }

    /// When `BLEPAY_SCREENSHOTS` is set: the whole current page ([`Browser::capture_png`]) as
    /// `docs/dashboard/<name>.png` → its path. Else nothing.
    pub async fn screenshot(&self, name: &str) -> Option<PathBuf> {
        std::env::var_os(SCREENSHOTS_ENV)?;
        let png = self.capture_png().await;
        let dir = Self::screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create docs/dashboard");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Some(path)
    }

    /// A PNG of the whole current page, not just the window: its full height (at most
    /// [`MAX_SCREENSHOT_HEIGHT`] CSS px) at the viewport's width, through the DevTools protocol
    /// (`Page.captureScreenshot` beyond the viewport); the window only if that is unavailable.
    pub async fn capture_png(&self) -> Vec<u8> {
        // Fonts, the script's time conversion and the charts settle first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(png) = self.full_page_png().await {
            return png;
        }
        self.client.screenshot().await.expect("screenshot")
    }

    async fn full_page_png(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let metrics = self.cdp("Page.getLayoutMetrics", json!({})).await?;
        let width = metrics["cssLayoutViewport"]["clientWidth"].as_f64()?;
        let height = metrics["cssContentSize"]["height"]
            .as_f64()?
            .min(MAX_SCREENSHOT_HEIGHT);
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str()?)
            .ok()
    }

    /// Run the DevTools protocol command `cmd` through chromedriver → its result.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Option<Value> {
        let url = format!("{}/goog/cdp/execute", self.session_url.as_deref()?);
        let answer = reqwest::Client::new()
            .post(url)
            .json(&json!({"cmd": cmd, "params": params}))
            .send()
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body: Value = answer.json().await.ok()?;
        Some(body["value"].clone())
    }

    /// A plain HTTP client carrying this browser's console cookie, for requests a page would not
    /// make (a forced POST, a form without its `_csrf`, a replay after sign-out).
    pub async fn http(&self) -> ConsoleHttp {
        let cookie = self
            .console_cookie()
            .await
            .unwrap_or_else(|| panic!("the browser holds no {CONSOLE_COOKIE} cookie"));
        ConsoleHttp::new(&self.base, &cookie)
    }
}

/// What a console request outside the browser got.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    /// The `Location` header of a redirect.
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// A redirect to the sign-in page, or a 401: what an unsigned request gets.
    pub fn is_signed_out(&self) -> bool {
        self.status == 401
            || ((300..400).contains(&self.status)
                && self
                    .location
                    .as_deref()
                    .is_some_and(|l| l.contains("/ops/sign-in")))
    }
}

/// `reqwest` with a console cookie and no redirect following.
#[derive(Debug, Clone)]
pub struct ConsoleHttp {
    base: String,
    cookie: String,
    client: reqwest::Client,
}

impl ConsoleHttp {
    pub fn new(base: &str, cookie_value: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            cookie: cookie_value.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    pub fn cookie_value(&self) -> &str {
        &self.cookie
    }

    async fn page(r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = r.text().await.unwrap_or_default();
        Page {
            status,
            location,
            body,
        }
    }

    /// GET `path` with the cookie.
    pub async fn get(&self, path: &str) -> Page {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header(
                reqwest::header::COOKIE,
                format!("{CONSOLE_COOKIE}={}", self.cookie),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Self::page(r).await
    }

    /// POST `form` (urlencoded) to `path` with the cookie, and the `Origin` a same-origin page's
    /// form would send (so only the `_csrf` field decides).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::COOKIE,
                format!("{CONSOLE_COOKIE}={}", self.cookie),
            )
            .header(reqwest::header::ORIGIN, &self.base)
            .header(reqwest::header::REFERER, format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::page(r).await
    }
}
