"""Hugging Face Hub lookup: ``org/name[@revision]`` -> ``config.json`` and safetensors headers.

Pure Python at import: ``huggingface_hub`` is imported inside ``lookup`` only, so
``import vramcalc`` and every catalog estimate stay as fast as before (a test checks
``sys.modules``). What the lookup reads, all through ``huggingface_hub`` and its cache:

- ``config.json`` with ``hf_hub_download`` (cached under ``HF_HUB_CACHE``; ``HF_TOKEN`` or
  the saved login for gated and private repos; ``HF_HUB_OFFLINE=1`` answers from the cache;
  ``HF_ENDPOINT`` picks the server);
- ``model.safetensors.index.json`` (cached the same way) and the JSON header of each
  safetensors shard (HTTP range requests, ``HfApi.parse_safetensors_file_metadata``): the
  exact stored parameter count per dtype, without downloading weights. Offline, or where a
  repo has no safetensors, the estimate comes from ``config.json`` alone and a note says so.

Remote code is never run: a config is only ever read as JSON.

Every failure is a ``HubError`` (a ``VramcalcError``) with one line that says what was
wrong and what to do: repo not found, gated or private without access, revision not found,
offline and not cached, network error or timeout (``VRAMCALC_HUB_TIMEOUT`` seconds, default
20, for the whole lookup), a ``config.json`` that is missing, not JSON or not an object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError, closest_match

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_REPO_ID_CHARS",
    "TIMEOUT_ENV",
    "HubAccessError",
    "HubError",
    "HubIdError",
    "HubModel",
    "HubNotFoundError",
    "HubUnavailableError",
    "RemoteCodeError",
    "clear_cache",
    "looks_like_hub_id",
    "lookup",
    "parse_hub_id",
]

# Hub naming rules (huggingface_hub ``validate_repo_id``): ``namespace/name``, each part of
# letters, digits, '-', '_' and '.', at most 96 characters, starting and ending with a letter,
# digit or '_', without '--' or '..'.
MAX_PART_CHARS = 96
MAX_REPO_ID_CHARS = 2 * MAX_PART_CHARS + 1
MAX_REVISION_CHARS = 255  # a git ref name; a commit hash is 40
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")

TIMEOUT_ENV = "VRAMCALC_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0
# Repos with more shards than this are not header-read one by one (DeepSeek-V3 has 163):
# the index's ``metadata.total_parameters`` is used when it has one.
MAX_SHARDS = 64
_SHARD_THREADS = 8
# Stored dtypes whose element count is the parameter count. Integer and fp8 dtypes hold
# packed or quantized weights plus scales, whose counts are not parameters.
_FLOAT_DTYPES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16"}

_NO_COUNT = "parameter count from the architecture template"
_INSTALL_HINT = "pip install 'vramcalc[hub]' (or huggingface_hub)"
_ACCEPTED = (
    "accepted: a catalog name (see `vramcalc models`), a path to a config.json or a model "
    "folder, or a Hugging Face Hub repo id such as Qwen/Qwen3-8B or org/name@revision"
)


class HubError(VramcalcError):
    """A Hub lookup failed; the message says why and what to do."""


class HubIdError(HubError):
    """The text is not a valid Hub repo id (refused before any network call)."""


class HubNotFoundError(HubError):
    """The repo, the revision or its ``config.json`` does not exist (or is private)."""

    status_code = 404


class HubAccessError(HubError):
    """A gated or private repo and no token with access to it."""

    status_code = 403


class HubUnavailableError(HubError):
    """Offline and not cached, no network, a timeout, a server error, or no huggingface_hub."""

    status_code = 424


class RemoteCodeError(UnknownNameError):
    """A config whose ``model_type`` needs remote code and has no template (never run)."""

    status_code = 422

    def __init__(
        self, where: str, model_type: str, auto_map: Any, choices: list[str], *, show: int = 80
    ) -> None:
        super().__init__("model_type", model_type, choices, show=show)
        classes = sorted(str(v) for v in auto_map.values()) if isinstance(auto_map, dict) else []
        code = f" ({', '.join(classes[:2])})" if classes else ""
        hint = f" Closest supported: '{self.suggestion}'." if self.suggestion else ""
        more = f", ... ({len(self.choices)} in all)" if len(self.choices) > show else ""
        self.args = (
            f"{where} has model_type '{model_type}' with custom modelling code{code}; vramcalc "
            f"never runs remote code and has no template for '{model_type}'.{hint} Supported "
            f"model_type values: {', '.join(self.choices[:show])}{more}",
        )


@dataclass(frozen=True)
class HubModel:
    """What a Hub lookup found.

    Attributes:
        repo_id: ``namespace/name``.
        revision: the revision asked for (None: the default branch).
        commit: the commit the files came from (from the cache's snapshot folder).
        config: the parsed ``config.json``.
        source: a URL of the config on the endpoint, pinned to ``commit`` when known.
        dtype_params: stored element counts per safetensors dtype (empty: not read).
        stored_params: the parameter count stored in the safetensors files, when every
            stored dtype is a float dtype (None: not read, or quantized/packed weights).
        notes: what was read and what was not, for the report.

    """

    repo_id: str
    revision: str | None
    commit: str | None
    config: dict[str, Any]
    source: str
    dtype_params: dict[str, int] = field(default_factory=dict)
    stored_params: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def stored_dtype(self) -> str | None:
        """The dtype that holds most stored parameters (``bf16``, ``fp32``, ...), if read."""
        if not self.dtype_params:
            return None
        top = max(sorted(self.dtype_params), key=lambda k: self.dtype_params[k])
        return _FLOAT_DTYPES.get(top, top.lower())


# ----------------------------------------------------------------------------- ids


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` is meant as a Hub id: one '/' before an optional '@revision'.

    Only the shape counts here (``parse_hub_id`` checks characters and lengths); text that
    reads as a path (``./x``, ``/x``, ``~/x``, ``*.json``, more than one '/') is not a Hub id.
    """
    t = text.strip()
    repo = t.partition("@")[0]
    return repo.count("/") == 1 and not t.startswith((".", "/", "~")) and not t.endswith(".json")


def parse_hub_id(text: str) -> tuple[str, str | None]:
    """Split and check ``namespace/name[@revision]``.

    Raises:
        HubIdError: too long, illegal characters, or not ``namespace/name``; nothing has
            touched the network.

    """
    t = text.strip()
    shown = t if len(t) <= 60 else t[:57] + "..."
    repo_id, sep, revision = t.partition("@")
    rules = (
        f"accepted: a catalog name (see `vramcalc models`), an existing path, or a Hub repo id "
        f"namespace/name[@revision] of letters, digits, '-', '_' and '.', each part at most "
        f"{MAX_PART_CHARS} characters"
    )
    if len(repo_id) > MAX_REPO_ID_CHARS or len(revision) > MAX_REVISION_CHARS:
        raise HubIdError(f"'{shown}' is too long for a Hub repo id ({len(t)} characters); {rules}")
    parts = repo_id.split("/")
    bad = (
        len(parts) != 2
        or any(len(p) > MAX_PART_CHARS or not _PART.fullmatch(p) for p in parts)
        or "--" in repo_id
        or ".." in repo_id
        or repo_id.endswith(".git")
    )
    if bad:
        from vramcalc import catalog

        names = [r["name"] for r in catalog.model_rows()]
        names += [r["hf_id"] for r in catalog.model_rows() if r.get("hf_id")]
        hint = closest_match(repo_id, names)
        did = f" Did you mean '{hint}'?" if hint else ""
        raise HubIdError(
            f"'{shown}' is not a catalog name, not an existing file or folder, and not a valid "
            f"Hub repo id.{did} {rules[0].upper()}{rules[1:]}"
        )
    if sep:
        if (
            not revision
            or not _REVISION.fullmatch(revision)
            or ".." in revision
            or revision.endswith(("/", ".lock"))
            or "//" in revision
        ):
            raise HubIdError(
                f"'{shown}': revision '{revision}' is not a valid git revision; accepted: a "
                "branch, tag or commit hash after '@' (letters, digits, '-', '_', '.', '/')"
            )
        return repo_id, revision
    return repo_id, None


# ----------------------------------------------------------------------------- lookup

_cache: dict[tuple[Any, ...], HubModel] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget in-process lookups (the on-disk Hugging Face cache is untouched)."""
    with _cache_lock:
        _cache.clear()


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise HubIdError(
            f"{TIMEOUT_ENV}={raw!r}; accepted: seconds for a Hub lookup, a number in (0, 3600]"
        )
    return value


def _import_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError:
        raise HubUnavailableError(
            f"looking up a Hugging Face Hub id needs huggingface_hub: {_INSTALL_HINT}; "
            "or pass a path to a config.json"
        ) from None
    return huggingface_hub


def lookup(text: str) -> HubModel:
    """Fetch ``config.json`` (and safetensors headers when online) of a Hub repo id.

    Args:
        text: ``namespace/name`` or ``namespace/name@revision``.

    Returns:
        The config and what the safetensors headers say; cached in-process per repo,
        revision, endpoint, cache folder, offline mode and token.

    Raises:
        HubIdError: not a valid repo id (before any network call).
        HubNotFoundError: no such repo, revision or ``config.json``.
        HubAccessError: gated or private, and no token with access.
        HubUnavailableError: offline and not cached, network error, timeout, server error,
            or huggingface_hub is not installed.
        InvalidConfigError: ``config.json`` is not JSON or not an object.

    """
    repo_id, revision = parse_hub_id(text)
    timeout = _timeout_s()
    hh = _import_hub()
    c = hh.constants
    token = hh.get_token()
    key = (repo_id, revision, c.ENDPOINT, c.HF_HUB_CACHE, _offline(hh), token)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit

    def late() -> HubError:
        seen = f"; last: {_quiet.last}" if _quiet.last else ""
        return HubUnavailableError(
            f"no answer from the Hugging Face Hub at {c.ENDPOINT} for '{repo_id}' within "
            f"{timeout:g} s ({TIMEOUT_ENV}{seen}); check the network or HF_ENDPOINT, or set "
            "HF_HUB_OFFLINE=1 to use the cache"
        )

    _quiet.enter(hh)
    found = _run_bounded(lambda: _fetch(hh, repo_id, revision, timeout), timeout, late)
    with _cache_lock:
        _cache[key] = found
    return found


_T = TypeVar("_T")


class _Quiet(logging.Handler):
    """Hold huggingface_hub's logs and progress bars back while lookups run.

    Its retry warnings and download bars would break the CLI's one-line contract; the last
    warning goes into the timeout error instead. Entered by the caller, left by the lookup
    thread when it ends (a thread given up on after the timeout may still be retrying), so
    the logger is restored when the last lookup thread is done.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[list[logging.Handler], bool, bool, Any] | None = None

    def enter(self, hh: Any) -> None:
        with self._lock:
            self.last = ""
            self._users += 1
            if self._users > 1:
                return
            logger = logging.getLogger("huggingface_hub")
            bars_on = not hh.utils.are_progress_bars_disabled()
            self._saved = (logger.handlers[:], logger.propagate, bars_on, hh)
            logger.handlers = [self]
            logger.propagate = False
            if bars_on:
                hh.utils.disable_progress_bars()

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users or self._saved is None:
                return
            handlers, propagate, bars_on, hh = self._saved
            self._saved = None
            logger = logging.getLogger("huggingface_hub")
            logger.handlers = handlers
            logger.propagate = propagate
            if bars_on:
                hh.utils.enable_progress_bars()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().splitlines()
        if text and not text[0].startswith("Retrying"):
            self.last = text[0][:200]


_quiet = _Quiet()


def _run_bounded(fn: Callable[[], _T], timeout: float, late: Callable[[], HubError]) -> _T:
    """Run ``fn`` in a daemon thread and give up after ``timeout`` seconds.

    huggingface_hub retries a failed connection with back-off and a 60 s timeout of its own;
    the caller must not hang that long. A thread that is given up on finishes (or not) in
    the background and is never joined; its result is dropped. The thread leaves ``_quiet``
    (entered by the caller) when it ends.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            _quiet.leave()

    worker = threading.Thread(target=target, name="vramcalc-hub-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise late()
    if "error" in box:
        raise box["error"]
    value: _T = box["value"]
    return value


def _offline(hh: Any) -> bool:
    is_offline = getattr(hh.constants, "is_offline_mode", None)
    return bool(is_offline() if callable(is_offline) else hh.constants.HF_HUB_OFFLINE)


def _err(hh: Any, name: str) -> type[BaseException]:
    """Return an exception class of huggingface_hub by name (older versions lack some)."""
    errors = getattr(hh, "errors", None)
    found = getattr(errors, name, None) or getattr(hh.utils, name, None)
    return found if isinstance(found, type) else _Never


class _Never(Exception):
    """Placeholder for an exception class this huggingface_hub version does not have."""


def _fetch(hh: Any, repo_id: str, revision: str | None, timeout: float) -> HubModel:
    endpoint = hh.constants.ENDPOINT
    unreachable = None if _offline(hh) else _probe(hh, repo_id, revision, timeout)
    try:
        path = Path(
            hh.hf_hub_download(
                repo_id,
                "config.json",
                revision=revision,
                etag_timeout=timeout,
                local_files_only=unreachable is not None,
            )
        )
    except Exception as exc:
        if unreachable is not None:
            raise HubUnavailableError(
                f"cannot reach the Hugging Face Hub at {endpoint} for '{repo_id}"
                f"{'@' + revision if revision else ''}' ({unreachable}) and its config.json is "
                "not cached; check the network or HF_ENDPOINT"
            ) from None
        raise _translate(hh, exc, repo_id, revision, "config.json") from None
    commit = path.parent.name if _COMMIT.fullmatch(path.parent.name) else None
    config = _read_config(path, repo_id)
    source = f"{endpoint}/{repo_id}/blob/{commit or revision or 'main'}/config.json"
    where = " from the Hugging Face Hub"
    if _offline(hh):
        where += " cache (offline)"
    elif unreachable is not None:
        where += f" cache (the Hub is unreachable: {unreachable})"
    notes: list[str] = [
        f"config.json of {repo_id}"
        + (f"@{revision}" if revision else "")
        + (f" (commit {commit[:12]})" if commit else "")
        + where
    ]
    if unreachable is not None:
        skipped = "safetensors headers not read (the Hub is unreachable); " + _NO_COUNT
        return HubModel(repo_id, revision, commit, config, source, notes=(*notes, skipped))
    dtype_params, stored, st_notes = _safetensors(hh, repo_id, commit or revision, timeout)
    notes += st_notes
    return HubModel(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        config=config,
        source=source,
        dtype_params=dtype_params,
        stored_params=stored,
        notes=tuple(notes),
    )


def _probe(hh: Any, repo_id: str, revision: str | None, timeout: float) -> str | None:
    """Return why the Hub cannot be reached (None: it answered, whatever the status).

    One HEAD request without retries. ``hf_hub_download`` retries a connection failure with
    back-off for about 20 s before it falls back to the cache; a lookup with no network
    should answer at once, from the cache or with an error.
    """
    url = hh.hf_hub_url(repo_id, "config.json", revision=revision)
    try:
        hh.get_hf_file_metadata(url, timeout=timeout)
    except Exception as exc:
        if isinstance(exc, _err(hh, "HfHubHTTPError") | _err(hh, "EntryNotFoundError")):
            return None  # the server answered: hf_hub_download handles the status
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}"[:160] if first else type(exc).__name__
    return None


def _read_config(path: Path, repo_id: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(
            f"cannot read config.json of Hub repo '{repo_id}': {exc}"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(
            f"config.json of Hub repo '{repo_id}' is not valid JSON: {exc.msg} at line "
            f"{exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidConfigError(
            f"config.json of Hub repo '{repo_id}' must hold a JSON object, got "
            f"{type(data).__name__}"
        )
    return data


def _is_timeout(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a request timeout (``TimeoutError``, httpx/requests ``*Timeout``)."""
    return exc is not None and (
        isinstance(exc, TimeoutError) or type(exc).__name__.endswith("Timeout")
    )


def _translate(
    hh: Any, exc: BaseException, repo_id: str, revision: str | None, filename: str
) -> VramcalcError:
    """One actionable line for a huggingface_hub failure."""
    if isinstance(exc, VramcalcError):
        return exc
    endpoint = hh.constants.ENDPOINT
    at = f"@{revision}" if revision else ""
    offline_hint = "set HF_HUB_OFFLINE=1 to use the cache"
    if isinstance(exc, _err(hh, "GatedRepoError")):
        if hh.get_token():
            return HubAccessError(
                f"Hub repo '{repo_id}' is gated and the token in use (HF_TOKEN or the saved "
                f"login) has no access to it: request access on {endpoint}/{repo_id}"
            )
        return HubAccessError(
            f"Hub repo '{repo_id}' is gated: request access on {endpoint}/{repo_id}, then set "
            "HF_TOKEN to a read token (or run `hf auth login`)"
        )
    if isinstance(exc, _err(hh, "RepositoryNotFoundError")):
        from vramcalc import catalog

        ids = [r["hf_id"] for r in catalog.model_rows() if r.get("hf_id")]
        hint = closest_match(repo_id, ids)
        did = f" Did you mean '{hint}'?" if hint else ""
        token = "" if hh.get_token() else " (a private repo needs HF_TOKEN)"
        return HubNotFoundError(
            f"Hub repo '{repo_id}' not found at {endpoint}{token}.{did} {_ACCEPTED[0].upper()}"
            f"{_ACCEPTED[1:]}"
        )
    if isinstance(exc, _err(hh, "RevisionNotFoundError")):
        return HubNotFoundError(
            f"revision '{revision}' not found in Hub repo '{repo_id}'; accepted: a branch, tag "
            f"or commit hash of that repo after '@' (e.g. {repo_id}@main)"
        )
    offline = _offline(hh)
    if isinstance(exc, _err(hh, "OfflineModeIsEnabled")) or (
        offline and isinstance(exc, _err(hh, "LocalEntryNotFoundError"))
    ):
        return HubUnavailableError(
            f"{filename} of '{repo_id}{at}' is not in the Hugging Face cache "
            f"({hh.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it; run "
            "once online, or unset HF_HUB_OFFLINE"
        )
    cause = exc.__cause__ or exc.__context__
    if _is_timeout(exc) or (
        isinstance(exc, _err(hh, "LocalEntryNotFoundError")) and _is_timeout(cause)
    ):
        # the request's own read/connect timeout fired before the overall deadline did
        # (_run_bounded): the same answer as the deadline's, whichever comes first
        return HubUnavailableError(
            f"no answer from the Hugging Face Hub at {endpoint} for '{repo_id}{at}' within "
            f"{_timeout_s():g} s ({TIMEOUT_ENV}); check the network or HF_ENDPOINT, or "
            f"{offline_hint}"
        )
    if isinstance(exc, _err(hh, "LocalEntryNotFoundError")):
        why = f" ({type(cause).__name__})" if cause is not None else ""
        return HubUnavailableError(
            f"cannot reach the Hugging Face Hub at {endpoint} for '{repo_id}{at}'{why} and "
            f"its {filename} is not cached; check the network or HF_ENDPOINT, or "
            f"{offline_hint}"
        )
    if isinstance(exc, _err(hh, "EntryNotFoundError")):
        return HubNotFoundError(
            f"Hub repo '{repo_id}{at}' has no {filename}; vramcalc reads a transformers "
            "config.json (repos with only GGUF, ONNX or adapter files are not supported)"
        )
    if isinstance(exc, _err(hh, "HFValidationError")):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return HubIdError(f"'{repo_id}{at}' is not a valid Hub repo id: {first}")
    if isinstance(exc, _err(hh, "HfHubHTTPError")):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", "?")
        return HubUnavailableError(
            f"the Hugging Face Hub at {endpoint} answered HTTP {status} for '{repo_id}{at}' "
            f"{filename}; try again later, or {offline_hint}"
        )
    if isinstance(exc, OSError | TimeoutError | ConnectionError) or type(exc).__module__.startswith(
        ("httpx", "httpcore", "requests", "urllib3")
    ):
        return HubUnavailableError(
            f"cannot reach the Hugging Face Hub at {endpoint} for '{repo_id}{at}' "
            f"({type(exc).__name__}); check the network or HF_ENDPOINT, or {offline_hint}"
        )
    return HubUnavailableError(
        f"the Hub lookup of '{repo_id}{at}' failed ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}); {offline_hint}"
    )


def _safetensors(
    hh: Any, repo_id: str, revision: str | None, timeout: float
) -> tuple[dict[str, int], int | None, list[str]]:
    """Read stored parameter counts per dtype from the safetensors index and headers.

    Never fails the lookup: whatever cannot be read becomes a note and the estimate uses
    the architecture template's count.
    """
    no_count = _NO_COUNT
    index: dict[str, Any] | None = None
    try:
        index_path = hh.hf_hub_download(
            repo_id, "model.safetensors.index.json", revision=revision, etag_timeout=timeout
        )
        loaded = json.loads(Path(index_path).read_text(encoding="utf-8"))
        index = loaded if isinstance(loaded, dict) else None
    except Exception as exc:
        if not isinstance(exc, _err(hh, "EntryNotFoundError")) and not _offline(hh):
            return {}, None, [f"safetensors index not read ({type(exc).__name__}); {no_count}"]
    total = None
    if index is not None:
        meta = index.get("metadata")
        value = meta.get("total_parameters") if isinstance(meta, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            total = value
    if _offline(hh):
        if total is not None:
            return {}, total, [f"parameter count {total:,} from the cached safetensors index"]
        return (
            {},
            None,
            ["offline: safetensors headers not read (only config.json is needed); " + no_count],
        )
    if index is not None:
        weight_map = index.get("weight_map")
        shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        shards = [s for s in shards if isinstance(s, str)]
    else:
        shards = ["model.safetensors"]
    if not shards:
        return {}, total, [f"safetensors index lists no shards; {no_count}"]
    if len(shards) > MAX_SHARDS:
        if total is not None:
            shards = shards[:1]  # the dtype only
        else:
            return {}, None, [f"{len(shards)} safetensors shards: headers not read; {no_count}"]
    api = hh.HfApi(endpoint=hh.constants.ENDPOINT)

    def header(name: str) -> dict[str, int]:
        meta = api.parse_safetensors_file_metadata(repo_id, name, revision=revision)
        return dict(meta.parameter_count)

    from concurrent.futures import ThreadPoolExecutor

    counts: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=min(_SHARD_THREADS, len(shards))) as pool:
            for part in pool.map(header, shards):
                for dtype, n in part.items():
                    counts[dtype] = counts.get(dtype, 0) + int(n)
    except Exception as exc:
        if index is None and isinstance(exc, _err(hh, "EntryNotFoundError")):
            return {}, None, [f"no safetensors weights in the repo; {no_count}"]
        return {}, total, [f"safetensors headers not read ({type(exc).__name__}); {no_count}"]
    read = sum(counts.values())
    if total is None and read > 0 and set(counts) <= set(_FLOAT_DTYPES):
        total = read
    notes: list[str] = []
    listed = ", ".join(f"{_FLOAT_DTYPES.get(k, k)} {v:,}" for k, v in sorted(counts.items()))
    if counts and not set(counts) <= set(_FLOAT_DTYPES):
        notes.append(
            f"stored weights are quantized or packed (safetensors dtypes: {listed}); " + no_count
        )
        if total is None:
            return counts, None, notes
    if total is not None:
        notes.append(f"safetensors headers: {total:,} parameters stored ({listed})")
    return counts, total, notes
