"""The page at `/`, in a real headless Chromium driven by Selenium.

Debian's `chromium` and `chromium-driver` (`.ci/run` installs them with
apt-get when missing), driven through the system driver
(`/usr/bin/chromedriver`) with Selenium Manager kept offline: nothing is
downloaded. One server for the module, as in test_serve.py: the kitchenware
model with its class names, on 127.0.0.1, named `kitchen` so that the page
must learn the name from the server. The page runs under the server's
Content-Security-Policy, and the browser's log must hold no violation.
"""

import json
import os
import urllib.request

import pytest

from tests import servers

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLASSES = ["cup", "fork", "glass", "knife", "plate", "spoon"]
NAME = "kitchen"
WAIT_S = 60  # How long a step may take on a loaded machine before the test fails.


@pytest.fixture(scope="module")
def server(kitchen_model, tmp_path_factory):
    from keras_xception.serve.app import build_app
    from keras_xception.serve.service import Service, Settings, open_model

    path = servers.save_kitchen(kitchen_model, tmp_path_factory.mktemp("page"), CLASSES)
    service = Service(open_model(str(path)), precision="float32")
    service.warm_up(1)
    with servers.serving(build_app(service, Settings(name=NAME, max_batch_size=1))) as (
            url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), (
            f"{path} is missing: apt-get install chromium chromium-driver (.ci/run does)")
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a driver.
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,900",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


def classify(url, data):
    """`(status, answer)` of the API for `data` as the page sends it: a form field."""
    boundary = "pageTestBoundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"f\"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/v1/models/{NAME}:classify?top=5", body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_page_classifies_explains_and_shows_errors(server, browser, kitchen_photos,
                                                       tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = kitchen_photos[0]
    status, api = classify(server, photo.read_bytes())
    assert status == 200, api
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(server + "/")
    assert browser.find_element(By.ID, "model-name").text == NAME

    browser.find_element(By.ID, "file").send_keys(str(photo))
    loaded = ("const o = document.getElementById('overlay');"
              "return o.hasAttribute('src') && o.complete && o.naturalWidth > 0;")
    wait.until(lambda d: d.execute_script(loaded))
    shown = [(li.get_attribute("data-class-name"), int(li.get_attribute("data-class-index")))
             for li in browser.find_elements(By.CSS_SELECTOR, "#classes li")]
    assert shown == [(p["class_name"], p["class_index"]) for p in api["predictions"]]
    texts = [li.text.split("\n") for li in browser.find_elements(By.CSS_SELECTOR, "#classes li")]
    assert texts == [[p["class_name"], f"{100 * p['score']:.2f}%"] for p in api["predictions"]]
    widths = browser.execute_script(
        "return [document.getElementById('photo').naturalWidth,"
        " document.getElementById('overlay').naturalWidth];")
    assert widths[0] > 0 and widths[1] == widths[0], widths
    assert not browser.find_element(By.ID, "error").is_displayed()
    # The slider sets the heatmap's opacity.
    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = '0.8';"
                           "arguments[0].dispatchEvent(new Event('input'));", slider)
    assert browser.execute_script(
        "return document.getElementById('overlay').style.opacity;") == "0.8"
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A text file, chosen: the server's one line, in the page.
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    status, refused = classify(server, text.read_bytes())
    assert status == 400
    browser.find_element(By.ID, "file").send_keys(str(text))
    error = browser.find_element(By.ID, "error")
    wait.until(lambda d: error.is_displayed())
    assert error.text == refused["error"] and "\n" not in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    # Dropped on the page: the same.
    browser.execute_script("""
        const data = new DataTransfer();
        data.items.add(new File(["still not a photo"], "dropped.txt", {type: "text/plain"}));
        document.getElementById('error').hidden = true;
        document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
    """)
    wait.until(lambda d: error.is_displayed())
    assert "not an image file" in error.text
    browser.save_screenshot(str(tmp_path / "page-error.png"))

    violations = [entry["message"] for entry in browser.get_log("browser")
                  if "Content Security Policy" in entry["message"]]
    assert violations == []
