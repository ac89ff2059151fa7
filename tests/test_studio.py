"""dcign_tf.studio: its endpoints on a tiny trained run (and a baseline), bad input, and the page in headless Chromium."""

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from dcign_tf import studio as studio_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def train(workdir, data_dir, *extra):
    """A few steps of configs/test.flags: enough for a real export."""
    return subprocess.Popen(
        [sys.executable, "-m", "dcign_tf.train", f"--flagfile={REPO}/configs/test.flags", f"--workdir={workdir}",
         f"--data_dir={data_dir}", "--steps=4", "--checkpoint_every=4", "--log_every=2", "--eval_every=0",
         "--image_every=1000", "--progress=none", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, faces_dataset):
    root = tmp_path_factory.mktemp("studio")
    workdirs = {"run": str(root / "run"), "baseline": str(root / "baseline")}
    processes = [train(workdirs["run"], faces_dataset), train(workdirs["baseline"], faces_dataset, "--mode=baseline")]
    for process in processes:  # both at once: each spends most of its time starting TensorFlow
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-2000:]
    return {**workdirs, "root": root, "data": faces_dataset}


@pytest.fixture(scope="module")
def served(runs):
    """The studio on the run with its baseline, on 127.0.0.1 at a free port."""
    studio = studio_lib.Studio(runs["run"], baseline_workdir=runs["baseline"], log=lambda line: None)
    assert studio.ready, studio.messages
    server, _ = studio_lib.serve(studio, "127.0.0.1", 0)
    yield studio, server.url
    server.shutdown()
    server.server_close()


def post(url, path, body, raw=False):
    """(status, parsed JSON or raw bytes) of a POST."""
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url + path.lstrip("/"), data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload, status, kind = response.read(), response.status, response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        payload, status, kind = error.read(), error.code, error.headers["Content-Type"]
    return status, (json.loads(payload) if "json" in kind else payload)


def get(url, path):
    with urllib.request.urlopen(url + path.lstrip("/"), timeout=60) as response:
        return response.status, response.read()


