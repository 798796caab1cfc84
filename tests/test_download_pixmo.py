"""`spatialforge download-pixmo` against a loopback image host that serves good files and every kind of fault."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialforge.builders.resolvers import get_resolver
from spatialforge.processing.download.pixmo import REPORT, DownloadSettings, download_pixmo

TIMEOUT = 0.5  # the client's --timeout in these tests
CAP = 200_000  # the client's --max-bytes


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30), quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt, **kwargs)
    return buf.getvalue()


class ImageHost(ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) and the faults named by the first path segment; counts requests per path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: Counter = Counter()
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:  # a client that gave up (timeouts): nothing to report
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageHost

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901  one branch per fault
        path = self.path
        with self.server.lock:
            self.server.hits[path] += 1
            hits = self.server.hits[path]
        kind = path.split("/")[1]
        body = self.server.files.get(path, b"")
        if kind == "paced":  # a good file, answered after a pause (long enough runs to be killed)
            time.sleep(0.15)
            self._send(200, body)
        elif kind in ("good", "png", "reencoded", "corrupt", "truncated"):
            self._send(200, body, {"Content-Type": "image/jpeg"})
        elif kind == "flaky":  # 503 (with Retry-After) once, then the file
            self._send(503, b"busy", {"Retry-After": "0"}) if hits == 1 else self._send(200, body)
        elif kind == "moved":
            self._send(302, b"", {"Location": path.replace("/moved/", "/good/")})
        elif kind == "loop":
            self._send(301, b"", {"Location": path})
        elif kind == "to-file":
            self._send(302, b"", {"Location": "file:///etc/hostname"})
        elif kind == "missing":
            self._send(404, b"not found")
        elif kind == "gone":
            self._send(410, b"gone")
        elif kind == "big":  # declares more than the cap
            self.send_response(200)
            self.send_header("Content-Length", str(CAP * 10))
            self.end_headers()
            self.wfile.write(b"\xff" * 1024)
        elif kind == "big-chunked":  # no length, grows past the cap
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff" * 65536
            for _ in range(CAP // len(chunk) + 3):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "slow":  # no answer within the timeout
            time.sleep(TIMEOUT * 4)
            self._send(200, body)
        elif kind == "trickle":  # a byte every 0.1 s: no single read times out, the whole body does
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.1)
        elif kind == "drop":  # half the body, then the connection is gone
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self._send(404, b"?")


@pytest.fixture
def host() -> Iterator[ImageHost]:
    server = ImageHost()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(host: ImageHost) -> tuple[list[dict], dict[str, bytes], Counter]:
    """Rows for every case, the bytes each good image must have (by image id), and the expected counts."""
    rows: list[dict] = []
    good: dict[str, bytes] = {}

    def add(path: str, data: bytes, *, sha: str | None = None, url: str | None = None) -> None:
        host.files[path] = data
        sha = sha or hashlib.sha256(data).hexdigest()
        rows.append({"image_url": url or host.url + path, "image_sha256": sha, "label": "cup",
                     "points": [{"x": 1.0, "y": 2.0}]})

    for i in range(5):
        data = _image(i)
        add(f"/good/{i}.jpg", data)
        good[hashlib.sha256(data).hexdigest()] = data
    data = _image(10, "PNG")
    add("/png/10", data)
    good[hashlib.sha256(data).hexdigest()] = data
    rows.append(dict(rows[0]))  # a second row of the first image: fetched once
    data = _image(11)
    add("/flaky/11.jpg", data)
    good[hashlib.sha256(data).hexdigest()] = data
    for i in (12, 13):  # redirected to /good/
        data = _image(i)
        host.files[f"/good/{i}.jpg"] = data
        add(f"/moved/{i}.jpg", data)
        good[hashlib.sha256(data).hexdigest()] = data
    for i in (20, 21):  # the host re-encoded the image: its bytes differ from the published hash
        published = _image(i, quality=95)
        add(f"/reencoded/{i}.jpg", _image(i, quality=60), sha=hashlib.sha256(published).hexdigest())
    add("/corrupt/30.jpg", b"<html><body>Image not available</body></html>")
    add("/truncated/31.jpg", _image(31)[:300])
    add("/big/40", b"", sha="4" * 64)
    add("/big-chunked/41", b"", sha="5" * 64)
    add("/slow/50.jpg", _image(50))
    add("/trickle/51.jpg", _image(51))
    add("/drop/52.jpg", _image(52))
    add("/missing/60.jpg", b"", sha="6" * 64)
    add("/gone/61.jpg", b"", sha="7" * 64)
    add("/loop/70.jpg", b"", sha="8" * 64)
    add("/to-file/71.jpg", b"", sha="9" * 64)
    add("/x", b"", sha="a" * 64, url="ftp://127.0.0.1/image.jpg")
    add("/y", b"", sha="b" * 64, url="file:///etc/hostname")
    add("/z", b"", sha="c" * 64, url=f"http://127.0.0.1:{_closed_port()}/refused.jpg")
    rows.append({"image_url": None, "image_sha256": "d" * 64, "label": "cup", "points": []})  # nothing to fetch
    expected = Counter({"downloaded": 9, "hash_mismatch": 2, "not_image": 2, "too_large": 2, "timeout": 2,
                        "connection_error": 2, "not_found": 2, "too_many_redirects": 1, "bad_scheme": 3})
    return rows, good, expected


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _settings(**kw) -> DownloadSettings:
    return DownloadSettings(**{"workers": 4, "timeout": TIMEOUT, "max_seconds": 1.5, "max_bytes": CAP, "retries": 1,
                               "backoff": 0.01, "max_backoff": 0.05, "seed": 0, **kw})


@pytest.mark.slow
def test_report_counts_equal_the_injected_faults_and_a_rerun_downloads_nothing_twice(host, tmp_path):
    rows, good, expected = _rows(host)
    path = _write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "pixmo"
    result = download_pixmo(path, out, _settings(), progress=False)
    assert result.counts == expected
    assert result.bad_rows == 1 and result.failed == sum(expected.values()) - 9 - 2  # mismatches are kept
    report = json.loads((out / REPORT).read_text())
    assert report["counts"] == dict(expected)
    by_reason = Counter(f["reason"] for f in report["failures"])
    assert by_reason == expected - Counter({"downloaded": 9, "hash_mismatch": 2})
    assert {f["url"].split("/")[3] for f in report["failures"] if f["reason"] == "timeout"} == {"slow", "trickle"}
    assert result.retries >= 1 + 2 + 2  # the flaky 503, and both timeouts and both connection errors once more
    # good files: on disk under their id, bytes verified by sha256
    saved = {p.name.split(".")[0]: p for p in out.iterdir() if not p.name.startswith(".")}
    for sha, data in good.items():
        assert hashlib.sha256(saved[sha].read_bytes()).hexdigest() == sha and saved[sha].read_bytes() == data
    assert saved[hashlib.sha256(_image(10, "PNG")).hexdigest()].suffix == ".png"
    # hash mismatches: kept under the published id, the actual hash recorded
    for m in report["hash_mismatches"]:
        assert m["kept"] and hashlib.sha256(saved[m["published_sha256"]].read_bytes()).hexdigest() == m["actual_sha256"]
    assert len(saved) == 9 + 2
    # the pixmo resolver finds every saved image by the id the rows use
    resolver = get_resolver("pixmo", str(out), cache_dir=str(tmp_path / "index"))
    found = resolver.resolve_many([r["image_sha256"] for r in rows])
    assert set(found) == set(saved) and all(Path(found[k]).name == saved[k].name for k in found)
    assert not list(out.glob(".*.part"))

    first = Counter(host.hits)
    again = download_pixmo(path, out, _settings(), progress=False)
    refetched = {p for p, n in host.hits.items() if n > first[p]}
    # only the transient failures are tried again; nothing saved and no permanent failure is fetched twice
    assert {p.split("/")[1] for p in refetched} == {"slow", "trickle", "drop"}
    assert again.counts == Counter({"present": 11, "not_image": 2, "too_large": 2, "timeout": 2, "connection_error": 2,
                                    "not_found": 2, "too_many_redirects": 1, "bad_scheme": 3})
    assert again.hash_mismatches == []  # kept ones are present, verified against their recorded hash


def test_drop_policy_saves_no_mismatched_image_and_records_its_hash(host, tmp_path):
    published, served = _image(1, quality=95), _image(1, quality=60)
    host.files["/reencoded/1.jpg"] = served
    host.files["/good/2.jpg"] = _image(2)
    rows = [{"image_url": host.url + "/reencoded/1.jpg", "image_sha256": hashlib.sha256(published).hexdigest()},
            {"image_url": host.url + "/good/2.jpg", "image_sha256": hashlib.sha256(_image(2)).hexdigest()}]
    path = _write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "pixmo"
    result = download_pixmo(path, out, _settings(on_hash_mismatch="drop"), progress=False)
    assert result.counts == Counter({"downloaded": 1, "hash_mismatch": 1}) and result.failed == 1
    assert result.hash_mismatches[0]["actual_sha256"] == hashlib.sha256(served).hexdigest()
    assert not result.hash_mismatches[0]["kept"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{rows[1]['image_sha256']}.jpg"]
    hits = Counter(host.hits)
    download_pixmo(path, out, _settings(on_hash_mismatch="drop"), progress=False)
    assert host.hits == hits  # a dropped mismatch is not fetched again ...
    again = download_pixmo(path, out, _settings(on_hash_mismatch="keep", retry_failed=True), progress=False)
    assert host.hits["/reencoded/1.jpg"] == 2 and again.counts == Counter({"present": 1, "hash_mismatch": 1})
    assert (out / f"{rows[0]['image_sha256']}.jpg").read_bytes() == served  # ... unless asked, then kept


def test_files_already_there_are_verified_not_fetched(host, tmp_path):
    data = _image(3)
    sha = hashlib.sha256(data).hexdigest()
    host.files["/good/3.jpg"] = data
    out = tmp_path / "pixmo"
    out.mkdir()
    (out / sha).write_bytes(data)  # a bare sha256 file name, from another tool
    (out / f".{sha}.part").write_bytes(b"half")  # left by a killed run
    path = _write_rows(tmp_path / "rows.jsonl", [{"image_url": host.url + "/good/3.jpg", "image_sha256": sha}])
    result = download_pixmo(path, out, _settings(), progress=False)
    assert result.counts == Counter({"present": 1}) and host.hits == Counter()
    assert not (out / f".{sha}.part").exists()
    (out / sha).write_bytes(data[:-10])  # damaged since: fetched again
    result = download_pixmo(path, out, _settings(), progress=False)
    assert result.counts == Counter({"downloaded": 1}) and host.hits["/good/3.jpg"] == 1
    assert (out / f"{sha}.jpg").read_bytes() == data


def test_download_cli_reports_and_exits_1_on_failures(host, tmp_path):
    data = _image(4)
    host.files["/good/4.jpg"] = data
    rows = [{"image_url": host.url + "/good/4.jpg", "image_sha256": hashlib.sha256(data).hexdigest()},
            {"image_url": host.url + "/missing/5.jpg", "image_sha256": "e" * 64}]
    path = _write_rows(tmp_path / "rows.jsonl", rows)
    cli = [sys.executable, "-m", "spatialforge.processing.cli"]
    proc = subprocess.run([*cli, "download-pixmo", "--rows", str(path), "--out", str(tmp_path / "o"), "--no-progress",
                           "--timeout", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "1  downloaded" in proc.stdout and "1  not_found" in proc.stdout
    proc = subprocess.run([*cli, "download-pixmo", "--rows", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "nope.jsonl" in errors[0] and "Traceback" not in proc.stderr
    proc = subprocess.run([*cli, "download-pixmo", "--rows", str(path), "--out", str(tmp_path / "o"),
                           "--on-hash-mismatch", "maybe"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "on_hash_mismatch must be one of ('keep', 'drop')" in proc.stderr
    helped = subprocess.run([*cli, "download-pixmo", "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    for flag in ("--rows", "--out", "--workers", "--timeout", "--max-seconds", "--max-bytes", "--retries",
                 "--on-hash-mismatch", "--retry-failed", "--report"):
        assert flag in helped.stdout


@pytest.mark.slow
def test_a_killed_download_resumes_without_fetching_finished_images_again(host, tmp_path):
    good = {}
    for i in range(24):
        data = _image(100 + i)
        host.files[f"/paced/{i}.jpg"] = data
        good[hashlib.sha256(data).hexdigest()] = (f"/paced/{i}.jpg", data)
    path = _write_rows(tmp_path / "rows.jsonl", [{"image_url": host.url + p, "image_sha256": sha}
                                                 for sha, (p, _) in good.items()])
    out = tmp_path / "pixmo"
    cmd = [sys.executable, "-m", "spatialforge.processing.cli", "download-pixmo", "--rows", str(path), "--out", str(out),
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / ".pixmo-manifest.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and len(manifest.read_text().splitlines()) >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the download ended before it could be killed"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    finished = {json.loads(line)["image_id"] for line in manifest.read_text().splitlines()}
    assert 6 <= len(finished) < len(good)
    hits = Counter(host.hits)
    result = download_pixmo(path, out, _settings(), progress=False)
    assert result.counts == Counter({"present": len(finished), "downloaded": len(good) - len(finished)})
    for sha in finished:  # nothing finished is fetched again
        assert host.hits[good[sha][0]] == hits[good[sha][0]] == 1
    for sha, (_, data) in good.items():
        assert (out / f"{sha}.jpg").read_bytes() == data
    assert not list(out.glob(".*.part"))
