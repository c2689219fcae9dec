"""`evalsuite weights fetch` against a loopback HTTP server serving files built by the test.

The served weight file is the offline fid-helper trunk in torch-fidelity's layout plus a seeded
random classifier head made up here (the real released file cannot be had offline); the
release's file name is patched to carry that file's own sha256 prefix, as the released names do.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading

import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.features import fetch as fetch_module
from evalsuite.features import weights as weights_module
from evalsuite.features.weights import (
    WEIGHTS_ENV,
    converted_trunk_file,
    fid_helper_trunk_path,
    load_inception_state_dict,
    resolve_inception_weights,
)


def _as_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trunk_state() -> dict[str, torch.Tensor]:
    path, _ = converted_trunk_file(fid_helper_trunk_path())
    return load_inception_state_dict(path)[0]


@pytest.fixture(scope="module")
def full_file(trunk_state) -> bytes:
    """The trunk with a made-up head: what a real full weights file looks like to evalsuite."""
    generator = torch.Generator().manual_seed(0)
    head = {
        "fc.weight": torch.randn(1008, 2048, generator=generator) * 0.01,
        "fc.bias": torch.zeros(1008),
    }
    return _as_bytes({**trunk_state, **head})


class _Files(http.server.BaseHTTPRequestHandler):
    # path -> (body, announced Content-Length); filled per test.
    files: dict[str, tuple[bytes, int]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path not in self.files:
            self.send_error(404)
            return
        body, announced = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    _Files.files = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights", _Files.files
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private cache, no env weights, and only the fetched files as standard locations."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(fetch_module.URL_BASE_ENV, raising=False)
    fetched_only = tuple(e for e in weights_module.STANDARD_WEIGHT_FILES if "{fetched}" in e[0])
    monkeypatch.setattr(weights_module, "STANDARD_WEIGHT_FILES", fetched_only)


def _release_named(monkeypatch, source: str, file: str) -> None:
    release = fetch_module.RELEASES[source]
    patched = fetch_module.Release(file=file, url_base=release.url_base, publisher="test")
    monkeypatch.setitem(fetch_module.RELEASES, source, patched)


def _fetch(*args: str):
    return CliRunner().invoke(main, ["weights", "fetch", *args, "--quiet"])


def _cache_files() -> list[str]:
    folder = fetch_module.fetched_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in errors[0], errors[0]
    assert _cache_files() == []


def test_right_hash_is_installed_and_then_used_by_default(server, full_file, monkeypatch):
    url, files = server
    sha256 = hashlib.sha256(full_file).hexdigest()
    name = f"weights-inception-2015-12-05-{sha256[:8]}.pth"
    _release_named(monkeypatch, "torch-fidelity", name)
    files[f"/weights/{name}"] = (full_file, len(full_file))

    result = _fetch("torch-fidelity", "--url", url)

    assert result.exit_code == 0, result.output
    assert _cache_files() == [name]
    installed = fetch_module.fetched_dir() / name
    assert installed.read_bytes() == full_file
    weights = resolve_inception_weights()
    assert weights.source == "torch-fidelity (fetched)"
    assert weights.has_logits and weights.sha256 == sha256
    info = CliRunner().invoke(main, ["info"])
    assert "is" in info.output.split("metrics:")[1].splitlines()[0]
    # A check that recorded the offline trunk's hash (a regression baseline) still finds it.
    from evalsuite.features.weights import (
        converted_trunk_file,
        fid_helper_trunk_path,
        weights_file_with_sha256,
    )

    trunk, trunk_sha256 = converted_trunk_file(fid_helper_trunk_path())
    assert weights_file_with_sha256(trunk_sha256) == trunk
    assert weights_file_with_sha256(sha256) == installed
    assert weights_file_with_sha256("0" * 64) is None


def test_nvidia_name_without_hash_relies_on_the_feature_check(server, full_file, monkeypatch):
    url, files = server
    monkeypatch.setenv(fetch_module.URL_BASE_ENV, url)
    files["/weights/inception-2015-12-05.pt"] = (full_file, len(full_file))
    result = _fetch("nvidia")
    assert result.exit_code == 0, result.output
    assert _cache_files() == ["inception-2015-12-05.pt"]


def test_wrong_hash(server, full_file, monkeypatch):
    url, files = server
    name = "weights-inception-2015-12-05-deadbeef.pth"
    _release_named(monkeypatch, "torch-fidelity", name)
    files[f"/weights/{name}"] = (full_file, len(full_file))
    _one_line_error(_fetch("--url", url), "sha256", "deadbeef", "not kept")


def test_truncated(server, full_file, monkeypatch):
    url, files = server
    sha256 = hashlib.sha256(full_file).hexdigest()
    name = f"pt_inception-2015-12-05-{sha256[:8]}.pth"
    _release_named(monkeypatch, "pytorch-fid", name)
    files[f"/weights/{name}"] = (full_file[: len(full_file) // 2], len(full_file))
    _one_line_error(_fetch("pytorch-fid", "--url", url), f"of {len(full_file)} bytes")


def test_unreachable(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _one_line_error(_fetch("--url", f"http://127.0.0.1:{port}/w", "--timeout", "5"), "cannot reach")


def test_other_network_fails_the_feature_check(server, trunk_state, monkeypatch):
    url, files = server
    changed = dict(trunk_state)
    changed["Mixed_7c.branch_pool.conv.weight"] = changed["Mixed_7c.branch_pool.conv.weight"] * 2
    changed["fc.weight"] = torch.zeros(1008, 2048)
    changed["fc.bias"] = torch.zeros(1008)
    body = _as_bytes(changed)
    name = f"weights-inception-2015-12-05-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    _release_named(monkeypatch, "torch-fidelity", name)
    files[f"/weights/{name}"] = (body, len(body))
    _one_line_error(_fetch("--url", url), "pool features differ")
