"""The search page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium loads the page of ``python -m tinyclip.serve``, types a query, sees the thumbnails, clicks one and sees
its captions, uploads an image and sees the modality bars. Skips with the reason when Chromium, its driver or
Selenium is missing (``.ci/run`` installs them).

Also a script, for the README's screenshot of a real run:

    python tests/test_serve_browser.py --run runs/small --query "ct scan of the chest" --out docs/serve_page.png
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # run as a script
from test_serve import Server, search_run  # noqa: E402, F401  (search_run is a fixture)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = 30


def find_browser():
    """``(browser path, driver path)``, or a reason why there are none."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return None, "Chromium or chromedriver not found (apt-get install chromium chromium-driver)"
    return (browser, driver), None


def open_browser(browser: str, driver: str, size=(1280, 1500)):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={size[0]},{size[1]}", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    # The driver is given by path, so Selenium Manager downloads nothing.
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def drive_page(browser, url: str, query: str, upload: Path, screenshot: Path | None = None) -> dict:
    """Load the page, search, open a result, upload ``upload``; returns what was seen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    seen = {}
    browser.get(url)
    wait.until(lambda b: "epoch" in b.find_element(By.ID, "facts").text)
    seen["facts"] = browser.find_element(By.ID, "facts").text

    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    k = int(browser.find_element(By.ID, "k").get_attribute("value"))
    # the thumbnails are there once every <img> has decoded its PNG
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result img")) == k and all(
        b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in b.find_elements(By.CSS_SELECTOR, "#results .result img")))
    results = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    seen["results"] = [r.get_attribute("data-id") for r in results]
    seen["tokens"] = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#tokens .token")]

    results[0].click()
    wait.until(ec.visibility_of_element_located((By.ID, "detail")))
    wait.until(lambda b: b.find_element(By.ID, "detail").get_attribute("data-id") == seen["results"][0])
    seen["detail_captions"] = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#detail-captions li")]
    seen["detail_bars"] = len(browser.find_elements(By.CSS_SELECTOR, "#detail-modality .bar-row"))
    seen["detail_image_width"] = browser.execute_script(
        "return document.getElementById('detail-image').naturalWidth")

    browser.find_element(By.ID, "upload").send_keys(str(upload))
    wait.until(ec.visibility_of_element_located((By.ID, "upload-result")))
    bars = browser.find_elements(By.CSS_SELECTOR, "#upload-modality .bar-row")
    seen["upload_bars"] = {b.get_attribute("data-class"): b.find_element(By.CSS_SELECTOR, ".value").text for b in bars}
    seen["upload_captions"] = len(browser.find_elements(By.CSS_SELECTOR, "#upload-captions li"))
    seen["error_hidden"] = not browser.find_element(By.ID, "error").is_displayed()
    if screenshot is not None:
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(screenshot))

    # a query of unknown words: the error, and the words marked
    box.clear()
    box.send_keys("qwertyx")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(lambda b: b.find_element(By.ID, "error").is_displayed())
    seen["error"] = browser.find_element(By.ID, "error").text
    seen["unknown"] = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#tokens .token.unknown")]
    seen["log"] = browser.get_log("browser")
    return seen


def an_image(path: Path) -> Path:
    """A grey 'chest film' of 60 x 40 pixels: mode L, not square, as a user's file might be."""
    y, x = np.mgrid[0:40, 0:60]
    Image.fromarray((128 + 100 * np.sin(x / 6.0) * np.cos(y / 5.0)).astype(np.uint8), "L").save(path)
    return path


@pytest.fixture(scope="module")
def browser_paths():
    paths, reason = find_browser()
    if paths is None:
        pytest.skip(reason)
    return paths


def test_the_page_in_a_real_browser(browser_paths, search_run, tmp_path):  # noqa: F811
    server = Server(search_run, log_dir=tmp_path)
    browser = open_browser(*browser_paths)
    try:
        shot = tmp_path / "page.png"
        seen = drive_page(browser, server.url, "ct scan of the chest", an_image(tmp_path / "mine.png"), shot)
        api = server.get_json("/api/search?q=ct%20scan%20of%20the%20chest&k=10")
    finally:
        browser.quit()
        server.close()
    assert "best checkpoint" in seen["facts"] and "960 pairs" in seen["facts"]
    assert seen["results"] == [r["id"] for r in api["results"]]  # the page shows the server's answer, in order
    assert seen["tokens"] == ["ct", "scan", "of", "the", "chest"]
    assert len(seen["detail_captions"]) == 5 and all("%" in c for c in seen["detail_captions"])
    assert seen["detail_bars"] == 6 and seen["detail_image_width"] == 16
    assert set(seen["upload_bars"]) == {"ct", "mri", "ultrasound", "fluoroscopy", "xray", "angiography"}
    assert all(v.endswith("%") for v in seen["upload_bars"].values()) and seen["upload_captions"] == 5
    assert seen["error_hidden"]
    assert "vocabulary" in seen["error"] and seen["unknown"] == ["qwertyx"]
    # the console holds only the 400 of that query: no script error, nothing fetched that is not there
    assert [e for e in seen["log"] if e["level"] == "SEVERE" and "status of 400" not in e["message"]] == []
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] > 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Screenshot the search page of a run (for the README).")
    p.add_argument("--run", required=True)
    p.add_argument("--query", default="ct scan of the chest")
    p.add_argument("--upload", help="an image file to upload (default: a generated grey one)")
    p.add_argument("--out", default="docs/serve_page.png")
    p.add_argument("--size", default="1280x1960", help="window size WxH")
    args = p.parse_args(argv)
    paths, reason = find_browser()
    if paths is None:
        print(reason, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.run, "--max-upload-mb", "10", log_dir=tmp)
        browser = open_browser(*paths, size=tuple(int(v) for v in args.size.split("x")))
        try:
            upload = Path(args.upload) if args.upload else an_image(Path(tmp) / "mine.png")
            seen = drive_page(browser, server.url, args.query, upload.resolve(), Path(args.out))
        finally:
            browser.quit()
            server.close()
    with Image.open(args.out) as im:  # 256 colours: a third of the bytes, and the page has few colours
        im.convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"{args.out}: {len(seen['results'])} results, upload {seen['upload_bars']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
