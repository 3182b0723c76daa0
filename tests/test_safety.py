"""Safe with anyone's folders (issue 11, merge side): one row per bad input, each refused with exit status 2 and
one line naming the problem, with no input changed and nothing left on disk; then the faults that are not
one command (signals, stale leftovers) and the fixes that must still merge (``--dtype float32``, ``--force``
on a previous merge).

Every crafted file is built here from a tiny checkpoint. The rows run ``recall.cli.main`` in this process,
in a fresh workspace (``ws``: ``base``, ``e1``, ``e2``, ``samples.jsonl``) that is also the current folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from recall.cli import main
from recall.merge.safetensors_io import LazyCheckpoint, ShardWriter
from recall.tiny import make_tiny_checkpoint

TEXTS = [f"sample number {i} about {w} news" for i, w in enumerate(["business", "films", "sport", "spam"] * 2)]
NORM, LN0, LN1 = "model.norm.weight", "model.layers.0.input_layernorm.weight", \
    "model.layers.0.post_attention_layernorm.weight"


# ----------------------------------------------------------------------------- helpers

def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones included): files by content, links by target, folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse usage errors
        return e.code


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_raw(path: Path, header, data: bytes, size: int | None = None) -> None:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if size is None else size) + h + data)


def _crafted(edit: Callable[[dict, bytes], tuple]) -> Callable[[Path], None]:
    """A setup that rewrites e2's model.safetensors with ``edit(header, data) -> (header, data[, size])``."""
    def setup(ws: Path) -> None:
        f = ws / "e2" / "model.safetensors"
        header, data = _header(f)
        _write_raw(f, *edit(header, data))
    return setup


def _with(header: dict, name: str, **changes) -> dict:
    header[name] = {**header[name], **changes}
    return header


def _without(header: dict, name: str, key: str) -> dict:
    del header[name][key]
    return header


def _dup_key(header: dict, data: bytes):
    text = json.dumps(header)
    return (text[:-1] + f', "{NORM}": ' + json.dumps(header[NORM]) + "}").encode(), data


def _index(ws: Path, weight_map_edit: Callable[[dict], object], extra: bool = False) -> None:
    """e2 as a one-shard index, then its weight map edited."""
    names = LazyCheckpoint(ws / "e2").names()
    wm = {n: "model.safetensors" for n in names}
    if extra:  # a second valid shard holding a tensor nobody maps
        w = ShardWriter(ws / "e2" / "extra.safetensors", [("unused.weight", torch.float32, (2,))])
        w.write("unused.weight", torch.zeros(2))
        w.close()
    (ws / "e2" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map":
                                                                         weight_map_edit(wm)}))


def _move_into(ws: Path, folder: str, *names: str) -> None:
    (ws / folder).mkdir()
    for n in names:
        shutil.move(ws / n, ws / folder / n)


def _set(d: dict, key, value) -> dict:
    d[key] = value
    return d


