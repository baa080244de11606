"""python -m fused_resnet: exit codes and output."""
import subprocess
import sys

import pytest

import fused_resnet
from fused_resnet.__main__ import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "fused_resnet", *args], capture_output=True, text=True, timeout=600)


def test_info():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert "backends:" in r.stdout and "eager" in r.stdout and "triton" in r.stdout


def test_help_for_each_command():
    for cmd in ("info", "verify", "bench", "demo", "tune"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout


def test_verify_pass_exit_0():
    r = run("verify", "--model", "resnet18", "--batch", "1", "--image-size", "32", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("PASS")


def test_verify_fail_exit_1(monkeypatch, capsys):
    # Break BN folding (bias off by 0.5): verify must notice and fail.
    from fused_resnet import folding

    real = folding.fold_bn
    monkeypatch.setattr(folding, "fold_bn", lambda w, b, bn: (real(w, b, bn)[0], real(w, b, bn)[1] + 0.5))
    rc = main(["verify", "--model", "resnet18", "--batch", "1", "--image-size", "32", "--device", "cpu"])
    assert rc == 1
    assert capsys.readouterr().out.strip().endswith("FAIL")


def test_bad_arguments_exit_2():
    assert run("verify", "--dtype", "fp8").returncode == 2
    assert run("verify", "--model", "resnet18", "--dtype", "float64").returncode == 2
    assert run("nonsense").returncode == 2


def test_explicit_unavailable_backend_is_a_clear_error():
    # no GPU and no interpreter here: asking for triton on a CPU tensor must raise, not fall back
    import torch

    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 4, 3, 3)
    if fused_resnet._env.triton_interpreting():
        pytest.skip("the interpreter runs triton on CPU")
    with pytest.raises(fused_resnet.BackendUnavailableError, match="triton"):
        fused_resnet.ops.fused_conv2d(x, w, backend="triton")
    with pytest.raises(ValueError, match="unknown fused_resnet backend"):
        fused_resnet.ops.fused_conv2d(x, w, backend="tpu")


def test_verify_with_checkpoint(tmp_path):
    import torch
    import torchvision

    from fused_resnet.testing import randomize_bn

    torch.manual_seed(3)
    path = tmp_path / "r18.pth"
    torch.save(randomize_bn(torchvision.models.resnet18(), torch.Generator().manual_seed(3)).state_dict(), path)
    r = run("verify", "--model", "resnet18", "--batch", "1", "--image-size", "32", "--device", "cpu",
            "--checkpoint", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checkpoint" in r.stdout and r.stdout.strip().endswith("PASS")


def test_dtype_spellings():
    from fused_resnet.verify import dtype_name

    for names, short in ((("fp32", "float32", "float", "torch.float32"), "fp32"),
                         (("fp16", "float16", "half", "FP16"), "fp16"), (("bf16", "bfloat16"), "bf16")):
        assert {dtype_name(n) for n in names} == {short}
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_name("fp8")


def test_verify_accepts_torch_dtype_names(capsys):
    rc = main(["verify", "--model", "resnet18", "--batch", "1", "--image-size", "32", "--device", "cpu",
               "--dtype", "float32"])
    out = capsys.readouterr().out
    assert rc == 0 and "fp32" in out and out.strip().endswith("PASS")


def test_unknown_model_exit_2(capsys):
    assert main(["verify", "--model", "resnet_nope", "--device", "cpu"]) == 2
    assert "unknown model 'resnet_nope'" in capsys.readouterr().err
    assert main(["bench", "--model", "nope", "--device", "cpu"]) == 2


# --- bad arguments: one line on stderr, exit status 2 (1 is reserved for a numerical FAIL) --------

def _usage_error(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2, (argv, rc, captured.out[-500:], captured.err[-500:])
    err = captured.err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    assert "PASS" not in captured.out
    return err


V = ["verify", "--model", "resnet18", "--image-size", "32", "--device", "cpu"]


@pytest.mark.parametrize("argv, says", [
    (V + ["--batch", "0"], "positive integer"),
    (V + ["--batch", "-3"], "positive integer"),
    (V + ["--batch", "x"], "positive integer"),
    (["verify", "--image-size", "0", "--device", "cpu"], "positive integer"),
    (V + ["--checkpoint", "/nonexistent/r18.pth"], "no such file"),
    (["verify", "--device", "tpu"], "tpu"),
    (V + ["--backend", "triton"], "CUDA tensors only"),
    (["bench", "--device", "cpu", "--batch", "x"], "positive integer"),
    (["bench", "--device", "cpu", "--batch", "-2"], "positive integer"),
    (["bench", "--device", "cpu", "--batch", "0"], "positive integer"),
    (["bench", "--device", "cpu", "--batch", "1,,2"], "comma list"),
    (["bench", "--device", "cpu", "--cuda-graphs", "--batch", "1"], "needs a CUDA device"),
    (["bench", "--device", "cpu", "--level", "layer"], "--level"),
    (["demo", "--device", "cpu", "--runs", "0"], "positive integer"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, says, capsys):
    assert says in _usage_error(argv, capsys)


def test_device_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "no CUDA GPU" in _usage_error(V + ["--device", "cuda"], capsys)


@pytest.mark.parametrize("content", [b"not a checkpoint", "wrong architecture"])
def test_bad_checkpoint_exit_2(tmp_path, content, capsys):
    import torch
    import torchvision

    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(torchvision.models.resnet18().state_dict(), path)
    err = _usage_error(["verify", "--model", "resnet50", "--image-size", "32", "--device", "cpu",
                        "--checkpoint", str(path)], capsys)
    assert "checkpoint" in err


def test_bad_environment_value_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("FUSED_RESNET_BACKEND", "bogus")
    assert "FUSED_RESNET_BACKEND" in _usage_error(["info"], capsys)
    monkeypatch.delenv("FUSED_RESNET_BACKEND")
    monkeypatch.setenv("FUSED_RESNET_PREFER", "gpu")
    assert "FUSED_RESNET_PREFER" in _usage_error(["info"], capsys)


def test_bad_tactic_table_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FUSED_RESNET_TABLE", str(tmp_path / "missing.json"))
    assert "FUSED_RESNET_TABLE" in _usage_error(["info"], capsys)
    old = tmp_path / "old.json"
    old.write_text('{"device": "Test GPU", "choices": {}}')
    monkeypatch.setenv("FUSED_RESNET_TABLE", str(old))
    err = _usage_error(["info"], capsys)
    assert "FUSED_RESNET_TABLE" in err and "format 1" in err


def test_verify_where_nothing_fuses_does_not_pass(capsys):
    try:
        rc = main(["verify", "--model", "alexnet", "--image-size", "64", "--batch", "1", "--device", "cpu"])
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2 and "NOT VERIFIED" in captured.out and "PASS" not in captured.out
    assert "nothing to verify" in captured.err


def test_a_bad_argument_from_the_shell_has_no_traceback():
    r = run("verify", "--batch", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
