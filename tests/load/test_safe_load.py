"""safe_load and convert: real checkpoints load, hostile ones are refused and never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.factories import checkpoints
from trainguard import safe_load
from trainguard.cli import main
from trainguard.core.errors import InputError, UnsafeFileError, UsageError
from trainguard.load import convert_to_safetensors
from trainguard.load.geometry import view_extent


def test_loads_real_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(checkpoints.training_checkpoint())
    loaded = safe_load(path)
    assert isinstance(loaded, dict)
    assert any(isinstance(v, dict) for v in loaded.values())


def test_loads_legacy_and_safetensors_and_npz(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(checkpoints.legacy_checkpoint())
    assert safe_load(legacy)
    st = tmp_path / "w.safetensors"
    st.write_bytes(checkpoints.safetensors_bytes())
    assert all(isinstance(t, torch.Tensor) for t in safe_load(st).values())
    npz = tmp_path / "a.npz"
    npz.write_bytes(checkpoints.npz_bytes())
    assert safe_load(npz)


def test_refuses_backdoor_and_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(checkpoints.malicious_torch_zip(str(marker)))
    with pytest.raises(UnsafeFileError, match="malicious"):
        safe_load(path)
    assert not marker.exists()


def test_whole_module_is_unknown_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    path.write_bytes(checkpoints.whole_module())
    with pytest.raises(UnsafeFileError, match="unknown"):
        safe_load(path)


def test_dangerous_global_cannot_be_allowed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(checkpoints.malicious_torch_zip(str(tmp_path / "m")))
    with pytest.raises(UsageError):
        safe_load(path, allow=["os.system"])
    assert not (tmp_path / "m").exists()


def test_refuses_monkeypatched_torch_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, path)

    def fake_load(*args: object, **kwargs: object) -> object:
        return {}

    monkeypatch.setattr(torch, "load", fake_load)
    with pytest.raises(UnsafeFileError, match="replaced at run time"):
        safe_load(path)


def test_view_extent() -> None:
    assert view_extent(0, (2, 3), (3, 1)) == 6
    assert view_extent(4, (2, 3), (1, 2)) == 4 + 1 + 4 + 1
    assert view_extent(0, (0, 3), (3, 1)) == 0
    with pytest.raises(ValueError, match="negative"):
        view_extent(0, (2,), (-1,))


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        safe_load(tmp_path / "nope.pt")


def test_convert_round_trip_with_tied_weights(tmp_path: Path) -> None:
    linear = torch.nn.Linear(4, 3)
    source = tmp_path / "tied.pt"
    torch.save({"model": linear.state_dict(), "head": linear.weight, "step": 5}, source)
    result = convert_to_safetensors(source, tmp_path / "out.safetensors")
    assert result.aliases == {"head": "model.weight"}
    from safetensors import safe_open

    with safe_open(str(result.output), "pt") as handle:
        meta = handle.metadata()
        assert json.loads(meta["trainguard.aliases"]) == {"head": "model.weight"}
        assert json.loads(meta["trainguard.value.step"]) == 5
        assert torch.equal(handle.get_tensor("model.weight"), linear.weight.detach())


def test_convert_cli_refuses_backdoor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "evil.pt"
    source.write_bytes(checkpoints.malicious_torch_zip(str(tmp_path / "marker")))
    assert main(["convert", str(source), str(tmp_path / "o.safetensors")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    assert not (tmp_path / "marker").exists()