def _auto_map(ws: Path, file: str = "config.json") -> None:
    """e2 asks for its own code, which would leave a marker if it ever ran."""
    (ws / "e2" / "modeling_evil.py").write_text(f"open({str(ws / 'PWNED')!r}, 'w').write('ran')\n")
    cfg = json.loads((ws / "e2" / file).read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                       "AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
    (ws / "e2" / file).write_text(json.dumps(cfg))


def _fp16_overflow(ws: Path) -> None:
    """fp16 base and experts whose norm weights are 40000: base + (e1 - base) + (e2 - base) ~ 80000 > 65504."""
    for d in ("b16", "f1", "f2"):
        shutil.rmtree(ws / d, ignore_errors=True)
    make_tiny_checkpoint(ws / "b16", seed=0, dtype=torch.float16)
    for i, d in enumerate(("f1", "f2")):
        make_tiny_checkpoint(ws / d, seed=i + 1, perturb_from=ws / "b16", dtype=torch.float16)
        sd = LazyCheckpoint(ws / d).load_all()
        sd[NORM] = torch.full_like(sd[NORM], 40000.0)
        (ws / d / "model.safetensors").unlink()
        w = ShardWriter(ws / d / "model.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in sd.items()])
        for n, t in sd.items():
            w.write(n, t)
        w.close()


def _read_only(ws: Path, monkeypatch) -> None:
    (ws / "ro").mkdir()
    os.chmod(ws / "ro", 0o555)
    if os.geteuid() == 0:  # root writes anyway: the write fails as it would for anyone else
        import recall.fsutil

        def refuse(*a, dir=None, **k):
            raise PermissionError(13, "Permission denied", str(dir))
        monkeypatch.setattr(recall.fsutil.tempfile, "mkdtemp", refuse)


def _no_representation_pass(ws: Path, monkeypatch) -> None:
    import recall.assets

    def boom(*a, **k):
        raise AssertionError("the representation pass started")
    monkeypatch.setattr(recall.assets, "load_model", boom)


def _merge_output(ws: Path, name: str = "prev") -> None:
    assert main(["merge", "--method", "average", "--models", "e1", "e2", "--out", name, "--quiet"]) == 0


def merge(*extra: str, method: str = "average", models=("e1", "e2"), out: str = "out", base: str | None = None):
    argv = ["merge", "--method", method, "--models", *models, "--out", out, "--quiet", *extra]
    return argv + (["--base", base] if base else [])


def recall_merge(*extra: str, models=("e1", "e2"), out: str = "out"):
    return merge("--samples", "samples.jsonl", "--k", "2", *extra, method="recall", models=models, out=out,
                 base="base")


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    match: str  # a regex the one line of stderr must match
    setup: Callable | None = None  # (ws) or (ws, monkeypatch)


CASES = [
    # 1. the output folder: never an input, never a folder that is not a previous merge
    Case("out-is-an-input-force", lambda ws: merge("--force", out="e2"), r"--out e2 is the input e2"),
    Case("out-contains-the-inputs-force", lambda ws: merge("--force", models=("w/e1", "w/e2"), out="w"),
         r"--out w contains the input w/e1", lambda ws: _move_into(ws, "w", "e1", "e2")),
    Case("out-is-the-base-force", lambda ws: merge("--force", method="task_arithmetic", out="base", base="base"),
         r"--out base is the input base"),
    Case("out-contains-the-samples-file", lambda ws: merge("--samples", "d/s.jsonl", "--k", "2", "--force",
                                                           method="recall", out="d", base="base"),
         r"--out d contains the input d/s\.jsonl",
         lambda ws: _merge_output(ws, "d") or shutil.copy(ws / "samples.jsonl", ws / "d" / "s.jsonl")),
    Case("out-contains-the-weights-table", lambda ws: merge("-o", "weights=prev/recall_weights.csv", "--force",
                                                            method="layer_linear", out="prev"),
         r"--out prev contains the input prev/recall_weights\.csv",
         lambda ws: _merge_output(ws) or shutil.copy(ws / "w.csv", ws / "prev" / "recall_weights.csv")),
    Case("out-dot-force", lambda ws: merge("--force", out="."), r"--out \. is the current folder"),
    Case("out-dotdot-force", lambda ws: merge("--force", out=".."), r"--out \.\. is a folder above the current one"),
    Case("out-root-force", lambda ws: merge("--force", out="/"), r"--out / is the filesystem root"),
    Case("out-home-force", lambda ws: merge("--force", out=str(ws / "home")), r"is your home folder"),
    Case("out-tilde-force", lambda ws: merge("--force", out="~"), r"'~' is not expanded"),
    Case("out-symlink-to-input-force", lambda ws: merge("--force", out="link"), r"--out link is a symbolic link",
         lambda ws: os.symlink(ws / "e1", ws / "link")),
    Case("out-is-a-file-force", lambda ws: merge("--force", out="afile"),
         r"--force replaces only a folder that recall merge wrote .*afile is not one",
         lambda ws: (ws / "afile").write_text("mine\n")),
    Case("out-foreign-folder-force", lambda ws: merge("--force", out="mine"),
         r"--force replaces only a folder that recall merge wrote",
         lambda ws: (ws / "mine").mkdir() or (ws / "mine" / "notes.txt").write_text("keep\n")),
    Case("out-exists-no-force", lambda ws: merge(out="prev"), r"output folder prev already exists", _merge_output),
    # 2. remote code: never run, never a prompt
    Case("auto-map-config-average", lambda ws: merge(), r"e2/config\.json has an auto_map", _auto_map),
    Case("auto-map-config-recall", lambda ws: recall_merge(), r"e2/config\.json has an auto_map", _auto_map),
    Case("auto-map-tokenizer", lambda ws: merge(), r"e2/tokenizer_config\.json has an auto_map",
         lambda ws: _auto_map(ws, "tokenizer_config.json")),
    Case("auto-map-eval", lambda ws: ["eval", "--model", "e2", "--tasks", "trec", "--n-test", "1"],
         r"e2/config\.json has an auto_map", _auto_map),
    # 3. overflow of the output dtype
    Case("fp16-overflow", lambda ws: merge("-o", "lam=1", method="task_arithmetic", models=("f1", "f2"),
                                           base="b16"),
         rf"merged tensor {re.escape(NORM)} overflows float16 .*pass --dtype float32", _fp16_overflow),
    Case("fp16-overflow-into-new-parents", lambda ws: merge("-o", "lam=1", method="task_arithmetic",
                                                            models=("f1", "f2"), base="b16", out="new/deeper/out"),
         r"overflows float16", _fp16_overflow),  # the parent folders the merge made go too
    # 4. crafted safetensors headers (e2's file)
    Case("st-overlapping-offsets", lambda ws: merge(), rf"e2/model\.safetensors .*tensor {re.escape(LN1)} starts "
         rf"at data byte .*without gaps or overlaps|tensor {re.escape(LN0)} starts",
         _crafted(lambda h, d: (_with(h, LN1, data_offsets=h[LN0]["data_offsets"]), d))),
    Case("st-reversed-offsets", lambda ws: merge(), rf"tensor {re.escape(NORM)}: data_offsets .* is not \[begin, end\]",
         _crafted(lambda h, d: (_with(h, NORM, data_offsets=h[NORM]["data_offsets"][::-1]), d))),
    Case("st-short-offsets", lambda ws: merge(), rf"tensor {re.escape(NORM)}: shape \[32\] of F32 needs 128 bytes",
         _crafted(lambda h, d: (_with(h, NORM, data_offsets=[h[NORM]["data_offsets"][0],
                                                             h[NORM]["data_offsets"][1] - 4]), d))),
    Case("st-no-shape", lambda ws: merge(), rf"tensor {re.escape(NORM)}: shape None is not a list",
         _crafted(lambda h, d: (_without(h, NORM, "shape"), d))),
    Case("st-negative-shape", lambda ws: merge(), rf"tensor {re.escape(NORM)}: shape \[-32\] is not a list of non-neg",
         _crafted(lambda h, d: (_with(h, NORM, shape=[-32]), d))),
    Case("st-float-shape", lambda ws: merge(), rf"tensor {re.escape(NORM)}: shape \[32\.0\] is not a list",
         _crafted(lambda h, d: (_with(h, NORM, shape=[32.0]), d))),
    Case("st-huge-shape", lambda ws: merge(), rf"tensor {re.escape(NORM)}: shape .* needs \d+ bytes",
         _crafted(lambda h, d: (_with(h, NORM, shape=[2**40, 2**40]), d))),
    Case("st-header-is-a-list", lambda ws: merge(), r"e2/model\.safetensors .*header is a JSON list, not an object",
         _crafted(lambda h, d: (b"[1, 2]", b""))),
    Case("st-header-size-bound", lambda ws: merge(), r"e2/model\.safetensors .*header size \d+ out of range",
         _crafted(lambda h, d: (h, d, 2**40))),
    Case("st-trailing-bytes", lambda ws: merge(), r"the tensors cover \d+ bytes of data but the file holds \d+",
         _crafted(lambda h, d: (h, d + b"\0" * 16))),
    Case("st-truncated", lambda ws: merge(), r"e2/model\.safetensors is truncated: tensor .* ends at data byte",
         _crafted(lambda h, d: (h, d[:-64]))),
    Case("st-unknown-dtype", lambda ws: merge(), rf"tensor {re.escape(NORM)}: dtype 'F8_E4M3' is missing or not",
         _crafted(lambda h, d: (_with(h, NORM, dtype="F8_E4M3"), d))),
    Case("st-duplicate-name", lambda ws: merge(), rf"key '{re.escape(NORM)}' appears twice", _crafted(_dup_key)),
    Case("st-not-utf8", lambda ws: merge(), r"e2/model\.safetensors .*header is not valid JSON",
         _crafted(lambda h, d: (json.dumps(h).encode().replace(b"model.norm", b"model.n\xffrm"), d))),
    Case("st-entry-not-an-object", lambda ws: merge(), rf"tensor {re.escape(NORM)}: entry is not an object",
         _crafted(lambda h, d: (_set(h, NORM, [1, 2]), d))),
    # 5. index entries stay inside the model folder and agree with the shards
    Case("index-parent-path", lambda ws: merge(), r"weight_map entry .* -> '\.\./e1/model\.safetensors' is not a "
         r"file name inside", lambda ws: _index(ws, lambda wm: _set(wm, NORM, "../e1/model.safetensors"))),
    Case("index-absolute-path", lambda ws: merge(), r"weight_map entry .* -> '/etc/passwd' is not a file name",
         lambda ws: _index(ws, lambda wm: _set(wm, NORM, "/etc/passwd"))),
    Case("index-not-a-map", lambda ws: merge(), r"weight_map is not an object",
         lambda ws: _index(ws, lambda wm: list(wm))),
    Case("index-wrong-shard", lambda ws: merge(), rf"tensor {re.escape(NORM)} is mapped to shard extra\.safetensors, "
         rf"which does not hold it", lambda ws: _index(ws, lambda wm: _set(wm, NORM, "extra.safetensors"), True)),
    # 7. options: typed, ranged, checked before any work (so --dry-run too)
    Case("opt-include-base-maybe", lambda ws: merge("-o", "include_base=maybe"),
         r"method average: include_base must be true or false, got 'maybe'"),
    Case("opt-recall-include-base-maybe", lambda ws: recall_merge("-o", "include_base=maybe"),
         r"method recall: include_base must be true or false, got 'maybe'", _no_representation_pass),
    Case("opt-cluster-layer-99", lambda ws: recall_merge("-o", "cluster_layer=99"),
         r"method recall: cluster_layer must be a hidden-state index in -5\.\.4 .* got 99", _no_representation_pass),
    Case("opt-k-abc", lambda ws: [a for a in recall_merge("-o", "k=abc") if a not in ("--k", "2")],
         r"method recall: k must be an integer >= 1, got 'abc'"),
    Case("opt-k-1e400", lambda ws: [a for a in recall_merge("-o", "k=1e400") if a not in ("--k", "2")],
         r"method recall: k must be an integer >= 1, got '1e400'"),
    Case("opt-ties-density-0", lambda ws: merge("-o", "density=0", method="ties", base="base"),
         r"method ties: density must be a number in \(0, 1\], got '0'"),
    Case("opt-lam-inf", lambda ws: merge("-o", "lam=inf", method="task_arithmetic", base="base"),
         r"method task_arithmetic: lam must be a number > 0, got 'inf'"),
    Case("opt-unknown", lambda ws: merge("-o", "topk=3", method="ties", base="base"), r"has no option\(s\) topk"),
    Case("opt-twice", lambda ws: merge("-o", "lam=1", "-o", "lam=2", method="ties", base="base"),
         r"option lam given twice"),
    Case("opt-k-zero-flag", lambda ws: [a if a != "2" else "0" for a in recall_merge()],
         r"method recall: k must be an integer >= 1, got 0"),
    Case("max-shard-gb-0", lambda ws: merge("--max-shard-gb", "0"), r"--max-shard-gb must be a finite number > 0"),
    Case("max-shard-gb-nan", lambda ws: merge("--max-shard-gb", "nan"), r"--max-shard-gb must be a finite number"),
    Case("batch-size-0", lambda ws: merge("--batch-size", "0"), r"--batch-size must be an integer >= 1, got 0"),
    Case("max-text-tokens-0", lambda ws: merge("--max-text-tokens", "0"),
         r"--max-text-tokens must be an integer >= 1, got 0"),
    Case("bad-dtype", lambda ws: merge("--dtype", "int8"), r"recall merge: error: argument --dtype: invalid choice"),
    Case("dry-run-k-too-large", lambda ws: [a if a != "2" else "50" for a in recall_merge("--dry-run")],
         r"k=50 typical samples requested but only 8 samples of the new task given"),
    Case("dry-run-out-exists", lambda ws: merge("--dry-run", out="prev"), r"output folder prev already exists",
         _merge_output),
    Case("dry-run-bad-option", lambda ws: merge("--dry-run", "-o", "include_base=2"),
         r"include_base must be true or false, got '2'"),
    # 9. one line, not a traceback
    Case("device-cuda-on-cpu", lambda ws: merge("--device", "cuda"), r"--device cuda: this torch build .* sees 0 "
         r"CUDA device\(s\); use --device cpu"),
    Case("device-unknown", lambda ws: merge("--device", "banana"), r"--device 'banana' is not a device name"),
    Case("samples-not-utf8", lambda ws: recall_merge(), r"samples\.jsonl:2: not UTF-8 text",
         lambda ws: (ws / "samples.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')),
    Case("config-malformed", lambda ws: merge(), r"e2/config\.json is not a readable JSON file",
         lambda ws: (ws / "e2" / "config.json").write_text("{not json")),
    Case("config-a-list", lambda ws: merge(), r"e2/config\.json holds a JSON list, not an object",
         lambda ws: (ws / "e2" / "config.json").write_text("[]")),
    Case("out-read-only-folder", lambda ws: merge(out="ro/merged"), r"cannot write ro/merged: Permission denied",
         _read_only),
]


@pytest.fixture
def ws(tmp_path, tiny_pool, monkeypatch):
    base, (e1, e2) = tiny_pool
    root = tmp_path / "ws"
    root.mkdir()
    for src, name in ((base, "base"), (e1, "e1"), (e2, "e2")):
        shutil.copytree(src, root / name)
    (root / "samples.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (root / "w.csv").write_text("layer,base,m1,m2\n" + "".join(f"{i},0.2,0.4,0.4\n" for i in range(5)))
    (root / "home").mkdir()
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.chdir(root)
    yield root
    for d in root.rglob("*"):  # let pytest remove what a row made read-only
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(case, ws, monkeypatch, capsys):
    if case.id == "device-cuda-on-cpu" and torch.cuda.is_available():
        pytest.skip("this torch build has CUDA")
    if case.setup is not None:
        if "monkeypatch" in inspect.signature(case.setup).parameters:
            case.setup(ws, monkeypatch)
        else:
            case.setup(ws)
    argv = case.argv(ws)
    capsys.readouterr()
    before = _snapshot(ws)
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(case.match, lines[0]), lines[0]
    assert _snapshot(ws) == before, "an input changed or something was left on disk"
    assert not (ws / "PWNED").exists()


# ----------------------------------------------------------------------------- what still works

def test_dtype_float32_writes_the_overflowing_merge(ws, capsys):
    _fp16_overflow(ws)
    assert main(merge("-o", "lam=1", "--dtype", "float32", method="task_arithmetic", models=("f1", "f2"),
                      base="b16")) == 0
    sd = LazyCheckpoint(ws / "out").load_all()
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert torch.isfinite(sd[NORM]).all() and float(sd[NORM].max()) > 65504
    assert json.loads((ws / "out" / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((ws / "out" / "merge_config.json").read_text())["dtype"] == "float32"


def test_force_replaces_a_previous_merge_and_leaves_nothing(ws):
    _merge_output(ws, "prev")
    assert main(merge("--force", "-o", "include_base=true", out="prev", base="base")) == 0
    assert json.loads((ws / "prev" / "merge_config.json").read_text())["options"]["include_base"] is True
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".")) == []


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_leftovers_of_dead_writers_are_cleaned_on_the_next_run(ws):
    dead = _dead_pid()
    stale = [ws / f".out.{dead}-abcd1234.partial", ws / f".out.old-{dead}", ws / ".out.abcd_123.partial"]
    live = [ws / f".out.{os.getpid()}-zzzz9999.partial", ws / ".out.efgh5678.partial", ws / ".other.1-x.partial"]
    for p in stale + live:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    shutil.rmtree(ws / f".out.old-{dead}")
    (ws / f".out.old-{dead}").write_text("a replaced file\n")  # an old --out that was a file
    day_old = time.time() - 2 * 24 * 3600
    os.utime(ws / ".out.abcd_123.partial", (day_old, day_old))  # older naming, no PID: by age
    assert main(merge()) == 0
    assert [p for p in stale if p.exists() or p.is_symlink()] == []
    assert all(p.exists() for p in live)


_SLOW_MERGE = """
import sys, time
import recall.merge.engine as engine
one = engine._merge_one
def slow(*a, **k):
    time.sleep(0.3)
    return one(*a, **k)
engine._merge_one = slow
from recall.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_slow_merge(ws: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MERGE, *merge()], cwd=ws, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 120
    while not list(ws.glob(".out.*.partial")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the merge never started"
        time.sleep(0.1)
    time.sleep(0.5)  # inside the tensor loop
    return proc


def test_sigterm_during_a_merge_leaves_nothing(ws):
    before = _snapshot(ws)
    proc = _start_slow_merge(ws)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert _snapshot(ws) == before


def test_sigkill_leftover_is_cleaned_by_the_next_run(ws):
    proc = _start_slow_merge(ws)
    proc.kill()
    proc.communicate(timeout=60)
    left = list(ws.glob(".out.*.partial"))
    assert len(left) == 1 and not (ws / "out").exists()
    assert main(merge()) == 0
    assert not left[0].exists() and (ws / "out" / "merge_config.json").exists()


# ----------------------------------------------------------------------------- no remote code, and the schema

def test_loaders_never_trust_remote_code(tiny_pool, monkeypatch):
    import transformers

    from recall.assets import load_model

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(c, *a, _original=original, **k):
            seen.append(k.get("trust_remote_code", "missing"))
            return _original(c, *a, **k)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(tiny_pool[0])
    assert seen == [False, False]


def test_recall_methods_prints_every_option_with_its_range(capsys):
    from recall.merge import METHODS, method_options

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "-o density=0.2: a number in (0, 1]" in out
    assert "-o include_base=false: true or false" in out
    assert "-o k=32: an integer >= 1" in out
    assert "-o lam=none: a number > 0, or none" in out
    assert "-o combine=task_arithmetic: one of task_arithmetic, ties" in out
    for name in METHODS:
        for k in method_options(name):
            assert f"-o {k}=" in out
