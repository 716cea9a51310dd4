//! The web page in headless Chromium driven over WebDriver: a person creates a story, types two
//! shots (the second while the first streams), watches frames arrive, and downloads a playable
//! MP4. Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them and sets
//! STORYREEL_REQUIRE_BROWSER=1, which turns their absence into a failure instead of a skip).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// Kills chromedriver when the test ends, pass or fail.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 200 ms until it holds; fails naming `what` after `timeout`.
macro_rules! wait_for {
    ($what:expr, $timeout:expr, $check:expr) => {{
        let start = Instant::now();
        while !($check) {
            assert!(start.elapsed() < $timeout, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }};
}

/// The text of the element with `id` ("" when it is missing).
async fn text_of(browser: &fantoccini::Client, id: &str) -> String {
    match browser.find(Locator::Id(id)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn downloaded_mp4(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "mp4"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_types_two_shots_watches_them_stream_and_downloads_the_mp4() {
    let (Some(chromium), Some(chromedriver)) =
        (find(&["chromium", "chromium-browser", "google-chrome"]), find(&["chromedriver"]))
    else {
        assert!(
            std::env::var("STORYREEL_REQUIRE_BROWSER").is_err(),
            "STORYREEL_REQUIRE_BROWSER is set but chromium / chromedriver are not on PATH"
        );
        eprintln!("skipping: chromium and chromedriver are not installed");
        return;
    };
    let journal = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let t = start_in(journal.path(), |_| {}).await;

    let port = free_port();
    let driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    wait_for!("chromedriver", Duration::from_secs(30), std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            "prefs": {
                "download.default_directory": downloads.path(),
                "download.prompt_for_download": false,
                "safebrowsing.enabled": false,
            },
        }),
    );
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a WebDriver session");

    let result = async {
        browser.goto(&format!("{}/", t.base)).await?;
        browser
            .find(Locator::Id("global-caption"))
            .await?
            .send_keys("A story about the pink rabbit and the red fox.")
            .await?;
        browser.find(Locator::Css("#frames option[value='9']")).await?.click().await?;
        browser.find(Locator::Id("create-story")).await?.click().await?;
        wait_for!("the session id", Duration::from_secs(30), !text_of(&browser, "session-id").await.trim().is_empty());
        // Keyboard only: type a shot, Enter; the box keeps focus for the next one, which is
        // typed while the first is being generated.
        let shot_box = browser.find(Locator::Id("next-shot")).await?;
        shot_box.send_keys(&format!("{}\u{E007}", CAPTIONS[0])).await?;
        shot_box.send_keys(&format!("{}\u{E007}", CAPTIONS[1])).await?;
        wait_for!(
            "two finished shots",
            Duration::from_secs(180),
            browser.find_all(Locator::Css("#storyboard [data-status='done']")).await.unwrap_or_default().len() == 2
        );
        wait_for!(
            "18 streamed frames",
            Duration::from_secs(30),
            text_of(&browser, "frames-received").await.trim().parse::<usize>().unwrap_or(0) >= 18
        );
        let errors = browser.find(Locator::Id("error")).await?.text().await?;
        assert!(errors.trim().is_empty(), "the page shows an error: {errors}");
        wait_for!(
            "the download link",
            Duration::from_secs(10),
            browser.find(Locator::Id("download-mp4")).await?.attr("href").await?.is_some()
        );
        browser.find(Locator::Id("download-mp4")).await?.click().await?;
        // The browser itself plays the story back: 18 frames at 16 fps.
        browser.find(Locator::Id("replay-story")).await?.click().await?;
        let loaded = || async {
            let d = browser
                .execute(
                    "const v = document.getElementById('replay'); return v.readyState >= 1 ? v.duration : 0;",
                    vec![],
                )
                .await;
            d.ok().and_then(|v| v.as_f64()).filter(|d| *d > 0.0)
        };
        wait_for!("the replay to load", Duration::from_secs(20), loaded().await.is_some());
        let d = loaded().await.unwrap_or(0.0);
        assert!((d - 18.0 / 16.0).abs() < 0.1, "replay duration {d} s");
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let shot_path = downloads.path().to_path_buf();
    if result.is_err() {
        let _ = browser.screenshot().await.map(|png| std::fs::write(shot_path.join("failure.png"), png));
    }
    result.expect("driving the page");
    wait_for!(
        "the downloaded MP4",
        Duration::from_secs(60),
        downloaded_mp4(downloads.path()).is_some_and(|p| storyreel_media::read_mp4(&p).is_ok())
    );
    let file = downloaded_mp4(downloads.path()).unwrap();
    let (info, frames) = storyreel_media::read_mp4(&file).unwrap();
    assert_eq!(frames.len(), 18, "{info:?}");
    assert_eq!((info.width, info.height), (64, 64));
    let _ = browser.close().await;
    drop(driver);
    t.server.shutdown().await.unwrap();
}
