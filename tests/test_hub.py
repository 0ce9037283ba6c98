"""Hub lookup (``vramcalc org/name[@rev]``) against a local server that speaks the Hub's HTTP.

The server (``_hub_server.FakeHub``) answers the endpoints ``huggingface_hub`` calls, so the
real client runs: its cache under ``tmp_path``, its offline mode, token and error mapping.
Configs are the catalog's published ``config.json`` rows served under new repo ids; expected
parameter counts are the catalog's transformers meta-device counts and the element counts of
the tensors the server lists, never vramcalc's own output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("huggingface_hub")
import huggingface_hub.constants as hf_constants  # noqa: E402
from _hub_server import FakeHub, Repo, llama_tensors, numel, safetensors_header  # noqa: E402

from vramcalc import catalog, hub  # noqa: E402
from vramcalc.cli import run  # noqa: E402
from vramcalc.errors import UnknownNameError, VramcalcError  # noqa: E402
from vramcalc.hf import model_notes, resolve_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QWEN = catalog.model_row("qwen2.5-7b")
LLAMA = catalog.model_row("llama-3.1-8b")
TOKEN = "hf_test_token"


def _index(shards: dict[str, dict[str, tuple[str, list[int]]]], **meta: Any) -> dict[str, Any]:
    weight_map = {name: shard for shard, tensors in shards.items() for name in tensors}
    return {"metadata": meta, "weight_map": weight_map}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running FakeHub with the test repos; huggingface_hub pointed at it, cache in tmp."""
    server = FakeHub(token=TOKEN)
    # a Qwen2.5-7B-like repo: one model.safetensors
    qwen = server.add("hubtest/qwen-like", Repo())
    qwen.add_commit(
        {"config.json": QWEN["config"],
         "model.safetensors": safetensors_header(llama_tensors(QWEN["config"]))},
        "main",
    )  # fmt: skip
    # a Llama-3.1-8B-like repo: two shards and an index (no total_parameters, as older saves)
    tensors = llama_tensors(LLAMA["config"])
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": {k: tensors[k] for k in names[: len(names) // 2]},
        "model-00002-of-00002.safetensors": {k: tensors[k] for k in names[len(names) // 2 :]},
    }
    files: dict[str, Any] = {
        "config.json": LLAMA["config"],
        "model.safetensors.index.json": _index(shards, total_size=1),
    }
    files.update({name: safetensors_header(t) for name, t in shards.items()})
    server.add("hubtest/llama-like", Repo()).add_commit(files, "main")
    # revisions: v1 has 2 layers, main has 3
    revs = server.add("hubtest/revs", Repo())
    small = {**LLAMA["config"], "num_hidden_layers": 2}
    revs.add_commit({"config.json": small}, "v1")
    revs.add_commit({"config.json": {**small, "num_hidden_layers": 3}}, "main")
    gated = server.add("hubtest/gated", Repo(gated=True))
    gated.add_commit({"config.json": small}, "main")
    server.add("hubtest/not-json", Repo()).add_commit({"config.json": "{'model_type': 1"}, "main")
    server.add("hubtest/json-list", Repo()).add_commit({"config.json": "[1, 2]"}, "main")
    server.add("hubtest/no-config", Repo()).add_commit({"model.gguf": b"GGUF"}, "main")
    remote = {**small, "model_type": "my_custom_lm",
              "auto_map": {"AutoModelForCausalLM": "modeling_my.MyCustomForCausalLM"}}  # fmt: skip
    server.add("hubtest/remote-code", Repo()).add_commit({"config.json": remote}, "main")
    unknown = {**small, "model_type": "my_new_lm"}
    server.add("hubtest/unknown-type", Repo()).add_commit({"config.json": unknown}, "main")
    known_remote = {**small, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}
    server.add("hubtest/remote-known", Repo()).add_commit({"config.json": known_remote}, "main")
    server.add("hubtest/hang", Repo(hang=True))
    server.add("hubtest/broken", Repo(broken=True))
    server.start()

    cache = tmp_path / "hub"
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv(hub.TIMEOUT_ENV, "5")
    # huggingface_hub reads these once at import; the subprocess tests use the env above
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")  # fmt: skip
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
    hub.clear_cache()
    yield server
    hub.clear_cache()
    server.stop()


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub.clear_cache()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _hub_requests(server: FakeHub) -> list[tuple[str, str]]:
    return [r for r in server.requests if not r[1].startswith("/api/agent-harnesses")]


# ----------------------------------------------------------------------------- online


def test_online_qwen_like_single_safetensors(fake_hub: FakeHub) -> None:
    spec = resolve_model("hubtest/qwen-like")
    assert spec.model_type == "qwen2"
    assert spec.hf_id == "hubtest/qwen-like"
    expected = numel(llama_tensors(QWEN["config"]))
    assert expected == QWEN["n_params"] == 7_615_616_512  # Qwen2.5-7B, transformers count
    assert spec.n_params == expected
    notes = model_notes("hubtest/qwen-like")
    assert any("7,615,616,512 parameters stored" in n for n in notes)
    assert any("stored as bf16" in n for n in notes)
    assert not any("template counts" in n for n in notes)  # counts agree: no mismatch note
    seen = _hub_requests(fake_hub)
    assert ("HEAD", "/hubtest/qwen-like/resolve/main/config.json") in seen
    assert any(m == "GET" and p.endswith("/model.safetensors") for m, p in seen)
    assert source_pinned(spec.source)


def source_pinned(source: str | None) -> bool:
    return source is not None and "/blob/" in source and source.endswith("/config.json")


def test_online_llama_like_sharded_via_cli(
    fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "hubtest/llama-like", "--lora", "r=16", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"]["n_params"] == LLAMA["n_params"] == 8_030_261_248
    assert report["model"]["hf_id"] == "hubtest/llama-like"
    assert report["model"]["model_type"] == "llama"
    assert any("safetensors headers: 8,030,261,248" in n for n in report["notes"])
    shard_gets = {p for m, p in _hub_requests(fake_hub) if m == "GET" and "-of-0000" in p}
    assert len(shard_gets) == 2  # both shard headers read (range requests)
    # the same estimate as the catalog's llama-3.1-8b (same config)
    code, out2, _ = _cli(capsys, "llama-3.1-8b", "--lora", "r=16", "--json")
    assert json.loads(out2)["peak"] == report["peak"]


def test_stored_count_wins_when_template_disagrees(fake_hub: FakeHub) -> None:
    cfg = {**LLAMA["config"], "num_hidden_layers": 2}
    tensors = llama_tensors(cfg)
    tensors["model.mtp.proj.weight"] = ("BF16", [4096, 8192])  # a tensor transformers won't build
    fake_hub.add("hubtest/extra", Repo()).add_commit(
        {"config.json": cfg, "model.safetensors": safetensors_header(tensors)}, "main"
    )
    plain = resolve_model({**cfg})
    spec = resolve_model("hubtest/extra")
    assert spec.n_params == numel(tensors) == plain.n_params + 4096 * 8192
    note = " ".join(model_notes("hubtest/extra"))
    assert f"{numel(tensors):,} from the safetensors headers" in note
    assert f"{4096 * 8192:+,}" in note


def test_index_total_parameters_and_quantized_dtypes(fake_hub: FakeHub) -> None:
    cfg = {**LLAMA["config"], "num_hidden_layers": 2}
    tensors = {k: ("I8", s) if k.endswith("proj.weight") else ("BF16", s)
               for k, (_, s) in llama_tensors(cfg).items()}  # fmt: skip
    fake_hub.add("hubtest/int8", Repo()).add_commit(
        {"config.json": cfg, "model.safetensors": safetensors_header(tensors)}, "main"
    )
    spec = resolve_model("hubtest/int8")
    assert spec.n_params == resolve_model(cfg).n_params  # packed ints: template count kept
    assert any("quantized or packed" in n for n in model_notes("hubtest/int8"))
    shards = {"model-00001-of-00001.safetensors": llama_tensors(cfg)}
    fake_hub.add("hubtest/total", Repo()).add_commit(
        {"config.json": cfg, "model.safetensors.index.json": _index(shards, total_parameters=123),
         **{k: safetensors_header(v) for k, v in shards.items()}},
        "main",
    )  # fmt: skip
    assert resolve_model("hubtest/total").n_params == 123


def test_gated_with_token(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert resolve_model("hubtest/gated").num_hidden_layers == 2


# ----------------------------------------------------------------------------- offline, revisions


def test_offline_from_cache_without_requests(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    online = resolve_model("hubtest/llama-like")
    _go_offline(monkeypatch)
    fake_hub.requests.clear()
    offline = resolve_model("hubtest/llama-like")
    assert offline.model_copy(update={"source": None}) == online.model_copy(update={"source": None})
    assert _hub_requests(fake_hub) == []
    notes = model_notes("hubtest/llama-like")
    assert any("cache (offline)" in n for n in notes)
    assert any("safetensors headers not read" in n or "cached safetensors index" in n
               for n in notes)  # fmt: skip
    code, out, err = _cli(capsys, "hubtest/llama-like", "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["n_params"] == LLAMA["n_params"]


def test_cache_with_only_config_json_is_enough(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add("hubtest/config-only", Repo()).add_commit({"config.json": LLAMA["config"]}, "main")
    spec = resolve_model("hubtest/config-only")  # no safetensors at all: template count
    assert spec.n_params == LLAMA["n_params"]
    assert any("no safetensors" in n for n in model_notes("hubtest/config-only"))
    _go_offline(monkeypatch)
    assert resolve_model("hubtest/config-only").n_params == LLAMA["n_params"]


def test_revision_pinning(fake_hub: FakeHub) -> None:
    repo = fake_hub.repos["hubtest/revs"]
    assert resolve_model("hubtest/revs").num_hidden_layers == 3
    assert resolve_model("hubtest/revs@v1").num_hidden_layers == 2
    assert resolve_model("hubtest/revs@main").num_hidden_layers == 3
    sha = repo.refs["v1"]
    spec = resolve_model(f"hubtest/revs@{sha}")
    assert spec.num_hidden_layers == 2
    assert spec.name == f"hubtest/revs@{sha}"
    assert spec.source is not None and sha in spec.source


def test_offline_revision_from_cache(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_model("hubtest/revs@v1")
    _go_offline(monkeypatch)
    assert resolve_model("hubtest/revs@v1").num_hidden_layers == 2
    with pytest.raises(hub.HubUnavailableError, match="not in the Hugging Face cache"):
        resolve_model("hubtest/revs@main")


def test_offline_subprocess_uses_real_env(fake_hub: FakeHub, tmp_path: Path) -> None:
    resolve_model("hubtest/qwen-like")  # fills tmp_path/hub
    fake_hub.stop()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code = (
        "import sys\n"
        "from vramcalc.cli import run\n"
        "a = run(['hubtest/qwen-like', '--json'])\n"
        "print('=====', flush=True)\n"
        "b = run(['hubtest/never-fetched', '--json'])\n"
        "sys.exit(10 * a + b)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr  # the cached repo 0, the uncached one 2
    cached, uncached = done.stdout.split("=====\n")
    assert json.loads(cached)["model"]["n_params"] == QWEN["n_params"]
    assert uncached == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1" in lines[0] and "not in the" in lines[0]


# ----------------------------------------------------------------------------- errors

ERRORS = [
    ("hubtest/nope", hub.HubNotFoundError, "not found"),
    ("hubtest/gated", hub.HubAccessError, "is gated"),
    ("hubtest/revs@no-such-branch", hub.HubNotFoundError, "revision 'no-such-branch' not found"),
    ("hubtest/not-json", VramcalcError, "not valid JSON"),
    ("hubtest/json-list", VramcalcError, "must hold a JSON object"),
    ("hubtest/no-config", hub.HubNotFoundError, "has no config.json"),
    ("hubtest/remote-code", hub.RemoteCodeError, "never runs remote code"),
    ("hubtest/unknown-type", UnknownNameError, "unknown model_type 'my_new_lm'"),
]


@pytest.mark.parametrize(("model", "kind", "text"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_one_line(
    fake_hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    model: str,
    kind: type[Exception],
    text: str,
) -> None:
    with pytest.raises(kind, match=text) as info:
        resolve_model(model)
    assert isinstance(info.value, VramcalcError)
    assert "\n" not in str(info.value)
    hub.clear_cache()
    code, out, err = _cli(capsys, model)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("vramcalc: error: ") and text in err


def test_gated_wrong_token_and_remote_code_lists_types(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(hub.HubAccessError, match="has no access"):
        resolve_model("hubtest/gated")
    with pytest.raises(UnknownNameError) as info:
        resolve_model("hubtest/remote-code")
    msg = str(info.value)
    assert "my_custom_lm" in msg and "modeling_my.MyCustomForCausalLM" in msg
    assert all(t in msg for t in catalog.architecture_types())


def test_remote_code_with_known_model_type_is_estimated(fake_hub: FakeHub) -> None:
    spec = resolve_model("hubtest/remote-known")
    assert spec.model_type == "llama" and spec.num_hidden_layers == 2
    assert any("never runs remote code" in n for n in model_notes("hubtest/remote-known"))


def test_network_error_and_timeout_are_bounded(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(hub.TIMEOUT_ENV, "0.5")
    start = time.monotonic()
    with pytest.raises(hub.HubUnavailableError, match=r"within 0\.5 s"):
        resolve_model("hubtest/hang")
    assert time.monotonic() - start < 3
    # 5xx: huggingface_hub retries with back-off; the error names what it saw
    late_500 = r"within 0\.5 s \(VRAMCALC_HUB_TIMEOUT; last: HTTP Error 500"
    with pytest.raises(hub.HubUnavailableError, match=late_500):
        resolve_model("hubtest/broken")
    # a port where nothing listens: one line at once (no back-off), unless the cache has it
    resolve_model("hubtest/revs@v1")
    hub.clear_cache()
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        dead + "/{repo_id}/resolve/{revision}/{filename}")  # fmt: skip
    monkeypatch.setenv(hub.TIMEOUT_ENV, "20")
    start = time.monotonic()
    code, _, err = _cli(capsys, "hubtest/qwen-like")
    assert time.monotonic() - start < 3
    assert code == 2 and err.count("\n") == 1
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in err
    assert "not cached" in err
    assert resolve_model("hubtest/revs@v1").num_hidden_layers == 2
    assert any("the Hub is unreachable" in n for n in model_notes("hubtest/revs@v1"))


@pytest.mark.parametrize(
    "model",
    ["hubtest/" + "x" * 97, "a" * 300 + "/b", "hub test/model", "hubtest/mo;del", "a/b/c",
     "hubtest/model@", "hubtest/model@../x", "hubtest/--x", "hubtest/" + "é"],
)  # fmt: skip
def test_invalid_ids_refused_before_network(
    fake_hub: FakeHub, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    # Hub-shaped ids fail as invalid ids; "a/b/c" reads as a missing path (unknown model)
    with pytest.raises(UnknownNameError if model == "a/b/c" else hub.HubIdError):
        resolve_model(model)
    code, _, err = _cli(capsys, model)
    assert code == 2 and err.count("\n") == 1
    assert fake_hub.requests == []


def test_catalog_names_never_touch_the_network(
    fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    for model in ("gpt2", "openai-community/gpt2", "meta-llama/Llama-3.1-8B"):
        code, _, err = _cli(capsys, model, "--json")
        assert code == 0, err
    assert fake_hub.requests == []


def test_missing_huggingface_hub_is_one_clear_line(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(hub.HubUnavailableError, match=r"pip install 'vramcalc\[hub\]'"):
        resolve_model("hubtest/qwen-like")
    assert fake_hub.requests == []


def test_models_lists_the_hub_pointer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    flat = " ".join(out.split())
    assert "Any Hugging Face Hub repo id works" in flat
    assert "HF_TOKEN" in flat and "HF_HUB_OFFLINE=1" in flat


def test_catalog_estimate_does_not_import_huggingface_hub() -> None:
    code = (
        "import sys, vramcalc\n"
        "vramcalc.estimate(model='gpt2')\n"
        "from vramcalc.cli import run\n"
        "assert run(['llama-2-7b', '--json']) == 0\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('huggingface_hub', 'httpx', 'vramcalc.hub') or m == 'vramcalc.hub')\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True,
                   timeout=60)  # fmt: skip


def test_rest_hub_lookup_is_off_by_default_and_opt_in(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    def post(client: TestClient, model: str) -> tuple[int, Any]:
        r = client.post("/v1/estimate", json={"model": model})
        return r.status_code, r.json()

    with TestClient(create_app(Settings(access_log=False)), raise_server_exceptions=False) as c:
        code, body = post(c, "hubtest/qwen-like")
        assert code == 404 and "unknown model" in body["detail"]
    assert fake_hub.requests == []  # off: no network call at all

    # a relative path that exists on the server is never opened, even with hub_lookup on
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text(json.dumps(LLAMA["config"]))
    monkeypatch.chdir(tmp_path)
    settings = Settings(access_log=False, hub_lookup=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        code, body = post(c, "hubtest/qwen-like")
        assert code == 200, body
        assert body["model"]["n_params"] == QWEN["n_params"]
        assert post(c, "hubtest/gated")[0] == 403
        assert post(c, "hubtest/nope")[0] == 404
        assert post(c, "hubtest/revs@nope")[0] == 404
        assert post(c, "hubtest/not-json")[0] == 422
        assert post(c, "hub test/x")[0] == 422
        requests_before = len(fake_hub.requests)
        assert post(c, "org/name")[0] == 404
        assert post(c, "gpt2")[0] == 200
        assert len(fake_hub.requests) == requests_before


def test_a_request_timeout_reads_as_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request's own read timeout can fire before the overall deadline (a loaded
    machine): the user gets the same "within N s" line either way, not a transport name."""
    import httpx
    from huggingface_hub import errors as hf_errors

    hh = hub._import_hub()
    monkeypatch.setenv(hub.TIMEOUT_ENV, "0.5")
    try:
        try:
            raise httpx.ReadTimeout("timed out")
        except httpx.ReadTimeout as cause:
            raise hf_errors.LocalEntryNotFoundError("no connection") from cause
    except hf_errors.LocalEntryNotFoundError as exc:
        err = hub._translate(hh, exc, "org/repo", None, "config.json")
    assert isinstance(err, hub.HubUnavailableError)
    assert "within 0.5 s (VRAMCALC_HUB_TIMEOUT)" in str(err) and "\n" not in str(err)
    other = hub._translate(hh, httpx.ConnectTimeout("slow"), "org/repo", None, "config.json")
    assert "within 0.5 s" in str(other)
