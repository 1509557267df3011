"""The repository as a Hugging Face Space builds and starts it: the front matter, the torch build, the rehearsal.

The front matter is checked against what is true, not against a copy of itself: the
`Requires-Python` of every installed requirement, the gradio pin, `huggingface_hub`'s own
repo-id validation, the files in the repository and what pushing actually calls. Two facts
exist only in Hugging Face's documentation (there is no package to ask); they are kept here
with their source: the keys the Spaces configuration reference documents, and the Python
versions ZeroGPU offers.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
# huggingface/hub-docs docs/hub/spaces-config-reference.md (2026-03), every key it documents
DOCUMENTED_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_build_command", "app_port", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub",
} | {"license"}  # every repository's card takes a license (docs/hub/repositories-licenses.md)
ZERO_GPU_PYTHONS = {"3.10.13", "3.12.12"}  # hub-docs docs/hub/spaces-zerogpu.md (2026-07)
# what each Hub call of a push needs (docs/hub/spaces-oauth.md): creating the repo, then uploading to it
SCOPE_OF_CALL = {"create_repo": "manage-repos", "upload_folder": "write-repos", "upload_file": "write-repos"}


def front_matter(text: str) -> tuple[str, dict]:
    """(the raw YAML, parsed) between the first two '---' lines of a README."""
    match = re.match(r"---\n(.*?\n)---\n", text, re.S)
    assert match, "the README starts with a --- front matter block"
    return match.group(1), yaml.safe_load(match.group(1))


def pins(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {(r := Requirement(line)).name.lower(): r for line in lines if line and not line.startswith("-")}


def problems(raw: str, zero_gpu: bool = False) -> list[str]:
    """Everything in a Space's front matter that would make the build fail or the Space differ from what we test."""
    config, found = yaml.safe_load(raw), []
    unknown = set(config) - DOCUMENTED_KEYS
    if unknown:
        found.append(f"keys the Spaces reference does not document: {sorted(unknown)}")
    version = config.get("python_version")
    if not isinstance(version, str) or not re.search(r'^python_version: "[\d.]+"$', raw, re.M):
        found.append(f"python_version must be a quoted version (a Space defaults to 3.10), got {version!r}")
    else:
        for name in pins(ROOT / "requirements.txt"):
            needs = importlib.metadata.metadata(name).get("Requires-Python")
            if needs and Version(version) not in SpecifierSet(needs):
                found.append(f"{name} needs Python {needs}, python_version is {version}")
        if zero_gpu and version not in ZERO_GPU_PYTHONS:
            found.append(f"ZeroGPU offers Python {sorted(ZERO_GPU_PYTHONS)}, not {version}")
    gradio = pins(ROOT / "requirements.txt")["gradio"]
    if config.get("sdk") != "gradio" or str(config.get("sdk_version")) not in [s.version for s in gradio.specifier]:
        found.append(f"sdk_version {config.get('sdk_version')} is not the gradio pin {gradio.specifier}")
    for entry in config.get("preload_from_hub") or []:
        repo = entry.split()[0]
        try:
            validate_repo_id(repo)
        except HFValidationError as e:
            found.append(f"preload_from_hub {repo!r}: {e}")
        if repo.startswith(("datasets/", "spaces/")):
            found.append(f"preload_from_hub downloads model repos only, not {repo!r}")
    if not (ROOT / str(config.get("app_file"))).is_file():
        found.append(f"app_file {config.get('app_file')!r} is not in the repository")
    from tuning import hub

    source = inspect.getsource(hub.push)
    needed = {scope for call, scope in SCOPE_OF_CALL.items() if f".{call}(" in source}
    if config.get("hf_oauth") and set(config.get("hf_oauth_scopes") or []) != needed:
        found.append(f"hf_oauth_scopes should be exactly what pushing needs, {sorted(needed)}")
    return found


def zero_gpu_front_matter() -> str:
    """The ZeroGPU Space's front matter, as README "A ZeroGPU Space" gives it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### A ZeroGPU Space"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    lines = [line[3:] if line.startswith("   ") else line for line in block.splitlines()]
    return "\n".join(lines).strip().removeprefix("---").removesuffix("---").lstrip("\n")


def test_the_readme_front_matter_is_a_space_configuration_that_builds():
    raw, config = front_matter((ROOT / "README.md").read_text(encoding="utf-8"))
    assert problems(raw) == []
    assert config["python_version"] in ZERO_GPU_PYTHONS  # the same repository can move to ZeroGPU


def test_the_zero_gpu_front_matter_in_the_readme_builds_there_too():
    raw = zero_gpu_front_matter()
    assert problems(raw, zero_gpu=True) == []
    assert "suggested_hardware" not in yaml.safe_load(raw)


@pytest.mark.parametrize("change, complaint", [
    (lambda raw: re.sub(r'^python_version:.*\n', "", raw, flags=re.M), "python_version must be a quoted version"),
    (lambda raw: raw.replace('python_version: "3.12.12"', "python_version: 3.10"), "python_version must be a quoted"),
    (lambda raw: raw.replace('python_version: "3.12.12"', 'python_version: "3.10"'), "needs Python >=3.11"),
    (lambda raw: raw.replace("preload_from_hub:\n", "preload_from_hub:\n  - datasets/fka/awesome-chatgpt-prompts\n"),
     "Repo id must be in the form"),
    (lambda raw: raw.replace("sdk_version: 6.31.0", "sdk_version: 5.0.0"), "is not the gradio pin"),
    (lambda raw: raw.replace("app_file: app.py", "app_file: main.py"), "is not in the repository"),
    (lambda raw: raw.replace("  - manage-repos", "  - manage-repos\n  - read-billing"), "exactly what pushing needs"),
    (lambda raw: raw + "persistent_storage: small\n", "keys the Spaces reference does not document"),
])
def test_the_check_catches_a_front_matter_that_would_not_build(change, complaint):
    raw, _ = front_matter((ROOT / "README.md").read_text(encoding="utf-8"))
    changed = change(raw)
    assert changed != raw
    assert any(complaint in problem for problem in problems(changed)), problems(changed)


def test_a_cpu_space_installs_the_cpu_build_of_the_pinned_torch_first():
    """pre-requirements.txt (a Space installs it before requirements.txt) takes torch from PyTorch's CPU index."""
    lines = [line.strip() for line in (ROOT / "pre-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines
    assert pins(ROOT / "pre-requirements.txt")["torch"].specifier == pins(ROOT / "requirements.txt")["torch"].specifier


def test_the_reference_adapters_can_be_committed_and_visitors_adapters_cannot():
    need(subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode == 0, "needs a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert not ignored("adapters/reference-5x5-x/adapter_model.safetensors")
    assert not ignored("adapters/reference-20x10-gpt2-876eb6/tuning_meta.json")
    assert ignored("adapters/poet-5x5/adapter_model.safetensors")
    assert ignored("adapters/.tmp-0123/adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_space_rehearsal_starts_the_app_as_a_space_does(tmp_path):
    """`python app.py` with no flags, a Space's environment, committed references: every check passes."""
    import shutil

    need(shutil.which("chromium") is not None, "needs Debian's chromium")
    need(subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode == 0, "needs a git checkout")
    out = tmp_path / "rehearsal.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "space_rehearsal.py"), "--references",
                           "--json", str(out), "--timeout", "240"], capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import json

    results = json.loads(out.read_text())
    assert results["ok"] and all(results["checks"].values())
    assert len(results["checks"]) == 6  # the references were committed, so "nothing trained at start" ran
    assert results["seconds_to_page"] > 0 and results["seconds_to_first_answer"] > results["seconds_to_page"]
