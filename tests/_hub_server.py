"""A local stand-in for the Hugging Face Hub's HTTP endpoints, for tests (stdlib only).

It answers what ``huggingface_hub`` calls, with the headers it reads, so tests exercise the
real client (its cache, offline mode, token handling and error mapping), not a mock:

- ``HEAD``/``GET /{namespace}/{name}/resolve/{revision}/{filename}``: ``ETag``,
  ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=a-b`` answers
  206 with ``Content-Range`` (safetensors header reads);
- ``GET /api/models/{namespace}/{name}[/revision/{revision}]``: the model info JSON (``sha``,
  ``siblings``);
- errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound``, ``RevisionNotFound``
  or ``EntryNotFound`` (the last with ``X-Repo-Commit``), 401/403 with
  ``X-Error-Code: GatedRepo`` for a gated repo without (or with a wrong) bearer token.

A repo can also be set to hang (never answer; tests of the lookup timeout) or to answer 500.
Every request is recorded in ``FakeHub.requests`` so a test can assert that none was made.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "Repo", "llama_tensors", "numel", "safetensors_header"]

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "F8_E4M3": 1}


def safetensors_header(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """Return the first bytes of a safetensors file: 8-byte little-endian length + JSON header.

    Only the header is served (the client reads headers with range requests and never the
    data), so offsets describe data that is not there.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def llama_tensors(config: dict[str, Any], dtype: str = "BF16") -> dict[str, tuple[str, list[int]]]:
    """Tensor names and shapes of a Llama/Qwen2-style checkpoint, as transformers saves it.

    Written from the checkpoint layout (``model.layers.{i}.self_attn.q_proj.weight`` ...),
    not from vramcalc's templates; Qwen2 adds q/k/v biases (``attention_bias`` for Llama).
    """
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    hd = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    bias = config["model_type"] == "qwen2" or bool(config.get("attention_bias"))
    out: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": (dtype, [vocab, h])}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = (dtype, [heads * hd, h])
        out[p + "self_attn.k_proj.weight"] = (dtype, [kv * hd, h])
        out[p + "self_attn.v_proj.weight"] = (dtype, [kv * hd, h])
        out[p + "self_attn.o_proj.weight"] = (dtype, [h, heads * hd])
        if bias:
            out[p + "self_attn.q_proj.bias"] = (dtype, [heads * hd])
            out[p + "self_attn.k_proj.bias"] = (dtype, [kv * hd])
            out[p + "self_attn.v_proj.bias"] = (dtype, [kv * hd])
        out[p + "mlp.gate_proj.weight"] = (dtype, [inter, h])
        out[p + "mlp.up_proj.weight"] = (dtype, [inter, h])
        out[p + "mlp.down_proj.weight"] = (dtype, [h, inter])
        out[p + "input_layernorm.weight"] = (dtype, [h])
        out[p + "post_attention_layernorm.weight"] = (dtype, [h])
    out["model.norm.weight"] = (dtype, [h])
    if not config.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (dtype, [vocab, h])
    return out


def numel(tensors: dict[str, tuple[str, list[int]]]) -> int:
    """Sum of element counts."""
    total = 0
    for _, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


@dataclass
class Repo:
    """A model repo: commits (sha -> files) and refs (branch or tag -> sha)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    hang: bool = False
    broken: bool = False

    def add_commit(self, files: dict[str, bytes | str | dict[str, Any]], *refs: str) -> str:
        """Add a commit holding ``files`` and point ``refs`` at it; return its sha."""
        blobs = {
            k: v if isinstance(v, bytes) else (v if isinstance(v, str) else json.dumps(v)).encode()
            for k, v in files.items()
        }
        seed = repr(sorted(blobs.items())).encode() + bytes(len(self.commits))
        sha = hashlib.sha1(seed).hexdigest()
        self.commits[sha] = blobs
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 (random port) that answers like the Hub."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self._release = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, repo_id: str, repo: Repo) -> Repo:
        self.repos[repo_id] = repo
        return repo

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._release.is_set():
            return
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ answering

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        head: bool,
    ) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(
        self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, *, head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Code": code,
                   "X-Error-Message": message, **(extra or {})}
        self._send(h, status, body, headers, head=head)

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        raw_path = urlsplit(h.path).path
        self.requests.append(("HEAD" if head else "GET", unquote(raw_path)))
        parts = raw_path.split("/")
        if len(parts) >= 4 and parts[1] == "api" and parts[2] == "models":
            self._api_model(h, parts[3:], head=head)
            return
        if len(parts) < 6 or parts[3] != "resolve":
            self._error(h, 404, "EntryNotFound", "not a Hub route", head=head)
            return
        repo_id = f"{unquote(parts[1])}/{unquote(parts[2])}"
        revision = unquote(parts[4])
        filename = unquote("/".join(parts[5:]))
        repo = self._repo_or_error(h, repo_id, head=head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return
        files = repo.commits[sha]
        if filename not in files:
            self._error(h, 404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"",
                        head=head, extra={"X-Repo-Commit": sha})  # fmt: skip
            return
        data = files[filename]
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{etag}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
        }
        rng = h.headers.get("Range") or h.headers.get("range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip()) if rng else None
        if m and not head:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}, head=head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(h, 206, data[start : end + 1], headers, head=head)
            return
        self._send(h, 200, data, headers, head=head)

    def _repo_or_error(self, h: BaseHTTPRequestHandler, repo_id: str, *, head: bool) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found", head=head)
            return None
        if repo.hang:
            self._release.wait(30)
            return None
        if repo.broken:
            self._error(h, 500, "", "Internal Error", head=head)
            return None
        if repo.gated:
            auth = h.headers.get("Authorization") or h.headers.get("authorization")
            if auth is None:
                self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You "
                            "must have access to it and be authenticated to access it. Please "
                            "log in.", head=head)  # fmt: skip
                return None
            if auth != f"Bearer {self.token}":
                self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted and "
                            "you are not in the authorized list.", head=head)  # fmt: skip
                return None
        return repo

    def _api_model(self, h: BaseHTTPRequestHandler, parts: list[str], *, head: bool) -> None:
        if len(parts) < 2:
            self._error(h, 404, "RepoNotFound", "Repository not found", head=head)
            return
        repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
        revision = unquote(parts[3]) if len(parts) >= 4 and parts[2] == "revision" else "main"
        repo = self._repo_or_error(h, repo_id, head=head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": f} for f in sorted(repo.commits[sha])],
        }
        self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"},
                   head=head)  # fmt: skip
