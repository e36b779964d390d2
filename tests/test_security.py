"""Nothing is ever unpickled or evaluated: a scan of the package's own source (and its scripts
and benchmarks) for the calls that would run code hidden in a file or a string."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [p for folder in ("omniformer", "benchmarks", "scripts") for p in sorted((ROOT / folder).rglob("*.py"))]

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}


def _name(node: ast.AST) -> str:
    """'torch.load' for torch.load, 'eval' for eval; '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value) or '?'}.{node.attr}"  # ?.eval: a method of some object (model.eval())
    return ""


def _keyword(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return None


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for every call in ``source`` that could execute code from data."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in UNPICKLING_MODULES:
                    found.append((node.lineno, f"import {name}"))
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        last = name.rsplit(".", 1)[-1]
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            found.append((node.lineno, name))
        elif name in ("__import__", "importlib.import_module") and not all(
                isinstance(a, ast.Constant) for a in node.args):
            found.append((node.lineno, f"{name} of a computed name"))
        elif name.endswith("torch.load") or name == "load" and "torch" in source and "weights_only" in str(
                [k.arg for k in node.keywords]):
            if _keyword(node, "weights_only") is not True:
                found.append((node.lineno, f"{name} without weights_only=True"))
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
            found.append((node.lineno, f"{name}(allow_pickle=...)"))
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            if name != "yaml.load" or "SafeLoader" not in ast.unparse(node):
                found.append((node.lineno, name))
        elif last in ("loads", "load", "Unpickler") and name.split(".")[0] in UNPICKLING_MODULES:
            found.append((node.lineno, name))
        elif name.startswith("subprocess.") and _keyword(node, "shell") not in (None, False):
            found.append((node.lineno, f"{name}(shell=True)"))
        elif name in ("os.system", "os.popen"):
            found.append((node.lineno, name))
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = """
import pickle
from dill import loads
x = pickle.loads(b"")
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
np.load("a.npy", allow_pickle=True)
yaml.load(open("c.yaml"))
eval("1 + 1")
exec("x = 1")
subprocess.run("ls", shell=True)
os.system("ls")
__import__(name)
"""
    found = [what for _, what in unsafe_calls(bad)]
    assert len(found) == 12, found
    good = """
torch.load("m.bin", map_location="cpu", weights_only=True)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
np.load("a.npy")
model.eval()
subprocess.run(["ls"])
json.loads(s)
__import__("os")
"""
    assert unsafe_calls(good) == []


# Allowed, with the reason: the registry imports the modules its own tables name, after checking
# that the requested name is a key of the table (never a module named by a user or a request).
ALLOWED = {("omniformer/registry.py", "importlib.import_module of a computed name")}


def test_nothing_in_the_package_unpickles_or_evaluates():
    assert len(SCANNED) > 50  # the scan sees the package
    problems = [f"{path.relative_to(ROOT)}:{line}: {what}"
                for path in SCANNED for line, what in unsafe_calls(path.read_text(encoding="utf-8"))
                if (str(path.relative_to(ROOT)), what) not in ALLOWED]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_checkpoints_are_written_as_safetensors_only(tmp_path, name):
    """What a checkpoint holds is safetensors and JSON: no file that a loader would unpickle."""
    import torch
    from torch import nn

    from omniformer.train import checkpoint as ckpt
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    out = ckpt.save_checkpoint(tmp_path / "c", model, {"task": "toy"}, None, optimizer, {"step": 1})
    files = {p.name for p in out.iterdir()}
    assert name in files
    assert all(f.endswith((".safetensors", ".json", ".txt")) for f in files), files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files)