def pixels(data_url):
    """A PNG data URL -> uint8 array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def png_file_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Endpoints.


def test_state_lists_a_slider_per_scene_factor_and_the_gallery(served):
    studio, url = served
    status, body = get(url, "/api/state")
    state = json.loads(body)
    assert status == 200 and state["ready"] and state["baseline"]
    assert [factor["name"] for factor in state["factors"]] == ["azimuth", "elevation", "light"]
    assert all(factor["units"] == "raw latent" for factor in state["factors"])  # not evaluated: no calibration
    assert any("no calibration" in message["text"] for message in state["messages"])
    assert state["gallery"] > 4
    status, png = get(url, "/api/gallery/1.png")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (32, 32)
    page = get(url, "/")[1].decode()
    assert 'id="gallery"' in page and "/api/render" in page


def test_render_follows_the_slider_and_starts_at_the_reconstruction(served):
    _, url = served
    face = post(url, "/api/face", {"a": "gallery:2"})[1]
    untouched = post(url, "/api/render", {"a": "gallery:2", "values": {}})[1]
    np.testing.assert_array_equal(pixels(untouched["main"]), pixels(face["main_reconstruction"]))
    state = json.loads(get(url, "/api/state")[1])
    azimuth = state["factors"][0]
    low = post(url, "/api/render", {"a": "gallery:2", "values": {"azimuth": azimuth["min"]}})[1]
    high = post(url, "/api/render", {"a": "gallery:2", "values": {"azimuth": azimuth["max"]}})[1]
    difference = np.abs(pixels(low["main"]).astype(int) - pixels(high["main"]).astype(int))
    assert difference.max() > 0, "moving the azimuth slider end to end changed nothing"
    assert low["baseline"] and pixels(low["baseline"]).shape == (32, 32)
    strip = post(url, "/api/sweep", {"a": "gallery:2", "factor": "light", "frames": 5})[1]
    assert Image.open(io.BytesIO(strip)).size == (5 * 32, 2 * 32)  # the run's row, the baseline's below


def test_swap_takes_identity_from_face_b_and_the_rest_from_face_a(served):
    studio, url = served
    main = studio.engines["main"]
    layout = main.info["latent_layout"]
    assert main.identity_latents == tuple(layout["identity"])
    a, b = studio._source("gallery:0", "a"), studio._source("gallery:5", "b")
    code = studio._code(main, a, b, {})
    np.testing.assert_array_equal(code[list(main.identity_latents)], main.gallery_codes[b[1]][list(main.identity_latents)])
    scene = [layout[name][0] for name in ("azimuth", "elevation", "light")]
    np.testing.assert_array_equal(code[scene], main.gallery_codes[a[1]][scene])
    swapped = post(url, "/api/render", {"a": "gallery:0", "b": "gallery:5"})[1]["main"]
    expected = main.decode(code[None])[0]
    np.testing.assert_array_equal(pixels(swapped), np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))
    # The baseline's identity is every latent not chosen for a scene factor (analysis.selection.own_latents).
    baseline = studio.engines["baseline"]
    chosen = {target.latent for target in baseline.targets.values()}
    assert set(baseline.identity_latents) == set(range(8)) - chosen  # two factors may share one latent


def test_a_calibrated_export_moves_in_degrees(runs, tmp_path):
    from dcign_tf import calibration

    workdir = str(tmp_path / "calibrated")
    shutil.copytree(runs["run"], workdir)
    line = {"slope": 2.0, "intercept": 0.5, "r2": 0.9}
    calibration.save(os.path.join(workdir, "export"), {name: {**line, "latent": latent} for name, latent in
                                                        (("azimuth", 0), ("elevation", 1), ("light", 2))})
    studio = studio_lib.Studio(workdir, log=lambda line: None)
    azimuth = studio.sliders[0]
    assert (azimuth.units, round(azimuth.low), round(azimuth.high)) == ("degrees", -86, 86)  # +-1.5 rad
    a = studio._source("gallery:0", "a")
    code = studio._code(studio.engines["main"], a, None, {"azimuth": 30.0})
    assert code[0] == pytest.approx(2.0 * np.radians(30.0) + 0.5)
    face_values = studio.face({"a": "gallery:0"})["values"]
    own = studio.engines["main"].gallery_codes[a[1]][0]
    assert face_values["azimuth"] == pytest.approx(np.degrees((own - 0.5) / 2.0), rel=1e-5)
    assert studio_lib.render_latency(studio, renders=3) > 0


def test_uploads_any_image_and_refuses_bad_ones_with_a_message(served):
    studio, url = served
    colour = np.zeros((90, 140, 3), np.uint8)
    colour[20:70, 50:90] = (220, 180, 120)
    status, body = post(url, "/api/upload", png_file_bytes(colour), raw=True)
    assert status == 200 and body["source"].startswith("upload:") and pixels(body["input"]).shape == (32, 32)
    rendered = post(url, "/api/render", {"a": body["source"], "b": "gallery:1", "values": {"light": 0.0}})
    assert rendered[0] == 200

    status, body = post(url, "/api/upload", b"this is not an image\n" * 10, raw=True)
    assert status == 400 and "not an image" in body["error"]
    status, body = post(url, "/api/upload", png_file_bytes(np.zeros((6000, 7000), np.uint8)), raw=True)  # 42 MP
    assert status == 400 and "megapixels" in body["error"]
    # Too many bytes: refused from the Content-Length alone, before the body is read.
    host, port = url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/api/upload")
    connection.putheader("Content-Length", str(studio.max_upload_bytes + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "MB" in json.loads(response.read())["error"]
    connection.close()
    for bad in ({"a": "upload:0123456789abcdef"}, {"a": "gallery:9999"}, {"a": "../flags.txt"},
                {"a": "gallery:0", "values": {"azimuth": "left"}}, {"a": "gallery:0", "values": {"zoom": 1}}):
        status, body = post(url, "/api/render", bad)
        assert status == 400 and body["error"], bad
    assert get(url, "/api/state")[0] == 200  # still serving


def test_no_request_reads_a_file_by_path(served, runs):
    _, url = served
    host, port = url.split("//")[1].rstrip("/").split(":")
    secret = os.path.join(runs["run"], "flags.txt")
    for path in ["/../../../../etc/passwd", "/api/gallery/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/api/gallery/-1.png", "/api/gallery/9999.png", "/flags.txt", "/export/model_info.json",
                 "/studio_page.html", "/" + secret, "/api/gallery/" + secret, "//etc/passwd"]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status in (400, 404), (path, response.status)
        assert b"root:" not in body and b"--workdir" not in body, path
    # Requests addressed to another host name are refused on loopback (no DNS rebinding).
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/api/state", headers={"Host": "attacker.example:80"})
    assert connection.getresponse().status == 403
    connection.close()


def test_a_missing_or_mismatched_export_is_a_message_and_load_again_recovers(runs, tmp_path):
    workdir = tmp_path / "pending"
    workdir.mkdir()
    studio = studio_lib.Studio(str(workdir), log=lambda line: None)
    server, _ = studio_lib.serve(studio, "127.0.0.1", 0)
    try:
        state = json.loads(get(server.url, "/api/state")[1])
        assert not state["ready"] and "is missing" in state["messages"][0]["text"]
        status, body = post(server.url, "/api/render", {"a": "gallery:0"})
        assert status == 400 and "is missing" in body["error"]
        shutil.copytree(os.path.join(runs["run"], "export"), workdir / "export")  # the run finished exporting
        shutil.copy(os.path.join(runs["run"], "flags.txt"), workdir / "flags.txt")
        status, state = post(server.url, "/api/reload", {})
        assert status == 200 and state["ready"] and state["gallery"] > 0
    finally:
        server.shutdown()
        server.server_close()
    # An export whose factors are not its dataset's: the gallery is off, uploads still work.
    info_path = workdir / "export" / "model_info.json"
    info = json.loads(info_path.read_text())
    info["factors"][0]["units"] = "furlongs"
    info_path.write_text(json.dumps(info))
    studio = studio_lib.Studio(str(workdir), log=lambda line: None)
    assert studio.ready and len(studio.gallery_rows) == 0
    assert any("does not match its data" in message["text"] for message in studio.messages)
    assert studio.upload(png_file_bytes(np.full((40, 40), 128, np.uint8)))["source"].startswith("upload:")


def test_pretrained_loads_an_export_directory_with_its_flags(runs, tmp_path, monkeypatch):
    pretrained = tmp_path / "pretrained" / "faces_small"  # laid out as the committed quickstart model will be
    shutil.copytree(os.path.join(runs["run"], "export"), pretrained)
    shutil.copy(os.path.join(runs["run"], "flags.txt"), pretrained / "flags.txt")
    monkeypatch.setattr(studio_lib, "PRETRAINED_DIR", str(pretrained))
    workdir, export_dir = studio_lib.check_flags(None, True, None, None)
    studio = studio_lib.Studio(workdir, export_dir, log=lambda line: None)
    assert studio.ready and len(studio.gallery_rows) > 0


def test_cli_refuses_what_cannot_work_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(studio_lib, "PRETRAINED_DIR", str(tmp_path / "pretrained" / "faces_small"))
    cases = [(["--pretrained"], "pretrained model is missing"), ([], "exactly one of"),
             ([f"--workdir={tmp_path}/nope"], "no such run directory"), (["--port=99999"], "port")]
    for args, message in cases:
        assert studio_lib.main(["dcign_tf.studio", *args]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert studio_lib.main(["dcign_tf.studio", f"--workdir={tmp_path}", f"--port={taken.getsockname()[1]}"]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_the_command_serves_on_localhost_and_stops_on_ctrl_c(runs):
    process = subprocess.Popen([sys.executable, "-m", "dcign_tf.studio", f"--workdir={runs['run']}", "--port=0"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]  # the export's note, then the address
        assert "no calibration" in lines[0] and lines[1].startswith("studio: open http://127.0.0.1:"), lines
        line = lines[1]
        url = line.split()[2]
        assert json.loads(get(url, "/api/state")[1])["ready"]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


# ---------------------------------------------------------------------------------------------------
# The page in a real browser.


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (apt-get install -y "
                    "chromium chromium-driver) to run the studio's browser test")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_in_headless_chromium(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = served
    wait = WebDriverWait(browser, 60)
    renders = lambda: int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-renders"))  # noqa: E731
    browser.get(url)
    wait.until(lambda _: renders() >= 1)  # the page loaded, chose gallery face 0 and rendered it
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery img")) > 4
    render = browser.find_element(By.ID, "render")

    before, count = render.get_attribute("src"), renders()
    browser.find_element(By.ID, "slider-azimuth").send_keys(Keys.END)  # the keyboard moves it to the end
    wait.until(lambda _: renders() > count and not browser.execute_script("return busy || pending"))
    assert render.get_attribute("src") != before, "moving the azimuth slider did not change the render"

    count = renders()
    browser.find_element(By.ID, "reset").click()  # back to face A's own values, then swap identity
    wait.until(lambda _: renders() > count and not browser.execute_script("return busy || pending"))
    count = renders()
    browser.find_element(By.ID, "pick-b").click()
    browser.find_elements(By.CSS_SELECTOR, "#gallery img")[5].click()
    wait.until(lambda _: renders() > count and not browser.execute_script("return busy || pending"))
    assert browser.find_element(By.ID, "figure-b").is_displayed()
    expected = post(url, "/api/render", {"a": "gallery:0", "b": "gallery:5"})[1]["main"]
    assert render.get_attribute("src") == expected, "the page's swap is not identity from B, the rest from A"

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text, named like an image\n")
    browser.find_element(By.ID, "upload-a").send_keys(str(not_an_image))
    wait.until(lambda _: "not an image" in browser.find_element(By.ID, "messages").text)
    assert browser.find_element(By.CSS_SELECTOR, "#messages .error").is_displayed()
    assert json.loads(get(url, "/api/state")[1])["ready"]  # the server keeps running
