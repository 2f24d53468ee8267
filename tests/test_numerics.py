"""runtime.numerics: the portable mode's environment, when it can be applied, and its reference jobs."""

import importlib.util
import os
import subprocess
import sys

import pytest

from ncil import numerics
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("check_reproduction", ROOT / "scripts/check_reproduction.py")
check_reproduction = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_reproduction)


def test_portable_sets_the_three_libraries_and_native_removes_them():
    env = {"PATH": "/bin", "MKL_CBWR": "AVX512"}
    assert numerics.environment("portable", env) == {
        "PATH": "/bin", "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert numerics.environment("native", env) == {"PATH": "/bin"}  # a stray setting is not native
    assert env == {"PATH": "/bin", "MKL_CBWR": "AVX512"}  # pure: the input is unchanged
    with pytest.raises(ValueError, match="runtime.numerics: expected native or portable, got 'fast'"):
        numerics.environment("fast", env)


def test_apply_refuses_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (loaded, as in this test process)

    for key in numerics.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    numerics.apply("native")  # nothing to change: fine
    with pytest.raises(RuntimeError, match="torch is already loaded"):
        numerics.apply("portable")
    assert "MKL_CBWR" not in os.environ


def test_portable_mode_reaches_aten_in_a_fresh_process():
    code = ("from ncil import numerics; numerics.apply('portable'); import torch; "
            "print(torch.backends.cpu.get_cpu_capability())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "AVX2"  # on an AVX-512 machine too: the vectorised kernels are capped


def test_mode_is_read_from_a_params_file_without_torch(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("runtime: {threads: 1, numerics: portable}\n")
    assert numerics.mode_of_params_file(str(params)) == "portable"
    params.write_text("runtime: {threads: 1}\n")
    assert numerics.mode_of_params_file(str(params)) == "native"


HERE = {"machine": "x86_64", "cpu_vendor": "AuthenticAMD", "cpu_family": "25", "cpu_model": "1", "torch": "2.14.1",
        "torch_cpu_capability": "AVX2"}


@pytest.mark.parametrize("listed, equal, rc", [(True, True, 0), (True, False, 1), (False, True, 0), (False, False, 4)])
def test_portable_check_fails_only_on_a_confirmed_type(listed, equal, rc):
    reference = {"hashes": {"a": "1" * 32}, "confirmed_on": [HERE if listed else {**HERE, "cpu_model": "17"}]}
    found = {"a": "1" * 32 if equal else "2" * 32}
    code, message = check_reproduction.check_portable(found, reference, HERE)
    assert code == rc
    if not equal:
        assert f"a: reference {'1' * 32}, here {'2' * 32}" in message


def test_committed_reference_lists_its_hashes_and_where_they_held():
    reference = check_reproduction.io.read_json(ROOT / check_reproduction.PORTABLE_REFERENCE)
    assert sorted(reference["hashes"]) == sorted(check_reproduction.REFERENCE_FILES)
    assert reference["confirmed_on"] and all(len(h) == 32 for h in reference["hashes"].values())


@pytest.mark.slow
def test_reference_jobs_reproduce_the_committed_hashes(tmp_path, capsys):
    """Byte for byte on a CPU type that confirmed the reference; on another type, reported (rc 4)."""
    reference = check_reproduction.io.read_json(ROOT / check_reproduction.PORTABLE_REFERENCE)
    found = check_reproduction.run_reference_jobs(tmp_path)
    code, message = check_reproduction.check_portable(found, reference, check_reproduction.current_platform())
    with capsys.disabled():
        print("\n" + message)
    assert code in (0, 4), message
