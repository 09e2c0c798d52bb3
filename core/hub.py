"""Hugging Face hub access: a local folder, a GPT-2 name or a hub repo id -> config.json + safetensors files.

Hub checkpoints come from huggingface_hub's local cache when all there, else are downloaded; offline
(HF_HUB_OFFLINE, or the hub unreachable) that fails at once rather than after huggingface_hub's ~30 s
of retries.
"""

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from llmc.core.errors import LlmcError

# the OpenAI checkpoints, as `llmc export-weights NAME` knows them
HF_REPOS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
            "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}


def resolve_source(source: str, echo: Callable[[str], None] = print) -> tuple[Path, list[Path]]:
    """(config.json, safetensors files) of a local folder, a GPT-2 name or a hub repo id; a hub
    checkpoint from the local cache if all there, else downloaded if the hub answers."""
    local = Path(source)
    if local.is_dir():
        index = local / "model.safetensors.index.json"
        files = [local / "model.safetensors"] if (local / "model.safetensors").exists() else None
        if files is None and index.exists():
            files = [local / f for f in sorted(set(_read_json(index).get("weight_map", {}).values()))]
        if not files:
            raise LlmcError(f"{local}: no model.safetensors (llmc reads safetensors only, not pytorch_model.bin)")
        if not (local / "config.json").exists():
            raise LlmcError(f"{local}: no config.json")
        return local / "config.json", files
    if local.exists():
        hint = "; to convert an llm.c checkpoint use --to-hf" if local.suffix == ".bin" else ""
        raise LlmcError(f"{source}: expected a folder with config.json and model.safetensors{hint}")
    repo = HF_REPOS.get(source, source)
    if repo.count("/") != 1:
        raise LlmcError(f"{source!r} is not a folder, a hub repo id (owner/name) or one of {', '.join(HF_REPOS)}")
    from huggingface_hub import constants  # here, not at the top: local folders need no huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        files = _hub_checkpoint(repo, local_only=True)
        echo(f"reading {repo} (from the local cache)")
        return files
    except LocalEntryNotFoundError:
        pass
    instead = "pass a local Hugging Face folder with config.json and model.safetensors instead"
    if constants.HF_HUB_OFFLINE:
        raise LlmcError(f"{repo} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {instead}")
    if not _reachable(constants.ENDPOINT):
        raise LlmcError(f"{repo} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached: "
                        f"{instead}")
    echo(f"downloading {repo} from the Hugging Face hub")
    return _hub_checkpoint(repo, local_only=False)


def _hub_checkpoint(repo: str, local_only: bool) -> tuple[Path, list[Path]]:
    """(config.json, safetensors files) of a hub repo; local_only: from the cache alone, else
    LocalEntryNotFoundError."""
    config = _hub_file(repo, "config.json", local_only)
    try:
        return config, [_hub_file(repo, "model.safetensors", local_only)]
    except FileNotFoundError:  # sharded; or, from the cache, not cached and maybe sharded
        index = _hub_file(repo, "model.safetensors.index.json", local_only)
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return config, [_hub_file(repo, f, local_only) for f in shards]


def _hub_file(repo: str, filename: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_only))
    except LocalEntryNotFoundError as e:  # not in the cache, and (downloading) the hub went away
        if local_only:
            raise
        raise LlmcError(f"cannot fetch {filename} of {repo}: {_first_line(e)}") from None
    except EntryNotFoundError:
        if filename == "model.safetensors":
            raise FileNotFoundError(filename) from None  # maybe sharded: the caller reads the index
        if filename == "model.safetensors.index.json":
            raise LlmcError(f"{repo} has no model.safetensors (llmc reads safetensors only, "
                            "not pytorch_model.bin)") from None
        raise LlmcError(f"{repo} has no {filename}") from None
    except Exception as e:  # network, auth, unknown repo: one line
        raise LlmcError(f"cannot fetch {filename} of {repo}: {_first_line(e)}") from None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to url's host (or the proxy for it) opens within timeout, name lookup
    included: huggingface_hub retries an unreachable hub for ~30 s before it gives up."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    opened = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    # a thread, since getaddrinfo ignores the timeout and a dead resolver can take far longer
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return opened.is_set()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LlmcError(f"{path}: not valid JSON ({e})") from None
