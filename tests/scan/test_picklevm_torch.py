"""Real torch/numpy pickles: state dicts and full training checkpoints must be safe.

torch is used here only to *produce* data.pkl bytes (torch.save to BytesIO, then the
member is read with zipfile in the test); the scanner never sees torch.
"""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from trainguard.core.findings import Verdict
from trainguard.scan.picklevm import analyze_pickle, analyze_pickle_stream, storage_refs
from trainguard.scan.picklevm.torchrefs import torch_tensor_refs

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return zf.read(name)


class TinyNet(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.out = torch.nn.Linear(3, 2)

    def forward(self, x: object) -> object:
        return self.out(self.bn(self.fc(x)))


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.complex128,
    torch.float8_e4m3fn,
    torch.uint16,
]


def test_state_dict_of_every_dtype_is_safe() -> None:
    sd = {f"t_{str(dt).split('.')[1]}": torch.zeros(2, 3).to(dt) for dt in DTYPES}
    sd["view"] = sd["t_float32"][1]  # shares the storage with an offset
    result = analyze_pickle(data_pkl(sd))
    assert result.verdict is Verdict.SAFE, result.findings
    refs = torch_tensor_refs(result.root)
    assert refs["t_bfloat16"].dtype == "bfloat16"
    assert refs["t_float8_e4m3fn"].dtype == "float8_e4m3fn"
    assert refs["t_bool"].shape == (2, 3)
    assert refs["view"].storage_offset == 3
    assert refs["view"].storage_key == refs["t_float32"].storage_key
    assert len(storage_refs(result)) == len(DTYPES)


def test_module_state_dict_names_and_geometry() -> None:
    net = TinyNet()
    result = analyze_pickle(data_pkl(net.state_dict()))
    assert result.verdict is Verdict.SAFE, result.findings
    refs = torch_tensor_refs(result.root)
    assert set(refs) == set(net.state_dict())
    weight = refs["fc.weight"]
    assert (weight.shape, weight.stride, weight.dtype) == ((3, 4), (4, 1), "float32")
    assert weight.storage_numel == 12
    assert weight.location == "cpu"


@pytest.mark.parametrize("opt_name", ["SGD", "Adam", "AdamW"])
def test_full_training_checkpoint_is_safe(opt_name: str) -> None:
    net = TinyNet()
    opt_cls = getattr(torch.optim, opt_name)
    kwargs = {"momentum": 0.9} if opt_name == "SGD" else {}
    opt = opt_cls(net.parameters(), lr=0.1, **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(2):
        loss = net(torch.randn(5, 4)).sum()
        loss.backward()
        opt.step()
        sched.step()
    checkpoint = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": 2,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "meta": {"lr": 0.1, "betas": (0.9, 0.999), "tags": {"a", "b"}, "name": "run-1"},
    }
    result = analyze_pickle(data_pkl(checkpoint))
    assert result.verdict is Verdict.SAFE, result.findings
    refs = torch_tensor_refs(result.root)
    assert "model.fc.weight" in refs
    assert "rng.torch" in refs
    if opt_name != "SGD":
        assert "optimizer.state.0.exp_avg" in refs


def test_numpy_generator_state_is_safe() -> None:
    result = analyze_pickle(data_pkl({"gen": np.random.default_rng(3)}))
    assert result.verdict is Verdict.SAFE, result.findings


def test_parameter_and_requires_grad() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    result = analyze_pickle(data_pkl({"p": param}))
    assert result.verdict is Verdict.SAFE, result.findings
    assert torch_tensor_refs(result.root)["p"].requires_grad


def test_whole_module_pickle_is_unknown_not_malicious() -> None:
    result = analyze_pickle(data_pkl(TinyNet()))
    assert result.verdict is Verdict.UNKNOWN, result.findings
    assert {f.rule for f in result.findings} <= {"pickle.unknown_global"}
    refs = torch_tensor_refs(result.root)
    assert "fc.weight" in refs and "bn.running_mean" in refs


def test_legacy_stacked_format() -> None:
    buf = io.BytesIO()
    torch.save(TinyNet().state_dict(), buf, _use_new_zipfile_serialization=False)
    stream = analyze_pickle_stream(buf.getvalue(), max_pickles=5, allow_trailing=True)
    assert len(stream.pickles) == 5
    assert stream.verdict is Verdict.SAFE, stream.findings
    refs = torch_tensor_refs(stream.pickles[3].root)
    assert refs["fc.weight"].shape == (3, 4)


def test_plain_pickle_of_a_tensor_is_pickle_in_pickle() -> None:
    import pickle

    # pickle.dumps(tensor) embeds torch.load(weights_only=False) of bytes.
    result = analyze_pickle(pickle.dumps(torch.ones(2)))
    assert result.verdict is Verdict.MALICIOUS
